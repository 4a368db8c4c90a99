"""The Debian package end to end, on this machine.

`make deb` builds it once per session; `apt-get install ./nfsentry_*.deb` installs it; the
installed /usr/sbin/nfsentry, with the package's own configuration and paths (/etc/nfsentry,
/var/lib/nfsentry, /var/log/nfsentry, /run/nfsentry), runs in a lab namespace and blocks a real
`nmap -n` scan; logrotate rotates its events file; `apt-get remove` stops that daemon and takes
its table and compat iptables rules out of the namespace; `apt-get purge` leaves no file behind.
The machine's root-namespace ruleset is compared before and after: the maintainer scripts leave
it as it was (nothing is ever loaded there; the daemon only runs inside the lab).

Skipped with the reason where the build tools are missing (`make deps-test` installs them), not
root, or a nfsentry package or its files are already on this machine (never clobbered).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon_util import wait_until
from lab import REPO, sh

from nfsentry import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

PROG = "/usr/sbin/nfsentry"
EVENTS = Path("/var/log/nfsentry/events.jsonl")
# everything the package (or its daemon) puts on the machine: purge must take all of it
PATHS = [
    PROG,
    "/usr/lib/nfsentry",
    "/etc/nfsentry",
    "/etc/logrotate.d/nfsentry",
    "/lib/systemd/system/nfsentry.service",
    "/usr/share/man/man8/nfsentry.8.gz",
    "/usr/share/man/man5/nfsentry.toml.5.gz",
    "/usr/share/doc/nfsentry",
    "/usr/share/bash-completion/completions/nfsentry",
    "/usr/share/zsh/vendor-completions/_nfsentry",
    "/var/lib/nfsentry",
    "/var/log/nfsentry",
    "/run/nfsentry",
]
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def dpkg_status() -> str:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "nfsentry"], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else "not-installed"


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (apt-get install)"
    for tool in ("dpkg-buildpackage", "dh", "lintian", "apt-get", "git", "man", "nmap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make deps-test installs the package build tools, DEB_DEBS)"
    if dpkg_status() != "not-installed":
        return f"a nfsentry package is on this machine already ({dpkg_status()}): not touching it"
    here = [p for p in PATHS if os.path.lexists(p)]
    if here:
        return f"{here[0]} exists on this machine (purging the package would remove it)"
    return None


def root_ruleset() -> tuple[str, str, str]:
    """The root namespace's firewall, read only: nft's ruleset and the iptables-nft rules."""
    return (
        sh(["nft", "-s", "list", "ruleset"]).stdout,
        sh(["iptables-nft", "-S"], check=False).stdout,
        sh(["ip6tables-nft", "-S"], check=False).stdout,
    )


@pytest.fixture(scope="session")
def deb_file(tmp_path_factory) -> Path:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("deb")
    t0 = time.monotonic()
    res = subprocess.run(["make", "-C", str(REPO), "deb", f"DEB_OUT={out}"], capture_output=True, text=True, timeout=1100)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    debs = sorted(out.glob(f"nfsentry_{__version__}_*.deb"))
    assert len(debs) == 1, list(out.iterdir())
    assert f"nfsentry: built {debs[0]}" in res.stdout
    arch = sh(["dpkg", "--print-architecture"]).stdout.strip()
    assert debs[0].name == f"nfsentry_{__version__}_{arch}.deb"
    print(f"\nmake deb (build + lintian): {time.monotonic() - t0:.0f}s")
    return debs[0]


@pytest.fixture(scope="module")
def installed(deb_file):
    """The package installed on this machine; purged afterwards whatever happened."""
    before = root_ruleset()
    res = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", str(deb_file)], capture_output=True, text=True, env=APT_ENV, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    try:
        yield before
    finally:
        if dpkg_status() != "not-installed":
            subprocess.run(["apt-get", "purge", "-y", "nfsentry"], capture_output=True, env=APT_ENV, timeout=600)


class Daemon:
    """The installed daemon in a lab host's namespace, with the package's configuration."""

    def __init__(self, host) -> None:
        self.host = host
        self.proc = host.popen([PROG, "run", "--foreground"], stdout=subprocess.DEVNULL)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until("the installed daemon is active", lambda: any("is active" in l for l in self.lines) or self.proc.poll() is not None, 120)
        assert self.proc.poll() is None, "".join(self.lines)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.host.run([PROG, *args], check=check)

    def blocked(self) -> list[str]:
        return [b["network"] for b in json.loads(self.cli("blocked", "-o", "json").stdout)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def events() -> list[dict]:
    return [json.loads(l) for l in EVENTS.read_text().splitlines() if l.strip()] if EVENTS.exists() else []


def test_package_installs_program_manpages_conffile_unit_disabled(installed):
    assert sh([PROG, "--version"]).stdout.strip() == f"nfsentry {__version__}"
    assert sh(["dpkg-query", "-W", "-f=${Version} ${Architecture}", "nfsentry"]).stdout.split()[0] == __version__
    # the man pages, found by man and rendered
    assert sh(["man", "-w", "nfsentry"]).stdout.strip() == "/usr/share/man/man8/nfsentry.8.gz"
    assert sh(["man", "-w", "nfsentry.toml"]).stdout.strip() == "/usr/share/man/man5/nfsentry.toml.5.gz"
    env = {**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"}
    page8 = sh(["man", "-P", "cat", "8", "nfsentry"], env=env).stdout
    assert "rules unload" in page8 and "EXIT STATUS" in page8 and "--portsentry-config" in page8
    page5 = sh(["man", "-P", "cat", "5", "nfsentry.toml"], env=env).stdout
    assert "keep_blocks_on_exit = true" in page5 and "[response]" in page5
    # the configuration is a conffile, the shipped example, and it checks
    conffiles = sh(["dpkg-query", "-W", "-f=${Conffiles}", "nfsentry"]).stdout
    assert re.search(r"^ /etc/nfsentry/nfsentry\.toml [0-9a-f]{32}$", conffiles, re.M), conffiles
    assert re.search(r"^ /etc/logrotate\.d/nfsentry [0-9a-f]{32}$", conffiles, re.M), conffiles
    assert Path("/etc/nfsentry/nfsentry.toml").read_text() == (REPO / "examples" / "nfsentry.toml").read_text()
    assert sh([PROG, "config", "check"]).stdout.strip() == "/etc/nfsentry/nfsentry.toml: ok"
    # the unit runs the package's program, its documentation is there, and nothing is enabled or running
    unit = Path("/lib/systemd/system/nfsentry.service").read_text()
    assert re.search(r"^ExecStart=/usr/sbin/nfsentry run\b", unit, re.M) and "/usr/local" not in unit
    doc = re.search(r"^Documentation=file://(\S+)", unit, re.M)
    assert doc and Path(doc.group(1)).is_file(), doc
    assert not list(Path("/etc/systemd/system").glob("*.wants/nfsentry.service"))
    status = subprocess.run([PROG, "status"], capture_output=True, text=True)
    assert status.returncode == 3, status.stdout + status.stderr  # installing started nothing
    # byte-compiled by postinst (prerm removes the caches before dpkg removes the files)
    assert list(Path("/usr/lib/nfsentry/lib/python3.11/site-packages/nfsentry/cli/__pycache__").glob("app.*.pyc"))
    # bash completion through the installed program
    res = sh(
        [
            "bash",
            "-c",
            "source /usr/share/bash-completion/completions/nfsentry; COMP_WORDS=(nfsentry rules u); COMP_CWORD=2; "
            '_nfsentry_completion nfsentry; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        env={**os.environ, "PATH": f"/usr/sbin:{os.environ['PATH']}"},
    )
    assert "unload" in res.stdout.split(), res.stdout
    assert Path("/usr/share/zsh/vendor-completions/_nfsentry").read_text().startswith("#compdef nfsentry")


def test_installed_daemon_blocks_an_nmap_scan_in_a_namespace(installed, lab):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(8080)  # an open service outside the monitored ports
    d = Daemon(victim)
    try:
        assert attacker.connect(victim.ip4, 8080) == "connected"
        res = attacker.nmap("-sS -Pn --max-retries 0 --host-timeout 20s -p 1,7,9", victim.ip4)
        assert res.returncode == 0, res.stderr
        wait_until("the attacker is in the kernel's blocked set", lambda: attacker.ip4 in d.blocked(), 60)
        assert attacker.connect(victim.ip4, 8080, timeout=1.5) == "timeout"
        assert any(e["event"] == "detection" and e["src"] == attacker.ip4 for e in events())
        # the package's paths: state in /var/lib/nfsentry, the socket the CLI found in /run/nfsentry
        assert Path("/var/lib/nfsentry/nfsentry.db").is_file() and Path("/run/nfsentry/control.sock").is_socket()
    finally:
        d.stop()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed (make deps-test installs it)")
def test_logrotate_rotates_the_events_file_of_the_running_daemon(installed, lab, tmp_path):
    victim = lab["victim"]
    d = Daemon(victim)
    try:
        d.cli("block", "198.18.0.77", "--reason", "before rotation")
        wait_until("the first block in events.jsonl", lambda: any(e.get("network") == "198.18.0.77" for e in events()), 30)
        # (cron's and logrotate.service's PATH, which has /usr/sbin)
        env = {**os.environ, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        sh(["logrotate", "-f", "--state", str(tmp_path / "state"), "/etc/logrotate.d/nfsentry"], env=env)
        # postrotate made the running daemon reload (SIGHUP's path: the events file is reopened)
        wait_until("the daemon reloaded after the rotation", lambda: any("configuration reloaded" in l for l in d.lines), 30)
        rotated = Path(str(EVENTS) + ".1")
        assert rotated.is_file() and "198.18.0.77" in rotated.read_text()
        d.cli("block", "198.18.0.78", "--reason", "after rotation")
        wait_until("the next block in the new events.jsonl", lambda: any(e.get("network") == "198.18.0.78" for e in events()), 30)
        assert "198.18.0.78" not in rotated.read_text()
    finally:
        d.stop()


def test_remove_stops_the_daemon_and_unloads_its_rules_purge_leaves_nothing(installed, lab):
    root_before = installed
    victim = lab["victim"]
    d = Daemon(victim)
    d.cli("block", "198.18.0.99", "--reason", "before removal")
    assert "198.18.0.99" in d.blocked()
    assert "nfsentry" in victim.nft("list tables").stdout
    compat = json.loads(d.cli("status", "-o", "json").stdout).get("backend") == "compat"

    def ns_iptables() -> str:
        return "".join(victim.run([b, "-S"], check=False).stdout for b in ("iptables-nft", "ip6tables-nft"))

    if compat:
        assert "nfsentry" in ns_iptables()
    res = subprocess.run(["apt-get", "remove", "-y", "nfsentry"], capture_output=True, text=True, env=APT_ENV, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the daemon stopped, and nothing of nfsentry is left in its namespace's kernel
    assert d.proc.wait(timeout=30) == 0, "".join(d.lines[-20:])
    assert "nfsentry" not in victim.nft("list tables").stdout
    assert "nfsentry" not in ns_iptables()
    # remove keeps configuration and state; the program is gone
    assert dpkg_status() == "deinstall ok config-files"
    assert not os.path.lexists(PROG) and not os.path.lexists("/usr/lib/nfsentry")
    assert Path("/etc/nfsentry/nfsentry.toml").is_file() and Path("/var/lib/nfsentry/nfsentry.db").is_file()
    res = subprocess.run(["apt-get", "purge", "-y", "nfsentry"], capture_output=True, text=True, env=APT_ENV, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert dpkg_status() == "not-installed" or dpkg_status().startswith("unknown ok not-installed"), dpkg_status()
    left = [p for p in PATHS if os.path.lexists(p)]
    assert not left, f"left after purge: {left}"
    # the root namespace's firewall is as it was before the package came
    assert root_ruleset() == root_before
