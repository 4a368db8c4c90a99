"""The compiled fast path (nfsentry/core/_fastpath.c) against the pure-Python engine.

The contract: for ANY sequence of packets, clock values and maintenance calls, an engine with the
compiled ``process_raw`` (``compiled=True``) and a pure-Python one (``compiled=False``) with the
same configuration return identical results and end in identical state. The differential tests
below run both side by side and compare every result (lean ints, or Decisions field by field and
reason text) and, after every step, the whole state: tracked sources (every attribute, floats bit
for bit), table and CLOCK order, blocks, offenders, the block heap, the counters.

Other tests prove the C code really decides packets (``handled``), hands the rest to Python
(``fallbacks``), survives any bytes, and does not leak.

nfsentry's build always compiles the module, so a missing module FAILS these tests; only
``NFSENTRY_PURE_PYTHON`` (set to anything non-empty, as for the engine) skips them.
"""

from __future__ import annotations

import gc
import ipaddress
import math
import os
import random
import struct
import tracemalloc
import types
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("NFSENTRY_PURE_PYTHON"):
    pytest.skip("NFSENTRY_PURE_PYTHON is set: the compiled fast path is disabled on purpose", allow_module_level=True)

from inet_checksum import fill_checksum  # noqa: E402

import nfsentry.core.engine as engine_mod  # noqa: E402
from nfsentry.core.addrs import PrefixSet  # noqa: E402
from nfsentry.core.engine import Action, Decision, Engine, EngineConfig  # noqa: E402
from nfsentry.core.ftp import Expectation, ExpectationTable  # noqa: E402
from nfsentry.core.packet import Packet, decode  # noqa: E402

try:
    import nfsentry.core._fastpath as fastpath

    _IMPORT_ERROR = None
except ImportError as exc:  # the tests must fail, not skip: the build always compiles it
    fastpath = None
    _IMPORT_ERROR = exc


@pytest.fixture(autouse=True, scope="module")
def _require_fastpath():
    if fastpath is None:
        pytest.fail(
            f"nfsentry._fastpath is not built ({_IMPORT_ERROR}); nfsentry's build always "
            "compiles it (pip install -e . / make). Set NFSENTRY_PURE_PYTHON=1 to skip."
        )


COUNT, ALERT, BLOCK, DROP, IGNORE, PASS = (Action.COUNT, Action.ALERT, Action.BLOCK, Action.DROP, Action.IGNORE, Action.PASS)
HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --- packets, built with struct -----------------------------------------------------------------------

DST4, DST4B = ip("198.18.0.1"), ip("198.18.0.77")
DST6, DST6B = ip("2001:db8::1"), ip("2001:db8:ffff::2")
V4_SOURCES = [
    ip(a)
    for a in (
        "198.18.0.2",
        "198.18.0.3",
        "10.0.0.1",
        "10.9.9.9",
        "192.0.2.5",
        "192.0.2.200",
        "203.0.113.7",
        "0.0.0.0",
        "255.255.255.255",
        "100.64.0.1",
    )
]
V6_SOURCES = [
    ip(a)
    for a in (
        "2001:db8:1::1",
        "2001:db8:1::ffff:2",
        "2001:db8:1:0:8000::3",
        "2001:db8:1:0:ffff:ffff:ffff:ffff",
        "2001:db8:1:1::1",
        "2001:db8:1:ff00::1",
        "2001:db8:99::5",
        "2001:db8:99:ffff::1",
        "2001:db8:2::1",
        "2001:db8:2::2",
        "::",
        "fe80::1",
        "::ffff:198.18.0.2",
        "2001:d00::7",
        "2001:db8:1::f000:1",
        "2001:db8:1::f800:1",
        "2001:db8:1::e000:1",
        "8000::1",
    )
]  # /100 edges
IGNORE_POOL = (
    "192.0.2.0/24",
    "203.0.113.7",
    "10.0.0.9",
    "198.18.0.3/32",
    "0.0.0.0/1",
    "100.64.0.0/10",
    "2001:db8:99::/48",
    "2001:db8:2::1",
    "2001:db8:1::ffff:2/128",
    "2001:d00::/24",
    "fe80::/10",
    "c000::/3",
    "2001:db8:1::/64",
    "0.0.0.0/0",
    "::/0",
    "2001:db8:1:0:8000::/65",
)
SPORTS = (40000, 40001, 20, 0, 65535)
DPORTS = (22, 23, 80, 2121, 21, 0, 65535, 161, 53, 443)
COMMON_FLAGS = (0x02, 0x02, 0x02, 0x12, 0x04, 0x14, 0x01, 0x29, 0x3F, 0x00, 0x18, 0x10, 0x03, 0x11, 0xC2, 0x30)

_IP4 = struct.Struct("!BBHHHBBH4s4s").pack
_IP6 = struct.Struct("!IHBB16s16s").pack


def tcp_seg(sport=40000, dport=22, flags=0x02, opts=b"", doff=None, payload=b"", window=1024) -> bytes:
    if doff is None:
        doff = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, (doff & 15) << 4, flags, window, 0, 0) + opts + payload


def udp_dgram(sport=5000, dport=161, payload=b"", ulen_delta=0) -> bytes:
    return struct.pack("!HHHH", sport, dport, max(0, min(0xFFFF, 8 + len(payload) + ulen_delta)), 0) + payload


def ip4(src, dst, proto, l4, options=b"", frag=0, tot_delta=0, first=None) -> bytes:
    ihl = 5 + len(options) // 4
    tot = max(0, min(0xFFFF, 4 * ihl + len(l4) + tot_delta))
    first = (0x40 | ihl) if first is None else first
    return fill_checksum(_IP4(first, 0, tot, 1, frag, 64, proto, 0, src, dst) + options + l4)


def ip6(src, dst, nh, l4, exts=(), plen_delta=0, first=0x60) -> bytes:
    chain = b""
    nxt = nh
    for ext in reversed(exts):  # build from the last header back to the first
        kind = ext[0]
        if kind in (0, 60):
            h = bytes([nxt, 0, 1, 4, 0, 0, 0, 0])
        elif kind == 43:
            h = bytes([nxt, 0, ext[1], 1, 0, 0, 0, 0])
        elif kind == 44:
            h = bytes([nxt, 0]) + struct.pack("!HI", ext[1], 7)
        elif kind == 51:
            h = bytes([nxt, 2, 0, 0]) + bytes(12)
        else:  # a length byte that runs past the packet
            h = bytes([nxt, 200, 0, 0, 0, 0, 0, 0])
            kind = 60
        chain = h + chain
        nxt = kind
    body = chain + l4
    plen = max(0, min(0xFFFF, len(body) + plen_delta))
    return fill_checksum(_IP6(first << 24, plen, nxt, 64, src, dst) + body)


