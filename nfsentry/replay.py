"""Offline replay: run the daemon's engine over a packet capture.

scapy reads the capture (never on the live path); each packet's IP bytes go through the same
``decode`` -> ``Engine.process`` the daemon runs, with the capture's timestamps as the clock.

The kernel normally filters before the engine sees anything, so replay applies the same
filters from what the capture shows:
- only packets *to* the protected host (``--local``; by default, per address family, the
  address that received packets to monitored ports most often is guessed) on monitored ports;
- ports that answered (a SYN-ACK, or any TCP/UDP packet sent *from* that local port) count as
  in use for the whole capture, as the kernel's ``socket`` match would see them;
- packets of a flow the protected host already answered or opened are established;
- ignored sources (the config's ignore list) are skipped.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from nfsentry.config import schema as C
from nfsentry.core.units import in_ranges


class ReplayError(Exception):
    pass


class _Blocked:
    """What the kernel's blocked sets would hold, tested against raw source addresses in O(1):
    per (address length, prefix length), the set of masked source numbers."""

    def __init__(self) -> None:
        self.by_len: dict[int, list[tuple[int, set[int]]]] = {4: [], 16: []}

    def add(self, network: str) -> None:
        net = ipaddress.ip_network(network, strict=False)
        size = net.max_prefixlen // 8
        shift = net.max_prefixlen - net.prefixlen
        for sh, keys in self.by_len[size]:
            if sh == shift:
                keys.add(int(net.network_address) >> shift)
                return
        self.by_len[size].append((shift, {int(net.network_address) >> shift}))

    def __contains__(self, raw: bytes) -> bool:
        groups = self.by_len.get(len(raw))
        if not groups:
            return False
        n = int.from_bytes(raw, "big")
        return any((n >> shift) in keys for shift, keys in groups)


# link-layer header lengths of the capture link types read without scapy's dissection
_ETHERNET, _NULL, _LOOP, _SLL, _SLL2 = 1, 0, 108, 113, 276
_RAW_IP = {12, 14, 101, 228, 229}
_ETH_IP = {0x0800, 0x86DD}
_ETH_VLAN = {0x8100, 0x88A8, 0x9100}


def _ip_bytes(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame; None when it holds none. Raises KeyError for a
    link type handled by scapy's dissection instead."""
    if linktype == _ETHERNET:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in _ETH_VLAN and len(frame) >= off + 4:
            ethertype, off = int.from_bytes(frame[off + 2 : off + 4], "big"), off + 4
        return frame[off:] if ethertype in _ETH_IP else None
    if linktype in _RAW_IP:
        return frame if frame and frame[0] >> 4 in (4, 6) else None
    if linktype == _SLL:
        return frame[16:] if int.from_bytes(frame[14:16], "big") in _ETH_IP else None
    if linktype == _SLL2:
        return frame[20:] if int.from_bytes(frame[0:2], "big") in _ETH_IP else None
    if linktype in (_NULL, _LOOP):
        return frame[4:] if len(frame) > 4 and frame[4] >> 4 in (4, 6) else None
    raise KeyError(linktype)


def read_capture(path: str) -> list[tuple[float, bytes]]:
    """(timestamp, IP packet bytes) of every IPv4/IPv6 packet of a pcap or pcapng file. Frames of
    the common link types are cut without dissection (linear and cheap for big captures); other
    link types go through scapy's dissector."""
    try:
        from scapy.all import IP, IPv6, RawPcapReader, conf
    except ImportError as e:  # pragma: no cover
        raise ReplayError(f"replay needs scapy: {e}") from None
    out = []
    try:
        with RawPcapReader(path) as reader:
            for frame, meta in reader:
                if hasattr(meta, "tsresol"):  # pcapng
                    ts, linktype = ((meta.tshigh << 32) + meta.tslow) / meta.tsresol, meta.linktype
                else:
                    ts = meta.sec + meta.usec / (1e9 if reader.nano else 1e6)
                    linktype = reader.linktype
                try:
                    ip = _ip_bytes(linktype, frame)
                except KeyError:
                    layer_cls = conf.l2types.num2layer.get(linktype)
                    if layer_cls is None:
                        continue
                    p = layer_cls(frame)
                    layer = p.getlayer(IP) or p.getlayer(IPv6)
                    ip = bytes(layer) if layer is not None else None
                if ip:
                    out.append((float(ts), ip))
    except Exception as e:
        raise ReplayError(f"{path}: not a readable capture ({type(e).__name__}: {e})") from None
    return out


def replay(path: str, cfg: C.Config, local: list[str] | None = None) -> list[dict[str, Any]]:
    from nfsentry.config.derive import engine_config
    from nfsentry.core.addrs import PrefixSet
    from nfsentry.core.engine import Action, Engine
    from nfsentry.core.events import decision_event
    from nfsentry.core.packet import decode
    from nfsentry.core.valves import Valves

    packets = [(ts, decode(raw)) for ts, raw in read_capture(path)]
    packets = [(ts, p) for ts, p in packets if not p.malformed or p.src]
    if local:
        try:
            locals_ = {ipaddress.ip_address(a).packed for a in local}
        except ValueError as e:
            raise ReplayError(f"--local: {e}") from None
    else:
        # per family: a dual-stack host receives scans on both of its addresses
        counts: dict[int, Counter] = {4: Counter(), 16: Counter()}
        monitored = {6: cfg.tcp_ports, 17: cfg.udp_ports}
        for _, p in packets:
            if p.proto in monitored and in_ranges(p.dport, monitored[p.proto]):
                if len(p.dst) in counts:
                    counts[len(p.dst)][p.dst] += 1
        locals_ = {cnt.most_common(1)[0][0] for cnt in counts.values() if cnt}
    # pass 1: ports in use, flows the local host answered or opened
    in_use: set[tuple[bytes, int, int]] = set()
    for _, p in packets:
        if p.src in locals_ and p.proto in (6, 17) and not p.malformed:
            if p.proto == 17 or (p.flags & 0x12) == 0x12 or (p.flags & 0x10 and not p.flags & 0x04):
                in_use.add((p.src, p.proto, p.sport))
    never_block = [str(n) for n in cfg.ignore] + [str(ipaddress.ip_address(a)) for a in locals_]
    engine = Engine(engine_config(cfg), ignore=PrefixSet(never_block))
    engine.valves = Valves(never_block=never_block)  # the daemon's narrowing (no rate limit or cap offline)
    policy = cfg.event_policy()
    kernel_blocked = _Blocked()  # what the kernel sets would hold: their packets never reach the queue
    established: set[tuple] = set()
    events: list[dict[str, Any]] = []
    for ts, p in packets:
        if p.proto not in (6, 17):
            continue
        if p.src in locals_:
            established.add((p.proto, p.dst, p.dport, p.src, p.sport))
            continue
        if p.dst not in locals_:
            continue
        ranges = cfg.tcp_ports if p.proto == 6 else cfg.udp_ports
        if not in_ranges(p.dport, ranges) or (p.dst, p.proto, p.dport) in in_use:
            continue
        if (p.proto, p.src, p.sport, p.dst, p.dport) in established:
            continue
        if p.src in kernel_blocked:
            continue
        d = engine.process(p, ts)
        if d.action == Action.BLOCK:
            ev = decision_event(d, "detection", policy)
            if ev["action"] == "block":
                events.append(ev)
                events.append(decision_event(d, "block", policy))
                kernel_blocked.add(d.network)
            else:
                events.append(ev)
        elif d.action == Action.ALERT:
            events.append(decision_event(d, "detection", policy))
    return events
