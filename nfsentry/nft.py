"""nfsentry's nftables layer: render the ruleset, load it atomically, and manage its sets.

Everything nfsentry does in the kernel lives in one table, ``inet nfsentry`` (see docs/DESIGN.md
and the commented files under ``rules/``, which are this module's output: ``render()`` is the single
source of truth, ``python -m nfsentry.nft --write-shipped rules`` regenerates them and a unit test
checks they agree).

Two queue backends:

* ``native``: the rules end in ``queue flags bypass to N`` (kernel module nft_queue).
* ``compat``: for kernels without nft_queue. Our chains keep all the policy and only *mark* the
  packets to queue (``meta mark set ...``, bits ``mark_mask``); one ``iptables-nft`` /
  ``ip6tables-nft`` rule per family, hook and queue (``-m mark --mark V/M -j NFQUEUE --queue-num N
  --queue-bypass``, tagged ``-m comment --comment nfsentry``) queues marked packets. Those rules
  are inert without our marks, so they are installed before the nft transaction and removed after
  the table is gone; unload removes exactly the tagged rules and never a table or chain.

``Nft.probe_backend()`` tries the native statement in a dry-run transaction (nothing is ever
committed) and ``Nft.probe_socket()`` does the same for the ``socket`` expression (in-use ports);
without it the ``poll`` fallback keeps the monitored port sets equal to "monitored minus in use"
from ``/proc/net`` (``nfsentry/inuse.py``).

Blocked sources: single addresses live in hash sets (``blocked4``, ``blocked6``), the daemon's IPv6
prefixes in ``blocked6_<len>`` (a hash set of network addresses matched through a mask) and any
other prefix in the interval sets ``blocked4net`` / ``blocked6net``. Hash sets keep a block an
O(1) update: libnftables 1.0.6 re-reads the content of every interval set in the ruleset before
each element change, which made one block cost ~0.6 s with 100,000 blocks in an interval set.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

try:  # the Debian package python3-nftables (libnftables' own bindings)
    import nftables as _nftables
except ImportError:  # pragma: no cover - depends on the machine
    _nftables = None

from nfsentry import inuse as _inuse

log = logging.getLogger("nfsentry.nft")

MISSING_BINDINGS = ("the nftables Python bindings are missing: install the Debian package "
                    "python3-nftables (apt install python3-nftables)")

VARIANTS = ("host", "gateway", "observe")
BACKENDS = ("native", "compat")
INUSE_METHODS = ("auto", "socket", "poll", "off")
FTP_PORT = 21
PROBE_TABLE = "nfsentry_probe"
# A set listing is taken until it is provably complete (Nft._set_items), at most this often.
LIST_ATTEMPTS = 8
# Fewer elements than this come in one netlink message, dumped at once: no second listing needed.
ONE_MESSAGE = 32
# An element whose time left was below (start of one listing to the end of the next + this) may
# vanish between them (the end, not the start: where in a listing an element is read depends on how
# fast the dump ran, and a busy machine can make one listing seconds slower than the one before).
EXPIRY_SLACK = 1.5

# PortSentry's classic ports beyond 1-1023 (Debian's portsentry.conf); keep equal to config.py's
# (a unit test checks they agree).
TROJAN_TCP = (1080, 1524, 2000, 5742, 6667, 12345, 12346, 20034, 27665, 31337,
              32771, 32772, 32773, 32774, 40421, 49724, 54320)
TROJAN_UDP = (31335, 31337, 32770, 32771, 32772, 32773, 32774, 34555, 37444, 54321)

# Named counters (nft objects: `nft list counters table inet nfsentry`).
COUNTERS = {
    "blocked_pkts4": "packets from blocked IPv4 sources (dropped, or only counted in observe mode)",
    "blocked_pkts6": "packets from blocked IPv6 sources (dropped, or only counted in observe mode)",
    "queued_tcp": "TCP packets handed to the scan verdict loop",
    "queued_udp": "UDP packets handed to the scan verdict loop",
    "queued_ftp": "FTP control packets handed to the FTP tracker",
}


# == errors =====================================================================================
class NftError(RuntimeError):
    """libnftables refused something. ``error`` is nft's own text, ``command`` what was sent."""

    def __init__(self, what: str, error: str = "", command: str = "") -> None:
        self.what, self.error, self.command = what, error.strip(), command
        lines = [ln.strip() for ln in self.error.splitlines() if ln.strip().startswith("Error")]
        detail = "; ".join(dict.fromkeys(lines)) or self.error.splitlines()[0].strip() if self.error else ""
        super().__init__(f"{what}: {detail}" if detail else what)


class NftInconsistent(NftError):
    """A set kept changing while it was listed: no complete listing could be had."""


class NftUnavailable(NftError):
    """The bindings or a needed tool are missing."""


class SpecError(NftError, ValueError):
    """The RulesetSpec is invalid (nothing was sent to the kernel)."""


# == the ruleset specification ==================================================================
def _ports(items: Iterable[Any], what: str) -> list[tuple[int, int]]:
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{what}: bad port {item!r}")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            lo, hi = int(item[0]), int(item[1])
        elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", item):
            parts = [int(p) for p in item.split("-")]
            lo, hi = parts[0], parts[-1]
        else:
            raise ValueError(f"{what}: bad port or range {item!r}")
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"{what}: bad port range {item!r} (1-65535, start <= end)")
        out.append((lo, hi))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(out):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _networks(items: Iterable[Any], what: str) -> tuple[list, list]:
    """-> (collapsed IPv4 networks, collapsed IPv6 networks)."""
    v4, v6 = [], []
    for item in items:
        try:
            net = ipaddress.ip_network(str(item).strip(), strict=False)
        except ValueError:
            raise ValueError(f"{what}: bad address or prefix {item!r}") from None
        (v4 if net.version == 4 else v6).append(net)
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


@dataclass
class RulesetSpec:
    """What to render and load. ``config.py`` builds it from the configuration.

    Ports are lists of ``(lo, hi)`` (ints and "a-b" strings are accepted too); networks are
    address/CIDR strings, IPv4 and IPv6 mixed.
    """
    variant: str = "host"                  # host | gateway | observe
    tcp_ports: list = field(default_factory=lambda: [(1, 1023), *((p, p) for p in TROJAN_TCP)])
    udp_ports: list = field(default_factory=lambda: [(1, 1023), *((p, p) for p in TROJAN_UDP)])
    ignore: list = field(default_factory=list)    # sources never queued (own addresses, gateways, ...)
    protect: list = field(default_factory=list)   # gateway: the networks behind it (forwarded traffic to them is watched)
    queue: int = 0                          # scan verdict loop
    ftp_queue: int = 1                      # FTP control tracker
    ftp: bool = True                        # queue FTP control packets to ftp_queue
    inuse: str = "auto"                     # auto | socket | poll | off
    mark: int = 0x4E460000                  # compat backend: value of nfsentry's mark bits (low 2 bits: 1 scan, 2 ftp)
    mark_mask: int = 0xFFFF0003             # compat backend: the packet-mark bits nfsentry owns
    table: str = "nfsentry"
    ipv6_prefix: int = 64                   # the daemon's IPv6 block prefix (hash set blocked6_<len>)
    backend: str = "auto"                   # auto | native | compat
    bypass: bool = True                     # scan queue: no daemon listening -> packet passes (fail-open)

    def normalized(self) -> "RulesetSpec":
        """A validated copy (merged port ranges, collapsed networks). Raises SpecError (a ValueError)."""
        try:
            return self._normalized()
        except SpecError:
            raise
        except (ValueError, TypeError) as e:
            raise SpecError(f"invalid ruleset specification: {e}") from None

    def _normalized(self) -> "RulesetSpec":
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if self.inuse not in INUSE_METHODS:
            raise ValueError(f"inuse must be one of {', '.join(INUSE_METHODS)}, not {self.inuse!r}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be auto, native or compat, not {self.backend!r}")
        for name in ("queue", "ftp_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
                raise ValueError(f"{name} must be a queue number 0-65535, not {v!r}")
        if self.queue == self.ftp_queue:
            raise ValueError("queue and ftp_queue must differ")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", str(self.table)):
            raise ValueError(f"bad table name {self.table!r}")
        if not isinstance(self.ipv6_prefix, int) or not 1 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be 1-128, not {self.ipv6_prefix!r}")
        mask, mark = self.mark_mask & 0xFFFFFFFF, self.mark & 0xFFFFFFFF
        if mask & 3 != 3:
            raise ValueError(f"mark_mask {self.mark_mask:#x} must include the two lowest bits (0x3)")
        if mark & 3 or mark & ~mask & 0xFFFFFFFF:
            raise ValueError(f"mark {self.mark:#x} must lie inside mark_mask {self.mark_mask:#x} "
                             "and leave its two lowest bits clear (they select the queue)")
        i4, i6 = _networks(self.ignore, "ignore")
        p4, p6 = _networks(self.protect, "protect")
        return replace(self, tcp_ports=_ports(self.tcp_ports, "tcp_ports"), udp_ports=_ports(self.udp_ports, "udp_ports"),
                       ignore=[str(n) for n in (*i4, *i6)], protect=[str(n) for n in (*p4, *p6)],
                       ftp=bool(self.ftp), mark=mark, mark_mask=mask, bypass=bool(self.bypass))

    @property
    def scan_mark(self) -> int:
        return self.mark | 1

    @property
    def ftp_mark(self) -> int:
        return self.mark | 2


def default_spec(variant: str = "host") -> RulesetSpec:
    """The shipped rules/<variant> file's specification."""
    return RulesetSpec(variant=variant, inuse="socket")


SHIPPED = {"host": "nfsentry.nft", "gateway": "gateway.nft", "observe": "observe.nft"}


# == rendering ==================================================================================
@dataclass
class _Set:
    name: str
    type: str
    flags: tuple[str, ...]
    elements: list[str]
    doc: list[str]
    typeexpr: str = ""

    @property
    def signature(self) -> tuple[str, tuple[str, ...]]:
        return self.type, tuple(sorted(self.flags))


@dataclass
class _Chain:
    name: str
    hook: str | None                  # "prerouting priority raw - 10" ...
    doc: list[str]
    rules: list[tuple[list[str], str]]  # (comment lines, rule)


@dataclass
class _Model:
    spec: RulesetSpec
    backend: str
    sets: list[_Set]
    chains: list[_Chain]

    def set(self, name: str) -> _Set | None:
        return next((s for s in self.sets if s.name == name), None)


def _port_elems(ranges) -> list[str]:
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]