V4_OPTIONS = (
    b"\x01\x01\x01\x00",  # NOP padding only
    b"\x07\x07\x04\x00\x00\x00\x00\x00",  # RR
    b"\x83\x07\x04\xc0\x00\x02\x01\x00",  # LSRR
    b"\x44\x04\x05\x00",  # TS (short)
    b"\x07\x01\x00\x00",  # bad length
    b"\x07\x30\x00\x00",  # runs past the header
    b"\x94\x04\x00\x00",  # router alert (opt-148)
)
TCP_OPTIONS = (b"", b"", b"", b"\x02\x04\x05\xb4", b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07", b"\x01\x01\x01")


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """Truncate, overwrite a few bytes, append trailing bytes (each sometimes)."""
    data = bytearray(data)
    if draw(st.integers(0, 15)) == 0 and data:
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 11)) == 0 and data:
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 12)) == 0:
        data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@st.composite
def packets(draw) -> bytes:
    """Mostly well-formed TCP/UDP over IPv4/IPv6 (the fast shapes), plus every slow shape: IP
    options, extension headers, fragments, other protocols, bad lengths, garbage."""
    kind = draw(st.sampled_from(("v4",) * 5 + ("v6",) * 3 + ("junk",)))
    if kind == "junk":
        return draw(st.binary(max_size=100))
    v6 = kind == "v6"
    hot = draw(st.booleans())  # a few sources often: tracked sources, repeated hits
    src = draw(st.sampled_from((V6_SOURCES[:4] if hot else V6_SOURCES) if v6 else (V4_SOURCES[:3] if hot else V4_SOURCES)))
    dst = draw(st.sampled_from((DST6, DST6, DST6B) if v6 else (DST4, DST4, DST4B)))
    proto = draw(st.sampled_from((6,) * 6 + (17,) * 3 + (1, 47, 58, 132)))
    sport = draw(st.sampled_from(SPORTS))
    dport = draw(st.sampled_from(DPORTS[:4] if hot else DPORTS))
    return draw(shaped(v6, src, dst, proto, sport, dport))


@st.composite
def shaped(draw, v6, src, dst, proto, sport, dport) -> bytes:
    if proto == 6:
        flags = draw(st.integers(0, 255)) if draw(st.integers(0, 5)) == 0 else draw(st.sampled_from(COMMON_FLAGS))
        opts = draw(st.sampled_from(TCP_OPTIONS))
        doff = None if draw(st.integers(0, 11)) else draw(st.integers(0, 15))
        l4 = tcp_seg(sport, dport, flags, opts, doff, draw(st.sampled_from((b"", b"", b"data"))))
    elif proto == 17:
        l4 = udp_dgram(
            sport,
            dport,
            draw(st.sampled_from((b"", b"", b"x" * 9))),
            0 if draw(st.integers(0, 11)) else draw(st.sampled_from((-8, -1, 1, 100))),
        )
    else:
        l4 = bytes(8) + b"payload"
    if v6:
        exts = ()
        if draw(st.integers(0, 6)) == 0:
            exts = tuple(
                draw(
                    st.lists(
                        st.sampled_from(((0,), (60,), (43, 0), (43, 2), (44, 0), (44, 1), (44, 8), (44, 9), (51,), (99,))),
                        min_size=1,
                        max_size=3,
                    )
                )
            )
        plen_delta = 0 if draw(st.integers(0, 11)) else draw(st.sampled_from((-1, -20, 1, 8)))
        first = 0x60 if draw(st.integers(0, 15)) else draw(st.sampled_from((0x6F, 0x61, 0x40, 0x70)))
        data = ip6(src, dst, proto, l4, exts, plen_delta, first)
    else:
        options = b"" if draw(st.integers(0, 6)) else draw(st.sampled_from(V4_OPTIONS))
        frag = 0 if draw(st.integers(0, 7)) else draw(st.sampled_from((0x4000, 0x2000, 0x0001, 0x0003, 0x1FFF, 0x8000)))
        tot_delta = 0 if draw(st.integers(0, 11)) else draw(st.sampled_from((-1, -20, 1, 30, -1000)))
        first = None if draw(st.integers(0, 15)) else draw(st.sampled_from((0x44, 0x46, 0x4F, 0x55, 0x65)))
        data = ip4(src, dst, proto, l4, options, frag, tot_delta, first)
    return draw(mutations(data))


# --- configurations and scenarios ---------------------------------------------------------------------

DEFAULT_INSTANT = frozenset({"NULL", "XMAS", "FULL-XMAS", "UNKNOWN", "MALFORMED"})
INSTANT_SETS = (
    frozenset(),
    DEFAULT_INSTANT,
    DEFAULT_INSTANT,
    frozenset({"IPOPTS"}),
    DEFAULT_INSTANT | {"IPOPTS"},
    frozenset({"SYN"}),
    frozenset({"UDP"}),
    frozenset({"FIN", "ACK", "MAIMON"}),
    frozenset({"UNKNOWN"}),
    frozenset({"MALFORMED"}),
)


@st.composite
def configs(draw) -> EngineConfig:
    return EngineConfig(
        scan_trigger=draw(st.sampled_from((-1, 0, 1, 3, 3, 50, 50))),
        window_ports=draw(st.sampled_from((0, 0, 0, 1, 2, 3, 5))),
        window_seconds=draw(st.sampled_from((1.0, 2.5, 5.0, 10.0, 30.0))),
        instant_labels=draw(st.sampled_from(INSTANT_SETS)),
        respond={"tcp": draw(st.sampled_from(("log", "block", "command"))), "udp": draw(st.sampled_from(("log", "block")))},
        block_duration=draw(st.sampled_from((0.0, 1.0, 5.0, 60.0, 3600.0))),
        block_max_duration=draw(st.sampled_from((0.0, 10.0, 604800.0))),
        escalation_factor=draw(st.sampled_from((1.0, 2.0, 3.0))),
        ipv6_prefix=draw(st.sampled_from((48, 64, 64, 100, 100, 128, 0, 1, 127))),
        max_sources=draw(st.sampled_from((3, 4, 5, 10, 50))),
        max_ports_per_source=draw(st.integers(1, 6)),
        max_offenders=draw(st.sampled_from((1, 3, 100))),
        backscatter_guard=draw(st.booleans()),
    )


