"""The Debian packaging (debian/) agrees with the project: one version, every runtime dependency
pinned for the private environment, the Debian packages the daemon needs named, and the unit the
package installs (examples/nfsentry.service with the package's path) runs /usr/sbin/nfsentry."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from nfsentry import __version__

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"


def test_one_version_in_changelog_pyproject_and_package():
    top = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.match(rf"^nfsentry \({re.escape(__version__)}\) ", top), top
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_every_runtime_dependency_is_pinned_for_the_private_environment():
    pinned = {}
    for line in (DEBIAN / "python-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pinned, f"{dep}: not pinned in debian/python-constraints.txt"
        # a pin outside the range makes `pip install -c` in debian/rules fail: no package at all
        assert req.specifier.contains(pinned[name]), f"{dep}: debian/python-constraints.txt pins {name}=={pinned[name]}"


def test_control_names_the_debian_packages_the_daemon_needs():
    control = (DEBIAN / "control").read_text()
    depends = re.search(r"^Depends:(.*?)^\S", control, re.M | re.S).group(1)
    names = {re.match(r"[\w.+${}:-]+", d.strip()).group(0) for d in depends.split(",") if d.strip()}
    for need in ("nftables", "python3-nftables", "iptables", "libnetfilter-log1", "python3.11", "${shlibs:Depends}"):
        assert need in names, need
    assert re.search(r"^Architecture: any$", control, re.M)  # the C fast path and NetfilterQueue are compiled


def test_the_installed_unit_runs_the_package_program():
    rules = (DEBIAN / "rules").read_text()
    m = re.search(r"sed '(s#/usr/local/bin/nfsentry#/usr/sbin/nfsentry#g)' examples/nfsentry.service", rules)
    assert m, "debian/rules installs examples/nfsentry.service with the package's path"
    unit = (REPO / "examples" / "nfsentry.service").read_text().replace("/usr/local/bin/nfsentry", "/usr/sbin/nfsentry")
    assert re.search(r"^ExecStart=/usr/sbin/nfsentry run\b", unit, re.M) and "/usr/local" not in unit
    assert "Documentation=file:///usr/share/doc/nfsentry/README.md" in unit
    assert "-X README.md" in rules  # the unit's Documentation= stays readable uncompressed
