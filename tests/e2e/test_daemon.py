"""The daemon end to end: real nmap from the attacker namespace, real NFQUEUE, real nft sets.

Each scan type is detected, labelled in JSON and syslog, and the attacker is blocked in-kernel
(a following connect to an open victim service times out); unblocking restores access.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from daemon_util import Nfsentry

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080  # an open victim service outside the monitored ports
SCAN_PORTS = "1,7,9"  # monitored (1-1023), nothing listens there
NMAP_QUICK = "--initial-rtt-timeout 100ms --max-rtt-timeout 300ms"


@pytest.fixture
def daemon(lab, tmp_path):
    lab["victim"].tcp_service(OPEN_PORT)
    d = Nfsentry(lab["victim"], tmp_path / "nfs", ignore=[lab["ignored"].ip4, lab["ignored"].ip6])
    d.start()
    yield d
    d.close()


SCANS = [
    ("-sS", "SYN"),
    ("-sT", "SYN"),
    ("-sF", "FIN"),
    ("-sN", "NULL"),
    ("-sX", "XMAS"),
    ("--scanflags URGACKPSHRSTSYNFIN", "FULL-XMAS"),
    ("-sA", "ACK"),
    ("-sM", "MAIMON"),
    ("-sU", "UDP"),
]


def assert_blocked_then_unblock(daemon, attacker, target, src):
    # the blocked connect waits out its timeout while the CLI lists the blocks (both only look);
    # an unblocked connect to the open port is answered by the kernel in well under a millisecond
    with ThreadPoolExecutor(1) as pool:
        reached = pool.submit(attacker.connect, target, OPEN_PORT, 0.5)
        nets = [b["network"] for b in daemon.blocked()]
        assert reached.result() == "timeout", "attacker still reaches the open service"
    assert any(n == src or (":" in src and n.endswith("/64")) for n in nets), nets
    daemon.cli("unblock", "--all")
    assert attacker.connect(target, OPEN_PORT) == "connected"


@pytest.mark.parametrize("family", [4, 6])
def test_each_nmap_scan_is_labelled_and_blocked(lab, daemon, family):
    attacker, victim = lab["attacker"], lab["victim"]
    target = victim.ip4 if family == 4 else victim.ip6
    src = attacker.ip4 if family == 4 else attacker.ip6
    assert attacker.connect(target, OPEN_PORT) == "connected"
    for args, label in SCANS:
        before = len(daemon.events("detection"))
        # the first probe blocks the attacker: short RTT timeouts only shorten nmap's wait for
        # answers that cannot come (every probe is still sent, unanswered ones are not resent)
        res = attacker.nmap(f"{args} -Pn --max-retries 0 {NMAP_QUICK} --host-timeout 20s -p {SCAN_PORTS}", target)
        assert res.returncode == 0, res.stderr
        ev = daemon.wait_event("detection", src, where=lambda e: e["label"] == label)
        assert ev["action"] == "block" and ev["proto"] == ("udp" if label == "UDP" else "tcp")
        assert ev["port"] in (1, 7, 9)
        blk = daemon.wait_event("block", where=lambda e: e["ts"] >= ev["ts"] - 0.001)
        assert blk["duration"] > 0
        assert_blocked_then_unblock(daemon, attacker, target, src)
        assert len(daemon.events("detection")) > before
    # syslog got greppable lines for every label
    text = "\n".join(daemon.syslog.lines)
    for _, label in SCANS:
        assert f"label={label} " in text, label


def test_ip_options_are_reported(lab, daemon):
    attacker, victim = lab["attacker"], lab["victim"]
    attacker.nmap("-sS -Pn --max-retries 0 --ip-options R -p 7", victim.ip4)
    ev = daemon.wait_event("detection", attacker.ip4)
    assert "RR" in ev["ip_options"], ev
    assert any("ipopts=RR" in l for l in daemon.syslog.lines)


def test_legit_traffic_ignored_host_and_own_replies_raise_nothing(lab, daemon):
    victim, legit, ignored = lab["victim"], lab["legit"], lab["ignored"]
    victim.udp_service(5353)
    legit.udp_service(53)
    legit.tcp_service(8443)
    for i in range(50):
        target = victim.ip4 if i % 2 else victim.ip6
        assert legit.connect(target, OPEN_PORT) == "connected"
    for i in range(10):
        assert legit.udp_query(victim.ip4, 5353, b"q%d" % i) == b"q%d" % i
    # the victim's own outbound TCP connection and DNS-style UDP queries: replies are established
    for _ in range(5):
        assert victim.connect(legit.ip4, 8443) == "connected"
        assert victim.udp_query(legit.ip4, 53, b"dns?") == b"dns?"
        assert victim.udp_query(legit.ip6, 53, b"dns6?") == b"dns6?"
    # the ignored host scans: never blocked
    ignored.nmap("-sS -Pn --max-retries 0 -p 1-30", victim.ip4)
    ignored.nmap("-sX -Pn --max-retries 0 -p 1-30", victim.ip6)
    time.sleep(0.5)
    assert daemon.events("block") == []
    assert daemon.events("detection") == []
    assert ignored.connect(victim.ip4, OPEN_PORT) == "connected"
    assert daemon.blocked() == []
    st = daemon.status()
    assert st["counters"]["blocks"] == 0


def test_restart_restores_blocks_with_remaining_time_and_drops_expired(lab, tmp_path):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"response": {"keep_blocks_on_exit": False}})
    d.start()
    try:
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        d.cli("block", legit.ip6, "--for", "2s", "--reason", "short")
        d.kill9()  # no clean-up at all
        time.sleep(2.5)  # the legit block expires while the daemon is down
        d.stop()
        victim.nft("delete table inet nfsentry")  # even a lost kernel table is restored from the database
        d.start()
        nets = {b["network"]: b for b in d.blocked()}
        assert attacker.ip4 in nets and legit.ip6 not in nets
        assert 3000 < nets[attacker.ip4]["expires_in"] <= 3600
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
        assert legit.connect(victim.ip6, OPEN_PORT) == "connected"
    finally:
        d.close()


def test_kill9_then_restart_keeps_a_block_made_just_before(lab, tmp_path):
    """A block reported as made is never lost: the kernel set survives kill -9 and is re-imported."""
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        attacker.nmap("-sN -Pn --max-retries 0 -p 9", victim.ip6)
        d.wait_event("block")
        d.kill9()
        assert attacker.connect(victim.ip6, OPEN_PORT, timeout=1.5) == "timeout"  # still dropped while down
        d.start()
        assert any(b["network"].startswith("2001:db8::") for b in d.blocked())
        assert len(d.cli("blocked", "--json").stdout) > 2
    finally:
        d.close()


def test_bad_config_and_not_root_leave_the_kernel_untouched(lab, tmp_path):
    victim = lab["victim"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[response]\nblock_duration = "soon"\n')
    res = victim.run([str(__import__("daemon_util").NFSENTRY), "run", "--config", str(bad)], check=False)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "block_duration" in res.stderr
    assert "nfsentry" not in victim.nft("list tables").stdout
    res = victim.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(__import__("daemon_util").NFSENTRY),
            "run",
            "--config",
            str(tmp_path / "none.toml"),
        ],
        check=False,
    )
    assert res.returncode in (2, 77)
    ok = tmp_path / "ok.toml"
    ok.write_text("")
    res = victim.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(__import__("daemon_util").NFSENTRY),
            "run",
            "--config",
            str(ok),
        ],
        check=False,
    )
    assert res.returncode == 77 and "root" in res.stderr and res.stderr.strip().count("\n") == 0
    assert victim.nft("list ruleset").stdout.strip() == ""


def test_sighup_reload_and_refused_bad_reload(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        # a bad new config is refused, the old one keeps running (and the block stays)
        good = d.config.read_text()
        d.config.write_text(good + "\n[bogus]\nx = 1\n")
        d.proc.send_signal(1)
        deadline = time.monotonic() + 60  # a busy machine may take a while to handle the SIGHUP
        while time.monotonic() < deadline and not any("reload refused" in l for l in d.stderr_lines):
            time.sleep(0.1)
        assert d.proc.poll() is None
        assert any("reload refused" in l for l in d.stderr_lines)
        # a good new config that monitors port 5000 too is applied, blocks survive
        d.config.write_text(good.replace("[logging]", '[monitor]\ntcp_ports = ["1-1023", 5000]\n\n[logging]'))
        d.proc.send_signal(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("configuration reloaded" in l for l in d.stderr_lines):
            time.sleep(0.1)
        assert any("configuration reloaded" in l for l in d.stderr_lines)
        assert attacker.ip4 in [b["network"] for b in d.blocked()]
        assert "5000" in d.status()["tcp_ports"]
    finally:
        d.close()