# clock steps: mostly forward and small, sometimes exactly the window or the block, sometimes back
# (dyadic steps keep float sums exact, so "exactly window_seconds later" really happens; "U" jumps
# to the end of the earliest block, "Q" to the moment a tracked source turns quiet, "P" to the moment
# a port leaves a source's window: the boundaries where > and >= differ)
DELTAS = (
    0.0,
    0.0,
    0.25,
    0.5,
    1.0,
    1.0,
    1.0,
    2.0,
    3.0,
    0.125,
    0.001,
    0.1,
    "W",
    "W",
    "W+",
    "W-",
    "B",
    "B+",
    "U",
    "U",
    "Q",
    "Q",
    "P",
    -0.5,
    -3.0,
    -100.0,
    30.0,
    1000.0,
    1e6,
)
FORGET_POOL = (
    "198.18.0.2",
    "10.0.0.1",
    "192.0.2.5",
    "10.0.0.0/8",
    "198.18.0.0/16",
    "0.0.0.0/0",
    "2001:db8:1::1",
    "2001:db8:1::/64",
    "2001:db8:1::/48",
    "2001:db8::/32",
    "::/0",
    "2001:db8:1:0:8000::/100",
    ip("198.18.0.2"),
    ip("2001:db8:1::"),
    "not an address",
)
OPS = (
    ("raw",) * 20
    + ("burst",) * 6
    + (
        "process",
        "process",
        "expire",
        "expire",
        "forget",
        "mark",
        "mark",
        "offender",
        "ignore_set",
        "ignore_add",
        "expect",
        "expect",
        "expect_hit",
        "expect_hit",
        "exp_detach",
        "exp_expire",
        "flood",
        "flood",
        "reconfigure",
    )
)


@st.composite
def ops(draw):
    kind = draw(st.sampled_from(OPS))
    delta = draw(st.sampled_from(DELTAS))
    if kind == "raw":
        wrap = draw(st.sampled_from(("bytes",) * 12 + ("bytearray", "memoryview", "mv_slice")))
        return (kind, delta, draw(packets()), wrap)
    if kind == "process":
        return (kind, delta, draw(packets()))
    if kind == "burst":  # one source, several hits: ports, flags, times vary
        v6 = draw(st.integers(0, 2)) == 0
        src = draw(st.sampled_from(V6_SOURCES[:4] if v6 else V4_SOURCES[:3]))
        hits = draw(
            st.lists(
                st.tuples(
                    st.sampled_from((6, 6, 6, 17)),
                    st.sampled_from(DPORTS[:5]),
                    st.sampled_from(DELTAS[:12] + DELTAS[12:22]),
                    st.integers(0, 19),
                ),
                min_size=2,
                max_size=12,
            )
        )
        return (
            kind,
            delta,
            v6,
            src,
            [
                (proto, dport, d, draw(shaped(v6, src, DST6 if v6 else DST4, proto, 40000, dport)) if seed == 0 else None, seed)
                for proto, dport, d, seed in hits
            ],
        )
    if kind == "forget":
        return (kind, delta, draw(st.sampled_from(FORGET_POOL)))
    if kind in ("mark", "offender"):
        target = draw(st.sampled_from(V4_SOURCES[:4] + V6_SOURCES[:6]))
        shape = draw(st.sampled_from(("text", "bytes", "kw")))
        arg = (
            draw(st.sampled_from((None, 0, 0.5, 2.0, 100.0, -1.0, math.inf))) if kind == "mark" else draw(st.sampled_from((0, 1, 2, 5, 70)))
        )
        return (kind, delta, target, shape, arg)
    if kind == "ignore_set":
        return (kind, delta, draw(st.none() | st.lists(st.sampled_from(IGNORE_POOL), unique=True, max_size=4)))
    if kind == "ignore_add":
        return (kind, delta, draw(st.sampled_from(IGNORE_POOL)))
    if kind == "expect":
        v6 = draw(st.booleans())
        peer = draw(st.sampled_from(V6_SOURCES[:3] if v6 else V4_SOURCES[:3]))
        addr = DST6 if v6 else DST4
        return (kind, delta, v6, peer, addr, draw(st.sampled_from((2121, 22, 80))), draw(st.sampled_from((0.5, 3.0, 60.0))))
    if kind == "expect_hit":  # the data connection of a pending expectation (if any)
        return (kind, delta, draw(st.integers(0, 7)), draw(st.sampled_from(SPORTS)), draw(st.sampled_from((0x02, 0x02, 0x12, 0x10, 0x01))))
    if kind == "flood":
        return (
            kind,
            delta,
            draw(st.integers(0, 2**32)),
            draw(st.sampled_from((20, 50, 150))),
            draw(st.sampled_from(("distinct", "mixed", "one", "v6", "pairs"))),
        )
    if kind == "reconfigure":
        return (kind, delta, draw(configs()))
    return (kind, delta)


@st.composite
def scenarios(draw):
    cfg = draw(configs())
    ignore = draw(st.none() | st.lists(st.sampled_from(IGNORE_POOL), unique=True, max_size=5))
    expect = draw(st.integers(0, 3)) == 0
    t0 = draw(st.sampled_from((0.0, 100.0, 1.7e9, -50.0, 12345.678)))
    return cfg, ignore, expect, t0, draw(st.lists(ops(), min_size=10, max_size=60))


# --- comparing ------------------------------------------------------------------------------------------


def num(x):
    """A number, bit for bit (floats by their hex form, so -0.0 and nan compare too)."""
    if type(x) is float:
        return ("float", x.hex())
    return (type(x).__name__, x)


def packet_view(p: Packet) -> tuple:
    return tuple(getattr(p, n) for n in Packet.__slots__)


def decision_view(d: Decision) -> tuple:
    return (
        int(d.action),
        type(d.action),
        num(d.ts),
        d.key,
        d.prefixlen,
        d.proto,
        d.label,
        d.flags,
        d.labels,
        d.port_keys,
        d.ports,
        d.hits,
        num(d.duration),
        d.offences,
        d.reason,
        d.hint,
        d.network,
        d.reacted,
        packet_view(d.packet),
        None if d.raw is None else bytes(d.raw),
    )


