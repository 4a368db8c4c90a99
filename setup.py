"""Build of the compiled fast path (nfsentry/_fastpath.c); everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("nfsentry._fastpath", ["nfsentry/_fastpath.c"],
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"])])
