"""Ports in use right now, read from ``/proc/net/{tcp,udp}{,6}``.

This is the fallback for kernels without the nftables ``socket`` expression: instead of the
kernel asking "is there a socket for this packet?", nfsentry polls the socket tables and keeps
the monitored port sets equal to *monitored minus in use* (see ``Nft.refresh_inuse``).

A TCP port is in use when a socket LISTENs on it; a UDP port when any socket is bound to it
(UDP has no listen state). The files describe the network namespace of the reading process.

:class:`RecentPorts` is ``recent_service_grace`` for the poll method: a port seen in use stays
exempt for the grace after its socket is gone (the `socket` method keeps that in the kernel sets
``served_tcp``/``served_udp`` instead).
"""

from __future__ import annotations

from pathlib import Path

from nfsentry.core import units as _units

TCP_LISTEN = "0A"

__all__ = ["listening_ports", "parse_proc_net", "subtract_ports", "ports_to_ranges", "RecentPorts"]


def parse_proc_net(text: str, listen_only: bool) -> set[int]:
    """Local ports of the sockets in one /proc/net/{tcp,udp}{,6} file's text.

    Lines look like ``  0: 00000000:0016 00000000:0000 0A ...`` (local address:port in hex, remote,
    state). ``listen_only`` keeps TCP LISTEN sockets only.
    """
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            port = int(fields[1].rsplit(":", 1)[1], 16)
        except (IndexError, ValueError):
            continue
        if port == 0 or (listen_only and fields[3] != TCP_LISTEN):
            continue
        ports.add(port)
    return ports


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # no IPv6 in this kernel/namespace, or the file vanished
        return ""


def listening_ports(proc_net: str | Path = "/proc/net") -> tuple[set[int], set[int]]:
    """(TCP ports with a listening socket, UDP ports with a bound socket), IPv4 and IPv6 merged."""
    base = Path(proc_net)
    tcp = parse_proc_net(_read(base / "tcp"), True) | parse_proc_net(_read(base / "tcp6"), True)
    udp = parse_proc_net(_read(base / "udp"), False) | parse_proc_net(_read(base / "udp6"), False)
    return tcp, udp


def ports_to_ranges(ports) -> list[tuple[int, int]]:
    """{22, 23, 24, 80} -> [(22, 24), (80, 80)] (core.units)."""
    return _units.ports_to_ranges(ports)


def subtract_ports(ranges: list[tuple[int, int]], ports) -> list[tuple[int, int]]:
    """Ranges minus single ports: [(1, 1023)] - {22} -> [(1, 21), (23, 1023)] (core.units)."""
    return _units.subtract_ranges(ranges, _units.ports_to_ranges(ports))


class RecentPorts:
    """Ports in use now or within the last ``grace`` seconds, per protocol (poll's grace).

    ``seen(tcp, udp, now)`` records the ports in use at ``now`` (a monotonic clock) and returns
    (TCP ports, UDP ports) in use within the grace, those included; forgotten ports are dropped.
    With grace 0 it returns just what it was given.
    """

    def __init__(self, grace: float = 0) -> None:
        self.grace = grace
        self._last: tuple[dict[int, float], dict[int, float]] = ({}, {})

    def seen(self, tcp: set[int], udp: set[int], now: float) -> tuple[set[int], set[int]]:
        out = []
        for last, ports in zip(self._last, (tcp, udp)):
            for p in ports:
                last[p] = now
            for p in [p for p, t in last.items() if now - t > self.grace]:
                del last[p]
            out.append(set(last))
        return out[0], out[1]