def result_view(r) -> tuple:
    if type(r) is int:
        return ("lean", r)
    assert type(r) is Decision, f"process_raw returned {type(r).__name__}: {r!r}"
    return ("decision", decision_view(r))


def call(fn, *args, **kw):
    try:
        return ("ok", fn(*args, **kw))
    except Exception as e:  # both engines must raise the same way, if at all
        return ("raised", type(e), str(e))


def ports_view(ports):
    if type(ports) is int:
        return ("int", ports)
    assert type(ports) is dict, f"ports is a {type(ports).__name__}"
    return ("dict", [(k, num(t)) for k, t in ports.items()])


def state_view(e: Engine, values=num) -> dict:
    """The engine's whole state. ``values`` maps clock values (num: bit for bit, type included)."""
    states = []
    for k, s in e._states.items():
        assert type(k) is bytes and type(s.labels) is tuple and type(s.seen) is bool
        ports = ports_view(s.ports) if values is num else (("int", s.ports) if type(s.ports) is int else ("dict", list(s.ports.items())))
        states.append((k, s.hits, ports, s.labels, s.protos, values(s.first), values(s.last), s.seen))
    return {
        "states": states,
        "clock": list(e._clock),
        "blocked": [(k, values(u)) for k, u in e._blocked.items()],
        "offenders": list(e._offenders.items()),
        "heap": sorted((k, values(u)) for u, k in e._block_heap),
        "stats": {k: v for k, v in e.stats.items() if not k.startswith("compiled_")},
    }


def table_view(t) -> tuple:
    if t is None:
        return None
    return ([(k, slot[0], slot[1]) for k, slot in t._d.items()], dict(t._ctl), dict(t.stats))


class Pair:
    """A compiled and a pure-Python engine fed the same calls; every result and state compared."""

    def __init__(self, cfg, ignore=None, expect=False, values=num):
        self.ignore = PrefixSet(ignore) if ignore is not None else None
        self.tables = (ExpectationTable(), ExpectationTable()) if expect else (None, None)
        self.c = Engine(cfg, self.ignore, self.tables[0], compiled=True)
        self.p = Engine(cfg, self.ignore, self.tables[1], compiled=False)
        assert self.c.compiled is True and self.p.compiled is False
        self.values = values
        self.raw_calls = 0
        self.fast = self.c.process_raw
        self.handled = 0

    def check_state(self, where=""):
        assert state_view(self.c, self.values) == state_view(self.p, self.values), where
        assert table_view(self.c.expectations) == table_view(self.p.expectations), where

    def raw(self, data, now, wrap="bytes"):
        fast = self.c.process_raw
        assert type(fast) is fastpath.FastPath
        if fast is not self.fast:  # reconfigured: new counters
            self.fast, self.raw_calls = fast, 0
        before_handled = fast.handled
        rc = call(fast, wrapped(data, wrap), now)
        rp = call(self.p.process_raw, wrapped(data, wrap), now)
        self.raw_calls += 1
        assert fast.handled + fast.fallbacks == self.raw_calls, "every packet is handled or falls back once"
        if rc[0] == "ok" and rp[0] == "ok":
            assert result_view(rc[1]) == result_view(rp[1]), (data.hex(), now)
            if fast.handled != before_handled:  # C decides COUNT and DROP only
                assert type(rc[1]) is int and rc[1] >> 8 in (COUNT, DROP), (data.hex(), now, rc[1])
        else:
            assert rc == rp, (data.hex(), now)
        return rc

    def both(self, name, *args, **kw):
        rc = call(getattr(self.c, name), *args, **kw)
        rp = call(getattr(self.p, name), *args, **kw)
        if rc[0] == "ok" and name == "process":
            assert result_view(rc[1]) == result_view(rp[1]), (name, args)
        else:
            assert rc == rp, (name, args)
        return rc


def wrapped(data: bytes, wrap: str):
    if wrap == "bytearray":
        return bytearray(data)
    if wrap == "memoryview":
        return memoryview(data)
    if wrap == "mv_slice":
        return memoryview(b"\xee\xee\xee" + data + b"\xee")[3:-1]
    return data


def flood_packets(seed: int, n: int, mode: str):
    rnd = random.Random(seed)
    out = []
    base = rnd.randrange(1, 250)
    for i in range(n):
        if mode == "distinct":
            src = bytes([10, base, i >> 8, i & 255])
        elif mode == "one":
            src = V4_SOURCES[0]
        elif mode == "v6":
            src = bytes.fromhex("20010db8") + bytes([0, rnd.randrange(4), 0, 0]) + rnd.randbytes(8)
        elif mode == "pairs":  # each source twice: reactions leave stale CLOCK entries
            src = bytes([10, base, (i >> 1) >> 8, (i >> 1) & 255])
        else:
            src = bytes([10, base, 0, rnd.randrange(12)])
        flags = rnd.choice((0x02, 0x02, 0x02, 0x02, 0x01, 0x12, 0x04, 0x00, 0x29, 0x18, rnd.randrange(256)))
        dport = rnd.choice((22, 80, 443, 1000 + rnd.randrange(4), rnd.randrange(1, 65536)))
        if rnd.random() < 0.25:
            l4, proto = udp_dgram(5000, dport), 17
        else:
            l4, proto = tcp_seg(40000, dport, flags), 6
        if len(src) == 16:
            out.append(ip6(src, DST6, proto, l4))
        else:
            out.append(ip4(src, DST4, proto, l4))
    return out


def advance(now: float, delta, cfg: EngineConfig, e: Engine | None = None) -> float:
    if not isinstance(delta, str):
        return now + delta
    w, b = float(cfg.window_seconds), float(cfg.block_duration)
    if delta in ("U", "Q", "P"):
        if e is None:
            return now
        if delta == "U":
            ends = [u for u in e._blocked.values() if u >= now and u != math.inf]
        elif delta == "Q":
            ends = [s.last + w for s in e._states.values() if s.last + w >= now]
        else:
            ends = [t + w for s in e._states.values() if type(s.ports) is dict for t in s.ports.values() if t + w >= now]
        return min(ends) if ends else now
    return now + {"W": w, "W+": w + 1e-6, "W-": w - 1e-6, "B": b, "B+": b + 0.5}[delta]


