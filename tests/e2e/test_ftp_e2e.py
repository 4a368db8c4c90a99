"""FTP data connections through the real daemon, with real FTP software (vsftpd, pyftpdlib, ftplib).

Every test monitors (nearly) all TCP ports, ephemeral ones included, with the kernel's in-use
exemption switched off (``[monitor] inuse = "off"``): nothing but the FTP tracker can tell a data
connection from a probe. ``scan_trigger = 0`` makes any data connection the tracker misses an
instant detection and block. The kernel's conntrack FTP helper is not assigned (kernels >= 6.0 never
assign helpers automatically; the tests check no connection carries one), so the
``ct state related`` shortcut does not carry the data connections either.

IPv4 clients (ftplib) use PORT and PASV, IPv6 clients EPRT and EPSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from daemon_util import Nfsentry
from lab import PYTHON, Host

pytestmark = pytest.mark.e2e

PASV_LO, PASV_HI = 40000, 40009  # the servers' passive ports: monitored
FILE = "data.bin"
SIZE = 200_000


# == FTP software ===================================================================================
def make_root(tmp: Path) -> tuple[Path, str]:
    root = tmp / "ftproot"
    root.mkdir(parents=True, exist_ok=True)
    data = hashlib.sha256(str(tmp).encode()).digest() * (SIZE // 32 + 1)
    (root / FILE).write_bytes(data[:SIZE])
    os.chmod(root, 0o755)
    os.chmod(root / FILE, 0o644)
    return root, hashlib.sha256(data[:SIZE]).hexdigest()


def wait_listening(host: Host, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in host.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host.role}:{port}")


def vsftpd(host: Host, tmp: Path) -> str:
    """vsftpd on port 21 (IPv4 and IPv6), anonymous read-only, active data from port 20."""
    tmp.mkdir(parents=True, exist_ok=True)
    root, digest = make_root(tmp)
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    os.chmod(empty, 0o755)
    conf = tmp / "vsftpd.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        listen=NO
        listen_ipv6=YES
        background=NO
        anonymous_enable=YES
        no_anon_password=YES
        anon_root={root}
        local_enable=NO
        write_enable=NO
        pasv_enable=YES
        pasv_min_port={PASV_LO}
        pasv_max_port={PASV_HI}
        port_enable=YES
        connect_from_port_20=YES
        seccomp_sandbox=NO
        secure_chroot_dir={empty}
        xferlog_enable=NO
        dirmessage_enable=NO
        ftpd_banner=nfsentry lab vsftpd
        """)
    )
    with open(tmp / "vsftpd.err", "w") as err:
        host.popen(["vsftpd", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
    wait_listening(host, 21)
    return digest


PYFTPD = """
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.WARNING)
root, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
auth = DummyAuthorizer()
auth.add_anonymous(root)
FTPHandler.authorizer = auth
FTPHandler.passive_ports = list(range(lo, hi + 1))
FTPHandler.banner = "nfsentry lab pyftpdlib"
FTPServer(("::", 21), FTPHandler).serve_forever()
"""


def pyftpd(host: Host, tmp: Path) -> str:
    """pyftpdlib on port 21 (dual-stack socket), anonymous read-only."""
    tmp.mkdir(parents=True, exist_ok=True)
    root, digest = make_root(tmp)
    with open(tmp / "pyftpd.err", "w") as err:
        host.popen([PYTHON, "-c", PYFTPD, str(root), str(PASV_LO), str(PASV_HI)], stdout=subprocess.DEVNULL, stderr=err)
    wait_listening(host, 21)
    return digest


CLIENT = """
import ftplib, hashlib, json, socket, sys, time
addr, mode, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
wait, split = "wait" in sys.argv[5:], "split" in sys.argv[5:]
class FTP(ftplib.FTP):
    sent = []
    def putcmd(self, line):
        self.sent.append(line.split()[0].upper())
        super().putcmd(line)
    def putline(self, line):
        if split and line[:4] in ("PORT", "EPRT"):   # one command line in three TCP segments
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = (line + "\\r\\n").encode()
            for part in (data[:3], data[3:12], data[12:]):
                self.sock.sendall(part)
                time.sleep(0.02)
            return
        super().putline(line)
f = FTP(timeout=timeout)
f.connect(addr, 21)
f.login()
f.set_pasv(mode == "passive")
out = {"digests": [], "sizes": []}
for i in range(count):
    h = hashlib.sha256(); n = [0]
    def cb(b):
        h.update(b); n[0] += len(b)
    if wait and i == 0:   # announce, tell the test the port, let it probe, then transfer
        f.voidcmd("TYPE I")
        if mode == "passive":
            host, port = f.makepasv()
            print(json.dumps({"port": port}), flush=True)
            sys.stdin.readline()
            conn = socket.create_connection((host, port), timeout=timeout)
            f.sendcmd("RETR data.bin")
        else:
            sock = f.makeport()
            port = sock.getsockname()[1]
            print(json.dumps({"port": port}), flush=True)
            sys.stdin.readline()
            f.sendcmd("RETR data.bin")
            conn, _ = sock.accept()
            sock.close()
        with conn:
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                cb(b)
        f.voidresp()
    else:
        f.retrbinary("RETR data.bin", cb)
    out["digests"].append(h.hexdigest()); out["sizes"].append(n[0])
out["listing"] = f.nlst()
f.quit()
out["sent"] = f.sent
print(json.dumps(out), flush=True)
"""


def download(
    client: Host, server_addr: str, mode: str, count: int = 2, timeout: float = 10, check: bool = True, split: bool = False
) -> dict | None:
    """ftplib on `client`: `count` RETRs of data.bin and one NLST over one control connection
    (`split`: each PORT/EPRT line sent in three TCP segments)."""
    res = client.run(
        [PYTHON, "-c", CLIENT, server_addr, mode, str(count), str(timeout), *(["split"] if split else [])], check=False, timeout=60
    )
    if not check and res.returncode != 0:
        return None
    assert res.returncode == 0, f"ftp client on {client.role} failed:\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


class HeldDownload:
    """A download that stops after announcing its data port (PORT/EPRT or PASV/EPSV) until released."""

    def __init__(self, client: Host, server_addr: str, mode: str) -> None:
        self.p = client.popen([PYTHON, "-u", "-c", CLIENT, server_addr, mode, "1", "10", "wait"], stdin=subprocess.PIPE)
        line = self.p.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"held ftp client failed: {line}{self.p.stderr.read() if self.p.poll() is not None else ''}")
        self.port = json.loads(line)["port"]

    def release(self) -> dict:
        out, err = self.p.communicate("go\n", timeout=30)
        assert self.p.returncode == 0, f"held ftp client failed:\n{out}\n{err}"
        return json.loads(out.strip().splitlines()[-1])


def check_transfer(out: dict, digest: str, family: int, mode: str, count: int = 2) -> None:
    assert out["sizes"] == [SIZE] * count and out["digests"] == [digest] * count, out
    want = {(4, "active"): "PORT", (6, "active"): "EPRT", (4, "passive"): "PASV", (6, "passive"): "EPSV"}[family, mode]
    assert out["sent"].count(want) == count + 1, out["sent"]  # every RETR plus the NLST


# == the daemon ====================================================================================
def ftp_daemon(host: Host, tmp: Path, mode: str = "host", exclude=(), ftp: bool = True, protect=()) -> Nfsentry:
    return Nfsentry(
        host,
        tmp,
        overrides={
            "monitor": {
                "tcp_ports": ["1-65535"],
                "tcp_exclude": list(exclude),
                "udp_ports": ["1-1023"],
                "inuse": "off",
                "mode": mode,
                "ftp": ftp,
                "protect": list(protect),
            },
            # every lab host shares one /64: block IPv6 sources by address, not by /64
            "detection": {"scan_trigger": 0, "ipv6_prefix": 128},
            "response": {"keep_blocks_on_exit": False},
        },
    )


def assert_quiet(d: Nfsentry) -> dict:
    """No detection, no block: counters (set in the verdict loop) and the event log agree."""
    st = d.status()
    assert st["counters"]["detections"] == 0 and st["counters"]["blocks"] == 0, st["counters"]
    assert st["counters"]["errors"] == 0, (st["counters"], d.stderr_lines[-20:])
    assert d.events("detection") == [] and d.events("block") == [] and d.blocked() == []
    return st


def helpers(host: Host) -> set[str]:
    """The conntrack helpers attached to the host's connections (none: `ct state related` carried nothing).
    A failing `conntrack` (not installed: `make deps-test`) fails the test instead of reading as "none"."""
    out = host.run(["conntrack", "-L", "-o", "extended"]).stdout
    return {w.split("=", 1)[1] for w in out.split() if w.startswith("helper=")}


HELPER_TABLE = """table inet ftphelper {
	ct helper ftp-std { type "ftp" protocol tcp; }
	chain pre { type filter hook prerouting priority filter; tcp dport 21 ct helper set "ftp-std"; }
	chain out { type filter hook output priority filter; tcp dport 21 ct helper set "ftp-std"; }
}
"""


def expectations(host: Host) -> set[tuple]:
    """The kernel's FTP expectation elements: {(peer, addr, port)}."""
    out = set()
    for name in ("ftp_expect4", "ftp_expect6"):
        for item in json.loads(host.nft(["-j", "list", "set", "inet", "nfsentry", name]).stdout)["nftables"]:
            for e in item.get("set", {}).get("elem", []):
                val = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                out.add(tuple(val["concat"]))
    return out


def wait_expectation(host: Host, key: tuple, timeout: float = 30) -> None:
    """The daemon writes the kernel element right after it accepted the announcing packet."""
    deadline = time.monotonic() + timeout
    while key not in expectations(host):
        assert time.monotonic() < deadline, f"no kernel expectation {key}: {expectations(host)}"
        time.sleep(0.02)


# == 1. and 2. host mode ===========================================================================
@pytest.mark.parametrize("helper", [False, True], ids=["no-helper", "conntrack-ftp-helper"])
def test_victim_active_client_and_passive_server_ipv4_ipv6(lab, tmp_path, helper):
    """1. The victim downloads from the legit host's vsftpd in active mode (PORT, EPRT: vsftpd
    connects from port 20 to the victim's ephemeral port). 2. The legit host downloads from the
    victim's pyftpdlib in passive mode (PASV, EPSV: to the victim's port 40000-40009). Each control
    connection runs three data connections (2 RETR, 1 NLST); the victim splits its EPRT lines over
    three TCP segments.

    Without a conntrack helper (the default) only the tracker carries the data connections; with
    the kernel's FTP helper assigned by another table they are `related` and nfsentry must still
    stay quiet and keep tracking."""
    victim, legit = lab["victim"], lab["legit"]
    if helper:
        victim.nft(["-f", "-"], stdin=HELPER_TABLE)
    d = ftp_daemon(victim, tmp_path / "nfs", exclude=["21"])
    d.start()
    try:
        remote = vsftpd(legit, tmp_path / "legit")
        local = pyftpd(victim, tmp_path / "victim")
        for fam, addr in ((4, legit.ip4), (6, legit.ip6)):
            # (the kernel's helper drops a segment holding a partial EPRT: split only without it)
            check_transfer(download(victim, addr, "active", split=fam == 6 and not helper), remote, fam, "active")
        for fam, addr in ((4, victim.ip4), (6, victim.ip6)):
            check_transfer(download(legit, addr, "passive"), local, fam, "passive")
        st = assert_quiet(d)
        assert helpers(victim) == ({"ftp"} if helper else set())
        ftp = st["ftp"]
        assert ftp["tracker"]["expectations"] == 12 and ftp["tracker"]["malformed"] == 0, ftp
        # 2 of 3 per control connection are superseded (a passive port picked twice in a row is
        # the same expectation refreshed instead)
        assert 4 <= ftp["expectations"]["superseded"] <= 8, ftp
        # The kernel keeps only each control connection's last expectation (the others were
        # withdrawn when superseded) until its timeout.
        kernel = expectations(victim)
        assert len(kernel) == 4 and {(p, a) for p, a, _ in kernel} == {(legit.ip4, victim.ip4), (legit.ip6, victim.ip6)}, kernel
        print(f"\nhelper={helper} queued_tcp={st['kernel']['queued_tcp']} ftp={json.dumps(ftp)}")
    finally:
        d.close()


def test_without_the_tracker_the_same_data_connection_is_a_scan(lab, tmp_path):
    """Control: `[monitor] ftp = false` and the passive data connection of test 2 is blocked,
    so what lets it through in the other tests is the tracker and nothing else."""
    victim, legit = lab["victim"], lab["legit"]
    d = ftp_daemon(victim, tmp_path / "nfs", exclude=["21"], ftp=False)
    d.start()
    try:
        pyftpd(victim, tmp_path / "victim")
        assert download(legit, victim.ip4, "passive", count=1, timeout=2, check=False) is None
        ev = d.wait_event("block", legit.ip4)
        assert PASV_LO <= ev["port"] <= PASV_HI, ev
    finally:
        d.close()


# == 3. gateway =====================================================================================
def test_gateway_inside_active_client_and_passive_server_ipv4_ipv6(lab, tmp_path):
    """Through the forward hook: the inside host downloads from legit's vsftpd in active mode (legit
    connects from port 20 to the inside host), and legit downloads from the inside host's pyftpdlib
    in passive mode (legit connects to the inside host's port 40000-40009)."""
    (inside,) = lab.add_inside()
    victim, legit, attacker = lab["victim"], lab["legit"], lab["attacker"]
    d = ftp_daemon(victim, tmp_path / "nfs", mode="gateway", exclude=["21"], protect=["198.18.1.0/24", "2001:db8:1::/64"])
    d.start()
    try:
        remote = vsftpd(legit, tmp_path / "legit")
        local = pyftpd(inside, tmp_path / "inside")
        for fam, addr in ((4, legit.ip4), (6, legit.ip6)):
            check_transfer(download(inside, addr, "active"), remote, fam, "active")
        for fam, addr in ((4, inside.ip4), (6, inside.ip6)):
            check_transfer(download(legit, addr, "passive"), local, fam, "passive")
        st = assert_quiet(d)
        assert helpers(victim) == set()
        assert st["ftp"]["tracker"]["expectations"] == 12, st["ftp"]
        assert {(p, a) for p, a, _ in expectations(victim)} == {(legit.ip4, inside.ip4), (legit.ip6, inside.ip6)}
        # The forward path is watched: a probe of the inside host's passive range is blocked.
        assert attacker.connect(inside.ip4, PASV_LO + 5, timeout=1) == "timeout"
        d.wait_event("block", attacker.ip4)
    finally:
        d.close()


# == 4. probes of announced ports, source-port-20 scans =============================================
def test_probes_of_announced_ports_and_port_20_scans_are_blocked(lab, tmp_path):
    victim, legit, attacker = lab["victim"], lab["legit"], lab["attacker"]
    d = ftp_daemon(victim, tmp_path / "nfs", exclude=["21"])
    d.start()
    try:
        local = pyftpd(victim, tmp_path / "victim")
        remote = vsftpd(legit, tmp_path / "legit")
        # Passive, IPv4: the victim's server announced a port to legit; the attacker connects first.
        held = HeldDownload(legit, victim.ip4, "passive")
        assert PASV_LO <= held.port <= PASV_HI
        wait_expectation(victim, (legit.ip4, victim.ip4, held.port))
        assert attacker.connect(victim.ip4, held.port, timeout=0.5) == "timeout"
        ev = d.wait_event("block", attacker.ip4)
        assert ev["port"] == held.port, ev
        # Empty the kernel set: legit's data SYN now goes to the verdict loop, where the engine's
        # expectation table must let it pass.
        victim.nft("flush set inet nfsentry ftp_expect4")
        queued = d.status()["counters"]["queued"]
        check_transfer(held.release(), local, 4, "passive", count=1)
        st = d.status()
        # (the NLST's data connection may match in the verdict loop too, when its SYN beats the
        # kernel element)
        assert st["counters"]["queued"] > queued and st["ftp"]["expectations"]["matched"] >= 1, st
        # After the exchange the port is still protected from anyone else.
        d.cli("unblock", attacker.ip4)
        t0 = time.time()
        assert attacker.connect(victim.ip4, held.port, timeout=0.5) == "timeout"
        d.wait_event("block", attacker.ip4, where=lambda e: e["ts"] >= t0)
        # Active, IPv6: the victim announced its own port (EPRT) to legit's vsftpd, which will
        # connect from port 20; the attacker scans that port from source port 20 first.
        held = HeldDownload(victim, legit.ip6, "active")
        res = attacker.nmap(f"-sS -Pn -g 20 --max-retries 0 -p {held.port}", victim.ip6)
        assert res.returncode == 0, res.stderr
        ev = d.wait_event("block", attacker.ip6)
        assert ev["port"] == held.port and ev["sport"] == 20, ev
        check_transfer(held.release(), remote, 6, "active", count=1)
        assert {b["network"] for b in d.blocked()} == {attacker.ip4, attacker.ip6}
        # No expectation at all: an nmap -g 20 scan of the passive range and of ephemeral ports.
        d.cli("unblock", "--all")
        for target, src in ((victim.ip4, attacker.ip4), (victim.ip6, attacker.ip6)):
            t0 = time.time()
            res = attacker.nmap(f"-sS -Pn -g 20 --max-retries 0 -p {PASV_LO}-{PASV_HI},50000-50010", target)
            assert res.returncode == 0, res.stderr
            ev = d.wait_event("block", src, where=lambda e: e["ts"] >= t0)
            assert ev["sport"] == 20, ev
        # legit was never touched
        assert legit.ip4 not in {e["src"] for e in d.events("detection")}
        assert legit.ip6 not in {e["src"] for e in d.events("detection")}
    finally:
        d.close()


# == 5. bounce and hostile control lines ===========================================================
HOSTILE = """
import ftplib, json, sys
addr, third = sys.argv[1], sys.argv[2]
f = ftplib.FTP(timeout=10)
f.connect(addr, 21)
f.login()
if ":" in third:   # the classic FTP bounce: the server is asked to connect to a third party
    bounce = f"EPRT |2|{third}|40000|"
else:
    bounce = "PORT " + third.replace(".", ",") + ",156,64"
out = {}
for name, line in (("bounce", bounce), ("long", "NOOP " + "x" * 3000),
                   ("malformed", "PORT 198,18,0,999,156,64\x1b[2J")):
    try:
        out[name] = f.sendcmd(line)
    except ftplib.error_perm as e:
        out[name] = str(e)
out["noop"] = f.sendcmd("NOOP")
f.set_pasv(True)
chunks = []
f.retrbinary("RETR data.bin", chunks.append)
out["size"] = sum(map(len, chunks))
f.quit()
print(json.dumps(out))
"""


def test_bounce_and_hostile_lines_are_reported_and_control_keeps_flowing(lab, tmp_path):
    """The legit host's client asks the victim's vsftpd to connect to the attacker (PORT, EPRT),
    sends a 3000-byte line and a PORT with a bad number and an escape sequence. Each is reported as
    an event (JSON, syslog), no expectation names the attacker, nothing is blocked, and the same
    control connection then runs a normal transfer. A forged control segment outside any
    connection is not even queued."""
    victim, legit, attacker = lab["victim"], lab["legit"], lab["attacker"]
    d = ftp_daemon(victim, tmp_path / "nfs", exclude=["21"])
    d.start()
    try:
        vsftpd(victim, tmp_path / "victim")
        # A forged control segment of no connection (ACK+PSH, no handshake) never reaches the
        # tracker: only established control connections are queued.
        forged = tmp_path / "forged.txt"
        forged.write_bytes(b"PORT 198,18,0,2,156,64\r\n")
        before = d.status()
        attacker.hping3(["-c", "1", "-A", "-P", "-s", "2121", "-p", "21", "-E", str(forged), "-d", "24", victim.ip4])
        after = d.status()
        assert after["kernel"]["queued_ftp"] == before["kernel"]["queued_ftp"], (before["kernel"], after["kernel"])
        assert after["ftp"]["tracker"]["packets"] == before["ftp"]["tracker"]["packets"] == 0
        for fam, server, third in ((4, victim.ip4, attacker.ip4), (6, victim.ip6, attacker.ip6)):
            src = legit.ip4 if fam == 4 else legit.ip6
            res = legit.run([PYTHON, "-c", HOSTILE, server, third], check=False, timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
            out = json.loads(res.stdout)
            assert out["bounce"].startswith("5"), out  # vsftpd refuses it too
            assert out["noop"].startswith("200") and out["size"] == SIZE, out
            ev = d.wait_event("ftp_bounce", src)
            assert ev["announced"] == third and ev["port"] == 40000 and ev["dst"] == server, ev
            assert ev["reason"].startswith("ftp bounce refused: client " + src), ev
            ev = d.wait_event("ftp_oversized", src)
            assert ev["length"] > 2048 == ev["limit"], ev  # length seen when the limit was passed
            ev = d.wait_event("ftp_malformed", src)
            assert "999 > 255" in ev["reason"] and "\\x1b[2J" in ev["line"] and "\x1b" not in json.dumps(ev), ev
        lines = "\n".join(d.syslog.lines)
        assert "ftp_bounce: " in lines and f"announced={attacker.ip4}" in lines and f"announced={attacker.ip6}" in lines, lines
        assert "\x1b" not in lines, lines
        assert not any(attacker.ip4 in k or attacker.ip6 in k for k in expectations(victim))
        st = assert_quiet(d)
        t = st["ftp"]["tracker"]
        assert (t["bounces"], t["oversized"], t["malformed"]) == (2, 2, 2), t
        assert st["counters"]["ftp_reports"] == 6 and st["counters"]["ftp_reports_suppressed"] == 0
    finally:
        d.close()
