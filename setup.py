"""Build of the compiled fast path (nfsentry/core/_fastpath.c); everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("nfsentry.core._fastpath", ["nfsentry/core/_fastpath.c"],
                             depends=["nfsentry/core/_fastpath_defs.h"],  # generated: core/cdefs.py
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"])])