def run_scenario(cfg, ignore, expect, t0, steps):
    pair = Pair(cfg, ignore, expect)
    now = t0
    current = cfg
    for i, op in enumerate(steps):
        kind = op[0]
        now = advance(now, op[1], current, pair.p)
        where = f"step {i}: {op!r} at {now!r}"
        if kind == "raw":
            pair.raw(op[2], now, op[3])
        elif kind == "process":
            pair.both("process", decode(op[2]), now)
        elif kind == "expire":
            pair.both("expire", now)
        elif kind == "forget":
            pair.both("forget", op[2])
        elif kind in ("mark", "offender"):
            _, _, target, shape, arg = op
            if kind == "mark":
                until = now + arg if arg not in (None, 0) else arg
                if shape == "text":
                    pair.both("mark_blocked", ipaddress.ip_address(target).compressed, until)
                elif shape == "bytes":
                    pair.both("mark_blocked", target, 32 if len(target) == 4 else current.ipv6_prefix, until)
                else:
                    pair.both("mark_blocked", target, until=until, prefixlen=len(target) * 8)
            else:
                if shape == "text":
                    pair.both("restore_offender", ipaddress.ip_address(target).compressed, arg)
                else:
                    pair.both("restore_offender", target, arg, prefixlen=len(target) * 8)
        elif kind == "ignore_set":
            ps = None if op[2] is None else PrefixSet(op[2])
            pair.c.ignore = pair.p.ignore = ps
        elif kind == "ignore_add":
            if pair.c.ignore is None:
                pair.c.ignore = pair.p.ignore = PrefixSet()
            pair.c.ignore.add(op[2])  # one shared set: both engines see the change
        elif kind == "expect":
            _, _, v6, peer, addr, port, ttl = op
            if pair.c.expectations is None:
                pair.c.expectations, pair.p.expectations = ExpectationTable(), ExpectationTable()
            exp = Expectation(6 if v6 else 4, peer, addr, port, now + ttl, "passive", "229")
            assert pair.c.expectations.add(exp) == pair.p.expectations.add(exp)
        elif kind == "expect_hit":
            pending = list(pair.c.expectations or ())
            if pending:
                exp = pending[op[2] % len(pending)]
                seg = tcp_seg(op[3], exp.port, op[4])
                data = ip6(exp.peer, exp.addr, 6, seg) if exp.family == 6 else ip4(exp.peer, exp.addr, 6, seg)
                pair.raw(data, now)
        elif kind == "exp_detach":
            pair.c.expectations = pair.p.expectations = None
        elif kind == "exp_expire":
            if pair.c.expectations is not None:
                assert pair.c.expectations.expire(now) == pair.p.expectations.expire(now)
        elif kind == "burst":
            _, _, v6, src, hits = op
            for proto, dport, d, data, seed in hits:
                now = advance(now, d, current, pair.p)
                if data is None:  # a clean SYN / UDP datagram (the fast shapes)
                    l4 = udp_dgram(5000, dport) if proto == 17 else tcp_seg(40000, dport, COMMON_FLAGS[seed % len(COMMON_FLAGS)])
                    data = ip6(src, DST6, proto, l4) if v6 else ip4(src, DST4, proto, l4)
                pair.raw(data, now)
                pair.check_state(f"{where}: burst hit at {now!r}")
        elif kind == "flood":
            for j, data in enumerate(flood_packets(op[2], op[3], op[4])):
                pair.raw(data, now + j * 0.125)
                if j < 8 or j % 8 == 0:
                    pair.check_state(f"{where}: flood packet {j}")
            now += op[3] * 0.125
        elif kind == "reconfigure":
            current = op[2]
            pair.c.reconfigure(current)
            pair.p.reconfigure(current)
            assert pair.c.compiled is True
        pair.check_state(where)
    pair.both("expire", now + 1e9)
    pair.check_state("final expire")
    return pair


# --- 1. differential: any sequence, identical results and state ------------------------------------------


@settings(max_examples=300, **HYP)
@given(scenarios())
def test_compiled_and_python_engines_agree_on_any_sequence(scenario):
    run_scenario(*scenario)


@pytest.mark.parametrize("seed", range(6))
def test_compiled_and_python_agree_on_long_random_runs(seed):
    """Long runs (thousands of packets, small tables): eviction, CLOCK compaction, block heap
    rebuilds, escalation past 64 offences, window pruning."""
    rnd = random.Random(seed)
    cfg = EngineConfig(
        scan_trigger=rnd.choice((2, 3, 50)),
        window_ports=rnd.choice((0, 3, 5)),
        window_seconds=rnd.choice((2.0, 10.0)),
        max_sources=rnd.choice((3, 20)),
        max_ports_per_source=rnd.choice((1, 2, 4)),
        max_offenders=rnd.choice((2, 50)),
        block_duration=rnd.choice((0.5, 3.0)),
        escalation_factor=1.5,
        respond={"tcp": rnd.choice(("log", "block")), "udp": "block"},
        ipv6_prefix=rnd.choice((64, 100)),
    )
    pair = Pair(cfg, ["192.0.2.0/24", "2001:db8:99::/48", "10.0.0.9"])
    now = 1000.0
    pool = flood_packets(seed, 400, "mixed") + flood_packets(seed + 1, 200, "v6") + flood_packets(seed + 2, 50, "one")
    for i in range(6000):
        now += rnd.choice((0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 3.0))
        if rnd.random() < 0.01:
            now -= 5.0
        pair.raw(rnd.choice(pool), now)
        if i % 500 == 499:
            pair.both("expire", now)
            pair.check_state(f"packet {i}")
    pair.check_state("end")
    assert pair.c.process_raw.handled > 1000


# --- 2. the C path really runs, and hands the rest to Python -----------------------------------------------


def syn4(src="198.18.0.2", dport=22, flags=0x02, sport=40000, options=b"") -> bytes:
    return ip4(ip(src), DST4, 6, tcp_seg(sport, dport, flags), options)


def syn6(src="2001:db8:1::1", dport=22, flags=0x02, exts=()) -> bytes:
    return ip6(ip(src), DST6, 6, tcp_seg(40000, dport, flags), exts)


def udp4(src="198.18.0.2", dport=161) -> bytes:
    return ip4(ip(src), DST4, 17, udp_dgram(5000, dport))


