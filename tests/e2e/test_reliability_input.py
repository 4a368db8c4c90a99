"""Hostile input and exposure, end to end in the victim's namespace.

* Hostile configuration and CLI input: each refused with one line and exit 2, nothing applied
  (``nft list ruleset`` stays empty, so no compat iptables rule either).
* Privilege: a non-root user (``setpriv`` to nobody) gets exit 77 and one line from every command
  that could change or reveal state, also when the control socket's directory is opened up (then
  the daemon's own peer-credential check refuses); state files are 0600/0700; nothing listens on
  the network.
* Hostile packets: malformed IPv4/IPv6/TCP/UDP packets the kernel still queues are classified
  (MALFORMED), every one gets a verdict, no internal error, and the verdict loop keeps working.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import time
from pathlib import Path

import pytest
from daemon_util import NFSENTRY, Nfsentry, write_config
from lab import PYTHON
from scapy.all import IP, TCP, UDP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN, raw
from test_reliability_util import send_frames, wait_for

pytestmark = pytest.mark.e2e

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def one_line(res, code: int, *frags: str) -> None:
    err = res.stderr.strip()
    assert res.returncode == code, (res.returncode, res.stdout, err)
    assert err and "\n" not in err and "Traceback" not in err, err
    for f in frags:
        assert f in err, (f, err)


def kernel_untouched(host) -> None:
    assert host.nft("list ruleset").stdout.strip() == ""


# == hostile configuration =========================================================================
def base(tmp: Path) -> dict:
    return {
        "storage": {"state_dir": str(tmp / "state")},
        "daemon": {"control_socket": str(tmp / "run" / "c.sock")},
        "logging": {"json_file": str(tmp / "events.jsonl"), "syslog": False},
    }


def merged(tmp: Path, extra: dict) -> dict:
    cfg = base(tmp)
    for sec, vals in extra.items():
        cfg.setdefault(sec, {}).update(vals)
    return cfg


BAD_CONFIGS = [
    ("unknown key", {"response": {"blok_duration": "1h"}}, "unknown key"),
    ("unknown section", {"respons": {"x": 1}}, "unknown section"),
    ("wrong type", {"detection": {"scan_trigger": "0"}}, "expected an integer"),
    ("huge port range", {"monitor": {"tcp_ports": ["1-655350"]}}, "outside 1-65535"),
    ("ignore everything v4", {"ignore": {"addresses": ["0.0.0.0/0"]}}, "every address"),
    ("ignore everything v6", {"ignore": {"addresses": ["::/0"]}}, "every address"),
    ("shell in command", {"response": {"command": ["/usr/bin/logger", "$TARGET$ && reboot"]}}, "metacharacters"),
    ("command as a string", {"response": {"command": "/usr/bin/logger $TARGET$"}}, "never run through a shell"),
    ("missing ignore file", {"ignore": {"files": ["/nonexistent/nfsentry.ignore"]}}, "cannot read"),
]


@pytest.mark.parametrize("name, extra, frag", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_hostile_configuration_is_refused_and_nothing_is_applied(lab, tmp_path, name, extra, frag):
    victim = lab["victim"]
    cfg = write_config(tmp_path / "bad.toml", merged(tmp_path, extra))
    for cmd in (["run", "--foreground"], ["config", "check"], ["rules", "load"]):
        args = [NFSENTRY, *cmd, str(cfg)] if cmd[0] == "config" else [NFSENTRY, *cmd, "--config", str(cfg)]
        one_line(victim.run(args, check=False), 2, frag)
    kernel_untouched(victim)
    assert not (tmp_path / "run").exists()


def test_unusable_paths_are_refused_before_the_kernel_is_touched(lab, tmp_path):
    victim = lab["victim"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        ({"storage": {"state_dir": str(afile / "state")}}, "state_dir"),  # parent is a file
        ({"logging": {"json_file": str(afile / "events.jsonl")}}, "json_file"),  # directory is a file
        ({"storage": {"database": str(afile / "db" / "nfsentry.db")}}, "database"),
        ({"response": {"hosts_deny": str(tmp_path / "no" / "such" / "hosts.deny")}}, "hosts_deny"),
    ]
    for extra, frag in cases:
        cfg = write_config(tmp_path / "bad.toml", merged(tmp_path, extra))
        one_line(victim.run([NFSENTRY, "run", "--config", str(cfg)], check=False), 2, frag)
        kernel_untouched(victim)
    one_line(victim.run([NFSENTRY, "run", "--config", str(tmp_path / "nonexistent.toml")], check=False), 2, "no such configuration file")
    # a read-only file system (a read-only tmpfs in a private mount namespace of this command only)
    ro = tmp_path / "ro"
    ro.mkdir()
    for extra, frag in (
        ({"storage": {"state_dir": str(ro / "state")}}, "Read-only file system"),
        ({"storage": {"state_dir": str(ro)}}, "Read-only file system"),
        ({"storage": {"database": str(ro / "nfsentry.db")}}, "not writable"),
    ):
        cfg = write_config(tmp_path / "ro.toml", merged(tmp_path, extra))
        script = f'mount -t tmpfs -o ro,size=64k nfsentry-ro {ro} && exec "$@"'
        res = victim.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", NFSENTRY, "run", "--config", str(cfg)], check=False
        )
        one_line(res, 2, frag)
        kernel_untouched(victim)
    assert not any(ro.iterdir())  # nothing leaked onto the real directory


@pytest.mark.parametrize(
    "args, frag",
    [
        (["block", "0.0.0.0/0"], "/0"),
        (["block", "::/0"], "/0"),
        (["block", "0.0.0.0/0", "--force"], "/0"),
        (["block", "10.0.0.0/4"], "/4"),
        (["block", "198.18.0.2; nft flush ruleset"], "bad address"),
        (["block", "$(reboot)"], "bad address"),
        (["block", "198.18.0.2", "--for", "forever"], "bad duration"),
        (["block", "198.18.0.2", "--for", "-5s"], "bad duration"),
        (["unblock", "198.18.0.2`id`"], "bad address"),
        (["unblock"], "at least one address"),
        (["unblock", "0.0.0.0/0"], "/0"),
        (["unblock", "::/0"], "/0"),
        (["history", "--since", "'; DROP TABLE blocks; --"], "bad --since"),
        (["history", "--source", "198.18.0.0/0x"], "bad address"),
    ],
)
def test_hostile_cli_input_is_one_line_exit_2_and_changes_nothing(lab, tmp_path, args, frag):
    victim = lab["victim"]
    cfg = write_config(tmp_path / "c.toml", base(tmp_path))
    one_line(victim.run([NFSENTRY, *args, "--config", str(cfg)], check=False), 2, frag)
    kernel_untouched(victim)


# == privilege and exposure =========================================================================
def test_non_root_users_are_refused_and_nothing_listens_on_the_network(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    pub = Path(tempfile.mkdtemp(prefix="nfsentry-priv-", dir="/tmp"))  # traversable by nobody
    os.chmod(pub, 0o755)
    try:
        d = Nfsentry(
            victim,
            tmp_path / "nfs",
            overrides={"daemon": {"control_socket": str(pub / "run" / "control.sock")}, "storage": {"state_dir": str(pub / "state")}},
        )
        cfg = pub / "nfsentry.toml"
        shutil.copy(d.config, cfg)
        os.chmod(cfg, 0o644)
        d.start()
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        # state files: 0700 directories, 0600 files; the control socket too
        state, run = pub / "state", pub / "run"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE(run.stat().st_mode) == 0o700
        for p in [*state.iterdir(), run / "control.sock"]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert stat.S_IMODE(d.json_file.stat().st_mode) & 0o007 == 0  # events: nothing for others

        def as_nobody(*args):
            return victim.run([*NOBODY, NFSENTRY, *args, "--config", str(cfg)], check=False)

        for args in (
            ["status"],
            ["status", "--json"],
            ["blocked"],
            ["block", "198.19.1.1"],
            ["unblock", "--all"],
            ["unblock", attacker.ip4],
            ["history"],
            ["rules", "load"],
            ["rules", "unload"],
            ["run"],
        ):
            one_line(as_nobody(*args), 77, "root")
        # even with the socket's directory opened up, the daemon checks the caller's uid itself
        os.chmod(run, 0o755)
        os.chmod(run / "control.sock", 0o666)
        one_line(as_nobody("status"), 77, "the control socket is for root only")
        code = (
            "import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);\n"
            "try:\n    s.sendall(json.dumps({'cmd': sys.argv[2], 'network': '198.19.1.1', 'all': True}).encode() + b'\\n')\n"
            "except BrokenPipeError:\n    pass  # the daemon answered and hung up before reading\n"
            "print(s.makefile().readline())"
        )
        for cmd in ("block", "unblock", "reload", "ignore"):
            res = victim.run([*NOBODY, PYTHON, "-c", code, str(run / "control.sock"), cmd], check=False)
            assert '"ok": false' in res.stdout and "root only" in res.stdout, res.stdout + res.stderr
        assert [b["network"] for b in d.blocked()] == [attacker.ip4]  # nothing changed
        assert attacker.connect(victim.ip4, 8080, timeout=1.5) == "timeout"
        # nothing listens on the network; the only listening socket is the control socket
        pid = d.status()["pid"]
        inet = victim.run(["ss", "-lntuwpH"]).stdout
        assert f"pid={pid}," not in inet, inet
        unix = [l for l in victim.run(["ss", "-lxpH"]).stdout.splitlines() if f"pid={pid}," in l]
        assert len(unix) == 1 and str(run / "control.sock") in unix[0], unix
        d.close()
    finally:
        shutil.rmtree(pub, ignore_errors=True)


# == hostile packets =================================================================================
def _fix4(b: bytes) -> bytes:
    """Recompute an IPv4 packet's total length and header checksum after surgery."""
    b = bytearray(b)
    b[2:4] = struct.pack("!H", len(b))
    b[10:12] = b"\0\0"
    ihl = min((b[0] & 15) * 4, len(b) & ~1)
    s = sum(struct.unpack("!%dH" % (ihl // 2), bytes(b[:ihl])))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[10:12] = struct.pack("!H", ~s & 0xFFFF)
    return bytes(b)


def malformed_packets(dst4: str, dst6: str) -> list[tuple[str, str, bytes]]:
    """(name, source, packet): hostile packets to monitored ports, each from its own spoofed source."""
    out: list[tuple[str, str, bytes]] = []

    def add(name, src, pkt):
        out.append((name, src, pkt))

    def s4():
        return f"198.19.66.{len(out) + 1}"

    def s6():
        return f"2001:db8:66:{len(out) + 1:x}::1"

    def tcp4(src, dport=7, **kw):
        return raw(IP(src=src, dst=dst4) / TCP(sport=41000, dport=dport, flags="S", **kw))

    src = s4()
    b = bytearray(tcp4(src))
    b[32] = 0x20
    add("tcp data offset 2", src, bytes(b))
    src = s4()
    b = bytearray(tcp4(src))
    b[32] = 0xF0
    add("tcp options past the end", src, bytes(b))
    src = s4()
    b = bytearray(tcp4(src, 9, options=[("NOP", None)] * 4))
    b[40:44] = b"\x02\x00\x08\xff"
    add("tcp options with bad lengths", src, bytes(b))
    src = s4()
    add("tcp header cut at 10 bytes", src, _fix4(tcp4(src)[:30]))
    src = s4()
    b = bytearray(raw(IP(src=src, dst=dst4, options=b"\x01\x01\x01\x01") / TCP(dport=13, flags="S")))
    b[20:24] = b"\x07\x27\x04\x00"
    add("ipv4 option past the header", src, _fix4(bytes(b)))
    src = s4()
    b = bytearray(tcp4(src))
    b[0] = 0x4F
    add("ipv4 ihl 15", src, _fix4(bytes(b)))
    src = s4()
    b = bytearray(raw(IP(src=src, dst=dst4) / UDP(sport=41000, dport=7) / b"xx"))
    b[24:26] = b"\x00\x04"
    add("udp length 4", src, bytes(b))
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(type=0, addresses=[]) / IPv6ExtHdrFragment(m=0, offset=0, id=7)
    src = s6()
    add("ipv6 extension chain", src, raw(IPv6(src=src, dst=dst6) / chain / TCP(sport=41000, dport=7, flags="S")))
    many = IPv6ExtHdrDestOpt()
    for _ in range(15):
        many = many / IPv6ExtHdrDestOpt()
    src = s6()
    add("ipv6 16 destination options", src, raw(IPv6(src=src, dst=dst6) / many / TCP(sport=41000, dport=9, flags="S")))
    src = s6()
    b = bytearray(
        raw(IPv6(src=src, dst=dst6) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 4)]) / TCP(sport=41000, dport=13, flags="S"))
    )
    b[43] = 0xFF
    add("ipv6 option length past its header", src, bytes(b))
    src = s6()
    b = bytearray(raw(IPv6(src=src, dst=dst6) / IPv6ExtHdrDestOpt() / TCP(sport=41000, dport=7, flags="S")))
    b[41] = 0xFF
    add("ipv6 extension header past the packet", src, bytes(b))
    src = s6()
    b = bytearray(raw(IPv6(src=src, dst=dst6) / TCP(sport=41000, dport=9, flags="S")))
    b[52] = 0x00
    add("ipv6 tcp data offset 0", src, bytes(b))
    src = s6()
    b = bytearray(raw(IPv6(src=src, dst=dst6) / TCP(sport=41000, dport=13, flags="S")))
    b[4:6] = b"\x05\xdc"
    add("ipv6 payload length past the end", src, bytes(b))
    return out