def _v6_mask(plen: int) -> str:
    return str(ipaddress.IPv6Network(f"::/{plen}").netmask)


def _verdict(spec: RulesetSpec, backend: str, ftp: bool) -> str:
    """The statement that hands a packet to the scan loop (ftp=False) or the FTP tracker."""
    num = spec.ftp_queue if ftp else spec.queue
    if backend == "native":
        # The FTP tracker always bypasses: a dead daemon must never stall an FTP session.
        return f"queue flags bypass to {num}" if ftp or spec.bypass else f"queue to {num}"
    value = spec.ftp_mark if ftp else spec.scan_mark
    keep = ~spec.mark_mask & 0xFFFFFFFF
    return f"meta mark set meta mark & {keep:#010x} | {value:#010x} accept"


def _ftp_payload_sets() -> tuple[str, str]:
    """Anonymous sets matching (TCP data-offset byte . IP length) of segments that carry payload.

    Byte 12 of the TCP header holds the data offset (header length / 4) in its upper 4 bits, so
    0x50-0x5f means a 20-byte header; an IPv4 packet (20-byte header) carries payload when its
    total length exceeds 20 + the TCP header, an IPv6 one when its payload length exceeds the TCP
    header (extension headers only make it queue more, never less).
    """
    def lines(base: int) -> str:
        items = [f"0x{d:x}0-0x{d:x}f . {base + 4 * d + 1}-65535" for d in range(5, 16)]
        return "{\n" + "\n".join(_wrap(items, "", 72)) + "\n}"
    return lines(20), lines(0)