def test_compiled_flag_and_types():
    c = Engine(EngineConfig(), compiled=True)
    assert c.compiled is True
    assert type(c.process_raw) is fastpath.FastPath and not isinstance(c.process_raw, types.FunctionType)
    assert (c.process_raw.handled, c.process_raw.fallbacks) == (0, 0)
    with pytest.raises((AttributeError, TypeError)):
        c.process_raw.handled = 5
    with pytest.raises((AttributeError, TypeError)):
        c.process_raw.fallbacks = 5
    p = Engine(EngineConfig(), compiled=False)
    assert p.compiled is False
    assert type(p.process_raw) is types.FunctionType
    assert not hasattr(p.process_raw, "handled") and not hasattr(p.process_raw, "fallbacks")
    assert p.stats["compiled_handled"] == p.stats["compiled_fallbacks"] == 0
    assert Engine(EngineConfig()).compiled is True  # default: compiled when available


def test_compiled_selection_env_and_missing_module(monkeypatch):
    monkeypatch.setenv("NFSENTRY_PURE_PYTHON", "1")
    assert Engine(EngineConfig()).compiled is False
    assert type(Engine(EngineConfig()).process_raw) is types.FunctionType
    assert Engine(EngineConfig(), compiled=True).compiled is True  # explicit True still compiles
    monkeypatch.delenv("NFSENTRY_PURE_PYTHON")
    monkeypatch.setattr(engine_mod, "_fastpath", None)
    with pytest.raises(ImportError):
        Engine(EngineConfig(), compiled=True)
    assert Engine(EngineConfig()).compiled is False
    assert Engine(EngineConfig(), compiled=False).compiled is False


def test_syn_flood_from_one_tracked_source_is_decided_in_c():
    pair = Pair(EngineConfig(scan_trigger=10**6, window_seconds=60.0))
    for i in range(1000):
        r = pair.raw(syn4(dport=1 + i % 300), 100.0 + i * 0.001)
        assert r == ("ok", COUNT << 8 | 6)
    fast = pair.c.process_raw
    assert fast.handled >= 999 and fast.handled + fast.fallbacks == 1000
    st_ = pair.c._states[ip("198.18.0.2")]
    assert type(st_) is fastpath.Source and st_.hits == 1000 and len(st_.ports) == 64
    pair.check_state()
    assert pair.c.stats["compiled_handled"] == fast.handled


def test_blocked_source_drops_in_c():
    pair = Pair(EngineConfig(), ["192.0.2.0/24"])
    pair.both("mark_blocked", "198.18.0.2", 1e9)
    pair.both("mark_blocked", "2001:db8:1::/64", None)
    fast = pair.c.process_raw
    for i in range(1000):
        assert pair.raw(syn4(dport=1 + i), 50.0 + i) == ("ok", DROP << 8 | 6)
        assert pair.raw(udp4(dport=1 + i), 50.0 + i) == ("ok", DROP << 8 | 17)
        assert pair.raw(syn6("2001:db8:1::%x" % (i + 1), dport=1 + i), 50.0 + i) == ("ok", DROP << 8 | 6)
    assert fast.handled == 3000 and fast.fallbacks == 0
    pair.check_state()
    # the block ends: Python deletes it and reacts (the first packet after the end falls back)
    r = pair.raw(syn4(), 2e9)
    assert r[1].action == BLOCK and fast.fallbacks == 1
    pair.check_state()


def test_distinct_new_sources_are_counted_in_c():
    pair = Pair(EngineConfig(scan_trigger=3))
    fast = pair.c.process_raw
    for i in range(1000):
        data = (
            ip4(bytes([10, 1, i >> 8, i & 255]), DST4, 6, tcp_seg(40000, 22, 0x02))
            if i % 2
            else ip6(bytes.fromhex("20010db8") + i.to_bytes(4, "big") + bytes(8), DST6, 17, udp_dgram(5000, 53))
        )
        assert pair.raw(data, 10.0 + i * 0.01)[1] >> 8 == COUNT
    assert fast.handled == 1000 and fast.fallbacks == 0
    assert all(type(s) is fastpath.Source for s in pair.c._states.values())
    pair.check_state()


def test_eviction_and_clock_compaction_from_c():
    pair = Pair(EngineConfig(scan_trigger=3, max_sources=10, window_seconds=1e6))
    for i in range(3000):
        pair.raw(ip4(bytes([10, 2, i >> 8, i & 255]), DST4, 6, tcp_seg(40000, 22, 0x02)), float(i))
        if i % 7 == 0:  # some sources come back: second chances
            pair.raw(ip4(bytes([10, 2, 0, i % 5]), DST4, 6, tcp_seg(40000, 23, 0x02)), float(i) + 0.5)
    assert pair.c.stats["evicted"] > 2000
    assert pair.c.process_raw.handled > 3000
    pair.check_state()


def test_clock_compaction_when_c_inserts_a_source():
    """Reactions (Python) leave stale CLOCK entries; the C insertion of a new source compacts the
    queue at the same point as Python (more than 2 * tracked + 64 entries)."""
    pair = Pair(EngineConfig(scan_trigger=1, max_sources=1000))
    fast = pair.c.process_raw
    for i in range(300):
        src = bytes([10, 4, i >> 8, i & 255])
        assert pair.raw(ip4(src, DST4, 6, tcp_seg(40000, 22, 0x02)), float(i)) == ("ok", COUNT << 8 | 6)
        assert pair.raw(ip4(src, DST4, 6, tcp_seg(40000, 23, 0x02)), i + 0.5)[1].action == BLOCK
        pair.check_state(str(i))
    assert fast.handled == 300 and fast.fallbacks == 300
    assert len(pair.c._clock) <= 2 * len(pair.c._states) + 64


