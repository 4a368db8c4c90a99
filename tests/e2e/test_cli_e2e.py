"""The CLI against the real kernel: block/unblock a real attacker with and without the daemon,
IPv4 and IPv6, and replay giving the same decisions as the live daemon for the same traffic."""

from __future__ import annotations

import json
import textwrap

import pytest
from daemon_util import NFSENTRY, Nfsentry

pytestmark = pytest.mark.e2e
OPEN_PORT = 8080


@pytest.fixture
def victim_service(lab):
    lab["victim"].tcp_service(OPEN_PORT)
    return lab


def targets(lab, family):
    v, a = lab["victim"], lab["attacker"]
    return (v.ip4, a.ip4) if family == 4 else (v.ip6, a.ip6)


@pytest.mark.parametrize("family", [4, 6])
def test_block_unblock_without_daemon(victim_service, tmp_path, family):
    lab = victim_service
    victim, attacker = lab["victim"], lab["attacker"]
    target, src = targets(lab, family)
    d = Nfsentry(victim, tmp_path / "nfs")  # config only; the daemon is not started
    res = d.cli("rules", "load")
    assert "loaded table inet nfsentry" in res.stdout
    assert attacker.connect(target, OPEN_PORT) == "connected"
    res = d.cli("block", src, "--for", "10m", "--reason", "caught by hand")
    assert f"blocked {src} for 10m" in res.stdout
    assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
    rows = d.blocked()
    assert [r["network"] for r in rows] == [src]
    assert rows[0]["reason"] == "caught by hand" and 500 < rows[0]["expires_in"] <= 600
    assert json.loads(d.cli("history", "--json").stdout)[-1]["event"] == "block"
    d.cli("unblock", src)
    assert attacker.connect(target, OPEN_PORT) == "connected"
    assert d.blocked() == []
    # a prefix block covers every address in it
    prefix = "198.18.0.2/31" if family == 4 else "2001:db8::2/127"  # not covering the victim's .1
    d.cli("block", prefix)
    assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
    d.cli("unblock", "--all")
    assert attacker.connect(target, OPEN_PORT) == "connected"
    d.cli("rules", "unload")
    assert "nfsentry" not in victim.nft("list tables").stdout
    d.close()


@pytest.mark.parametrize("family", [4, 6])
def test_unblock_with_daemon_forgets_the_source(victim_service, tmp_path, family):
    """Unblocking through the running daemon clears the engine too: with scan_trigger 2 a single
    stray probe after the unblock is counted from zero, not taken as hit 3."""
    lab = victim_service
    victim, attacker = lab["victim"], lab["attacker"]
    target, src = targets(lab, family)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"detection": {"scan_trigger": 2}}).start()
    try:
        attacker.nmap("-sS -Pn --max-retries 0 -p 1-5", target)
        blk = d.wait_event("block")
        net = blk["network"]
        assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
        res = d.cli("unblock", net)
        assert f"unblocked 1: {net}" in res.stdout
        assert attacker.connect(target, OPEN_PORT) == "connected"
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", target)  # one stray probe
        assert attacker.connect(target, OPEN_PORT) == "connected"
        assert len(d.events("block")) == 1
        assert d.blocked() == []
        # manual block through the daemon, then status shows it
        d.cli("block", src, "--for", "1h")
        assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
        st = d.status()
        assert st["running"] and st["blocked"] == 1 and st["backend"] in ("native", "compat")
        d.cli("unblock", "--all", "--ignore")
        assert attacker.connect(target, OPEN_PORT) == "connected"
        assert src in (tmp_path / "nfs" / "ignore").read_text().split()  # persisted in the configured file
        attacker.nmap("-sX -Pn --max-retries 0 -p 1-3", target)  # now ignored: never blocked
        assert attacker.connect(target, OPEN_PORT) == "connected"
        assert len(d.events("block")) == 2  # the automatic one and the manual one
    finally:
        d.close()


def test_status_text_and_never_block_own_address(victim_service, tmp_path):
    lab = victim_service
    victim = lab["victim"]
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        out = d.cli("status").stdout
        assert "is running" in out and "queue backend:" in out and "monitored tcp:" in out
        res = d.cli("block", victim.ip4, check=False)
        assert res.returncode == 2 and "never blocks" in res.stderr
        assert d.blocked() == []
    finally:
        d.close()
    res = d.cli("status", check=False)
    assert res.returncode == 3 and "not running" in res.stdout


def test_replay_gives_the_live_daemons_decisions(victim_service, tmp_path):
    """The same scapy-made packets, sent live from the attacker and replayed from a capture,
    produce the same detections and blocks."""
    lab = victim_service
    victim, attacker = lab["victim"], lab["attacker"]
    cap = tmp_path / "scan.pcap"
    code = textwrap.dedent(f"""
        import time
        from scapy.all import IP, IPv6, TCP, UDP, send, wrpcap, conf
        conf.verb = 0
        pkts = [IP(src={attacker.ip4!r}, dst={victim.ip4!r}) / TCP(sport=50000 + i, dport=p, flags="S") for i, p in enumerate((20, 21, 22, 23, 24))]
        pkts += [IPv6(src={attacker.ip6!r}, dst={victim.ip6!r}) / TCP(sport=51000 + i, dport=p, flags="F") for i, p in enumerate((110, 111, 112, 113))]
        pkts += [IP(src={attacker.ip4!r}, dst={victim.ip4!r}) / UDP(sport=52000, dport=p) for p in (161, 162)]
        out = []
        for p in pkts:
            p.time = time.time()
            send(p)
            out.append(p)
            time.sleep(0.05)
        wrpcap({str(cap)!r}, out)
    """)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"detection": {"scan_trigger": 2}}).start()
    try:
        attacker.python(code, timeout=90)
        d.wait_event("block", where=lambda e: e["network"].startswith("2001:db8::"))
        import time

        time.sleep(0.5)
        live = [(e["event"], e["network"], e["label"], e["port"]) for e in d.events() if e["event"] in ("detection", "block")]
    finally:
        d.close()
    res = victim.run([NFSENTRY, "replay", str(cap), "--json", "--config", str(d.config), "--local", victim.ip4, "--local", victim.ip6])
    replayed = [(e["event"], e["network"], e["label"], e["port"]) for e in json.loads(res.stdout)]
    assert live == replayed, (live, replayed)
    # the attacker shares the victim's /64, so its IPv6 block is narrowed to its own address
    assert ("block", attacker.ip4, "SYN", 22) in live and ("block", attacker.ip6, "FIN", 112) in live
