"""What reaches the queues: counters and real NetfilterQueue listeners in the victim.

Monitored ports are 1-1023 (plus PortSentry's trojan ports); the victim serves TCP 222 and UDP 225
and leaves 223/224 unused. Only probes of unused monitored ports may be queued (queue 0); FTP
control segments with payload go to queue 1.
"""

from __future__ import annotations

import time

import pytest
from lab import PYTHON
from test_nft_support import connect_many, expected_backend, nft_py, start_listener, stop_listener, udp_send

pytestmark = pytest.mark.e2e

OPEN_TCP, UNUSED_TCP, UNUSED_UDP, OPEN_UDP = 222, 223, 224, 225


BROADCAST = """
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(b"bcast", ("198.18.0.255", port))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.sendto(b"mcast", ("ff02::1%eth0", port))
"""


def test_open_services_are_never_queued_and_unused_monitored_ports_are(lab):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    st = nft_py(victim, "n.load(RulesetSpec()); out = n.status(sizes=False)")
    assert st["backend"] == expected_backend(st["backend"]) and st["inuse"] == "socket", st
    # Services started after the ruleset loaded.
    victim.tcp_service(OPEN_TCP)
    victim.udp_service(OPEN_UDP)
    both = [(victim.ip4, OPEN_TCP), (victim.ip6, OPEN_TCP)]
    assert set(connect_many(legit, both).values()) == {"connected"}
    assert legit.udp_query(victim.ip4, OPEN_UDP) == b"ping" and legit.udp_query(victim.ip6, OPEN_UDP) == b"ping"
    c = nft_py(victim, "out = n.counters()")
    assert c["queued_tcp"] == 0 and c["queued_udp"] == 0, c
    # Probes of unused monitored ports are queued (and pass: nobody listens, `bypass`).
    assert set(connect_many(attacker, [(victim.ip4, UNUSED_TCP), (victim.ip6, UNUSED_TCP)]).values()) == {"refused"}
    udp_send(attacker, [(victim.ip4, UNUSED_UDP), (victim.ip6, UNUSED_UDP)])
    deadline = time.monotonic() + 30  # the datagrams are counted when the victim's side runs
    while (c := nft_py(victim, "out = n.counters()"))["queued_udp"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c["queued_tcp"] == 2 and c["queued_udp"] == 2, c
    # Broadcasts, multicast and unmonitored ports never are (a witness table proves the
    # broadcast and the multicast datagram did arrive).
    victim.nft(
        ["-f", "-"],
        stdin=f"table inet witness {{\n\tchain c {{\n\t\ttype filter hook input priority 0;\n"
        f"\t\tudp dport {UNUSED_UDP} fib daddr type {{ broadcast, multicast }} counter\n\t}}\n}}\n",
    )
    attacker.run([PYTHON, "-c", BROADCAST, str(UNUSED_UDP)])
    deadline = time.monotonic() + 30
    while "packets 2 " not in victim.nft("list chain inet witness c").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "packets 2 " in victim.nft("list chain inet witness c").stdout
    assert set(connect_many(attacker, [(victim.ip4, 40000)]).values()) == {"refused"}
    time.sleep(0.2)
    assert nft_py(victim, "out = n.counters()['queued']") == 4


def test_a_netfilterqueue_listener_sees_scan_syns_but_not_connections_to_open_ports(lab):
    victim, attacker = lab["victim"], lab["attacker"]
    st = nft_py(victim, "n.load(RulesetSpec()); out = n.status(sizes=False)")
    victim.tcp_service(OPEN_TCP)
    listener = start_listener(victim, 0)
    for target in (victim.ip4, victim.ip6):
        res = attacker.nmap(f"-sS -Pn -p {OPEN_TCP},{UNUSED_TCP} --max-retries 1", target)
        assert f"{OPEN_TCP}/tcp open" in res.stdout and f"{UNUSED_TCP}/tcp closed" in res.stdout, res.stdout + res.stderr
    assert set(connect_many(attacker, [(victim.ip4, OPEN_TCP), (victim.ip6, OPEN_TCP)]).values()) == {"connected"}
    seen = stop_listener(listener)
    print(f"\nbackend {st['backend']}: queue 0 saw {[(p['src'], p['dport'], p['flags']) for p in seen]}")
    assert {(p["src"], p["dport"]) for p in seen} == {(attacker.ip4, UNUSED_TCP), (attacker.ip6, UNUSED_TCP)}
    assert all(p["flags"] == 0x02 and p["proto"] == 6 for p in seen), seen
    if st["backend"] == "compat":  # the packets carry nfsentry's scan mark
        assert all(p["mark"] & 0xFFFF0003 == 0x4E460001 for p in seen), seen
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == len(seen)


FTP_CLIENT = """
import socket, sys
for addr in sys.argv[1:]:
    s = socket.create_connection((addr, 21), timeout=3)
    banner = s.recv(100)
    s.sendall(b"USER anonymous\\r\\n")
    echo = s.recv(100)
    s.close()
    print(addr, banner, echo)
"""


def test_ftp_control_segments_with_payload_go_to_the_ftp_queue_both_ways(lab):
    victim, legit = lab["victim"], lab["legit"]
    nft_py(victim, "n.load(RulesetSpec())")
    victim.tcp_service(21, banner="220 nfsentry test")
    ftpq, scanq = start_listener(victim, 1), start_listener(victim, 0)
    legit.run([PYTHON, "-c", FTP_CLIENT, victim.ip4, victim.ip6])
    seen, scans = stop_listener(ftpq), stop_listener(scanq)
    assert scans == []  # port 21 has a listener: never a scan
    # Only payload-carrying segments (no SYN, pure ACK or bare FIN): banner out, command in, echo
    # out, for each family (a slow machine may add a retransmission of one of them).
    assert all(p["payload"] > 0 for p in seen), seen
    got = {(p["family"], p["sport"] == 21, p["payload"]) for p in seen}
    banner, cmd = len("220 nfsentry test\n"), len("USER anonymous\r\n")
    assert got == {(4, True, banner), (4, False, cmd), (4, True, cmd), (6, True, banner), (6, False, cmd), (6, True, cmd)}, seen
    assert nft_py(victim, "out = n.counters()['queued_ftp']") == len(seen)


def test_ftp_expectations_let_expected_data_connections_through(lab):
    """inuse=off: only the FTP tracker's expectations exempt a port (the FTP tests' setting)."""
    victim, attacker = lab["victim"], lab["attacker"]
    nft_py(
        victim,
        """
        n.load(RulesetSpec(inuse='off', tcp_ports=[(1, 1023), (5000, 5010)]))
        n.expect_ftp('198.18.0.2', '198.18.0.1', 5001, 30)
        n.expect_ftp('2001:db8::2', '2001:db8::1', 5001, 30)
        out = n.status(sizes=True)
    """,
    )
    assert nft_py(victim, "out = n.status()['sets']")["ftp_expect4"] == 1
    connect_many(attacker, [(victim.ip4, 5001), (victim.ip6, 5001)])
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 0
    connect_many(attacker, [(victim.ip4, 5002), (victim.ip6, 5002)])
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 2
    # With inuse=off even an open port is queued: the tracker alone carries data ports.
    victim.tcp_service(5003)
    connect_many(attacker, [(victim.ip4, 5003)])
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 3


def test_polled_in_use_ports_are_left_out_of_the_monitored_sets(lab):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_TCP)
    victim.udp_service(OPEN_UDP)
    out = nft_py(
        victim,
        f"""
        import socket
        # (a 1 s recent_service_grace: a stopped service's port is monitored again 1 s after the poller last saw it)
        n.load(RulesetSpec(inuse='poll', tcp_ports=[(1, 1023)], udp_ports=[(1, 1023)], recent_service_grace=1), poll_interval=0.2)
        first = n.status()
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('0.0.0.0', {UNUSED_TCP})); s.listen(4)      # a service started after load
        import subprocess
        def tcp_set(want, seconds=25):   # the poller (every 0.2 s) gets there; a busy machine takes longer
            end = time.monotonic() + seconds
            while True:
                text = subprocess.run(['nft', 'list', 'set', 'inet', 'nfsentry', 'tcp_ports'], capture_output=True, text=True).stdout
                if want in text or time.monotonic() > end:
                    return text
                time.sleep(0.1)
        listing = tcp_set("1-{OPEN_TCP - 1}, {UNUSED_TCP + 1}-1023")
        udp = subprocess.run(['nft', 'list', 'set', 'inet', 'nfsentry', 'udp_ports'], capture_output=True, text=True).stdout
        s.close()
        again = tcp_set("1-{OPEN_TCP - 1}, {OPEN_TCP + 1}-1023")
        out = dict(inuse=first['inuse'], tcp=listing, udp=udp, again=again)
    """,
    )
    assert out["inuse"] == "poll"
    assert f"1-{OPEN_TCP - 1}, {UNUSED_TCP + 1}-1023" in out["tcp"], out["tcp"]  # 222 and 223 in use
    assert f"1-{OPEN_UDP - 1}, {OPEN_UDP + 1}-1023" in out["udp"], out["udp"]
    assert f"1-{OPEN_TCP - 1}, {OPEN_TCP + 1}-1023" in out["again"], out["again"]
    assert set(connect_many(attacker, [(victim.ip4, OPEN_TCP), (victim.ip6, OPEN_TCP)]).values()) == {"connected"}
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 0