@pytest.mark.parametrize(
    "name,data,ignore,setup",
    [
        ("ipv4 options", syn4(options=b"\x07\x07\x04\x00\x00\x00\x00\x00"), None, None),
        ("ipv6 extension header", syn6(exts=((0,),)), None, None),
        ("fragment", ip4(ip("198.18.0.2"), DST4, 6, tcp_seg(), frag=0x2000), None, None),
        ("other protocol", ip4(ip("198.18.0.2"), DST4, 1, bytes(16)), None, None),
        ("truncated", syn4()[:39], None, None),
        ("ignored source (network)", syn4(), ["198.18.0.0/24"], None),
        ("ignored source (exact)", syn4(), ["198.18.0.2"], None),
        ("ignored ipv6 source (network)", syn6(), ["2001:db8:1::/48"], None),
        ("ignored ipv6 source, no prefilter", syn6(), ["::/1"], None),
        ("reaction", syn4(), None, "react"),
        ("pending ftp expectation", syn4(), None, "expect"),
    ],
)
def test_slow_cases_fall_back_to_python(name, data, ignore, setup):
    cfg = EngineConfig(scan_trigger=0 if setup == "react" else 5, instant_labels=())
    pair = Pair(cfg, ignore, expect=setup == "expect")
    if setup == "expect":
        pair.c.expectations.add(Expectation(4, ip("198.18.0.99"), DST4, 2121, 1e9, "passive"))
        pair.p.expectations.add(Expectation(4, ip("198.18.0.99"), DST4, 2121, 1e9, "passive"))
    fast = pair.c.process_raw
    pair.raw(data, 10.0)
    assert (fast.handled, fast.fallbacks) == (0, 1), name
    pair.check_state()


@pytest.mark.parametrize(
    "name,data,ignore",
    [
        ("ipv4 prefilter hit, not ignored", syn4("198.18.0.9"), ["198.18.0.2/31", "198.18.0.77"]),
        ("ipv6 prefilter hit, not ignored", syn6("2001:db8:1::1"), ["2001:db8:1:8000::/49"]),
        ("ipv6 prefilter disabled, not ignored", syn6(), ["c000::/3", "2001:db8:1::2"]),
        ("ipv4 /0 and exact", syn4("10.1.1.1"), ["0.0.0.0/0"]),
    ],
)
def test_ignore_set_edges_agree(name, data, ignore):
    """Sources near the ignore set (past its prefilter, or with no prefilter): the C part may
    decide them itself, but exactly as Python does."""
    pair = Pair(EngineConfig(scan_trigger=5, instant_labels=()), ignore)
    for i in range(3):
        pair.raw(data, 10.0 + i)
    assert pair.c.process_raw.handled + pair.c.process_raw.fallbacks == 3
    pair.check_state()


def test_a_source_flows_between_c_and_python():
    """Records created by the Python body are read by C and the other way round; the Python body
    in a compiled engine creates the compiled record type too."""
    pair = Pair(EngineConfig(scan_trigger=50, window_ports=0, max_ports_per_source=3))
    opt = b"\x01\x01\x01\x00"
    now = 1.0
    for i in range(40):
        data = syn4(dport=1 + i % 5, options=opt if i % 3 == 0 else b"")
        pair.raw(data, now)
        now += 0.5
        pair.check_state(str(i))
    st_ = pair.c._states[ip("198.18.0.2")]
    assert type(st_) is fastpath.Source and st_.hits == 40
    fast = pair.c.process_raw
    assert fast.handled >= 20 and fast.fallbacks >= 10


def test_source_record_type_behaves_like_python_one():
    s = fastpath.Source()
    s.hits, s.ports, s.labels, s.protos, s.first, s.last, s.seen = 3, 6 << 16 | 22, ("SYN",), 1, 1.5, 2.5, True
    assert (s.hits, s.ports, s.labels, s.protos, s.first, s.last, s.seen) == (3, 6 << 16 | 22, ("SYN",), 1, 1.5, 2.5, True)
    s.ports = {1: 2.0}
    s.labels += ("FIN",)
    assert s.ports == {1: 2.0} and s.labels == ("SYN", "FIN")
    with pytest.raises(AttributeError):
        s.other = 1
    e = Engine(EngineConfig(scan_trigger=5), compiled=True)
    e.process_raw(syn4(), 1.0)
    e.process_raw(udp4(dport=53), 2.0)
    assert e.source("198.18.0.2") == {
        "network": "198.18.0.2",
        "hits": 2,
        "ports": ["tcp/22", "udp/53"],
        "labels": ["SYN", "UDP"],
        "protocols": ["tcp", "udp"],
        "first": 1.0,
        "last": 2.0,
    }


def test_reconfigure_rebuilds_the_fast_path_and_keeps_state():
    pair = Pair(EngineConfig(scan_trigger=5))
    for i in range(3):
        pair.raw(syn4(dport=i + 1), float(i))
    old = pair.c.process_raw
    for e in (pair.c, pair.p):
        e.reconfigure(EngineConfig(scan_trigger=3, window_seconds=10.0))
    assert pair.c.compiled is True and pair.c.process_raw is not old
    assert type(pair.c.process_raw) is fastpath.FastPath
    r = pair.raw(syn4(dport=9), 3.0)
    assert r[1].action == BLOCK and r[1].hits == 4
    pair.check_state()


def test_expectations_and_ignore_are_read_on_every_call():
    pair = Pair(EngineConfig(scan_trigger=50))
    src, now = ip("198.18.0.2"), 10.0
    assert pair.raw(syn4(dport=2121), now)[1] >> 8 == COUNT
    tables = ExpectationTable(), ExpectationTable()
    pair.c.expectations, pair.p.expectations = tables
    for t in tables:
        t.add(Expectation(4, src, DST4, 2121, now + 5.0, "passive"))
    assert pair.raw(syn4(dport=2121), now + 1) == ("ok", PASS << 8 | 6)
    assert pair.raw(syn4(dport=2121), now + 2) == ("ok", PASS << 8 | 6)  # same sport: bound
    assert pair.raw(syn4(dport=2121, sport=1), now + 3)[1] >> 8 == COUNT
    assert pair.raw(syn4(dport=2121), now + 6)[1] >> 8 == COUNT  # expired: removed
    assert not tables[0].pending and pair.c.process_raw.fallbacks == 4
    ps = PrefixSet()
    pair.c.ignore = pair.p.ignore = ps
    assert pair.raw(syn4(), now + 7)[1] >> 8 == COUNT
    ps.add("198.18.0.0/30")  # mutated in place
    assert pair.raw(syn4(), now + 8) == ("ok", IGNORE << 8 | 6)
    pair.c.ignore = pair.p.ignore = None
    assert pair.raw(syn4(), now + 9)[1] >> 8 == COUNT
    pair.check_state()


# --- 3. robustness: any bytes, any buffer type --------------------------------------------------------------

