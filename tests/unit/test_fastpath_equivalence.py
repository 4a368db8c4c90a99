"""The compiled fast path (nfsentry/core/_fastpath.c) decides exactly as the Python body, and does decide.

A compiled engine and a pure-Python engine (same configuration) get the same generated packet
sequences (both families, TCP with every flag byte, UDP, IP options, IPv6 extension headers,
fragments, truncated and mutated bytes, ignored sources, FTP expectations, clocks that jump back
and forward, expire/forget/mark_blocked in between); every result and the whole state must agree.
The package build always compiles the module: a missing one fails here (NFSENTRY_PURE_PYTHON=1
skips, for running the suite on pure Python on purpose).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inet_checksum import fill_checksum

from nfsentry.core.addrs import PrefixSet
from nfsentry.core.engine import Engine, EngineConfig
from nfsentry.core.ftp import Expectation, ExpectationTable

if os.environ.get("NFSENTRY_PURE_PYTHON"):
    pytest.skip("NFSENTRY_PURE_PYTHON=1: the compiled fast path is disabled on purpose", allow_module_level=True)

import nfsentry.core._fastpath  # noqa: E402,F401  (must be built: fail, not skip, when it is not)

DST4 = bytes([198, 18, 0, 1])
DST6 = bytes.fromhex("20010db8000000000000000000000001")
SOURCES = [bytes(map(int, a.split("."))) for a in ("198.18.0.2", "198.18.0.3", "198.18.1.7", "198.18.0.1", "10.1.2.3")] + [
    bytes.fromhex(h)
    for h in (
        "20010db8000100000000000000000001",
        "20010db8000100000000000000000002",
        "20010db8000200000000000000000005",
        "20010db8000000000000000000000001",
        "20010db800ff00000000000000000009",
    )
]
IGNORE = ["198.18.0.1", "198.18.1.0/24", "2001:db8::1", "2001:db8:ff::/48", "127.0.0.0/8", "::1"]


def tcp(sport: int, dport: int, flags: int, opts: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, ((20 + len(opts)) // 4) << 4, flags, 1024, 0, 0) + opts


def packet(src: bytes, kind: str, flags: int, dport: int, shape: str) -> bytes:
    l4 = tcp(40000, dport, flags) if kind == "tcp" else struct.pack("!HHHH", 5000, dport, 12, 0) + b"abcd"
    proto = 6 if kind == "tcp" else 17
    if len(src) == 4:
        if shape == "ipopts":  # IHL 6: a record-route-ish option
            return fill_checksum(
                struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(l4), 0, 0, 64, proto, 0, src, DST4) + b"\x07\x04\x00\x00" + l4
            )
        frag = 0x2000 if shape == "first-frag" else 0x0010 if shape == "frag" else 0x4000
        pkt = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, frag, 64, proto, 0, src, DST4) + l4
    else:
        if shape == "ipopts":  # a hop-by-hop header before the transport
            return fill_checksum(
                struct.pack("!IHBB16s16s", 6 << 28, 8 + len(l4), 0, 64, src, DST6) + bytes([proto, 0, 1, 4, 0, 0, 0, 0]) + l4
            )
        if shape in ("frag", "first-frag"):
            fo = 0x0010 if shape == "frag" else 0x0001
            return fill_checksum(
                struct.pack("!IHBB16s16s", 6 << 28, 8 + len(l4), 44, 64, src, DST6) + struct.pack("!BBHI", proto, 0, fo, 7) + l4
            )
        pkt = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src, DST6) + l4
    pkt = fill_checksum(pkt)
    if shape == "truncated":
        return pkt[: len(pkt) - 5]
    if shape == "long":
        return pkt + b"trailing"
    return pkt


def norm(r):
    if isinstance(r, int):
        return ("lean", r)
    return (
        "decision",
        int(r.action),
        r.key,
        r.prefixlen,
        r.proto,
        r.label,
        r.flags,
        r.labels,
        r.port_keys,
        r.hits,
        r.duration,
        r.offences,
        r.reason,
        r.network,
        r.src,
        r.dport,
    )


def state(e: Engine):
    sts = [
        (k, s.hits, s.ports if s.ports.__class__ is int else list(s.ports.items()), s.labels, s.protos, s.first, s.last, s.seen)
        for k, s in e._states.items()
    ]
    stats = {k: v for k, v in e.stats.items() if not k.startswith("compiled_")}
    return sts, list(e._clock), list(e._blocked.items()), list(e._offenders.items()), sorted(e._block_heap), stats


configs = st.builds(
    EngineConfig,
    scan_trigger=st.sampled_from([-1, 0, 1, 3, 50]),
    window_ports=st.sampled_from([0, 1, 2, 3, 5]),
    window_seconds=st.sampled_from([1.0, 5.0, 30.0]),
    instant_labels=st.sampled_from(
        [
            frozenset(),
            frozenset({"NULL", "XMAS", "FULL-XMAS", "UNKNOWN", "MALFORMED"}),
            frozenset({"SYN", "IPOPTS"}),
            frozenset({"UDP", "FIN"}),
        ]
    ),
    respond=st.sampled_from([{"tcp": "block", "udp": "block"}, {"tcp": "log", "udp": "block"}, {"tcp": "block", "udp": "log"}]),
    block_duration=st.sampled_from([0.0, 2.0, 3600.0]),
    escalation_factor=st.sampled_from([1.0, 2.0]),
    ipv6_prefix=st.sampled_from([48, 64, 100, 128]),
    max_sources=st.integers(1, 6),
    max_ports_per_source=st.integers(1, 4),
    max_offenders=st.integers(1, 6),
    backscatter_guard=st.booleans(),
)
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("pkt"),
            st.integers(0, len(SOURCES) - 1),
            st.sampled_from(["tcp", "tcp", "udp"]),
            st.one_of(st.sampled_from([0x02, 0x02, 0x01, 0x00, 0x29, 0x3F, 0x10, 0x11, 0x12, 0x14, 0x18, 0xC2]), st.integers(0, 255)),
            st.sampled_from([7, 7, 22, 23, 53, 2121]),
            st.sampled_from(["plain"] * 6 + ["ipopts", "frag", "first-frag", "truncated", "long"]),
            st.sampled_from([0.0, 0.001, 0.5, 0.5, 3.0, 40.0, -2.0]),
            st.one_of(st.none(), st.tuples(st.integers(0, 200), st.integers(0, 255))),
        ),
        st.tuples(st.just("expire"), st.sampled_from([0.0, 10.0])),
        st.tuples(st.just("forget"), st.integers(0, len(SOURCES) - 1)),
        st.tuples(st.just("mark"), st.integers(0, len(SOURCES) - 1), st.sampled_from([0.0, 5.0, 1e9])),
    ),
    min_size=1,
    max_size=60,
)


def run_both(cfg: EngineConfig, sequence, with_expectation: bool):
    engines = []
    for compiled in (True, False):
        exp = ExpectationTable()
        if with_expectation:
            exp.add(Expectation(family=4, peer=SOURCES[0], addr=DST4, port=2121, expires=1e12, mode="passive"))
        e = Engine(cfg, ignore=PrefixSet(IGNORE), expectations=exp, compiled=compiled)
        assert e.compiled is compiled
        engines.append(e)
    now = 1000.0
    for op in sequence:
        if op[0] == "pkt":
            _, si, kind, flags, dport, shape, dt, mutation = op
            now += dt
            raw = packet(SOURCES[si], kind, flags, dport, shape)
            if mutation is not None:
                b = bytearray(raw)
                b[mutation[0] % len(b)] = mutation[1]
                raw = bytes(b)
            got = [norm(e.process_raw(raw, now)) for e in engines]
            assert got[0] == got[1], (op, got)
        elif op[0] == "expire":
            assert engines[0].expire(now + op[1]) == engines[1].expire(now + op[1])
        elif op[0] == "forget":
            src = SOURCES[op[1]]
            assert engines[0].forget(src if len(src) == 4 else src) == engines[1].forget(src)
        else:
            from nfsentry.core.addrs import network_text

            net = network_text(SOURCES[op[1]])
            assert engines[0].mark_blocked(net, now + op[2] if op[2] else 0) == engines[1].mark_blocked(net, now + op[2] if op[2] else 0)
        assert state(engines[0]) == state(engines[1]), op
    return engines


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, sequence=ops, with_expectation=st.booleans())
def test_compiled_and_python_agree_decision_by_decision_and_state_by_state(cfg, sequence, with_expectation):
    run_both(cfg, sequence, with_expectation)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda b, i, v: b[: i % (len(b) + 1)] + bytes([v]) + b[i % (len(b) + 1) + 1 :],
            st.sampled_from([packet(s, k, 2, 7, "plain") for s in SOURCES for k in ("tcp", "udp")]),
            st.integers(0, 80),
            st.integers(0, 255),
        ),
    ),
    wrap=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_any_bytes_give_the_same_result_and_never_raise(data, wrap):
    a = Engine(EngineConfig(scan_trigger=2), ignore=PrefixSet(IGNORE), compiled=True)
    b = Engine(EngineConfig(scan_trigger=2), ignore=PrefixSet(IGNORE), compiled=False)
    for now in (1.0, 1.5, 2.0):
        assert norm(a.process_raw(wrap(data), now)) == norm(b.process_raw(data, now))
    assert state(a) == state(b)


# == the compiled path really decides ===================================================================
def test_a_flood_from_one_tracked_source_is_decided_in_c():
    e = Engine(EngineConfig(scan_trigger=10**6), ignore=PrefixSet(IGNORE), expectations=ExpectationTable(), compiled=True)
    raw = packet(SOURCES[0], "tcp", 0x02, 7, "plain")
    results = {e.process_raw(raw, 1000.0 + i * 1e-4) for i in range(1000)}
    assert results == {2 << 8 | 6}
    assert e.process_raw.handled == 1000 and e.process_raw.fallbacks == 0
    assert e.source("198.18.0.2")["hits"] == 1000


def test_new_sources_and_blocked_sources_are_decided_in_c_reactions_and_odd_packets_are_not():
    e = Engine(EngineConfig(scan_trigger=3, max_sources=100), ignore=PrefixSet(IGNORE), compiled=True)
    fast = e.process_raw
    for i in range(1000):  # 1000 new IPv4 sources (over the cap: evictions through _evict)
        assert fast(packet(bytes([10, 0, i >> 8, i & 255]), "udp", 0, 53, "plain"), 1.0) == 2 << 8 | 17
    assert fast.handled == 1000 and fast.fallbacks == 0 and e.stats["evicted"] == 900
    src = packet(SOURCES[5], "tcp", 0x02, 7, "plain")
    for i in range(3):
        assert fast(src, 2.0 + i) == 2 << 8 | 6
    d = fast(src, 6.0)  # the 4th hit reacts: a Decision, made by the Python body
    assert d.action == 4 and d.network == "2001:db8:1::/64" and fast.fallbacks == 1
    assert fast(packet(SOURCES[6], "tcp", 0x02, 9, "plain"), 7.0) == 5 << 8 | 6  # same /64: DROP, in C
    assert fast.fallbacks == 1
    before = fast.fallbacks
    assert fast(packet(SOURCES[1], "tcp", 0x02, 7, "ipopts"), 8.0) == 2 << 8 | 6  # options: Python
    assert fast(packet(SOURCES[2], "tcp", 0x02, 7, "plain"), 8.0) == 1 << 8 | 6  # ignored /24: Python
    assert fast(packet(SOURCES[3], "tcp", 0x02, 7, "plain"), 8.0) == 1 << 8 | 6  # own address: Python
    assert fast.fallbacks == before + 3
    assert e.stats["compiled_handled"] == fast.handled and e.stats["compiled_fallbacks"] == fast.fallbacks


def test_the_compiled_path_follows_the_ignore_set_rebuilt_in_place_replaced_or_not_a_prefixset():
    """The C code keeps its own copy of the ignore set's tables (read once per PrefixSet.version):
    a set rebuilt in place, a new set, None and a duck-typed set each decide the next packet."""
    e = Engine(EngineConfig(scan_trigger=10**6), ignore=PrefixSet(IGNORE), compiled=True)
    fast = e.process_raw
    v4, v6 = packet(SOURCES[0], "tcp", 0x02, 7, "plain"), packet(SOURCES[5], "udp", 0, 53, "plain")
    count4, count6, ign4, ign6 = 2 << 8 | 6, 2 << 8 | 17, 1 << 8 | 6, 1 << 8 | 17
    assert (fast(v4, 1.0), fast(v6, 1.0)) == (count4, count6) and fast.fallbacks == 0
    e.ignore.add("198.18.0.2")  # rebuilt in place: an exact address
    e.ignore.add("2001:db8:1::/64")  # and a network behind the IPv6 prefilter
    assert (fast(v4, 2.0), fast(v6, 2.0)) == (ign4, ign6)
    e.ignore = PrefixSet(["10.0.0.0/8"])  # replaced: neither is ignored any more
    assert (fast(v4, 3.0), fast(v6, 3.0)) == (count4, count6)
    e.ignore.add("198.0.0.0/8")  # first octet 198: through the prefilter bitmap to the networks
    assert fast(v4, 4.0) == ign4
    e.ignore = None
    assert fast(v4, 5.0) == count4

    class Listed:  # not a PrefixSet (no version): the Python body decides, with its rules
        exact = frozenset()
        pre4 = frozenset({198})
        pre6 = None
        pre6_bytes = 4

        def contains(self, addr):
            return addr == SOURCES[0]

    e.ignore = Listed()
    before = fast.fallbacks
    assert (fast(v4, 6.0), fast(v6, 6.0)) == (ign4, count6) and fast.fallbacks == before + 2
    assert e.source("198.18.0.2")["hits"] == 3 and e.stats["ignore"] == 4


def test_the_compiled_path_sees_the_daemons_locked_expectation_table_fill_and_empty():
    """The daemon's table (LockedExpectations: its ``pending`` slot is read without a lookup):
    TCP from any source goes to the Python body while an expectation is pending, not before or after."""
    from nfsentry.daemon.ftpqueue import LockedExpectations

    table = ExpectationTable()
    e = Engine(EngineConfig(scan_trigger=10**6), ignore=PrefixSet(IGNORE), expectations=LockedExpectations(table), compiled=True)
    fast = e.process_raw
    syn, udp = packet(SOURCES[0], "tcp", 0x02, 7, "plain"), packet(SOURCES[0], "udp", 0, 53, "plain")
    assert fast(syn, 1.0) == 2 << 8 | 6 and fast.fallbacks == 0
    table.add(Expectation(family=4, peer=SOURCES[1], addr=DST4, port=2121, expires=100.0, mode="passive"))
    assert fast(syn, 2.0) == 2 << 8 | 6 and fast.fallbacks == 1  # pending: Python matches (no match here)
    assert fast(udp, 2.0) == 2 << 8 | 17 and fast.fallbacks == 1  # UDP never has expectations
    table.expire(1000.0)
    assert fast(syn, 3.0) == 2 << 8 | 6 and fast.fallbacks == 1


def test_pure_python_is_selectable():
    e = Engine(compiled=False)
    assert e.compiled is False and not hasattr(e.process_raw, "handled") and e.stats["compiled_handled"] == 0
    assert Engine().compiled is True