def _model(spec: RulesetSpec, backend: str) -> _Model:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be native or compat to render, not {backend!r}")
    spec = spec.normalized()
    t = spec.table
    v6p = spec.ipv6_prefix
    inuse = "socket" if spec.inuse == "auto" else spec.inuse
    i4 = [n for n in spec.ignore if ":" not in n]
    i6 = [n for n in spec.ignore if ":" in n]
    sets = [
        _Set("blocked4", "ipv4_addr", ("timeout",), [], [
            "1. Blocked sources. Filled by the daemon (or by hand); each entry has its own timeout",
            "   or none (blocked until removed). Single addresses live in hash sets:",
            f"     nft add element inet {t} blocked4 {{ 192.0.2.7 timeout 1h }}",
            f"     nft delete element inet {t} blocked4 {{ 192.0.2.7 }}"]),
        _Set("blocked4net", "ipv4_addr", ("interval", "timeout"), [], [
            "IPv4 prefixes (any length); entries may not overlap:",
            f"     nft add element inet {t} blocked4net {{ 192.0.2.0/24 timeout 1d }}"]),
        _Set("blocked6", "ipv6_addr", ("timeout",), [], ["Single IPv6 addresses."]),
    ]
    if v6p != 128:
        sets.append(_Set(f"blocked6_{v6p}", "ipv6_addr", ("timeout",), [], [
            f"IPv6 /{v6p} networks (the daemon blocks IPv6 sources by their /{v6p}), stored as the",
            f"network address and matched through a /{v6p} mask:",
            f"     nft add element inet {t} blocked6_{v6p} {{ 2001:db8:1:2:: timeout 1h }}"]))
    sets += [
        _Set("blocked6net", "ipv6_addr", ("interval", "timeout"), [], ["IPv6 prefixes of any other length."]),
        _Set("ignore4", "ipv4_addr", ("interval",), i4, [
            "3. Ignored sources: never queued, never blocked by the daemon (own addresses, gateways,",
            "   resolvers, the configured ignore list)."]),
        _Set("ignore6", "ipv6_addr", ("interval",), i6, []),
    ]
    if spec.variant == "gateway":
        p4 = [n for n in spec.protect if ":" not in n]
        p6 = [n for n in spec.protect if ":" in n]
        sets += [
            _Set("protect4", "ipv4_addr", ("interval",), p4, [
                "Gateway: the networks behind this host. Forwarded connection attempts to them are",
                "watched; nothing is watched in the forward path while these sets are empty:",
                f"     nft add element inet {t} protect4 {{ 198.51.100.0/24 }}"]),
            _Set("protect6", "ipv6_addr", ("interval",), p6, []),
        ]
    sets += [
        _Set("tcp_ports", "inet_service", ("interval",), _port_elems(spec.tcp_ports), [
            "6. Monitored ports. A connection attempt to one of them that no socket answers is",
            "   handed to the daemon. PortSentry's advanced mode (all ports 1-1023 but the ones in",
            "   use) and its classic mode (a list) are both just this set's contents."]),
        _Set("udp_ports", "inet_service", ("interval",), _port_elems(spec.udp_ports), []),
        _Set("ftp_expect4", "ipv4_addr . ipv4_addr . inet_service", ("timeout",), [], [
            "5. FTP data connections the FTP tracker expects (PASV/PORT/EPSV/EPRT replies):",
            "   source . destination . destination port, each with a short timeout."]),
        _Set("ftp_expect6", "ipv6_addr . ipv6_addr . inet_service", ("timeout",), [], []),
    ]

    # -- chains -----------------------------------------------------------------------------
    q_tcp = f"counter name queued_tcp {_verdict(spec, backend, False)}"
    q_udp = f"counter name queued_udp {_verdict(spec, backend, False)}"
    observe = spec.variant == "observe"
    drop = "" if observe else " drop"
    pre_rules = [
        (["1. Blocked sources: dropped before anything else." if not observe else
          "1. Observe mode: packets from blocked sources are only counted, never dropped."],
         f"ip saddr @blocked4 counter name blocked_pkts4{drop}"),
        ([], f"ip saddr @blocked4net counter name blocked_pkts4{drop}"),
        ([], f"ip6 saddr @blocked6 counter name blocked_pkts6{drop}"),
    ]
    if v6p != 128:
        pre_rules.append(([], f"ip6 saddr & {_v6_mask(v6p)} @blocked6_{v6p} counter name blocked_pkts6{drop}"))
    pre_rules.append(([], f"ip6 saddr @blocked6net counter name blocked_pkts6{drop}"))
    chains = [_Chain("prerouting", "prerouting priority raw - 10", [
        "Runs at raw priority minus 10, before connection tracking: a blocked source costs no",
        "conntrack entry, and forwarded traffic (gateway) is covered too."], pre_rules)]

    ftp_jump = []
    if spec.ftp:
        ftp_jump = [
            (["7. FTP control channel, both directions: to the FTP tracker. Before the established",
              "   shortcut below, because control packets belong to an established connection; only",
              "   those: a forged segment of no connection never reaches the tracker."],
             f"ct state established tcp dport {FTP_PORT} jump ftp_control"),
            ([], f"ct state established tcp sport {FTP_PORT} jump ftp_control"),
        ]
    expect = [
        (["5. Expected FTP data connections."], "ip saddr . ip daddr . tcp dport @ftp_expect4 accept"),
        ([], "ip6 saddr . ip6 daddr . tcp dport @ftp_expect6 accept"),
    ]
    queue_rules = [
        (["6. New, invalid or untracked TCP/UDP to a monitored port: to the scan verdict loop",
          f"   (queue {spec.queue}; " + ("`bypass`: with no daemon listening the packet passes)." if spec.bypass else
                                      "no bypass (fail-closed): with no daemon listening the packet is dropped).")],
         f"ct state new,invalid,untracked tcp dport @tcp_ports {q_tcp}"),
        ([], f"ct state new,invalid,untracked udp dport @udp_ports {q_udp}"),
    ]
    input_rules = [(["The host talking to itself."], 'iif "lo" accept'), *ftp_jump,
                   (["2. Established and related traffic."], "ct state established,related accept"),
                   (["Only unicast packets addressed to this host: broadcasts and multicast never reach",
                     "the daemon."], "fib daddr type != local accept"),
                   (["3. Ignored sources."], "ip saddr @ignore4 accept"),
                   ([], "ip6 saddr @ignore6 accept")]
    if inuse == "socket":
        input_rules.append((["4. The port is in use right now (a listening or bound socket exists): a service",
                             "   started after nfsentry is never mistaken for a monitored port."],
                            "socket transparent 0 accept"))
    elif inuse == "poll":
        input_rules.append(([], "# 4. In-use ports: polled from /proc/net and left out of tcp_ports/udp_ports."))
    else:
        input_rules.append(([], "# 4. In-use detection is off: only the FTP expectations exempt a port."))
    input_rules += expect + queue_rules
    chains.append(_Chain("input", "input priority filter - 10", [
        "Traffic to this host. Before the usual filter chains (priority filter - 10), so the",
        "daemon sees a probe before anything else accepts it."], input_rules))
    if spec.variant == "gateway":
        fwd = [*ftp_jump,
               (["2. Established and related traffic."], "ct state established,related accept"),
               (["Only traffic to the protected networks behind this gateway."], "ip daddr != @protect4 accept"),
               ([], "ip6 daddr != @protect6 accept"),
               (["3. Ignored sources."], "ip saddr @ignore4 accept"),
               ([], "ip6 saddr @ignore6 accept"),
               *expect,
               (["6. Connection attempts to monitored ports of a protected host: to the scan verdict",
                 "   loop. The gateway cannot see which ports the hosts behind it serve: leave those",
                 "   out of the monitored ports (tcp_exclude/udp_exclude)."],
                f"ct state new,invalid,untracked tcp dport @tcp_ports {q_tcp}"),
               ([], f"ct state new,invalid,untracked udp dport @udp_ports {q_udp}")]
        chains.append(_Chain("forward", "forward priority filter - 10",
                             ["Traffic routed through this host to the protected networks."], fwd))
    if spec.ftp:
        chains.append(_Chain("output", "output priority filter - 10",
                             ["This host's own FTP control traffic (as a server: its replies; as a client:",
                              "its commands)."],
                             [([], 'oif "lo" accept'), ([], f"tcp sport {FTP_PORT} jump ftp_control"),
                              ([], f"tcp dport {FTP_PORT} jump ftp_control")]))
        v4, v6 = _ftp_payload_sets()
        q_ftp = f"counter name queued_ftp {_verdict(spec, backend, True)}"
        chains.append(_Chain("ftp_control", None, [
            "7. FTP control packets (port 21): only segments that carry payload go to the FTP",
            f"   tracker (queue {spec.ftp_queue}). The TCP header's byte 12 holds its length / 4 in the",
            "   upper 4 bits; a packet carries payload when the IP length exceeds the headers."],
            [(["IPv4 with IP options (first byte not 0x45) is rare: the tracker checks it itself."],
              f"meta nfproto ipv4 @nh,0,8 != 0x45 {q_ftp}"),
             ([], f"meta nfproto ipv4 @th,96,8 . ip length {v4} {q_ftp}"),
             ([], f"meta nfproto ipv6 @th,96,8 . ip6 length {v6} {q_ftp}")]))
    return _Model(spec, backend, sets, chains)


def _wrap(items: list[str], indent: str, width: int = 96) -> list[str]:
    lines, cur = [], ""
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if cur and len(indent) + len(cur) + 1 + len(piece) > width:
            lines.append(indent + cur)
            cur = piece
        else:
            cur = f"{cur} {piece}" if cur else piece
    if cur:
        lines.append(indent + cur)
    return lines


def _format_table(m: _Model) -> str:
    t = m.spec.table
    out = [f"table inet {t} {{"]
    out.append("\t# Counters (nft list counters table inet %s)." % t)
    for name, doc in COUNTERS.items():
        out.append(f"\tcounter {name} {{")
        out.append(f"\t\t# {doc}")
        out.append("\t}")
    for s in m.sets:
        out.append("")
        out += [f"\t# {line}" for line in s.doc]
        out.append(f"\tset {s.name} {{")
        out.append(f"\t\ttype {s.type}")
        out.append(f"\t\tflags {', '.join(s.flags)}")
        if s.elements:
            out.append("\t\telements = {")
            out += _wrap(s.elements, "\t\t\t")
            out.append("\t\t}")
        out.append("\t}")
    for c in m.chains:
        out.append("")
        out += [f"\t# {line}" for line in c.doc]
        out.append(f"\tchain {c.name} {{")
        if c.hook:
            out.append(f"\t\ttype filter hook {c.hook}; policy accept;")
        for doc, rule in c.rules:
            out += [f"\t\t# {line}" for line in doc]
            for i, line in enumerate(rule.splitlines()):  # multi-line anonymous sets
                out.append(("\t\t" if i == 0 or line.startswith("}") else "\t\t\t") + line)
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def compat_rules(spec: RulesetSpec) -> list[tuple[str, str, list[str]]]:
    """The iptables-nft/ip6tables-nft rules the compat backend needs: (binary, chain, rulespec)."""
    spec = spec.normalized()
    wanted: list[tuple[str, int, int, bool]] = [("INPUT", spec.scan_mark, spec.queue, spec.bypass)]
    if spec.variant == "gateway":
        wanted.append(("FORWARD", spec.scan_mark, spec.queue, spec.bypass))
    if spec.ftp:  # the FTP tracker always bypasses
        wanted += [("INPUT", spec.ftp_mark, spec.ftp_queue, True), ("OUTPUT", spec.ftp_mark, spec.ftp_queue, True)]
        if spec.variant == "gateway":
            wanted.append(("FORWARD", spec.ftp_mark, spec.ftp_queue, True))
    out = []
    for binary in ("iptables-nft", "ip6tables-nft"):
        for chain, value, num, bypass in wanted:
            out.append((binary, chain, ["-m", "mark", "--mark", f"{value:#x}/{spec.mark_mask:#x}",
                                        "-m", "comment", "--comment", compat_tag(spec.table),
                                        "-j", "NFQUEUE", "--queue-num", str(num), *(["--queue-bypass"] if bypass else [])]))
    return out