VALID = [
    syn4(),
    syn4("10.0.0.1", flags=0x29),
    udp4(),
    syn6(),
    syn6("2001:db8:1::ffff:2", flags=0x12),
    ip6(ip("2001:db8:1::1"), DST6, 17, udp_dgram(5000, 53)),
    syn4(options=b"\x07\x07\x04\x00\x00\x00\x00\x00"),
    syn6(exts=((0,), (44, 0))),
    ip4(ip("192.0.2.5"), DST4, 6, tcp_seg(opts=b"\x02\x04\x05\xb4")),
]


@st.composite
def hostile_bytes(draw) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))
    base = bytearray(draw(st.sampled_from(VALID)))
    if choice == 1:  # overwrite
        for _ in range(draw(st.integers(1, 8))):
            base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    elif choice == 2:  # splice / insert / delete
        a = draw(st.integers(0, len(base)))
        b = draw(st.integers(a, len(base)))
        base[a:b] = draw(st.binary(max_size=40))
    base = base[: draw(st.integers(0, 200))]
    return bytes(base)


@settings(max_examples=300, **HYP)
@given(
    st.lists(
        st.tuples(
            hostile_bytes(),
            st.sampled_from(("bytes", "bytes", "bytearray", "memoryview", "mv_slice")),
            st.floats(-1e6, 1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from((0, 2, -1)),
    st.booleans(),
)
def test_any_bytes_never_raise_and_match_python(items, trigger, ignore):
    pair = Pair(
        EngineConfig(scan_trigger=trigger, window_ports=3, max_sources=4, max_offenders=3, instant_labels=DEFAULT_INSTANT | {"IPOPTS"}),
        ["192.0.2.0/24", "2001:db8:99::/48", "10.0.0.9"] if ignore else None,
    )
    for data, wrap, now in items:
        r = pair.raw(data, now, wrap)
        assert r[0] == "ok", (data.hex(), r)
    pair.check_state()


@pytest.mark.parametrize("bad", [None, 123, 4.5, object()])
def test_non_buffers_raise_like_python(bad):
    pair = Pair(EngineConfig())
    rc = call(pair.c.process_raw, bad, 1.0)
    rp = call(pair.p.process_raw, bad, 1.0)
    assert rc[0] == rp[0] == "raised" and rc[1] is rp[1]
    assert call(pair.c.process_raw, syn4())[0] == "raised"  # wrong arity
    assert call(pair.c.process_raw, syn4(), 1.0, 2.0)[0] == "raised"
    pair.check_state()


# --- clocks: special float values and integer clocks ------------------------------------------------------

SPECIAL = (0.0, -0.0, 1.0, 1e-300, 5e-324, 1e15, 2.0**53, 2.0**53 + 2, 1e300, -1e300, math.inf, -math.inf, math.nan)


@settings(max_examples=150, **HYP)
@given(
    configs(),
    st.lists(
        st.tuples(st.sampled_from(VALID[:6] + [syn4(dport=23), udp4(dport=9)]), st.one_of(st.sampled_from(SPECIAL), st.floats())),
        min_size=1,
        max_size=25,
    ),
)
def test_special_float_clocks_agree(cfg, items):
    """inf, nan, -0.0, huge and tiny clocks: identical results and state (floats bit for bit)."""
    pair = Pair(cfg)
    for data, now in items:
        pair.raw(data, now)
        pair.check_state(repr(now))
    pair.both("expire", 1e9)
    pair.check_state()


# The engine's clock is seconds: a float, or an int a double holds exactly (|now| <= 2**53 here:
# the largest start plus 25 of the largest step). Beyond that a compiled record rounds its times
# (see Engine's docstring); no clock in seconds gets there.
INT_CLOCKS = (0, 1, 2, 10, 100, 2**31, 2**53 - 26 * 10**6, -5)


@settings(max_examples=150, **HYP)
@given(
    configs(),
    st.sampled_from(INT_CLOCKS),
    st.lists(
        st.tuples(st.sampled_from(VALID[:6] + [syn4(dport=23), udp4(dport=9)]), st.sampled_from((0, 1, 2, 3, 30, 10**6))),
        min_size=1,
        max_size=25,
    ),
)
def test_integer_clocks_agree(cfg, t0, items):
    """A clock that is an int (time.monotonic_ns()-style or a test's): same decisions and the same
    state values as the pure-Python engine (compared with ==: a compiled record keeps its times as
    floats)."""
    pair = Pair(cfg, values=lambda x: x)
    now = t0
    for data, step in items:
        now += step
        pair.raw(data, now)
        pair.check_state(repr(now))


# --- resources ---------------------------------------------------------------------------------------------


def test_engine_with_fast_path_is_garbage_collected():
    e = Engine(EngineConfig(scan_trigger=3), compiled=True)
    for i in range(50):
        e.process_raw(syn4(dport=i + 1), float(i))
    e.reconfigure(EngineConfig(scan_trigger=2))
    ref = weakref.ref(e)
    del e
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("scenario", ["drop", "count-one-port", "count-ports", "new-sources", "fallback", "ignored"])
def test_no_memory_leak_per_packet(scenario):
    cfg = EngineConfig(scan_trigger=10**9, window_ports=0, max_sources=100, max_ports_per_source=8, window_seconds=1e9)
    e = Engine(cfg, PrefixSet(["192.0.2.0/24"]), ExpectationTable(), compiled=True)
    if scenario == "drop":
        e.mark_blocked("198.18.0.2", 1e12)
    packets_ = {
        "drop": [syn4(dport=p) for p in range(1, 50)],
        "count-one-port": [syn4()],
        "count-ports": [syn4(dport=p) for p in range(1, 50)] + [udp4(dport=p) for p in range(1, 50)],
        "new-sources": [ip4(bytes([10, 3, i >> 8, i & 255]), DST4, 6, tcp_seg()) for i in range(1000)],
        "fallback": [syn4(options=b"\x01\x01\x01\x00", dport=p) for p in range(1, 50)],
        "ignored": [syn4("192.0.2.7")],
    }[scenario]
    fast = e.process_raw

    def run(n, t):
        for i in range(n):
            fast(packets_[i % len(packets_)], t + i * 1e-3)

    run(5000, 1.0)
    gc.collect()
    tracemalloc.start()
    try:
        run(2000, 10.0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        run(30000, 20.0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{scenario}: {grown} bytes retained over 30,000 packets"
    if scenario in ("drop", "count-one-port", "count-ports", "new-sources"):
        assert fast.handled > 30000
