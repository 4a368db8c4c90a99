"""Spoofed-source abuse, end to end: forged SYN/NULL/XMAS probes "from" addresses nfsentry must
never block (the victim's own addresses, its resolvers, the admin's SSH session, an address added
while running) reach the real daemon and block nothing, while the same probes from an ordinary
address are blocked (so the forged packets do get through). The safety valves against spoofed
floods (block rate limit, blocked-set cap) hold with counters and one warning.
"""

from __future__ import annotations

import os
import time

import pytest
from daemon_util import NFSENTRY, Nfsentry
from scapy.all import IP, TCP, IPv6, raw
from test_reliability_util import send_frames, wait_for

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080
CONTROL4, CONTROL6 = "198.19.77.1", "2001:db8:77::1"  # ordinary (spoofed) sources: must be blocked
NEIGHBOUR6 = "2001:db8::99"  # forged, in the lab's /64 (the victim's own, its peers'): blocked alone


def accept_forged(victim) -> None:
    """Let forged packets reach the input hook: the kernel itself drops an IPv4 packet "from" one
    of its own addresses (martian) unless accept_local is on, and reverse-path filtering would drop
    the off-link control sources. IPv6 has no such checks: there nfsentry's list is all there is."""
    for key in ("all", "default", "eth0"):
        victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.accept_local=1"])
        victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])


def probes(src: str, dst: str, ports=(7, 9, 13)) -> list[bytes]:
    """SYN, NULL and XMAS probes from `src` (the last two react at once in the default config)."""
    out = []
    for port, flags in zip(ports, ("S", "", "FPU")):
        l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
        out.append(raw(l3 / TCP(sport=40000 + port, dport=port, flags=flags)))
    return out


def forge(attacker, victim, sources: list[str], ports=(7, 9, 13)) -> None:
    pkts = []
    for s in sources:
        pkts += probes(s, victim.ip6 if ":" in s else victim.ip4, ports)
    send_frames(attacker, victim, pkts)


def blocked_nets(d) -> set[str]:
    return {b["network"] for b in d.blocked()}


def test_forged_probes_from_own_resolver_and_ssh_addresses_never_block_them(lab, tmp_path, monkeypatch):
    victim, attacker, legit, admin = lab["victim"], lab["attacker"], lab["legit"], lab["ignored"]
    accept_forged(victim)
    victim.tcp_service(OPEN_PORT)
    legit.tcp_service(8443)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {legit.ip4}\nnameserver {legit.ip6}\noptions edns0\n")
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"ignore": {"resolvers": True, "resolv_conf": str(resolv)}})
    # the daemon is started from the admin's SSH session
    monkeypatch.setenv("SSH_CONNECTION", f"{admin.ip4} 50222 {victim.ip4} 22")
    d.start()
    monkeypatch.delenv("SSH_CONNECTION")
    try:
        protected = [victim.ip4, victim.ip6, legit.ip4, legit.ip6, admin.ip4]
        forge(attacker, victim, protected + [CONTROL4, CONTROL6, NEIGHBOUR6])
        d.wait_event("block", CONTROL4)
        d.wait_event("block", "2001:db8:77::/64")
        d.wait_event("block", NEIGHBOUR6)
        time.sleep(0.5)  # every forged packet was queued before the control ones' blocks
        assert blocked_nets(d) == {CONTROL4, "2001:db8:77::/64", NEIGHBOUR6}
        for ev in d.events():
            assert ev.get("src") not in protected and ev.get("network") not in protected, ev
        st = d.status()
        assert st["counters"]["blocks"] == 3 and st["counters"]["errors"] == 0
        assert st["counters"]["blocks_narrowed"] == 1
        # and the protected peers still work both ways
        assert victim.connect(legit.ip4, 8443) == "connected"
        assert victim.connect(legit.ip6, 8443) == "connected"
        assert admin.connect(victim.ip4, OPEN_PORT) == "connected"
        assert victim.connect(victim.ip6, OPEN_PORT) == "connected"
    finally:
        d.close()