def _compat_key(binary: str, chain: str, args: list[str]) -> tuple:
    """What identifies one of our rules, however iptables prints it: binary, chain, mark, queue, bypass."""
    def after(opt: str) -> str:
        return args[args.index(opt) + 1].lower() if opt in args and args.index(opt) + 1 < len(args) else ""
    return binary, chain, after("--mark"), after("--queue-num"), "--queue-bypass" in args


def compat_tag(table: str) -> str:
    return "nfsentry" if table == "nfsentry" else f"nfsentry:{table}"


_VARIANT_TEXT = {
    "host": ("host protection",
             ["Protects this host: connection attempts to monitored ports that no local socket",
              "answers are handed to the daemon, which decides (alert, block); blocked sources are",
              "dropped before connection tracking."]),
    "gateway": ("gateway",
                ["Protects this host (input hook) and the networks routed behind it (forward hook,",
                 "destinations in the protect4/protect6 sets). Blocked sources are dropped in",
                 "prerouting, so they reach neither."]),
    "observe": ("observe only",
                ["Queues exactly like the host ruleset but never drops: packets from blocked sources",
                 "are only counted (learning mode: see what would be blocked)."]),
}


def render(spec: RulesetSpec | None = None, backend: str = "native", *, standalone: bool = True) -> str:
    """The complete nft text for ``spec`` and ``backend`` ("native" or "compat").

    ``standalone`` (the shipped files, ``nfsentry rules show``) adds the header comment and the
    two commands that make ``nft -f FILE`` replace an existing table; ``Nft.load`` uses the table
    alone and keeps the blocked sets instead.
    """
    spec = spec or default_spec()
    m = _model(spec, backend)
    body = _format_table(m)
    if not standalone:
        return body
    s = m.spec
    t = s.table
    title, about = _VARIANT_TEXT[s.variant]
    inuse = "socket" if s.inuse == "auto" else s.inuse
    head = [
        "#!/usr/sbin/nft -f",
        f"# nfsentry ({title}): PortSentry reborn for nftables.",
        "#",
        "# Generated by nfsentry/nft.py (`make rules` writes rules/*.nft); edit the renderer, not",
        "# this file: a test checks the shipped files equal its output.",
        "#",
        *(f"# {line}" for line in about),
        "#",
        f"# Everything lives in table inet {t}; nothing else in the ruleset is touched. Read on top",
        "# to bottom: the numbers in the comments follow the order a packet meets the rules:",
        "#   1 blocked sources dropped   2 established accepted   3 ignored sources accepted",
        "#   4 ports in use accepted     5 expected FTP data      6 monitored ports -> daemon",
        "#   7 FTP control -> FTP tracker (checked first, as it is established traffic)",
        "#",
        (f"# Queues: {s.queue} = scan verdict loop, {s.ftp_queue} = FTP tracker, both with `bypass`"
         if s.bypass else f"# Queues: {s.queue} = scan verdict loop without `bypass` (fail-closed: no daemon listening ="
         f"\n# packets to closed monitored ports are dropped), {s.ftp_queue} = FTP tracker with `bypass`"),
        "# (no daemon listening = traffic passes). In-use ports: "
        + {"socket": "the `socket` expression.", "poll": "polled from /proc/net by the daemon.",
           "off": "not detected (FTP expectations only)."}[inuse],
        "#",
        f"# Load:    nft -f FILE     (replaces table inet {t}: running it again forgets the blocked",
        "#                           sources; `nfsentry rules load` and the daemon keep them)",
        f"# Remove:  nft delete table inet {t}",
    ]
    if backend == "native":
        head += ["#",
                 "# Backend: native (`queue` statement, kernel module nft_queue). Kernels without it",
                 "# reject the file with \"No such file or directory\": use the compat rendering",
                 "# (`nfsentry rules show --backend compat`) and its iptables-nft rules."]
    else:
        head += ["#",
                 "# Backend: compat (kernel without nft_queue). This table only marks the packets to",
                 f"# queue (bits {s.mark_mask:#010x}: {s.scan_mark:#010x} scan, {s.ftp_mark:#010x} FTP); these",
                 "# iptables-nft rules queue them (install once; remove with -D CHAIN instead of -I CHAIN 1):"]
        for binary, chain, args in compat_rules(s):
            head.append(f"#   {binary} -I {chain} 1 {shlex.join(args)}")
    return "\n".join(head) + f"\n\ntable inet {t}\ndelete table inet {t}\n\n" + body


def write_shipped(directory: str | Path) -> list[Path]:
    """(Re)write rules/nfsentry.nft, rules/gateway.nft, rules/observe.nft."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant, name in SHIPPED.items():
        p = d / name
        text = render(default_spec(variant), "native")
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        paths.append(p)
    return paths


# == networks ===================================================================================
def parse_network(network: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'198.18.0.2', '198.18.0.0/24', '2001:db8:1::/64' -> network (host bits cleared). No /0."""
    try:
        net = ipaddress.ip_network(str(network).strip(), strict=False)
    except ValueError:
        raise ValueError(f"bad address or prefix {network!r}") from None
    if net.prefixlen == 0:
        raise ValueError(f"refusing {network!r}: a /0 matches every address")
    return net


def network_text(net) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _timeout_text(timeout: float | None) -> str:
    if not timeout:
        return ""
    if timeout < 0:
        raise ValueError(f"negative timeout {timeout!r}")
    if float(timeout).is_integer():
        return f" timeout {int(timeout)}s"
    return f" timeout {max(1, int(round(timeout * 1000)))}ms"


