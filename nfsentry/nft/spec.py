"""The ruleset specification: what to render and load, its validation, and the constants the
rest of the nft layer shares (variants, backends, in-use methods, counters, classic ports).

Pure: no I/O, no libnftables. ``nfsentry.config`` builds a :class:`RulesetSpec` from the
configuration (it may import this module alone).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from nfsentry.core.addrs import parse_network
from nfsentry.core.units import MAX_SERVICE_GRACE, RATE, TROJAN_TCP, TROJAN_UDP, parse_ports
from nfsentry.nft.errors import SpecError

__all__ = [
    "VARIANTS",
    "BACKENDS",
    "INUSE_METHODS",
    "FTP_PORT",
    "TROJAN_TCP",
    "TROJAN_UDP",
    "COUNTERS",
    "FLEET_SETS",
    "TABLE_NAME",
    "MAX_SERVICE_GRACE",
    "RulesetSpec",
    "KernelBlock",
    "SpecError",
    "default_spec",
]

VARIANTS = ("host", "gateway", "observe")
BACKENDS = ("native", "compat")
INUSE_METHODS = ("auto", "socket", "poll", "off")
FTP_PORT = 21
# What nft accepts as our table's name (and what a RulesetSpec and an Nft session check).
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


# Named counters (nft objects: `nft list counters table inet nfsentry`).
COUNTERS = {
    "blocked_pkts4": "packets from blocked IPv4 sources (dropped, or only counted in observe mode)",
    "blocked_pkts6": "packets from blocked IPv6 sources (dropped, or only counted in observe mode)",
    "queued_tcp": "TCP packets handed to the scan verdict loop",
    "queued_udp": "UDP packets handed to the scan verdict loop",
    "queued_ftp": "FTP control packets handed to the FTP tracker",
    "kernel_blocks": "first probes whose source the kernel put into a blocked set itself (6a)",
    "fleet_pkts4": "packets from IPv4 sources the fleet blocked (pulled from the CrowdSec LAPI)",
    "fleet_pkts6": "packets from IPv6 sources the fleet blocked (pulled from the CrowdSec LAPI)",
}
# The fleet sets (decisions pulled from a CrowdSec LAPI): single addresses, prefixes; per family.
FLEET_SETS = ("fleet4", "fleet4net", "fleet6", "fleet6net")


def _ports(items: Iterable[Any], what: str) -> list[tuple[int, int]]:
    """Port ranges, merged (core.units is the one implementation); errors name the spec field."""
    try:
        return parse_ports(list(items), what)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from None


def _networks(items: Iterable[Any], what: str) -> tuple[list, list]:
    """-> (collapsed IPv4 networks, collapsed IPv6 networks)."""
    v4, v6 = [], []
    for item in items:
        try:
            net = parse_network(item, "address or prefix", allow_everything=True)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        (v4 if net.version == 4 else v6).append(net)
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def check_backend(backend: str) -> None:
    """``backend`` is one a spec may ask for ("auto" included); SpecError (a ValueError) if not."""
    if backend not in ("auto", *BACKENDS):
        raise SpecError(f"backend must be auto, native or compat, not {backend!r}")


@dataclass(frozen=True)
class KernelBlock:
    """The kernel-side block of a first probe: the rule that queues a packet the engine would
    block on any hit also adds its source to the blocked set (the /``ipv6_prefix`` for IPv6, the
    address alone next to a never-block address), with the first offence's timeout; the daemon
    then records it, escalates it or withdraws it.

    ``tcp_flags``: the TCP flags bytes that are blocked this way (empty: no TCP); ``udp``: UDP too;
    ``timeout``: seconds (0 = until unblocked); ``rate``: new kernel blocks allowed, all sources
    together ("100/second"); ``size``: the most entries each blocked hash set holds (0 = no size),
    so a spoofed flood cannot grow them without bound."""

    tcp_flags: tuple[int, ...] = ()
    udp: bool = False
    timeout: int = 3600
    rate: str = "100/second"
    size: int = 100_000

    def check(self) -> KernelBlock:
        flags = tuple(sorted(set(self.tcp_flags)))
        if any(isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= 255 for f in flags):
            raise ValueError(f"kernel_block tcp_flags must be bytes 0-255, not {self.tcp_flags!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int) or self.timeout < 0:
            raise ValueError(f"kernel_block timeout must be whole seconds >= 0, not {self.timeout!r}")
        if not RATE.fullmatch(str(self.rate)):
            raise ValueError(f"kernel_block rate must look like 100/second or 600/minute, not {self.rate!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"kernel_block size must be >= 0, not {self.size!r}")
        return replace(self, tcp_flags=flags, udp=bool(self.udp))

    @property
    def active(self) -> bool:
        return bool(self.tcp_flags or self.udp)


@dataclass
class RulesetSpec:
    """What to render and load. ``config.py`` builds it from the configuration.

    Ports are lists of ``(lo, hi)`` (ints and "a-b" strings are accepted too); networks are
    address/CIDR strings, IPv4 and IPv6 mixed.
    """

    variant: str = "host"  # host | gateway | observe
    tcp_ports: list = field(default_factory=lambda: [(1, 1023), *((p, p) for p in TROJAN_TCP)])
    udp_ports: list = field(default_factory=lambda: [(1, 1023), *((p, p) for p in TROJAN_UDP)])
    ignore: list = field(default_factory=list)  # sources never queued (own addresses, gateways, ...)
    protect: list = field(default_factory=list)  # gateway: the networks behind it (forwarded traffic
    #                                               to them is watched)
    queue: int = 0  # scan verdict loop
    ftp_queue: int = 1  # FTP control tracker
    ftp: bool = True  # queue FTP control packets to ftp_queue
    inuse: str = "auto"  # auto | socket | poll | off
    mark: int = 0x4E460000  # compat backend: value of nfsentry's mark bits (low 2 bits:
    #                                         1 scan, 2 ftp)
    mark_mask: int = 0xFFFF0003  # compat backend: the packet-mark bits nfsentry owns
    table: str = "nfsentry"
    ipv6_prefix: int = 64  # the daemon's IPv6 block prefix (hash set blocked6_<len>)
    backend: str = "auto"  # auto | native | compat
    bypass: bool = True  # scan queue: no daemon listening -> packet passes (fail-open)
    kernel_block: KernelBlock | None = None  # the first probe blocked by the kernel (None: off)
    recent_service_grace: float = 600  # seconds a port stays "in use" after its socket is gone
    #                                    (kernel sets served_tcp/served_udp; 0 = off); whole seconds,
    #                                    a fraction rounds up
    before_input: bool = True  # report what the kernel drops before the input hook (source-routed
    #                            IPv4 to monitored ports, bad IPv4 headers) through NFLOG
    nflog_group: int = 20038  # their NFLOG group (0x4e46, "NF", as the mark)

    def normalized(self) -> RulesetSpec:
        """A validated copy (merged port ranges, collapsed networks). Raises SpecError (a ValueError)."""
        try:
            return self._normalized()
        except SpecError:
            raise
        except (ValueError, TypeError) as e:
            raise SpecError(f"invalid ruleset specification: {e}") from None

    def _normalized(self) -> RulesetSpec:
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
        g = self.nflog_group
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 65535:
            raise ValueError(f"nflog_group must be an NFLOG group number 0-65535, not {g!r}")
        if g in (self.queue, self.ftp_queue):
            raise ValueError("nflog_group must differ from queue and ftp_queue")
        if not TABLE_NAME.fullmatch(str(self.table)):
            raise ValueError(f"bad table name {self.table!r}")
        if not isinstance(self.ipv6_prefix, int) or not 1 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be 1-128, not {self.ipv6_prefix!r}")
        grace = self.recent_service_grace
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_SERVICE_GRACE:
            raise ValueError(f"recent_service_grace must be 0-{MAX_SERVICE_GRACE} seconds, not {grace!r}")
        mask, mark = self.mark_mask & 0xFFFFFFFF, self.mark & 0xFFFFFFFF
        if mask & 3 != 3:
            raise ValueError(f"mark_mask {self.mark_mask:#x} must include the two lowest bits (0x3)")
        if mark & 3 or mark & ~mask & 0xFFFFFFFF:
            raise ValueError(
                f"mark {self.mark:#x} must lie inside mark_mask {self.mark_mask:#x} "
                "and leave its two lowest bits clear (they select the queue)"
            )
        kb = self.kernel_block.check() if self.kernel_block is not None else None
        if kb is not None and (not kb.active or self.variant == "observe"):
            kb = None  # nothing to block in the kernel (observe mode never blocks)
        i4, i6 = _networks(self.ignore, "ignore")
        p4, p6 = _networks(self.protect, "protect")
        return replace(
            self,
            tcp_ports=_ports(self.tcp_ports, "tcp_ports"),
            udp_ports=_ports(self.udp_ports, "udp_ports"),
            ignore=[str(n) for n in (*i4, *i6)],
            protect=[str(n) for n in (*p4, *p6)],
            ftp=bool(self.ftp),
            mark=mark,
            mark_mask=mask,
            bypass=bool(self.bypass),
            kernel_block=kb,
            recent_service_grace=math.ceil(grace),
            before_input=bool(self.before_input),
        )

    @property
    def scan_mark(self) -> int:
        return self.mark | 1

    @property
    def ftp_mark(self) -> int:
        return self.mark | 2


def default_kernel_block() -> KernelBlock:
    """The default configuration's kernel-side block (scan_trigger 0: every probe but a stack's
    replies, TCP and UDP; 1 h; 100 new blocks a second; 100,000 entries per set)."""
    from nfsentry.core.engine import EngineConfig, first_hit_reactions

    fh = first_hit_reactions(EngineConfig())
    return KernelBlock(tcp_flags=tuple(sorted(fh.tcp_flags)), udp=fh.udp)


def default_spec(variant: str = "host") -> RulesetSpec:
    """The shipped rules/<variant> file's specification (the default configuration's)."""
    return RulesetSpec(variant=variant, inuse="socket", kernel_block=default_kernel_block())
