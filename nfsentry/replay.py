"""Offline replay: run the daemon's engine over a packet capture.

scapy reads the capture (never on the live path); each packet's IP bytes go through the same
``decode`` -> ``Engine.process`` the daemon runs, with the capture's timestamps as the clock.

The kernel normally filters before the engine sees anything, so replay applies the same
filters from what the capture shows:
- only packets *to* the protected host (``--local``; by default the addresses that received
  packets to monitored ports most often are guessed) on monitored ports;
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



class _PackedNet:
    """A network tested against raw address bytes."""

    def __init__(self, text: str) -> None:
        net = ipaddress.ip_network(text)
        self.max_prefixlen = net.max_prefixlen
        self.net = net

    def __contains__(self, raw: bytes) -> bool:
        return ipaddress.ip_address(raw) in self.net


def read_capture(path: str) -> list[tuple[float, bytes]]:
    try:
        from scapy.all import IP, IPv6, PcapReader
    except ImportError as e:  # pragma: no cover
        raise ReplayError(f"replay needs scapy: {e}") from None
    out = []
    try:
        with PcapReader(path) as reader:
            for p in reader:
                layer = p.getlayer(IP) or p.getlayer(IPv6)
                if layer is None:
                    continue
                out.append((float(p.time), bytes(layer)))
    except Exception as e:
        raise ReplayError(f"{path}: not a readable capture ({type(e).__name__}: {e})") from None
    return out


def replay(path: str, cfg: C.Config, local: list[str] | None = None) -> list[dict[str, Any]]:
    from nfsentry.core.addrs import PrefixSet
    from nfsentry.core.engine import Action, Engine
    from nfsentry.core.events import decision_event
    from nfsentry.core.valves import Valves
    from nfsentry.config.derive import engine_config
    from nfsentry.core.packet import decode

    packets = [(ts, decode(raw)) for ts, raw in read_capture(path)]
    packets = [(ts, p) for ts, p in packets if not p.malformed or p.src]
    if local:
        try:
            locals_ = {ipaddress.ip_address(a).packed for a in local}
        except ValueError as e:
            raise ReplayError(f"--local: {e}") from None
    else:
        cnt = Counter(p.dst for _, p in packets
                      if (p.proto == 6 and in_ranges(p.dport, cfg.tcp_ports))
                      or (p.proto == 17 and in_ranges(p.dport, cfg.udp_ports)))
        locals_ = {cnt.most_common(1)[0][0]} if cnt else set()
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
    kernel_blocked: list = []  # what the kernel set would hold: its packets never reach the queue
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
        if kernel_blocked and any(p.src in net for net in kernel_blocked if len(p.src) == net.max_prefixlen // 8):
            continue
        d = engine.process(p, ts)
        if d.action == Action.BLOCK:
            ev = decision_event(d, "detection", policy)
            if ev["action"] == "block":
                events.append(ev)
                events.append(decision_event(d, "block", policy))
                kernel_blocked.append(_PackedNet(d.network))
            else:
                events.append(ev)
        elif d.action == Action.ALERT:
            events.append(decision_event(d, "detection", policy))
    return events