def _ftp_element(peer: Any, server: Any, port: Any) -> tuple[Any, Any, str, str]:
    """(peer, server, set name, ``peer . server . port``) of an FTP expectation; ValueError if bad."""
    a, b = ipaddress.ip_address(str(peer)), ipaddress.ip_address(str(server))
    if a.version != b.version:
        raise ValueError(f"FTP expectation mixes address families: {peer} -> {server}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"bad FTP data port {port!r}")
    return a, b, "ftp_expect4" if a.version == 4 else "ftp_expect6", f"{a} . {b} . {int(port)}"


def _elem_networks(setname: str, val: Any) -> list:
    """A JSON set element value -> list of networks."""
    if isinstance(val, dict) and "prefix" in val:
        return [ipaddress.ip_network(f"{val['prefix']['addr']}/{val['prefix']['len']}")]
    if isinstance(val, dict) and "range" in val:
        lo, hi = (ipaddress.ip_address(a) for a in val["range"])
        return list(ipaddress.summarize_address_range(lo, hi))
    m = re.fullmatch(r"blocked6_(\d+)", setname)
    if m:
        return [ipaddress.ip_network(f"{val}/{m.group(1)}", strict=False)]
    return [ipaddress.ip_network(str(val))]


_TEXT_ELEM = re.compile(r"\s*([0-9A-Fa-f.:]+(?:/\d+|-[0-9A-Fa-f.:]+)?)(?:\s+\.\s+\S+)*"
                        r"(?:\s+timeout\s+(\d+)(ms|s))?(?:\s+expires\s+(\d+)(ms|s))?\s*")


def _parse_set_text(setname: str, text: str) -> list[dict]:
    """Entries of `nft -T list set` text output (numeric times)."""
    start = text.find("elements = {")
    if start < 0:
        return []
    body = text[start + len("elements = {"):text.index("}", start)]
    return _parse_set_items(setname, [i for i in body.split(",") if i.strip()])


_EXPIRES = re.compile(r"\s+expires\s+(\d+)(ms|s)")


def _element_key(item: str) -> str:
    """An element's identity in a listing: its text without the time left."""
    return _EXPIRES.sub("", item)


def _element_expires(item: str) -> float | None:
    """Seconds an element has left (None: no timeout)."""
    m = _EXPIRES.search(item)
    return None if m is None else int(m.group(1)) / (1 if m.group(2) == "s" else 1000)


def _parse_set_items(setname: str, items: list[str]) -> list[dict]:
    """Entries of the element texts of `nft -T list set`."""
    out = []
    for item in items:
        m = _TEXT_ELEM.fullmatch(item)
        if not m or not item.strip():
            continue
        val, to, to_u, ex, ex_u = m.groups()
        timeout = (int(to) if to_u == "s" else int(to) / 1000) if to else 0
        expires = (int(ex) if ex_u == "s" else int(ex) / 1000) if ex else 0
        if setname in ("blocked4", "blocked6"):  # nft prints canonical addresses: skip ipaddress
            out.append({"network": val, "timeout": timeout, "expires_in": expires if timeout else None, "set": setname})
            continue
        if "-" in val:
            lo, hi = (ipaddress.ip_address(a) for a in val.split("-"))
            nets = list(ipaddress.summarize_address_range(lo, hi))
        else:
            nets = _elem_networks(setname, val)
        for net in nets:
            out.append({"network": network_text(net), "timeout": timeout,
                        "expires_in": expires if timeout else None, "set": setname})
    return out


def _plan_nets(new: dict, existing: list) -> tuple[dict, list]:
    """Non-overlapping interval-set content: (networks to add -> timeout, existing ones to delete).

    New networks covered by a broader new or existing one are dropped (already blocked); existing
    networks covered by a new one are replaced by it.
    """
    adds: dict = {}
    for net in sorted(new, key=lambda n: (n.version, n.prefixlen)):
        if any(net.version == o.version and net.subnet_of(o) for o in (*adds, *existing)):
            continue
        adds[net] = new[net]
    deletes = [o for o in existing if any(o.version == n.version and o != n and o.subnet_of(n) for n in adds)]
    adds = {n: t for n, t in adds.items() if n not in existing}
    return adds, deletes


# == the adapter ================================================================================
class Nft:
    """nfsentry's table in the current network namespace, through the libnftables bindings.

    One ``nftables.Nftables`` context per object (reused by every call; a lock makes the object
    safe to share between threads). Methods raise :class:`NftError` with nft's error text.
    """

    def __init__(self, table: str = "nfsentry") -> None:
        if _nftables is None:
            raise NftUnavailable(MISSING_BINDINGS)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", table):
            raise ValueError(f"bad table name {table!r}")
        self.table = table
        try:
            self._n = _nftables.Nftables()
        except OSError as e:  # libnftables.so.1 itself missing
            raise NftUnavailable(f"{MISSING_BINDINGS} ({e})") from None
        self._n.set_json_output(True)
        self._lock = threading.RLock()
        self._spec: RulesetSpec | None = None
        self._backend: str | None = None
        self._inuse: str | None = None
        self._v6p: int | None = None
        self._probed: dict[str, bool] = {}
        self._applied_ports: tuple | None = None
        self._poller: threading.Thread | None = None
        self._poll_stop = threading.Event()
        self.listing_retries_exhausted = 0

    # -- low level ------------------------------------------------------------------------------
    def _cmd(self, text: str, what: str) -> str:
        with self._lock:
            rc, out, err = self._n.cmd(text)
        if rc != 0:
            raise NftError(what, err, text[:2000])
        return out

    def _json(self, text: str, what: str, terse: bool = False) -> list[dict]:
        with self._lock:
            self._n.set_terse_output(terse)
            try:
                rc, out, err = self._n.cmd(text)
            finally:
                self._n.set_terse_output(False)
        if rc != 0:
            raise NftError(what, err, text)
        return json.loads(out).get("nftables", []) if out.strip() else []

    def _dry(self, text: str) -> tuple[int, str]:
        with self._lock:
            self._n.set_dry_run(True)
            try:
                rc, _, err = self._n.cmd(text)
            finally:
                self._n.set_dry_run(False)
        return rc, err

    # libnftables 1.0.6 fills its cache with every set element before most list commands
    # (~0.35 s per 100,000 blocks); `list chains`, terse `list sets table` and `list set X` do not,
    # so the frequent paths use only those.
    def _sets(self) -> dict[str, tuple[str, tuple[str, ...]]] | None:
        """{set name: (type, flags)} of our table, without contents; None when the table is absent."""
        with self._lock:
            self._n.set_terse_output(True)
            try:
                rc, out, err = self._n.cmd(f"list sets table inet {self.table}")
            finally:
                self._n.set_terse_output(False)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError("listing the sets", err)
        sets = {}
        for i in json.loads(out).get("nftables", []) if out.strip() else []:
            if "set" in i:
                st = i["set"]
                typ = st["type"] if isinstance(st["type"], str) else " . ".join(st["type"])
                sets[st["name"]] = (typ, tuple(sorted(st.get("flags", []))))
        return sets

    def loaded(self) -> bool:
        """Is our table in the kernel?"""
        return self._sets() is not None

    def _info(self, rules: bool = False) -> dict | None:
        """Our table's chains and sets (type, flags), optionally its rules (slow with big sets)."""
        sets = self._sets()
        if sets is None:
            return None
        chains = [i["chain"]["name"] for i in self._json("list chains inet", "listing the chains")
                  if "chain" in i and i["chain"].get("table") == self.table]
        info: dict = {"chains": chains, "sets": sets, "rules": {}}
        if rules:
            for i in self._json(f"list table inet {self.table}", "listing the table", terse=True):
                if "rule" in i:
                    info["rules"].setdefault(i["rule"]["chain"], []).append(json.dumps(i["rule"].get("expr", [])))
        return info

    def _v6_prefix(self) -> int | None:
        if self._v6p is None:
            sets = self._sets()
            if sets is None:
                return None
            self._v6p = next((int(n.split("_", 1)[1]) for n in sets if re.fullmatch(r"blocked6_\d+", n)), 128)
        return self._v6p

    # -- probes ---------------------------------------------------------------------------------
    def _probe(self, key: str, stmt: str) -> bool:
        if key not in self._probed:
            p = PROBE_TABLE
            rc, _ = self._dry(f"add table inet {p}\nadd chain inet {p} c\nadd rule inet {p} c {stmt}")
            self._probed[key] = rc == 0
        return self._probed[key]

    def probe_backend(self) -> str:
        """'native' when the kernel takes the `queue` statement, else 'compat'. Commits nothing."""
        return "native" if self._probe("queue", "queue flags bypass to 0") else "compat"

    def probe_socket(self) -> bool:
        """Does the kernel have the `socket` expression (in-use ports)? Commits nothing."""
        return self._probe("socket", "socket transparent 0 accept")

    def resolve(self, spec: RulesetSpec, backend: str | None = None) -> tuple[RulesetSpec, str]:
        """(normalized spec with inuse resolved, backend) for this kernel."""
        spec = spec.normalized()
        backend = backend or spec.backend
        if backend not in ("auto", *BACKENDS):
            raise SpecError(f"backend must be auto, native or compat, not {backend!r}")
        if backend == "auto":
            backend = self.probe_backend()
        if spec.inuse == "auto":
            spec = replace(spec, inuse="socket" if self.probe_socket() else "poll")
        if spec.table != self.table:
            raise SpecError(f"spec is for table {spec.table!r}, this object manages {self.table!r}")
        return spec, backend

    # -- load / unload ---------------------------------------------------------------------------
    def _load_batch(self, spec: RulesetSpec, backend: str) -> str:
        if spec.inuse == "poll":
            tcp_in, udp_in = _inuse.listening_ports()
            spec = replace(spec, tcp_ports=_inuse.subtract_ports(spec.tcp_ports, tcp_in),
                           udp_ports=_inuse.subtract_ports(spec.udp_ports, udp_in))
            self._applied_ports = (spec.tcp_ports, spec.udp_ports)
        m = _model(spec, backend)
        t = self.table
        info = self._info()
        pre: list[str] = []
        migrate: list[dict] = []
        if info:
            pre += [f"flush chain inet {t} {c}" for c in info["chains"]]
            pre += [f"delete chain inet {t} {c}" for c in info["chains"]]
            for name, sig in info["sets"].items():
                want = m.set(name)
                keep = name.startswith(("blocked", "ftp_expect"))
                if keep and want is not None and want.signature == sig:
                    continue  # kept with its contents and their running timeouts
                if name.startswith("blocked"):  # definition changed or set renamed: move the entries
                    migrate += self._list_set(name)
                pre.append(f"delete set inet {t} {name}")
        batch = "\n".join(pre + [_format_table(m)])
        if migrate:
            # Entries of a set that changed shape (e.g. a new ipv6_prefix) move to where the new
            # ruleset keeps them, with their remaining time, in the same transaction.
            self._v6p = m.spec.ipv6_prefix
            existing = {n: [ipaddress.ip_network(b["network"]) for b in self._list_set(n)]
                        for n in ("blocked4net", "blocked6net") if n in info["sets"] and m.set(n)
                        and m.set(n).signature == info["sets"][n]}
            items = [(b["network"], max(1, b["expires_in"] or 0) if b["timeout"] else 0) for b in migrate]
            batch += "\n" + self._bulk_commands(items, existing)
        return batch

    def load(self, spec: RulesetSpec, backend: str | None = None, poll_interval: float = 1.0) -> dict:
        """Load (or replace) the ruleset in one transaction; blocked sets keep their contents.

        ``backend`` overrides ``spec.backend`` ("auto" probes the kernel). With the compat backend
        the iptables-nft rules are installed first (inert until our chains mark packets) and
        removed again if the nft transaction fails. Returns ``status()``-like facts.
        """
        spec, backend = self.resolve(spec, backend)
        self.stop_inuse_poller()
        batch = self._load_batch(spec, backend)
        added: list = []
        before: set = set()
        if backend == "compat":
            before = self._xt_chains()
            added = self._compat_install(spec, before)
        try:
            self._cmd(batch, f"loading table inet {self.table}")
        except Exception:
            self._v6p = None
            self._compat_rollback(added, before)
            if self._inuse == "poll" and poll_interval > 0:  # the previous ruleset stays: keep serving it
                self.start_inuse_poller(poll_interval)
            raise
        try:  # stale rules (native now, or another mark/queue/variant) are inert: best effort
            self._compat_remove(keep=compat_rules(spec) if backend == "compat" else [])
        except NftError as e:
            log.warning("%s", e)
        self._spec, self._backend, self._inuse, self._v6p = spec, backend, spec.inuse, spec.ipv6_prefix
        if spec.inuse == "poll" and poll_interval > 0:
            self.start_inuse_poller(poll_interval)
        return {"table": self.table, "backend": backend, "inuse": spec.inuse, "variant": spec.variant}

    def check(self, spec: RulesetSpec, backend: str | None = None) -> None:
        """Dry-run what load() would send (the kernel checks it; nothing is committed)."""
        spec, backend = self.resolve(spec, backend)
        saved = self._v6p, self._applied_ports
        try:
            batch = self._load_batch(spec, backend)
        finally:
            self._v6p, self._applied_ports = saved
        rc, err = self._dry(batch)
        if rc != 0:
            raise NftError("checking the ruleset", err, batch[:2000])

    def load_file(self, path: str) -> None:
        """`nft -f path` through the bindings (a shipped file replaces the table, blocks included)."""
        with self._lock:
            rc, _, err = self._n.cmd_from_file(str(path))
        if rc != 0:
            raise NftError(f"loading {path}", err)

    def check_file(self, path: str) -> None:
        """`nft -c -f path`."""
        with self._lock:
            self._n.set_dry_run(True)
            try:
                rc, _, err = self._n.cmd_from_file(str(path))
            finally:
                self._n.set_dry_run(False)
        if rc != 0:
            raise NftError(f"checking {path}", err)

    def unload(self) -> None:
        """Remove our table and our compat rules; nothing else. Idempotent."""
        self.stop_inuse_poller()
        self._cmd(f"add table inet {self.table}\ndelete table inet {self.table}", f"deleting table inet {self.table}")
        self._compat_remove()
        self._spec = self._backend = self._inuse = None

    def keep_blocks_only(self) -> None:
        """Daemon exit with blocks kept: leave the blocked sets and their drop chain, stop queueing."""
        self.stop_inuse_poller()
        info = self._info()
        if info is None:
            return
        t = self.table
        chains = [c for c in info["chains"] if c != "prerouting"]
        if chains:
            self._cmd("\n".join([f"flush chain inet {t} {c}" for c in chains] + [f"delete chain inet {t} {c}" for c in chains]),
                      "removing the queue chains")
        self._compat_remove()

    # -- compat iptables-nft rules ----------------------------------------------------------------
    @staticmethod
    def _run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def _xt_chains(self) -> set[tuple[str, str]]:
        """(family, chain) of the iptables-nft filter tables now (cheap: no rules, no elements)."""
        return {(c["family"], c["name"]) for i in self._json("list chains", "listing the chains")
                if (c := i.get("chain")) and c.get("table") == "filter" and c.get("family") in ("ip", "ip6")}

    def _compat_rollback(self, added: list, before: set) -> None:
        """Undo _compat_install: our rules, then the (empty) chains and tables it made iptables-nft
        create, so a failed load leaves nothing behind."""
        if not added:
            return
        self._compat_remove(only=added)
        created = self._xt_chains() - before
        cmds = [f"delete chain {fam} filter {chain}" for fam, chain in sorted(created)]
        for fam in ("ip", "ip6"):
            if not any(f == fam for f, _ in before) and any(f == fam for f, _ in created):
                cmds.append(f"delete table {fam} filter")
        if cmds:
            with self._lock:
                rc, _, err = self._n.cmd("\n".join(cmds))  # refused as a whole if anything is non-empty
            if rc != 0:
                log.warning("leaving empty iptables-nft chains behind: %s", err.strip())

    def _compat_install(self, spec: RulesetSpec, before: set) -> list:
        added = []
        try:
            for binary, chain, args in compat_rules(spec):
                if shutil.which(binary) is None:
                    raise NftUnavailable(f"the compat queue backend needs {binary} (Debian package iptables)")
                if self._run([binary, "-C", chain, *args]).returncode == 0:
                    continue
                res = self._run([binary, "-I", chain, "1", *args])
                if res.returncode != 0:
                    raise NftError(f"{binary} -I {chain} failed", res.stderr or res.stdout)
                added.append((binary, chain, args))
        except Exception:
            self._compat_rollback(added, before)
            raise
        return added

    def compat_installed(self) -> list[tuple[str, str, list[str]]]:
        """Our tagged iptables-nft/ip6tables-nft rules: (binary, chain, rulespec)."""
        tag = compat_tag(self.table)
        found = []
        for binary in ("iptables-nft", "ip6tables-nft"):
            if shutil.which(binary) is None:
                continue
            res = self._run([binary, "-S"])  # lists without creating anything
            for line in res.stdout.splitlines():
                if not line.startswith("-A "):
                    continue
                argv = shlex.split(line)
                if "--comment" in argv and argv[argv.index("--comment") + 1] == tag:
                    found.append((binary, argv[1], argv[2:]))
        return found

    def _compat_remove(self, only: list | None = None, keep: list | None = None) -> None:
        """Delete our tagged rules (all, or ``only`` these, except ``keep``). Never a table or chain."""
        targets = only if only is not None else self.compat_installed()
        keep_keys = {_compat_key(*r) for r in (keep or [])}
        errors = []
        for binary, chain, args in targets:
            if _compat_key(binary, chain, args) in keep_keys:
                continue
            res = self._run([binary, "-D", chain, *args])
            if res.returncode != 0 and only is None:
                errors.append(f"{binary} -D {chain}: {res.stderr.strip()}")
        if errors:
            raise NftError("removing the compat iptables-nft rules", "\n".join(errors))

    # -- blocked sets ----------------------------------------------------------------------------
    def classify(self, network: Any) -> tuple[str, str, Any]:
        """network -> (set name, element text, ip_network or None for a single address)."""
        text = str(network).strip()
        if "/" not in text:  # fast path for single addresses (bulk restores)
            fam = socket.AF_INET6 if ":" in text else socket.AF_INET
            try:
                elem = socket.inet_ntop(fam, socket.inet_pton(fam, text))
                return ("blocked6" if fam == socket.AF_INET6 else "blocked4"), elem, None
            except OSError:
                pass
        net = parse_network(text)
        if net.version == 4:
            if net.prefixlen == 32:
                return "blocked4", str(net.network_address), net
            return "blocked4net", str(net), net
        if net.prefixlen == 128:
            return "blocked6", str(net.network_address), net
        if net.prefixlen == self._v6_prefix():
            return f"blocked6_{net.prefixlen}", str(net.network_address), net
        return "blocked6net", str(net), net

    def block(self, network: Any, timeout_s: float | None = 0) -> bool:
        """Block a source address or prefix for ``timeout_s`` seconds (0 = until unblocked).

        Blocking again replaces the timeout. Returns False when a broader blocked prefix already
        covers ``network`` (nothing changed).
        """
        setname, elem, net = self.classify(network)
        t = self.table
        to = _timeout_text(timeout_s)
        # add (a no-op when present) + delete + add: replaces the timeout on every kernel.
        text = (f"add element inet {t} {setname} {{ {elem} }}\ndelete element inet {t} {setname} {{ {elem} }}\n"
                f"add element inet {t} {setname} {{ {elem}{to} }}")
        try:
            self._cmd(text, f"blocking {elem}")
            return True
        except NftError:
            if net is None or not setname.endswith("net"):
                self._require_loaded()
                raise
        # Interval sets refuse overlapping entries: merge with what is there.
        existing = [ipaddress.ip_network(b["network"]) for b in self._list_set(setname)]
        adds, deletes = _plan_nets({net: timeout_s}, existing)
        if not adds:
            return False
        cmds = [f"delete element inet {t} {setname} {{ {', '.join(str(d) for d in deletes)} }}"] if deletes else []
        cmds.append(f"add element inet {t} {setname} {{ {elem}{to} }}")
        self._cmd("\n".join(cmds), f"blocking {elem}")
        return True

    def _require_loaded(self) -> None:
        if not self.loaded():
            raise NftError(f"table inet {self.table} is not loaded (start nfsentry or `nfsentry rules load`)")

    def bulk_block(self, items: Iterable[Any]) -> int:
        """Add many blocks in one transaction (restore). Items: "net", (net, timeout_s) or
        {"network": net, "timeout"/"expires_in": s}. Returns how many entries were sent."""
        norm = []
        for it in items:
            if isinstance(it, dict):
                norm.append((it["network"], it.get("expires_in") or it.get("timeout") or 0))
            elif isinstance(it, (tuple, list)):
                norm.append((it[0], it[1] if len(it) > 1 else 0))
            else:
                norm.append((it, 0))
        if not norm:
            return 0
        existing: dict[str, list] = {}
        if any("/" in str(n) for n, _ in norm):  # prefixes: merge with the interval sets' content
            for name in ("blocked4net", "blocked6net"):
                existing[name] = [ipaddress.ip_network(b["network"]) for b in self._list_set(name)]
        text = self._bulk_commands(norm, existing)
        if text:
            self._cmd(text, f"adding {len(norm)} blocks")
        return len(norm)

    def _bulk_commands(self, items: list, existing: dict) -> str:
        t = self.table
        per_set: dict[str, dict] = {}
        nets: dict[str, dict] = {}
        for network, timeout in items:
            setname, elem, net = self.classify(network)
            if setname.endswith("net"):
                nets.setdefault(setname, {})[net] = timeout
            else:
                per_set.setdefault(setname, {})[elem] = timeout
        cmds = []
        for setname, new in nets.items():
            adds, deletes = _plan_nets(new, existing.get(setname, []))
            if deletes:
                cmds.append(f"delete element inet {t} {setname} {{ {', '.join(str(d) for d in deletes)} }}")
            if adds:
                per_set[setname] = {str(n): to for n, to in adds.items()}
        for setname, elems in per_set.items():
            body = ", ".join(f"{e}{_timeout_text(to)}" for e, to in elems.items())
            cmds.append(f"add element inet {t} {setname} {{ {body} }}")
        return "\n".join(cmds)

    def unblock(self, network: Any) -> bool:
        """Remove one block (exactly this address or prefix). False when it was not blocked."""
        setname, elem, net = self.classify(network)
        try:
            self._cmd(f"delete element inet {self.table} {setname} {{ {elem} }}", f"unblocking {elem}")
            return True
        except NftError:
            self._require_loaded()
            return False

    def _blocked_sets(self) -> list[str]:
        sets = self._sets()
        if sets is None:
            raise NftError(f"table inet {self.table} is not loaded")
        return [n for n in sets if n.startswith("blocked")]

    def unblock_all(self) -> int:
        """Empty every blocked set in one transaction. Returns how many entries were removed."""
        n = len(self.list_blocked())
        sets = self._blocked_sets()
        if sets:
            self._cmd("\n".join(f"flush set inet {self.table} {s}" for s in sets), "flushing the blocked sets")
        return n

    def _set_items_once(self, name: str) -> list[str]:
        """One `list set` dump of a set: its element texts (numeric times)."""
        with self._lock:
            self._n.set_json_output(False)
            self._n.set_numeric_time_output(True)
            try:
                rc, out, err = self._n.cmd(f"list set inet {self.table} {name}")
            finally:
                self._n.set_numeric_time_output(False)
                self._n.set_json_output(True)
        if rc != 0:
            raise NftError(f"reading set {name}", err)
        start = out.find("elements = {")
        if start < 0:
            return []
        body = out[start + len("elements = {"):out.index("}", start)]
        return [item.strip() for item in body.split(",") if item.strip()]

    def _set_items(self, name: str) -> list[str]:
        """A set's element texts, from a listing proved complete (see :data:`LIST_ATTEMPTS`).

        The kernel dumps a big set over several netlink messages and resumes each one by skipping
        the elements it already sent. When the set changes in between (the hash table resizes
        after a bulk add, an element times out and is collected, another process adds or deletes),
        the dump silently repeats some elements and leaves others out, and libnftables does not
        notice. So a listing counts only when it has no repeated element and lost nothing the
        previous listing had (except elements that may have timed out in between); otherwise it is
        taken again, and after ``LIST_ATTEMPTS`` tries :class:`NftInconsistent` says so.
        """
        prev: dict[str, float | None] | None = None
        t_prev = 0.0
        for _ in range(LIST_ATTEMPTS):
            t = time.monotonic()
            items = self._set_items_once(name)
            t_end = time.monotonic()
            keys = {_element_key(i): _element_expires(i) for i in items}
            if len(keys) == len(items):  # no repeated element
                if prev is None and len(items) < ONE_MESSAGE:
                    return items
                if prev is not None:
                    lost = [k for k, exp in prev.items() if k not in keys
                            and (exp is None or exp > t_end - t_prev + EXPIRY_SLACK)]
                    if not lost:
                        return items
                prev, t_prev = keys, t
        self.listing_retries_exhausted += 1
        raise NftInconsistent(f"set {name} changed while it was being listed, {LIST_ATTEMPTS} times in a row "
                              "(a flood of changes?); its listing would be incomplete: try again")

    def _list_set(self, name: str) -> list[dict]:
        """A set's entries as {"network", "timeout", "expires_in", "set"} (text listing: twice as
        fast as JSON for big sets), complete (see :meth:`_set_items`)."""
        return _parse_set_items(name, self._set_items(name))

    def _set_size(self, name: str) -> int:
        return len(self._set_items(name))

    def list_blocked(self) -> list[dict]:
        """Every block: {"network", "timeout" (s, 0 = permanent), "expires_in" (s, None = permanent), "set"}."""
        out = []
        for name in self._blocked_sets():
            out += self._list_set(name)
        return out

    def blocked_count(self) -> int:
        """How many entries the blocked sets hold (cheaper than len(list_blocked()))."""
        return sum(self._set_size(name) for name in self._blocked_sets())

    # -- ignore sets / FTP expectations ----------------------------------------------------------
    def add_ignore(self, network: Any) -> bool:
        """Never queue this source (until the next load, which rewrites the ignore sets)."""
        net = parse_network(network)
        setname = "ignore4" if net.version == 4 else "ignore6"
        existing = [ipaddress.ip_network(b["network"]) for b in self._list_set(setname)]
        adds, deletes = _plan_nets({net: 0}, existing)
        if not adds:
            return False
        cmds = [f"delete element inet {self.table} {setname} {{ {', '.join(str(d) for d in deletes)} }}"] if deletes else []
        cmds.append(f"add element inet {self.table} {setname} {{ {net} }}")
        self._cmd("\n".join(cmds), f"ignoring {network_text(net)}")
        return True

    def remove_ignore(self, network: Any) -> bool:
        net = parse_network(network)
        setname = "ignore4" if net.version == 4 else "ignore6"
        try:
            self._cmd(f"delete element inet {self.table} {setname} {{ {net} }}", f"un-ignoring {net}")
            return True
        except NftError:
            self._require_loaded()
            return False

    def expect_ftp(self, peer: str, server: str, port: int, timeout: float,
                   remove: Iterable[tuple[str, str, int]] = ()) -> None:
        """Let one FTP data connection in: from ``peer`` to ``server``:``port``, for ``timeout`` s.

        ``remove``: (peer, server, port) expectations this one supersedes, deleted in the same
        transaction (whether or not the kernel still holds them: an expired one is re-added for 1s
        and deleted, as ``delete`` alone fails on a missing element)."""
        a, b, setname, elem = _ftp_element(peer, server, port)
        cmds = []
        for old in remove:
            _, _, oset, oelem = _ftp_element(*old)
            cmds += [f"add element inet {self.table} {oset} {{ {oelem} timeout 1s }}",
                     f"delete element inet {self.table} {oset} {{ {oelem} }}"]
        cmds.append(f"add element inet {self.table} {setname} {{ {elem}{_timeout_text(max(1, timeout))} }}")
        self._cmd("\n".join(cmds), f"adding an FTP expectation {a} -> {b}:{port}")

    def unexpect_ftp(self, peer: str, server: str, port: int) -> None:
        """Withdraw an FTP expectation (no error when the kernel no longer holds it)."""
        _, _, setname, elem = _ftp_element(peer, server, port)
        self._cmd(f"add element inet {self.table} {setname} {{ {elem} timeout 1s }}\n"
                  f"delete element inet {self.table} {setname} {{ {elem} }}",
                  f"removing the FTP expectation {elem}")

    # -- in-use ports by polling -----------------------------------------------------------------
    def refresh_inuse(self) -> bool:
        """inuse=poll: make tcp_ports/udp_ports = monitored minus ports in use now (one transaction,
        only when something changed). Returns True when the sets were rewritten."""
        if self._spec is None or self._inuse != "poll":
            return False
        tcp_in, udp_in = _inuse.listening_ports()
        ports = (_inuse.subtract_ports(self._spec.tcp_ports, tcp_in), _inuse.subtract_ports(self._spec.udp_ports, udp_in))
        if ports == self._applied_ports:
            return False
        t = self.table
        cmds = []
        for name, ranges in zip(("tcp_ports", "udp_ports"), ports):
            cmds.append(f"flush set inet {t} {name}")
            if ranges:
                cmds.append(f"add element inet {t} {name} {{ {', '.join(_port_elems(ranges))} }}")
        self._cmd("\n".join(cmds), "updating the monitored ports (in-use poll)")
        self._applied_ports = ports
        return True

    def start_inuse_poller(self, interval: float = 1.0) -> None:
        """Run refresh_inuse() every ``interval`` seconds in a daemon thread (load() does this)."""
        self.stop_inuse_poller()
        self._poll_stop.clear()

        def loop() -> None:
            while not self._poll_stop.wait(interval):
                try:
                    self.refresh_inuse()
                except Exception as e:  # keep polling; the next round retries
                    log.warning("in-use poll failed: %s", e)

        self._poller = threading.Thread(target=loop, name="nfsentry-inuse-poll", daemon=True)
        self._poller.start()

    def stop_inuse_poller(self) -> None:
        if self._poller is not None:
            self._poll_stop.set()
            self._poller.join(timeout=5)
            self._poller = None

    # -- reporting --------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Packet counts: queued_tcp/udp/ftp, blocked_pkts4/6, and the sums queued, blocked_pkts."""
        items = self._json(f"list counters table inet {self.table}", "reading the counters")
        out = {name: 0 for name in COUNTERS}
        for i in items:
            c = i.get("counter")
            if c:
                out[c["name"]] = c.get("packets", 0)
        out["queued"] = out["queued_tcp"] + out["queued_udp"]
        out["blocked_pkts"] = out["blocked_pkts4"] + out["blocked_pkts6"]
        return out

    def status(self, sizes: bool = True) -> dict[str, Any]:
        """backend, inuse, variant, loaded, set sizes, counters, compat rules."""
        info = self._info(rules=True)
        st: dict[str, Any] = {"table": f"inet {self.table}", "loaded": info is not None}
        if info is None:
            st.update(backend=self._backend, inuse=self._inuse, variant=None)
            return st
        rules = " ".join(r for rs in info["rules"].values() for r in rs)
        backend = "native" if '"queue"' in rules else "compat" if '"mangle"' in rules else None
        if "socket" in rules:
            inuse = "socket"
        else:
            inuse = self._inuse if self._inuse in ("poll", "off") else "poll-or-off"
        if "input" not in info["chains"]:
            variant = "blocks-only"
        elif "forward" in info["chains"]:
            variant = "gateway"
        else:
            variant = "host" if '"drop"' in " ".join(info["rules"].get("prerouting", [])) else "observe"
        st.update(backend=backend, inuse=inuse, variant=variant, chains=info["chains"],
                  compat_rules=len(self.compat_installed()) if backend == "compat" else 0)
        if sizes:
            st["sets"] = {name: self._set_size(name) for name in info["sets"]}
            st["blocked"] = sum(n for s, n in st["sets"].items() if s.startswith("blocked"))
        st["counters"] = self.counters()
        return st


def probe_backend() -> str:
    """'native' or 'compat' for the kernel of the current network namespace."""
    return Nft().probe_backend()


# == command line (python -m nfsentry.nft) ======================================================
def _spec_from_args(a) -> RulesetSpec:
    kw = json.loads(a.spec) if getattr(a, "spec", None) else {}
    if getattr(a, "variant", None):
        kw["variant"] = a.variant
    return RulesetSpec(**kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nfsentry.nft", description="nfsentry's nftables layer (debugging and `make rules`).")
    p.add_argument("--write-shipped", metavar="DIR", help="regenerate DIR/nfsentry.nft, gateway.nft, observe.nft")
    p.add_argument("--table", default="nfsentry")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("render", help="print a ruleset")
    r.add_argument("--variant", choices=VARIANTS)
    r.add_argument("--backend", choices=BACKENDS, default="native")
    r.add_argument("--spec", help="RulesetSpec fields as JSON")
    sub.add_parser("probe", help="print the queue backend and in-use method this kernel supports")
    ld = sub.add_parser("load")
    ld.add_argument("--variant", choices=VARIANTS)
    ld.add_argument("--backend", choices=("auto", *BACKENDS), default=None)
    ld.add_argument("--spec", help="RulesetSpec fields as JSON")
    sub.add_parser("unload")
    b = sub.add_parser("block")
    b.add_argument("network")
    b.add_argument("--timeout", type=float, default=0)
    u = sub.add_parser("unblock")
    u.add_argument("network")
    sub.add_parser("unblock-all")
    sub.add_parser("list")
    sub.add_parser("counters")
    sub.add_parser("status")
    a = p.parse_args(argv)
    try:
        if a.write_shipped:
            for path in write_shipped(a.write_shipped):
                print(path)
            return 0
        if a.cmd == "render":
            sys.stdout.write(render(_spec_from_args(a), a.backend))
            return 0
        if a.cmd is None:
            p.print_help()
            return 2
        nft = Nft(a.table)
        if a.cmd == "probe":
            out: Any = {"backend": nft.probe_backend(), "inuse": "socket" if nft.probe_socket() else "poll"}
        elif a.cmd == "load":
            out = nft.load(_spec_from_args(a), backend=a.backend, poll_interval=0)
        elif a.cmd == "unload":
            nft.unload()
            out = {"unloaded": True}
        elif a.cmd == "block":
            out = {"changed": nft.block(a.network, a.timeout)}
        elif a.cmd == "unblock":
            out = {"removed": nft.unblock(a.network)}
        elif a.cmd == "unblock-all":
            out = {"removed": nft.unblock_all()}
        elif a.cmd == "list":
            out = nft.list_blocked()
        elif a.cmd == "counters":
            out = nft.counters()
        else:
            out = nft.status()
        print(json.dumps(out, indent=1))
        return 0
    except (NftError, ValueError) as e:
        print(f"nfsentry: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
