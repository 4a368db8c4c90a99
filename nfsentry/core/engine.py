"""The per-source state engine: a queued packet and the time in, a :class:`Decision` out.

Pure (sans-I/O): no sockets, no logging, no clock of its own (``now`` is an argument, so tests
are exact). The daemon feeds it every packet the kernel queues (new or invalid packets to
monitored, unused ports) and turns the decision into a verdict, a block, a log line.

The decision for one packet, in order (the rules live in :meth:`Engine.process`, nowhere else):

1. no decodable source address -> ``COUNT`` (label ``MALFORMED``; nothing to attribute or block);
2. source inside the ignore set (addresses, CIDRs, the host's own addresses) -> ``IGNORE``;
3. TCP packet matching an FTP data-connection expectation -> ``PASS``. While
   ``expectations.pending`` is truthy (the table's live container of expectations) the engine
   calls ``expectations.match(src, dst, dport, now, sport)`` (raw address bytes), which consumes the
   expectation (:class:`nfsentry.ftp.ExpectationTable` binds it to ``sport``, so a retransmitted
   SYN of the same data connection passes too);
4. source (its key) already blocked and the block not expired -> ``DROP``;
5. otherwise the hit is recorded for the source and the policies are evaluated; none reacting
   -> ``COUNT``; reacting -> ``BLOCK`` (response mode ``block`` or ``command``) or ``ALERT``
   (mode ``log``) for the packet's protocol; but a packet that would react and whose TCP or UDP
   checksum is wrong (:func:`~nfsentry.core.packet.bad_checksum`: ``nmap --badsum``, ``hping3
   -b``) -> ``COUNT``, counted in ``stats["badsum"]``: the host's own stack discards it, so it is
   never a real connection attempt, and reacting to it would tell the sender a detector is there.
   Checked only on the bytes :meth:`Engine.process_raw` is given (``process`` has no bytes), and
   only where a packet would react: the common path costs the same.

Policies (each can react; the reason names every policy that did):

* **instant**: the packet's label is in ``instant_labels`` (default NULL, XMAS, FULL-XMAS,
  UNKNOWN, MALFORMED: combinations no legitimate stack sends). UNKNOWN shapes that an
  established connection does send (PSH+ACK, ACK+URG, FIN+PSH+ACK, see
  :func:`classify.is_stream_shaped`) never react instantly; the other policies count them. ``IPOPTS`` in ``instant_labels``
  makes IP options react too.
* **scan_trigger** N (PortSentry ``SCAN_TRIGGER``): the hits a source is allowed before the
  reaction. The first N hits are counted, hit N+1 reacts: 0 reacts on the first hit (the
  default, as in PortSentry), 1 on the second, 2 on the third; the count then starts again.
  This is what PortSentry's portsentry.conf promises ("the number of port connects you will
  allow before an alarm"). PortSentry's code does it differently: 1.2's ``CheckStateEngine``
  starts its counter at 1 for the current hit, adds one per earlier entry of the host in its
  state ring and reacts when the counter is >= SCAN_TRIGGER, i.e. on hit max(N, 1) (2.0's
  ``count++; if (count >= trigger)`` gives the same numbers). ``nfsentry import-portsentry``
  therefore writes SCAN_TRIGGER N as ``scan_trigger = max(N - 1, 0)``, so imported
  configurations react on the same hit as under PortSentry. Other differences: PortSentry's
  state is one ring of 50 entries shared by all hosts (a host's earlier hits are lost once 50
  newer hits from anyone arrive; a trigger above 50 reacts at once) and one per process
  (``-tcp`` and ``-udp`` ran separately), and it never resets a host's count (every later hit
  reacts again, logged as "already blocked"). Here each source has its own counter (TCP and
  UDP hits together), forgotten after ``window_seconds`` of quiet or under the ``max_sources``
  cap, and reset by a reaction (so in ``log`` mode a source alerts once per N+1 hits). A
  negative trigger turns the policy off.
* **window**: ``window_ports`` (K) distinct monitored ports (TCP and UDP ports distinct) within
  ``window_seconds`` (T). 0 turns it off.

Sources quiet for longer than ``window_seconds`` are forgotten (PortSentry never forgets).
Backscatter guard (``backscatter_guard``, on by default): TCP packets that are exactly what a
legitimate stack sends back (RST, RST+ACK, SYN+ACK; see :func:`classify.is_reply_shaped`)
are counted but never react, because a third party sends them to us when someone scans it with
our address as the spoofed source; reacting would let that someone block the innocent party.
(PortSentry 1.2's stealth modes skipped every ACK and RST packet for the same reason.)

Blocks: the duration for a source's n-th block is ``block_duration * escalation_factor**(n-1)``
capped at ``block_max_duration`` (0 = no cap); ``block_duration`` 0 means until unblocked.
Offences (blocks per source) are remembered across blocks, bounded by ``max_offenders``
(least recently offending forgotten first). A block resets the source's counts; so does an
alert. :meth:`Engine.forget` (the unblock path) drops the state, the block and the offences.

Memory is bounded: at most ``max_sources`` tracked sources (when full, CLOCK, a second-chance
approximation of least-recently-seen, picks the source to evict: one that was not seen again
since the clock hand last passed it; counted in ``stats["evicted"]``), at most ``max_sources``
remembered blocks (oldest first;
forgetting one only means a stray packet that slipped past the kernel set is re-detected
instead of dropped), at most ``max_offenders`` offenders, at most ``max(max_ports_per_source,
window_ports)`` ports per source.

Cheap paths: PASS / IGNORE / DROP / COUNT decisions carry the packet, label and hit count but no
``labels``/``ports`` tuples and a constant reason; those are built only when reacting, and a
reaction's reason text is formatted when first read (on the daemon's worker thread).

The daemon calls :meth:`Engine.process_raw` on the queued bytes: no Packet and no Decision
unless something reacted (a small int ``action << LEAN_SHIFT | proto`` otherwise, see
:func:`lean_code`). Its common cases (a
blocked source; a hit no policy can react to) run compiled in ``nfsentry/core/_fastpath.c`` when it is
built; the rules above stay here, in one Python body that both entry points run, and the C part
hands every other packet to it before touching any state (docs/DESIGN.md, "The hot path").

Per-packet cost (bench/bench_core.py) is dominated by memory access once 100,000 sources are
tracked: hence the int-not-dict port of one-port sources, decisions that reference the packet,
the CLOCK queue instead of an ordered dict, and a hot path that reads closure variables (see
:meth:`Engine._build_process`).
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from heapq import heapify, heappop, heappush
from typing import Any

from . import packet as P
from .addrs import PrefixSet, mask, masker, network_text, parse_key
from .classify import _REPLY, _STREAM, SCAN_LABELS, classify, label_text, syn_hint
from .classify import FLAG_STRINGS as _FLAG_STRINGS
from .classify import LABEL_BY_FLAGS as _LABEL_BY_FLAGS
from .packet import Packet, decode
from .units import format_duration
from .valves import DUPLICATE as _DUPLICATE
from .valves import Admit as _Admit

__all__ = [
    "Action",
    "Decision",
    "EngineConfig",
    "FirstHit",
    "first_hit_reactions",
    "Engine",
    "RESPONSE_MODES",
    "DEFAULT_MAX_SOURCES",
    "LEAN_SHIFT",
    "LEAN_CODES",
    "lean_code",
    "lean_action",
    "lean_proto",
]

INF = math.inf
RESPONSE_MODES = ("log", "block", "command")

# Measured by bench/bench_core.py (tracemalloc): ~180 bytes per tracked source (state, key, table
# and CLOCK entries) and ~240 bytes per blocked source (block, expiry heap entry, offence count).
# With 100,000 the engine's tables stay under ~45 MB however many spoofed sources a flood invents
# (the whole bench process: ~60 MB RSS counting, ~100 MB when every spoofed source is blocked,
# flat from 250,000 to 3,000,000 spoofed sources).
DEFAULT_MAX_SOURCES = 100_000


class Action(IntEnum):
    PASS = 0  # FTP data connection we expected: accept
    IGNORE = 1  # source in the ignore list
    COUNT = 2  # hit recorded, no policy reacted
    ALERT = 3  # a policy reacted, response mode "log"
    BLOCK = 4  # a policy reacted, response mode "block" or "command"
    DROP = 5  # source already blocked: drop by verdict


# The lean result of Engine.process_raw (no Decision): ``action << LEAN_SHIFT | proto``, an int the
# daemon turns into a verdict with one table lookup. The one definition: the compiled fast path
# takes these values from _fastpath_defs.h, generated from here (core/cdefs.py).
LEAN_SHIFT = 8
LEAN_PROTO_MASK = (1 << LEAN_SHIFT) - 1
LEAN_CODES = len(Action) << LEAN_SHIFT  # size of a table indexed by lean codes


def lean_code(action: Action | int, proto: int) -> int:
    """(action, protocol number) -> the lean result ``action << LEAN_SHIFT | proto``."""
    return int(action) << LEAN_SHIFT | proto


def lean_action(code: int) -> Action:
    """The action of a lean result."""
    return Action(code >> LEAN_SHIFT)


def lean_proto(code: int) -> int:
    """The transport protocol number of a lean result."""
    return code & LEAN_PROTO_MASK


_PASS, _IGNORE, _COUNT, _ALERT, _BLOCK, _DROP = (Action.PASS, Action.IGNORE, Action.COUNT, Action.ALERT, Action.BLOCK, Action.DROP)
_PROTO_NAME = {6: "tcp", 17: "udp"}
_ONE_LABEL = {label: (label,) for label in SCAN_LABELS}
_new = object.__new__
# process_raw's fast shapes (core/packet.py names their checks; decode() makes the same ones): only
# the fields a decision needs.   IPv4: totlen frag src | dport doff flags (or ulen);  IPv6: plen src | dport doff flags
_LEAN_V4TCP = struct.Struct("!xxHxxH4x4s4x2xH8xBB").unpack_from
_LEAN_V4UDP = struct.Struct("!xxHxxH4x4s4x2xHH").unpack_from
_LEAN_V6TCP = struct.Struct("!4xH2x16s16x2xH8xBB").unpack_from
_LEAN_V6UDP = struct.Struct("!4xH2x16s16x2xHH").unpack_from
# the engine's own counters, after the per-action ones in Engine._counts
_EVICTED, _UNDECODABLE, _EXPIRED_BLOCKS, _BLOCKED_EVICTED, _OFFENDERS_EVICTED, _BADSUM = range(len(Action), len(Action) + 6)


@dataclass(slots=True)
class Decision:
    """What to do with one queued packet, and why.

    The packet's own fields (``src``, ``dst``, ``sport``, ``dport``, ``ip_options``,
    ``malformed``) are read-only properties over ``packet`` (the decoded
    :class:`~nfsentry.packet.Packet`): storing one reference instead of seven values keeps the
    per-packet decision cheap, and the whole packet (TTL, window, options) stays available.
    A decision made by :meth:`Engine.process_raw` keeps the raw bytes instead and decodes them
    when ``packet`` is first read (on the daemon's worker thread, not on the verdict path);
    ``proto`` is stored, since the verdict needs it."""

    action: Action
    ts: float
    key: bytes  # masked source: 4 bytes (IPv4) or 16 bytes masked to the IPv6 prefix
    prefixlen: int  # 32 for IPv4, the IPv6 prefix for IPv6, 0 when there is no source
    pkt: Packet | None  # the decoded packet, or None until ``packet`` decodes ``raw``
    raw: bytes | None  # the packet's bytes (decisions of process_raw), else None
    proto: int  # transport protocol number (6, 17, ...)
    label: str  # scan label of this packet ("SYN", "UNKNOWN", ...)
    flags: str  # TCP flag letters in FSRPAUEC order ("" for non-TCP)
    labels: tuple  # labels seen from this source (reactions only)
    port_keys: tuple  # (proto << 16 | port) hit by this source, last-hit order (reactions only)
    hits: int  # hits counted for this source, this one included
    why: object  # the reason: its text, or what it is made of (see ``reason``)
    duration: float  # block seconds; 0 = until unblocked (BLOCK only)
    offences: int  # blocks of this source so far, this one included
    valve: object  # None, or what the safety valves did: a Refused (the block became an
    # alert) or an Admit with narrowed=True (the source address alone)

    @property
    def ports(self) -> tuple:
        """Distinct port numbers hit by this source (reactions only), last-hit order."""
        keys = self.port_keys
        if len(keys) < 2:
            return (keys[0] & 0xFFFF,) if keys else ()
        return tuple(dict.fromkeys(k & 0xFFFF for k in keys))

    @property
    def reason(self) -> str:
        """Why: ``"scan_trigger 0 reached: SYN to tcp/22; hits 1; labels SYN; ports tcp/22;
        offence 1, block 1h"``. Formatted on first access (not on the verdict path)."""
        why = self.why
        if not isinstance(why, str):
            why = self.why = _format_reason(self, why)  # type: ignore[arg-type]  # its parts
        return why

    @property
    def hint(self) -> str:
        """SYN shape hint on reactions (``"nmap"``, ``"no-options"``; see classify.syn_hint)."""
        return syn_hint(self.packet) if self.action == _ALERT or self.action == _BLOCK else ""

    @property
    def packet(self) -> Packet:
        """The decoded packet (decoded from ``raw`` on first access)."""
        p = self.pkt
        if p is None:
            p = self.pkt = decode(self.raw or b"")
        return p

    # the packet's own fields, read through ``packet`` (decoded on first use)
    src = property(lambda self: self.packet.src, doc="source address, raw bytes")
    dst = property(lambda self: self.packet.dst, doc="destination address, raw bytes")
    sport = property(lambda self: self.packet.sport)
    dport = property(lambda self: self.packet.dport)
    ip_options = property(lambda self: self.packet.ip_options)
    malformed = property(lambda self: self.packet.malformed, doc="why the packet is malformed, or None")

    @property
    def network(self) -> str:
        """What is (or would be) blocked: ``"198.18.0.2"`` or ``"2001:db8:1::/64"``."""
        return network_text(self.key, self.prefixlen)

    @property
    def family(self) -> int:
        n = len(self.packet.src)
        return 4 if n == 4 else 6 if n == 16 else 0

    proto_name = property(lambda self: _PROTO_NAME.get(self.proto, "other"))
    label_text = property(lambda self: label_text(self.label, self.flags), doc="UNKNOWN(SR) or the label")
    reacted = property(lambda self: self.action == _ALERT or self.action == _BLOCK)


def _format_reason(d: Decision, why: tuple) -> str:
    """ "<policies>: <label> to <proto/port>; hits n; labels ...; ports ...[; ip options ...]
    [; malformed: ...][; offence n, block <duration>]"."""
    instant_label, trigger_text, window_text, hits, labels, port_keys, block = why
    pkt = d.packet
    what = label_text(d.label, d.flags)
    policies = []
    if instant_label is not None:
        policies.append(f"instant {what}" if instant_label else "instant IP options")
    policies += [t for t in (trigger_text, window_text) if t]
    shown = ",".join(map(_port_text, port_keys[:20]))
    if len(port_keys) > 20:
        shown += f",... ({len(port_keys)} ports)"
    text = (
        f"{' + '.join(policies)}: {what} to {_port_text(pkt.proto << 16 | pkt.dport)}; hits {hits}; "
        f"labels {','.join(labels)}; ports {shown}"
    )
    if pkt.ip_options:
        text += f"; ip options {','.join(pkt.ip_options)}"
    if pkt.malformed is not None:
        text += f"; malformed: {pkt.malformed}"
    if block is not None:
        offences, duration = block
        text += f"; offence {offences}, block {format_duration(duration) if duration else 'until unblocked'}"
    return text


def _decision(
    action, ts, key, prefixlen, pkt, raw, proto, label, flags, labels, port_keys, hits, why, duration, offences, _D=Decision
) -> Decision:
    """Decision(...) without the dataclass __init__ call overhead (the hot path)."""
    d = _new(_D)
    d.action = action
    d.ts = ts
    d.key = key
    d.prefixlen = prefixlen
    d.pkt = pkt
    d.raw = raw
    d.proto = proto
    d.label = label
    d.flags = flags
    d.labels = labels
    d.port_keys = port_keys
    d.hits = hits
    d.why = why
    d.duration = duration
    d.offences = offences
    d.valve = None
    return d


def _default_instant() -> frozenset:
    return frozenset({"NULL", "XMAS", "FULL-XMAS", "UNKNOWN", "MALFORMED"})


def _default_respond() -> dict:
    return {"tcp": "block", "udp": "block"}


@dataclass
class EngineConfig:
    scan_trigger: int = 0  # hits allowed; hit N+1 reacts (0 = first); < 0 = off
    window_ports: int = 0  # K distinct ports within window_seconds; 0 = off
    window_seconds: float = 60.0  # also how long a quiet source is remembered
    instant_labels: frozenset = field(default_factory=_default_instant)  # empty = off
    respond: dict = field(default_factory=_default_respond)  # proto -> log | block | command
    block_duration: float = 3600.0  # 0 = until unblocked
    block_max_duration: float = 604800.0  # cap for escalation; 0 = no cap
    escalation_factor: float = 2.0
    ipv6_prefix: int = 64
    max_sources: int = DEFAULT_MAX_SOURCES
    max_ports_per_source: int = 64
    max_offenders: int = 100_000
    backscatter_guard: bool = True  # RST / RST+ACK / SYN+ACK never react

    def __post_init__(self):
        self.instant_labels = frozenset(self.instant_labels)
        respond = _default_respond()
        respond.update(self.respond or {})
        for proto, mode in respond.items():
            if mode not in RESPONSE_MODES:
                raise ValueError(f"respond[{proto!r}]: {mode!r} is not one of {', '.join(RESPONSE_MODES)}")
        self.respond = respond
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix {self.ipv6_prefix} outside 0-128")
        if self.max_sources < 1 or self.max_offenders < 1 or self.max_ports_per_source < 1:
            raise ValueError("max_sources, max_offenders and max_ports_per_source must be >= 1")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be > 0")


@dataclass(frozen=True)
class FirstHit:
    """The packets the engine reacts to whatever the source did before (its first hit included):
    what the kernel may block from the very rule that queues them (issue 17, the ruleset's
    kernel-side block). For clean packets (no fragment, decodable): options and malformed packets
    only add reactions, and the kernel never adds those on its own.

    ``tcp_flags``: the TCP flags bytes (0-255) that react; ``udp``: every UDP datagram reacts."""

    tcp_flags: frozenset
    udp: bool


def first_hit_reactions(cfg: EngineConfig) -> FirstHit:
    """Which packets react on any hit under ``cfg`` (the rules of :meth:`Engine.process`, step 4):
    every packet when ``scan_trigger`` is 0 or one port fills the window, else the instant labels
    (stream-shaped UNKNOWN excepted); the backscatter guard never reacts to a stack's replies.
    The response mode (log/block) is the caller's business. tests/unit/test_engine.py checks this
    against the engine, flags byte by flags byte."""
    every = cfg.scan_trigger == 0 or cfg.window_ports == 1
    tcp = frozenset(
        f
        for f in range(256)
        if (every or (_LABEL_BY_FLAGS[f] in cfg.instant_labels and not (_LABEL_BY_FLAGS[f] == "UNKNOWN" and _STREAM[f])))
        and not (cfg.backscatter_guard and _REPLY[f])
    )
    return FirstHit(tcp, every or "UDP" in cfg.instant_labels)


class _Source:
    """Per-source state (only for sources that were counted without a reaction).

    ``ports`` is one port key ``proto << 16 | port`` (an int, last hit at ``last``) while the
    source has hit a single port (most spoofed sources: no dict allocated), then a dict port key
    -> last hit time in last-hit order (oldest first), at most the per-source port cap."""

    __slots__ = ("hits", "ports", "labels", "protos", "first", "last", "seen")
    hits: int
    ports: Any  # int (one port key) or dict port key -> last hit
    labels: tuple
    protos: int
    first: float
    last: float
    seen: bool


_source = partial(_new, _Source)  # a new, empty _Source (no __init__ call)

_fastpath: Any
try:  # the compiled common cases of process_raw (nfsentry/core/_fastpath.c); optional
    from . import _fastpath  # type: ignore[attr-defined, no-redef]
except ImportError:  # pragma: no cover - the package build always compiles it
    _fastpath = None


def compiled_available() -> bool:
    """Is the compiled fast path importable (and not disabled by NFSENTRY_PURE_PYTHON=1)?"""
    return _fastpath is not None and not os.environ.get("NFSENTRY_PURE_PYTHON")


class Engine:
    """See the module docstring. ``ignore`` and ``expectations`` may be replaced at any time
    (e.g. when the host's addresses change).

    ``compiled``: None (default) uses the compiled fast path for :meth:`process_raw` when it is
    available (see :func:`compiled_available`), True requires it (ImportError otherwise), False
    runs pure Python. Either way the rules are the Python body's: the compiled part decides only
    the common cases where that body would certainly decide the same, and calls it for the rest
    (tests/unit/test_engine_compiled.py compares both, decision by decision and state by state).
    ``self.compiled`` says which is active.

    The clock (``now``) is seconds: a float, or an int that a double holds exactly (|now| <=
    2**53, some 285 million years). A compiled per-source record keeps its times as doubles."""

    def __init__(self, cfg: EngineConfig | None = None, ignore: PrefixSet | None = None, expectations=None, compiled: bool | None = None):
        if compiled and _fastpath is None:
            raise ImportError("nfsentry._fastpath is not built (pip install the package to compile it)")
        self.compiled = compiled_available() if compiled is None else bool(compiled)
        # per-source records: the compiled module's own type when it is used (it reads them directly)
        self._new_source = _fastpath.Source if self.compiled else _source
        self.ignore = ignore
        self.expectations = expectations
        self.valves = None  # core.valves.Valves: consulted before a block is recorded (None: none)
        # Tracked sources: a plain dict plus a CLOCK (second-chance) queue of its keys in
        # insertion order. See _evict(); stale queue entries are skipped and compacted away.
        self._states: dict[bytes, _Source] = {}
        self._clock: deque[bytes] = deque()
        self._blocked: OrderedDict[bytes, float] = OrderedDict()  # key -> until (inf = forever)
        self._block_heap: list[tuple[float, bytes]] = []  # (until, key), finite blocks
        self._offenders: OrderedDict[bytes, int] = OrderedDict()
        # per-action decision counts, then the hot path's own counters (see _EVICTED ...)
        self._counts = [0] * (len(Action) + 6)
        self._expired_sources = 0
        self.configure(cfg or EngineConfig())

    def configure(self, cfg: EngineConfig) -> None:
        """(Re)load the configuration, keeping state. Caps shrink lazily on the next insert."""
        self.cfg = cfg
        # hit N+1 reacts (hits > N); scan_trigger < 0 (off) is never exceeded
        self._trigger = cfg.scan_trigger if cfg.scan_trigger >= 0 else INF
        self._window_ports = cfg.window_ports
        self._window = float(cfg.window_seconds)
        self._instant = cfg.instant_labels
        self._ipopts_instant = "IPOPTS" in cfg.instant_labels
        self._react_tcp = _ALERT if cfg.respond.get("tcp", "block") == "log" else _BLOCK
        self._react_udp = _ALERT if cfg.respond.get("udp", "block") == "log" else _BLOCK
        self._v6len = cfg.ipv6_prefix
        self._mask6 = masker(cfg.ipv6_prefix)
        self._max_sources = cfg.max_sources
        self._max_offenders = cfg.max_offenders
        self._port_cap = max(cfg.max_ports_per_source, cfg.window_ports)
        self._guard = cfg.backscatter_guard
        self._durations = [0.0] + [self.duration_for(n) for n in range(1, 65)]  # by offences
        self._trigger_text = f"scan_trigger {cfg.scan_trigger} reached"
        self._window_text = f"window {cfg.window_ports} ports in {format_duration(self._window)} reached"
        self.process, self.process_raw = self._build_process()  # type: ignore[method-assign]

    # ------------------------------------------------------------------------------------------
    # the hot path

    def process(self, pkt, now: float) -> Decision:
        """Decide for one queued packet (a decoded :class:`~nfsentry.packet.Packet`).

        (Documentation only: :meth:`configure` installs the closure built by
        :meth:`_build_process` as the instance's ``process``.)"""
        return self._build_process()[0](pkt, now)  # pragma: no cover - shadowed by the instance attribute

    def process_raw(self, raw: bytes, now: float) -> Decision | int:
        """Decide for one queued packet given as the raw bytes NFQUEUE hands over (the daemon's
        hot path): the same decision as ``process(decode(raw), now)``, and the same state
        changes, but without building a :class:`~nfsentry.packet.Packet` or a
        :class:`Decision` when nothing reacted.

        Returns a :class:`Decision` for reactions (ALERT, BLOCK); for PASS, IGNORE, COUNT and
        DROP it returns a small int, ``action << LEAN_SHIFT | proto`` (see :func:`lean_code`), which is
        all a verdict needs. The common shapes (IPv4 without options, IPv6 without extension
        headers, unfragmented TCP or UDP) are read straight from the bytes with the same checks
        as :func:`~nfsentry.packet.decode`'s fast path; anything else goes through ``decode``.
        A property test proves both entry points agree, packet for packet.

        (Documentation only, like :meth:`process`.)"""
        return self._build_process()[1](raw, now)  # pragma: no cover - shadowed by the instance attribute

    # fmt: off
    def _build_process(self):
        """The hot path, as closures over the configuration and the state tables, so that every
        per-packet read is a local or closure variable instead of an attribute lookup. The state
        tables are never rebound (only mutated), so the closures always see the live state;
        ``ignore`` and ``expectations`` are read from the engine on each call (replaceable).

        One body (``run``) serves both entry points: ``process(pkt, now)`` (a decoded Packet,
        a Decision back) and ``process_raw(raw, now)`` (bytes; a lean int back when nothing
        reacted), which is ``run`` itself. Returns ``(process, process_raw)``.

        Kept whole, the one function over 80 lines (and why ``Engine`` is over 400): ``run`` is the
        measured hot path. Every helper call or attribute lookup split out of it costs on each
        packet (bench/bench_core.py; the daemon's loop holds 0.8 of a bare NetfilterQueue loop
        only with this shape), and its numbered sections (1. the packet ... 5. a reaction) read
        top to bottom as the rules. Hand-formatted (fmt: off): one decision per line."""
        engine = self
        counts = self._counts
        states = self._states
        clock = self._clock
        clock_append = clock.append
        evict = self._evict
        blocked = self._blocked
        offenders = self._offenders
        max_offenders = self._max_offenders
        block_heap = self._block_heap
        durations = self._durations
        react_tcp, react_udp = self._react_tcp, self._react_udp
        trigger_text, window_text = self._trigger_text, self._window_text
        mask6 = self._mask6
        v6len = self._v6len
        window = self._window
        window_ports = self._window_ports
        port_cap = self._port_cap
        instant_labels = self._instant
        ipopts_instant = self._ipopts_instant
        trigger = self._trigger
        guard = self._guard
        max_sources = self._max_sources
        new_source = self._new_source
        v4tcp, v4udp, v6tcp, v6udp = _LEAN_V4TCP, _LEAN_V4UDP, _LEAN_V6TCP, _LEAN_V6UDP
        # the fast shapes' checks, by the names core/packet.py defines (decode() uses the same)
        ip4_no_options, frag_bits, ip4_hdr, ip6_hdr, tcp_hdr, udp_hdr = (P.IP4_NO_OPTIONS, P.IP4_FRAG_BITS, P.IP4_HDR,
                                                                   P.IP6_HDR, P.TCP_HDR, P.UDP_HDR)
        v4tcp_min, v4udp_min, v6tcp_min, v6udp_min = P.V4TCP_MIN, P.V4UDP_MIN, P.V6TCP_MIN, P.V6UDP_MIN
        ip4_proto_at, ip6_next_at = P.IP4_PROTO_AT, P.IP6_NEXT_AT
        # lean results and per-action counter indexes as plain ints (see lean_code)
        lean_pass, lean_ignore, lean_count, lean_drop = (lean_code(a, 0) for a in (_PASS, _IGNORE, _COUNT, _DROP))
        i_pass, i_ignore, i_count, i_drop = int(_PASS), int(_IGNORE), int(_COUNT), int(_DROP)
        label_by_flags, stream, reply, flag_strings = _LABEL_BY_FLAGS, _STREAM, _REPLY, _FLAG_STRINGS
        bad_checksum = P.bad_checksum

        def badsum(raw, pkt) -> bool:
            """Would-be reaction with a wrong TCP/UDP checksum: counted, never reacted to."""
            if bad_checksum(raw, pkt):
                counts[_BADSUM] += 1
                return True
            return False

        def run(raw, now, pkt=None):
            # -- 1. the packet: fast shapes straight from the bytes (pkt stays None until a
            #    Decision needs it), everything else through the reference decoder
            if pkt is None:
                n = len(raw)
                if n >= v4udp_min:
                    b0 = raw[0]
                    if b0 == ip4_no_options:
                        proto = raw[ip4_proto_at]
                        if proto == 6:
                            if n >= v4tcp_min:
                                tot, frag, src, dport, doff, flags = v4tcp(raw)
                                if v4tcp_min <= tot <= n and not frag & frag_bits and \
                                        tcp_hdr <= (doff >> 4) << 2 <= tot - ip4_hdr:
                                    key = src
                                    plen = 32
                                else:
                                    pkt = decode(raw)
                            else:
                                pkt = decode(raw)
                        elif proto == 17:
                            tot, frag, src, dport, ulen = v4udp(raw)
                            if v4udp_min <= tot <= n and not frag & frag_bits and udp_hdr <= ulen <= tot - ip4_hdr:
                                key = src
                                plen = 32
                                flags = 0
                            else:
                                pkt = decode(raw)
                        else:
                            pkt = decode(raw)
                    elif b0 >> 4 == 6 and n >= v6udp_min:
                        proto = raw[ip6_next_at]
                        if proto == 6:
                            if n >= v6tcp_min:
                                pl, src, dport, doff, flags = v6tcp(raw)
                                if tcp_hdr <= pl <= n - ip6_hdr and tcp_hdr <= (doff >> 4) << 2 <= pl:
                                    key = mask6(src)
                                    plen = v6len
                                else:
                                    pkt = decode(raw)
                            else:
                                pkt = decode(raw)
                        elif proto == 17:
                            pl, src, dport, ulen = v6udp(raw)
                            if udp_hdr <= pl <= n - ip6_hdr and udp_hdr <= ulen <= pl:
                                key = mask6(src)
                                plen = v6len
                                flags = 0
                            else:
                                pkt = decode(raw)
                        else:
                            pkt = decode(raw)
                    else:
                        pkt = decode(raw)
                else:
                    pkt = decode(raw)
                lean = True
            else:
                lean = False
            if pkt is None:                 # a fast shape: clean, unfragmented, no IP options
                clean = True
                ipopts = ()
                label = label_by_flags[flags] if proto == 6 else "UDP"
            else:
                src = pkt.src
                proto = pkt.proto
                dport = pkt.dport
                flags = pkt.flags
                ipopts = pkt.ip_options
                clean = pkt.malformed is None and not pkt.frag_offset
                # classify()'s TCP rule, inlined for the common case (a test proves they agree)
                label = label_by_flags[flags] if proto == 6 and clean else classify(pkt)
                if len(src) == 4:
                    key = src
                    plen = 32
                elif len(src) == 16:
                    key = mask6(src)
                    plen = v6len
                else:
                    counts[_UNDECODABLE] += 1
                    counts[i_count] += 1
                    if lean:
                        return lean_count | proto
                    return _decision(_COUNT, now, b"", 0, pkt, raw, proto, label, flag_strings[flags] if proto == 6 else "",
                                     (), (), 0, "undecodable packet: no source address", 0.0, 0)

            # -- 2. ignore list, FTP data expectations, sources already blocked
            ignore = engine.ignore
            # (the set's prefilter inlined: most sources fail it, and then no call is made)
            if ignore is not None and (src in ignore.exact or (
                    src[0] in ignore.pre4 if len(src) == 4
                    else ignore.pre6 is None or src[:ignore.pre6_bytes] in ignore.pre6)) and ignore.contains(src):
                counts[i_ignore] += 1
                if lean:
                    return lean_ignore | proto
                return _decision(_IGNORE, now, key, plen, pkt, raw, proto, label, flag_strings[flags] if proto == 6 else "",
                                 (), (), 0, "source in the ignore list", 0.0, 0)
            expectations = engine.expectations
            if proto == 6 and expectations is not None and clean and expectations.pending:
                if pkt is None:
                    pkt = decode(raw)
                if expectations.match(src, pkt.dst, dport, now, pkt.sport):
                    counts[i_pass] += 1
                    if lean:
                        return lean_pass | proto
                    return _decision(_PASS, now, key, plen, pkt, raw, proto, label, flag_strings[flags], (), (), 0,
                                     "expected FTP data connection", 0.0, 0)
            until = blocked.get(key)
            if until is not None:
                if now < until:
                    counts[i_drop] += 1
                    if lean:
                        return lean_drop | proto
                    return _decision(_DROP, now, key, plen, pkt, raw, proto, label, flag_strings[flags] if proto == 6 else "",
                                     (), (), 0, "already blocked", 0.0, 0)
                del blocked[key]
                counts[_EXPIRED_BLOCKS] += 1

            # -- 3. record the hit: hits and distinct ports so far, this packet included
            pk = (proto << 16) | dport
            st = states.get(key)
            if st is None or now - st.last > window:   # new, or quiet longer than the window
                hits = nports = 1
            else:
                st.seen = True                 # CLOCK reference bit: spare it once
                hits = st.hits = st.hits + 1
                if label not in st.labels:
                    st.labels += (label,)
                st.protos |= 1 if proto == 6 else 2 if proto == 17 else 4
                ports = st.ports
                if ports.__class__ is int:
                    if ports == pk:
                        nports = 1
                    elif port_cap > 1:
                        st.ports = {ports: st.last, pk: now}
                        nports = 2
                    else:
                        st.ports = pk
                        nports = 1
                else:
                    if pk in ports:
                        del ports[pk]
                    elif len(ports) >= port_cap:
                        del ports[next(iter(ports))]
                    ports[pk] = now
                    if window_ports:     # last-hit order: prune the ports that left the window
                        oldest = now - window
                        if ports[next(iter(ports))] < oldest:
                            for stale in [p for p, t in ports.items() if t < oldest]:
                                del ports[stale]
                    nports = len(ports)
                st.last = now

            # -- 4. the policies
            instant = (label in instant_labels and not (label == "UNKNOWN" and stream[flags])) \
                or (ipopts_instant and ipopts)
            triggered = hits > trigger
            windowed = window_ports and nports >= window_ports
            # (the checksum is read only when a packet would react: a bad one never does)
            if not (instant or triggered or windowed) or (guard and proto == 6 and reply[flags] and clean) or (
                    raw is not None and (proto == 6 or proto == 17) and badsum(raw, pkt)):
                if hits == 1:                  # (re)start the source's state
                    if st is None:
                        st = new_source()
                        st.seen = False
                        states[key] = st
                        clock_append(key)
                        if len(states) > max_sources:
                            evict()
                        elif len(clock) > 2 * len(states) + 64:
                            engine._compact_clock()
                    else:
                        st.seen = True
                    st.hits = 1
                    st.ports = pk
                    st.labels = _ONE_LABEL.get(label) or (label,)
                    st.protos = 1 if proto == 6 else 2 if proto == 17 else 4
                    st.first = st.last = now
                counts[i_count] += 1
                if lean:
                    return lean_count | proto
                return _decision(_COUNT, now, key, plen, pkt, raw, proto, label, flag_strings[flags] if proto == 6 else "",
                                 (), (), hits, "counted", 0.0, 0)
            # -- 5. a reaction (once per reacting source): resets the source's counts
            if hits == 1:
                if st is not None:
                    del states[key]
                port_keys = (pk,)
                labels = (label,)
            else:
                del states[key]
                ports = st.ports
                port_keys = (ports,) if ports.__class__ is int else tuple(ports)
                labels = st.labels
            action = react_udp if proto == 17 else react_tcp
            valve = None
            if action is _BLOCK and engine.valves is not None:   # before anything is recorded
                valve = engine.valves.judge(key, plen, src, now)
                if valve is _DUPLICATE:       # blocked alone moments ago: its kernel block is landing
                    counts[i_drop] += 1
                    if lean:
                        return lean_drop | proto
                    return _decision(_DROP, now, key, plen, pkt, raw, proto, label,
                                     flag_strings[flags] if proto == 6 else "", (), (), 0, "already blocked", 0.0, 0)
                if valve.__class__ is _Admit:
                    key, plen = valve.key, valve.prefixlen
                else:
                    action = _ALERT
            offences = offenders.get(key, 0)
            if action is _BLOCK:
                offences += 1
                offenders[key] = offences
                if offences > 1:
                    offenders.move_to_end(key)
                else:
                    while len(offenders) > max_offenders:     # least recently offending first
                        offenders.popitem(last=False)
                        counts[_OFFENDERS_EVICTED] += 1
                duration = durations[offences] if offences < 65 else engine.duration_for(offences)
                # the key is not in ``blocked`` here (an ended block was deleted above)
                if valve is not None and valve.narrowed:
                    pass   # looked up by prefix, never by this key: the kernel drops the address
                elif duration > 0:
                    until = now + duration
                    blocked[key] = until
                    heappush(block_heap, (until, key))   # expire() pops ended blocks off this heap
                    if len(block_heap) > 2 * len(blocked) + 64:
                        engine._rebuild_block_heap()
                else:
                    blocked[key] = INF
                while len(blocked) > max_sources:             # oldest block first
                    blocked.popitem(last=False)
                    counts[_BLOCKED_EVICTED] += 1
                block = (offences, duration)
            else:
                duration = 0.0
                block = None
            counts[action] += 1
            # The reason text is formatted when first read (_format_reason), which the daemon does
            # on its worker thread: the verdict path only stores what the text is made of.
            why = (label in instant_labels if instant else None, trigger_text if triggered else None,
                   window_text if windowed else None, hits, labels, port_keys, block)
            d = _decision(action, now, key, plen, pkt, raw, proto, label,
                          flag_strings[flags] if proto == 6 else "", labels, port_keys, hits, why,
                          duration, offences)
            if valve is not None and (valve.__class__ is not _Admit or valve.narrowed):
                d.valve = valve
            return d

        def process(pkt, now: float) -> Decision:
            return run(None, now, pkt)

        process.__doc__ = Engine.process.__doc__
        run.__doc__ = Engine.process_raw.__doc__
        if not self.compiled:
            return process, run      # run(raw, now) is process_raw: no wrapper on the hot path
        labels = _LABEL_BY_FLAGS + ("UDP",)          # by TCP flags byte, [256] for UDP
        instant = bytes((label in instant_labels and not (label == "UNKNOWN" and f < 256 and _STREAM[f]))
                        for f, label in enumerate(labels))
        fast = _fastpath.FastPath(
            engine=self, states=states, blocked=blocked, counts=counts, clock=clock, fallback=run,
            labels=labels, one_labels=tuple(_ONE_LABEL.get(label) or (label,) for label in labels),
            instant=instant, window=window, trigger=float(trigger), window_ports=window_ports,
            port_cap=port_cap, max_sources=max_sources, v6len=v6len)
        return process, fast
    # fmt: on

    def _evict(self) -> None:
        """Bring the tracked sources back under ``max_sources`` (CLOCK, an approximation of LRU).

        The hand walks the queue of keys in insertion order: a source seen again since the hand
        last passed it (its ``seen`` bit) is spared once (bit cleared, key queued again at the
        back); the first one not seen again is evicted. One-off sources (a spoofed flood) go
        first; sources that keep hitting survive. Unlike an ordered dict moved on every hit, a
        hit costs one bit, and nothing touches neighbouring entries (cache misses dominate the
        per-packet cost once 100,000 sources are tracked)."""
        states, clock, counts = self._states, self._clock, self._counts
        while len(states) > self._max_sources:
            key = clock.popleft()
            st = states.get(key)
            if st is None:
                continue  # already gone (reaction, forget, expire)
            if st.seen:
                st.seen = False
                clock.append(key)
                continue
            del states[key]
            counts[_EVICTED] += 1
        if len(clock) > 2 * len(states) + 64:
            self._compact_clock()

    def _compact_clock(self) -> None:
        """Drop queue entries of keys no longer tracked (keeps the queue within 2x the table)."""
        clock = self._clock
        clock.clear()
        clock.extend(self._states)

    # ------------------------------------------------------------------------------------------
    # reactions (not the hot path: once per reacting source)

    reconfigure = configure

    def duration_for(self, offences: int) -> float:
        """Block duration for a source's ``offences``-th block (0 = until unblocked)."""
        cfg = self.cfg
        base = float(cfg.block_duration)
        if base <= 0:
            return 0.0
        cap = float(cfg.block_max_duration)
        factor = float(cfg.escalation_factor)
        try:
            d = base * factor ** max(0, offences - 1) if factor > 1 else base
        except OverflowError:
            d = INF
        if cap > 0:
            d = min(d, cap)
        return 0.0 if d == INF else d

    def _put(self, table: OrderedDict, key: bytes, value, cap: int, counter: int) -> None:
        """``table[key] = value`` as its newest entry, then the cap (oldest entries go, counted)."""
        table[key] = value
        table.move_to_end(key)
        self._trim(table, cap, counter)

    def _set_offences(self, key: bytes, offences: int) -> None:
        self._put(self._offenders, key, offences, self._max_offenders, _OFFENDERS_EVICTED)

    def _set_blocked(self, key: bytes, until: float) -> None:
        """Record a block (restoration and manual blocks; the packet path inlines this)."""
        self._put(self._blocked, key, until, self._max_sources, _BLOCKED_EVICTED)
        if until != INF:  # expire() pops ended blocks from this heap instead of scanning
            heap = self._block_heap
            heappush(heap, (until, key))
            if len(heap) > 2 * len(self._blocked) + 64:
                self._rebuild_block_heap()

    def _trim(self, table: OrderedDict, cap: int, counter: int) -> None:
        """Forget the oldest entries beyond ``cap`` (counted at ``counter``)."""
        while len(table) > cap:
            table.popitem(last=False)
            self._counts[counter] += 1

    def _trim_blocked(self) -> None:
        """Forget the oldest blocks beyond ``max_sources``."""
        self._trim(self._blocked, self._max_sources, _BLOCKED_EVICTED)

    def _trim_offenders(self) -> None:
        """Forget the least recently offending sources beyond ``max_offenders``."""
        self._trim(self._offenders, self._max_offenders, _OFFENDERS_EVICTED)

    def _rebuild_block_heap(self) -> None:
        """Drop heap entries of replaced, forgotten or evicted blocks."""
        heap = self._block_heap
        heap[:] = [(u, k) for k, u in self._blocked.items() if u != INF]
        heapify(heap)

    # ------------------------------------------------------------------------------------------
    # maintenance and restoration

    def _key(self, network) -> tuple[bytes, int, bool]:
        """network text / raw bytes -> (key, prefixlen, exact). ``exact`` is False when the network
        is wider than one engine key (an IPv4 CIDR shorter than /32, an IPv6 prefix shorter than
        ``ipv6_prefix``)."""
        family, netkey, plen = parse_key(network)
        if family == 4:
            return netkey, plen, plen >= 32
        if plen >= self._v6len:
            return mask(netkey, self._v6len), self._v6len, True
        return netkey, plen, False

    def forget(self, network) -> int:
        """Drop the state, block and offences of a source (the unblock path). ``network`` is the
        text the decision reported (``"198.18.0.2"``, ``"2001:db8:1::/64"``), any address inside
        the key (an IPv6 address is masked to ``ipv6_prefix``), a wider CIDR (every key inside
        is forgotten), or raw key bytes. Returns the number of distinct keys forgotten."""
        key, plen, exact = self._key(network)
        maps = (self._states, self._blocked, self._offenders)
        if exact:
            found = [m.pop(key, None) is not None for m in maps]
            return 1 if any(found) else 0
        gone = set()
        for m in maps:
            for k in [k for k in m if len(k) == len(key) and mask(k, plen) == key]:
                del m[k]
                gone.add(k)
        return len(gone)

    def mark_blocked(self, key, *args, until: float | None = None, prefixlen: int | None = None) -> bool:
        """Restore a block at start-up (or record a manual one).

        Call shapes: ``mark_blocked(network_text, until)``, ``mark_blocked(key_bytes, prefixlen,
        until)`` (or keywords). ``network_text`` is what decisions report (``"198.18.0.2"``,
        ``"2001:db8:1::/64"``; an IPv6 address is masked to ``ipv6_prefix``). ``until`` is the
        end of the block on the engine's clock; None or 0 = until unblocked. Networks wider than
        one engine key (a manual block of a CIDR) are not tracked (the kernel set drops their
        packets before they are queued): returns False for those, True otherwise."""
        if len(args) == 2:
            prefixlen, until = args
        elif len(args) == 1:
            until = args[0]
        elif args:
            raise TypeError("mark_blocked(key, until) or mark_blocked(key, prefixlen, until)")
        if isinstance(key, (bytes, bytearray)) and prefixlen is not None:
            key = network_text(bytes(key), prefixlen)
        k, _plen, exact = self._key(key)
        if not exact:
            return False
        self._states.pop(k, None)
        self._set_blocked(k, float(until) if until else INF)
        return True

    def restore_offender(self, key, offences: int, prefixlen: int | None = None) -> bool:
        """Restore a source's offence count at start-up (key as for :meth:`mark_blocked`)."""
        if isinstance(key, (bytes, bytearray)) and prefixlen is not None:
            key = network_text(bytes(key), prefixlen)
        k, _plen, exact = self._key(key)
        if not exact or offences <= 0:
            return False
        self._set_offences(k, int(offences))
        return True

    def expire(self, now: float) -> int:
        """Forget sources quiet for longer than ``window_seconds`` and blocks that ended.
        Returns how many entries were dropped. Call it about once a second: ended blocks come
        off a heap (cost per ended block), quiet sources take one pass over the tracked sources
        (~5 ms per 100,000 on the bench machine). Nothing depends on it for correctness: the
        packet path checks block ends and quiet periods itself; this reclaims the memory."""
        states = self._states
        limit = now - self._window
        quiet = [k for k, st in states.items() if st.last < limit]
        for k in quiet:
            del states[k]
        n = len(quiet)
        self._expired_sources += n
        if len(self._clock) > 2 * len(states) + 64:
            self._compact_clock()
        blocked, heap = self._blocked, self._block_heap
        ended = 0
        while heap and heap[0][0] <= now:
            until, k = heappop(heap)
            if blocked.get(k) == until:  # not replaced, forgotten or evicted since
                del blocked[k]
                ended += 1
        self._counts[_EXPIRED_BLOCKS] += ended
        return n + ended

    # ------------------------------------------------------------------------------------------
    # inspection

    def is_blocked(self, network, now: float) -> bool:
        key, _plen, exact = self._key(network)
        until = self._blocked.get(key) if exact else None
        return until is not None and now < until

    def blocked(self) -> list[tuple[str, float | None]]:
        """``[(network, until or None for until-unblocked)]`` for every remembered block."""
        return [(self._network(k), None if u == INF else u) for k, u in self._blocked.items()]

    def offences(self, network) -> int:
        key, _plen, exact = self._key(network)
        return self._offenders.get(key, 0) if exact else 0

    def source(self, network) -> dict | None:
        """The tracked state of one source, for status output."""
        key, _plen, exact = self._key(network)
        st = self._states.get(key) if exact else None
        if st is None:
            return None
        return {
            "network": self._network(key),
            "hits": st.hits,
            "ports": [_port_text(p) for p in ((st.ports,) if st.ports.__class__ is int else st.ports)],
            "labels": list(st.labels),
            "protocols": [n for bit, n in ((1, "tcp"), (2, "udp"), (4, "other")) if st.protos & bit],
            "first": st.first,
            "last": st.last,
        }

    def _network(self, key: bytes) -> str:
        return network_text(key, 32 if len(key) == 4 else self._v6len)

    @property
    def stats(self) -> dict:
        c = self._counts
        return {
            "tracked": len(self._states),
            "blocked": len(self._blocked),
            "offenders": len(self._offenders),
            "evicted": c[_EVICTED],
            "blocked_evicted": c[_BLOCKED_EVICTED],
            "offenders_evicted": c[_OFFENDERS_EVICTED],
            "expired_sources": self._expired_sources,
            "expired_blocks": c[_EXPIRED_BLOCKS],
            "undecodable": c[_UNDECODABLE],
            "badsum": c[_BADSUM],  # would have reacted, but the TCP/UDP checksum is wrong: counted only
            "packets": sum(c[: len(Action)]),
            **{a.name.lower(): c[a] for a in Action},
            # packets decided by the compiled fast path / handed to the Python body (since the
            # last configure; 0 when running pure Python)
            "compiled_handled": getattr(self.process_raw, "handled", 0),
            "compiled_fallbacks": getattr(self.process_raw, "fallbacks", 0),
        }


_PORT_TEXT: dict[int, str] = {}


def _port_text(pk: int) -> str:
    """Port key (proto << 16 | port) -> "tcp/22" (cached: the same few thousand ports recur)."""
    text = _PORT_TEXT.get(pk)
    if text is None:
        text = f"{_PROTO_NAME.get(pk >> 16, 'other')}/{pk & 0xFFFF}"
        if len(_PORT_TEXT) < 200_000:
            _PORT_TEXT[pk] = text
    return text