def test_cli_never_blocks_the_ssh_session_it_runs_in(lab, tmp_path):
    victim, admin = lab["victim"], lab["ignored"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs")
    env = dict(os.environ, SSH_CONNECTION=f"{admin.ip4} 50222 {victim.ip4} 22")

    def cli_as_admin(*args):
        return victim.run([NFSENTRY, *args, "--config", str(d.config)], check=False, env=env)

    def refused(res, *frag):
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and all(f in res.stderr for f in frag), res.stderr

    # without the daemon: refused before the kernel is touched
    for target in (admin.ip4, "198.18.0.0/24", "198.18.0.0/16"):
        refused(cli_as_admin("block", target), "refusing to block", "SSH session")
        refused(cli_as_admin("block", target, "--force"), "SSH session")
    assert victim.nft("list ruleset").stdout.strip() == ""
    # with the daemon (started outside any SSH session): the CLI's session is still protected
    d.start()
    try:
        refused(cli_as_admin("block", admin.ip4, "--for", "1h"), "SSH session")
        refused(cli_as_admin("block", "198.18.0.0/28", "--force"), "SSH session")
        assert d.blocked() == []
        assert admin.connect(victim.ip4, OPEN_PORT) == "connected"
        # the same address without an SSH session in the environment can be blocked (control)
        assert cli_as_admin("block", lab["attacker"].ip4).returncode == 0
        assert blocked_nets(d) == {lab["attacker"].ip4}
    finally:
        d.close()


def test_daemon_started_from_ssh_never_blocks_that_client_even_on_request(lab, tmp_path, monkeypatch):
    victim, admin = lab["victim"], lab["ignored"]
    d = Nfsentry(victim, tmp_path / "nfs")
    monkeypatch.setenv("SSH_CLIENT", f"{admin.ip6} 50222 22")
    d.start()
    monkeypatch.delenv("SSH_CLIENT")
    try:
        res = d.cli("block", admin.ip6, check=False)  # this CLI has no SSH session: the daemon refuses
        assert res.returncode == 2 and "never blocks" in res.stderr, res.stderr
        admin.nmap("-sX -Pn --max-retries 0 -p 7,9", victim.ip6)  # a real scan from the admin's address
        time.sleep(1)
        assert d.blocked() == [] and d.events("block") == []
    finally:
        d.close()


def test_an_address_added_while_running_is_protected_after_the_refresh(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    accept_forged(victim)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"ignore": {"refresh_interval": "1s"}})
    d.start()
    try:
        before = d.status()
        new4, new6 = "198.18.0.77", "2001:db8::77"
        victim.run(["ip", "addr", "add", f"{new4}/24", "dev", "eth0"])
        victim.run(["ip", "addr", "add", f"{new6}/64", "dev", "eth0", "nodad"])
        wait_for(lambda: d.status()["never_block"] == before["never_block"] + 2, timeout=60, what="the address refresh")
        assert new4 in victim.nft("list set inet nfsentry ignore4").stdout
        assert new6 in victim.nft("list set inet nfsentry ignore6").stdout
        forge(attacker, victim, [new4, new6, CONTROL4])
        d.wait_event("block", CONTROL4)
        time.sleep(0.5)
        assert blocked_nets(d) == {CONTROL4}
        assert not d.events(src=new4) and not d.events(src=new6)
        assert d.status()["counters"]["never_block_refreshes"] > before["counters"]["never_block_refreshes"]
    finally:
        d.close()


@pytest.mark.parametrize(
    "key, value, counter, warning",
    [
        ("max_blocks_per_minute", 5, "blocks_rate_limited", "block rate limit (5/min) reached"),
        ("max_blocked", 4, "blocks_capped", "blocked-set cap (4) reached"),
    ],
)
def test_safety_valves_bound_what_a_spoofed_scan_can_block(lab, tmp_path, key, value, counter, warning):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    accept_forged(victim)
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"response": {key: value}})
    d.start()
    try:
        sources = [f"198.19.50.{i}" for i in range(1, 31)] + [f"2001:db8:50:{i:x}::1" for i in range(1, 11)]
        forge(attacker, victim, sources, ports=(7,))  # one SYN per source
        st = wait_for(
            lambda: (s := d.status())["counters"][counter] + s["counters"]["blocks"] >= len(sources) and s,
            timeout=60,
            what="every forged source handled",
        )
        # the kernel-side block added forged sources too: those the valve refused are withdrawn
        # within the daemon's next duties
        wait_for(lambda: d.status()["blocked"] == value, timeout=20, what="the refused kernel-side blocks withdrawn")
        assert st["counters"]["blocks"] == value
        assert st["counters"][counter] == len(sources) - value
        assert len(d.blocked()) == value
        assert f"{len(sources) - value} by {key}" in d.cli("status").stdout
        lines = [l for l in d.stderr_lines if warning in l]
        assert len(lines) == 1, d.stderr_lines[-20:]
        assert legit.connect(victim.ip4, OPEN_PORT) == "connected"
    finally:
        d.close()


def test_neighbours_narrowed_out_of_a_protected_64_escalate_each_on_their_own(lab, tmp_path):
    """Issue 16 row 14: several addresses of one IPv6 /64 that holds a never-block address (here the
    victim's own) are each blocked alone; each is a first offence (1 h), not 1 h, 2 h, 4 h ... as
    when they shared the /64's offence count."""
    victim, attacker = lab["victim"], lab["attacker"]
    accept_forged(victim)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        neighbours = ["2001:db8::99", "2001:db8::9a", "2001:db8::9b"]
        for n in neighbours:
            forge(attacker, victim, [n])
            ev = d.wait_event("block", n, timeout=60)
            assert ev["network"] == n and ev["offences"] == 1 and ev["duration"] == 3600, ev
        assert {n for n in neighbours} <= blocked_nets(d)
        assert d.status()["counters"]["blocks_narrowed"] == 3
    finally:
        d.close()
