"""nfsentry.nft.inuse: ports in use from /proc/net (no kernel changes, no root)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsentry.nft import inuse
from nfsentry.nft.spec import _ports

PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 010012C6:0016 020012C6:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""


PROC_UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
  2: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0 0
"""


def test_proc_net_parsing(tmp_path):
    assert inuse.parse_proc_net(PROC_TCP, True) == {22, 631}
    assert inuse.parse_proc_net(PROC_TCP, False) == {22, 631}
    assert inuse.parse_proc_net(PROC_UDP, False) == {53}
    (tmp_path / "tcp").write_text(PROC_TCP)
    (tmp_path / "udp6").write_text(PROC_UDP)  # tcp6 and udp missing: no IPv6 / vanished
    assert inuse.listening_ports(tmp_path) == ({22, 631}, {53})


def test_listening_ports_here_returns_sets():
    tcp, udp = inuse.listening_ports()
    assert isinstance(tcp, set) and isinstance(udp, set)


@settings(deadline=None)  # timing is not the point; a busy machine can stall one cheap example
@given(st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 300)), max_size=8), st.sets(st.integers(1, 2400), max_size=30))
def test_subtract_ports_is_set_difference(pairs, holes):
    ranges = _ports([(lo, min(65535, lo + w)) for lo, w in pairs], "tcp_ports")
    got = inuse.subtract_ports(ranges, holes)
    expect = {p for lo, hi in ranges for p in range(lo, hi + 1)} - holes
    assert {p for lo, hi in got for p in range(lo, hi + 1)} == expect
    assert all(lo <= hi for lo, hi in got) and got == sorted(got)
    assert inuse.ports_to_ranges(expect) == _ports(got, "x") if got else not expect


def test_recent_ports_keep_a_port_for_the_grace_after_its_socket_is_gone():
    r = inuse.RecentPorts(grace=10)
    assert r.seen({80, 22}, {53}, now=100.0) == ({22, 80}, {53})
    assert r.seen({22}, set(), now=105.0) == ({22, 80}, {53})  # 80 and 53 stopped 5 s ago: still exempt
    assert r.seen({22}, set(), now=110.0) == ({22, 80}, {53})  # exactly the grace
    assert r.seen({22}, set(), now=110.5) == ({22}, set())  # past it: monitored again
    assert r.seen({22, 80}, set(), now=111.0) == ({22, 80}, set())  # back: counted from now
    off = inuse.RecentPorts(grace=0)
    assert off.seen({80}, {53}, 1.0) == ({80}, {53}) and off.seen(set(), set(), 1.5) == (set(), set())