def test_malformed_packets_get_verdicts_and_the_loop_keeps_working(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    for key in ("all", "default", "eth0"):
        victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
    victim.tcp_service(8080)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        pkts = malformed_packets(victim.ip4, victim.ip6)
        for _ in range(3):  # three rounds: blocked sources are dropped in the kernel from round 2 on
            send_frames(attacker, victim, [p for _, _, p in pkts])
        # until the named packets' detections are logged (a busy machine needs longer than 1 s)
        named = {
            src
            for name, src, _ in pkts
            if name
            in (
                "tcp data offset 2",
                "tcp options past the end",
                "tcp header cut at 10 bytes",
                "ipv6 tcp data offset 0",
                "ipv6 16 destination options",
            )
        }
        wait_for(
            lambda: named <= {e["src"] for e in d.events("detection")} or d.proc.poll() is not None,
            timeout=60,
            what="the detections of the malformed packets",
        )
        time.sleep(1)  # and whatever else was queued
        assert d.proc.poll() is None
        st = d.status()
        assert st["counters"]["errors"] == 0 and st["queue_drops"]["queue0"]["waiting"] == 0
        det = {e["src"]: e for e in d.events("detection")}
        assert st["counters"]["queued"] >= len(det) >= 6, (st["counters"], det.keys())
        by_name = {name: det.get(src) for name, src, _ in pkts}
        for name in ("tcp data offset 2", "tcp options past the end", "tcp header cut at 10 bytes", "ipv6 tcp data offset 0"):
            assert by_name[name] and by_name[name]["label"] == "MALFORMED" and by_name[name]["malformed"], (name, by_name[name])
        assert by_name["ipv6 16 destination options"]["label"] == "SYN"  # a long but valid chain is decoded
        # every source the daemon saw is blocked; the loop still handles an ordinary scan
        assert {b["network"].split("/")[0].rstrip(":") for b in d.blocked()} >= {s for s in det if ":" not in s}
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        assert attacker.connect(victim.ip4, 8080, timeout=1.5) == "timeout"
    finally:
        d.close()
