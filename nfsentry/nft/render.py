"""The ruleset as nft text: the model (sets, chains, rules with their comments), ``render()``,
the shipped ``rules/*.nft`` files, and the compat backend's iptables-nft rules.

Pure: no I/O but :func:`write_shipped`. ``render()`` is the single source of truth for the files
under ``rules/`` (``python -m nfsentry.nft --write-shipped rules``; a unit test checks they agree).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from nfsentry.nft.elements import port_elems
from nfsentry.nft.spec import BACKENDS, COUNTERS, FTP_PORT, RulesetSpec, default_spec

__all__ = [
    "SHIPPED",
    "Model",
    "SetDef",
    "ChainDef",
    "model",
    "format_table",
    "render",
    "write_shipped",
    "reload_plan",
    "compat_rules",
    "compat_tag",
    "compat_key",
    "compat_listed",
    "filter_chains",
    "cleanup_commands",
    "REPORT_LIMIT",
    "NETDEV_MAX",
    "ingress_devices",
    "format_ingress",
]

SHIPPED = {"host": "nfsentry.nft", "gateway": "gateway.nft", "observe": "observe.nft"}

Rule = tuple[list[str], str]  # (comment lines, rule)


# == the model ==================================================================================
@dataclass
class SetDef:
    name: str
    type: str
    flags: tuple[str, ...]
    elements: list[str]
    doc: list[str]
    timeout: int = 0  # the elements' default timeout (seconds; 0: none)
    size: int = 0  # the most elements (0: no limit); a set filled from the packet path needs one
    counter: bool = False  # each element counts the packets it matched (`counter` in the set)

    @property
    def signature(self) -> tuple[str, tuple[str, ...], int, int]:
        """What must match for a loaded set to be kept: type, flags, default timeout, size.
        ``dynamic`` is left out: nft 1.0.6's JSON listing omits it (the kernel keeps it); the
        element counter is in the flags as ``counter`` (as ``elements.parse_sets`` reads it)."""
        flags = [f for f in self.flags if f != "dynamic"] + (["counter"] if self.counter else [])
        return self.type, tuple(sorted(flags)), self.timeout, self.size


@dataclass
class ChainDef:
    name: str
    hook: str | None  # "prerouting priority raw - 10" ...
    doc: list[str]
    rules: list[Rule]


@dataclass
class Model:
    spec: RulesetSpec
    backend: str
    sets: list[SetDef]
    chains: list[ChainDef]

    def set(self, name: str) -> SetDef | None:
        return next((s for s in self.sets if s.name == name), None)


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


def _blocked_sets(spec: RulesetSpec) -> list[SetDef]:
    t, v6p = spec.table, spec.ipv6_prefix
    sets = [
        SetDef(
            "blocked4",
            "ipv4_addr",
            ("timeout",),
            [],
            [
                "1. Blocked sources. Filled by the daemon (or by hand); each entry has its own timeout",
                "   or none (blocked until removed). Single addresses live in hash sets:",
                f"     nft add element inet {t} blocked4 {{ 192.0.2.7 timeout 1h }}",
                f"     nft delete element inet {t} blocked4 {{ 192.0.2.7 }}",
            ],
        ),
        SetDef(
            "blocked4net",
            "ipv4_addr",
            ("interval", "timeout"),
            [],
            [
                "IPv4 prefixes (any length); entries may not overlap:",
                f"     nft add element inet {t} blocked4net {{ 192.0.2.0/24 timeout 1d }}",
            ],
        ),
        SetDef("blocked6", "ipv6_addr", ("timeout",), [], ["Single IPv6 addresses."]),
    ]
    if v6p != 128:
        sets.append(
            SetDef(
                f"blocked6_{v6p}",
                "ipv6_addr",
                ("timeout",),
                [],
                [
                    f"IPv6 /{v6p} networks (the daemon blocks IPv6 sources by their /{v6p}), stored as the",
                    f"network address and matched through a /{v6p} mask:",
                    f"     nft add element inet {t} blocked6_{v6p} {{ 2001:db8:1:2:: timeout 1h }}",
                ],
            )
        )
    sets.append(SetDef("blocked6net", "ipv6_addr", ("interval", "timeout"), [], ["IPv6 prefixes of any other length."]))
    for st in sets:  # each entry counts the packets of its source dropped since its block (`nfsentry blocked`)
        st.counter = True
    sets[0].doc.append("   Each entry counts the packets it dropped since the block was made (or last extended).")
    kb = spec.kernel_block
    if kb is not None:  # the hash sets the packet path adds to (6a): dynamic, and bounded
        for st in sets:
            if "interval" not in st.flags:
                st.flags, st.size = ("dynamic", "timeout"), kb.size
        sets[0].doc += [
            "   The kernel adds a first probe's source itself (6a below): these hash sets are",
            f"   `dynamic`, and hold at most {kb.size} entries each." if kb.size else "   `dynamic`.",
        ]
        near = near_prefixes(spec.ignore, v6p)
        if v6p != 128:
            sets.append(
                SetDef(
                    f"near6_{v6p}",
                    "ipv6_addr",
                    ("interval",),
                    near,
                    [
                        f"The /{v6p} networks that hold a never-block address (own, gateway, resolver, ignored):",
                        "a source in one is blocked alone (6a), never with its whole network.",
                    ],
                )
            )
    return sets


def near_prefixes(ignore: list[str], v6p: int) -> list[str]:
    """The /``v6p`` networks holding a never-block IPv6 network narrower than /``v6p`` (a source
    in one is blocked alone, as the daemon's valves narrow it: core/valves.py)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in ignore if ":" in n]
    near = {n.supernet(new_prefix=v6p) for n in nets if n.prefixlen > v6p}
    return [str(n) for n in ipaddress.collapse_addresses(sorted(near))]


def _served(spec: RulesetSpec) -> bool:
    """Does the ruleset remember recently served ports (``recent_service_grace``)? Only with the
    `socket` expression: it is what sees a service answer. (poll keeps the grace in the daemon's
    poller; off detects no service.)"""
    return spec.recent_service_grace > 0 and spec.inuse in ("auto", "socket")


def _nft_time(seconds: float) -> str:
    """Whole seconds as nft writes a time: 600 -> "10m", 5400 -> "1h30m", 0 -> "0s"."""
    seconds, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _fleet_sets(spec: RulesetSpec) -> list[SetDef]:
    t = spec.table
    return [
        SetDef(
            "fleet4",
            "ipv4_addr",
            ("timeout",),
            [],
            [
                "2. Fleet blocks: decisions pulled from a CrowdSec Local API ([fleet] pull), filled only by",
                "   the daemon's ledger, each with the decision's time left. Single addresses in hash sets,",
                "   prefixes (Range decisions) in interval sets, per family; apart from the local blocks so",
                f"   they are counted on their own:  nft list set inet {t} fleet4",
            ],
        ),
        SetDef("fleet4net", "ipv4_addr", ("interval", "timeout"), [], []),
        SetDef("fleet6", "ipv6_addr", ("timeout",), [], []),
        SetDef("fleet6net", "ipv6_addr", ("interval", "timeout"), [], []),
    ]


def _served_sets(spec: RulesetSpec) -> list[SetDef]:
    if not _served(spec):
        return []
    t, grace = spec.table, int(spec.recent_service_grace)  # normalized: whole seconds
    doc = [
        "4. Ports served recently: a connection attempt or a datagram found a local socket on them",
        f"   within the last {_nft_time(grace)} (recent_service_grace). Filled and refreshed from the packet",
        "   path by the in-use rule of the input chain (and seeded with the listening ports when the",
        "   daemon loads the table); a restarting service's port stays exempt this long after its",
        f"   socket is gone:  nft list set inet {t} served_tcp",
    ]
    return [
        SetDef("served_tcp", "inet_service", ("dynamic", "timeout"), [], doc, grace, 65536),
        SetDef("served_udp", "inet_service", ("dynamic", "timeout"), [], [], grace, 65536),
    ]


def _sets(spec: RulesetSpec) -> list[SetDef]:
    t = spec.table
    sets = (
        _blocked_sets(spec)
        + _fleet_sets(spec)
        + [
            SetDef(
                "ignore4",
                "ipv4_addr",
                ("interval",),
                [n for n in spec.ignore if ":" not in n],
                [
                    "3. Ignored sources: never queued, never blocked by the daemon (own addresses, gateways,",
                    "   resolvers, the configured ignore list).",
                ],
            ),
            SetDef("ignore6", "ipv6_addr", ("interval",), [n for n in spec.ignore if ":" in n], []),
        ]
    )
    if spec.variant == "gateway":
        sets += [
            SetDef(
                "protect4",
                "ipv4_addr",
                ("interval",),
                [n for n in spec.protect if ":" not in n],
                [
                    "Gateway: the networks behind this host. Forwarded connection attempts to them are",
                    "watched; nothing is watched in the forward path while these sets are empty:",
                    f"     nft add element inet {t} protect4 {{ 198.51.100.0/24 }}",
                ],
            ),
            SetDef("protect6", "ipv6_addr", ("interval",), [n for n in spec.protect if ":" in n], []),
        ]
    sets += [
        SetDef(
            "tcp_ports",
            "inet_service",
            ("interval",),
            port_elems(spec.tcp_ports),
            [
                "6. Monitored ports. A connection attempt to one of them that no socket answers is",
                "   handed to the daemon. PortSentry's advanced mode (all ports 1-1023 but the ones in",
                "   use) and its classic mode (a list) are both just this set's contents.",
            ],
        ),
        SetDef("udp_ports", "inet_service", ("interval",), port_elems(spec.udp_ports), []),
        SetDef(
            "ftp_expect4",
            "ipv4_addr . ipv4_addr . inet_service",
            ("timeout",),
            [],
            [
                "5. FTP data connections the FTP tracker expects (PASV/PORT/EPSV/EPRT replies):",
                "   source . destination . destination port, each with a short timeout.",
            ],
        ),
        SetDef("ftp_expect6", "ipv6_addr . ipv6_addr . inet_service", ("timeout",), [], []),
    ]
    return sets + _served_sets(spec)


def _prerouting(spec: RulesetSpec) -> ChainDef:
    v6p = spec.ipv6_prefix
    observe = spec.variant == "observe"
    drop = "" if observe else " drop"
    rules: list[Rule] = [
        (
            [
                "1. Blocked sources: dropped before anything else."
                if not observe
                else "1. Observe mode: packets from blocked sources are only counted, never dropped."
            ],
            f"ip saddr @blocked4 counter name blocked_pkts4{drop}",
        ),
        ([], f"ip saddr @blocked4net counter name blocked_pkts4{drop}"),
        ([], f"ip6 saddr @blocked6 counter name blocked_pkts6{drop}"),
    ]
    if v6p != 128:
        rules.append(([], f"ip6 saddr & {_v6_mask(v6p)} @blocked6_{v6p} counter name blocked_pkts6{drop}"))
    rules.append(([], f"ip6 saddr @blocked6net counter name blocked_pkts6{drop}"))
    rules += [
        (["2. Fleet blocks (pulled from the CrowdSec LAPI), counted apart."], f"ip saddr @fleet4 counter name fleet_pkts4{drop}"),
        ([], f"ip saddr @fleet4net counter name fleet_pkts4{drop}"),
        ([], f"ip6 saddr @fleet6 counter name fleet_pkts6{drop}"),
        ([], f"ip6 saddr @fleet6net counter name fleet_pkts6{drop}"),
    ]
    return ChainDef(
        "prerouting",
        "prerouting priority raw - 10",
        [
            "Runs at raw priority minus 10, before connection tracking: a blocked source costs no",
            "conntrack entry, and forwarded traffic (gateway) is covered too.",
        ],
        rules,
    )


def _ftp_jump(spec: RulesetSpec) -> list[Rule]:
    if not spec.ftp:
        return []
    return [
        (
            [
                "7. FTP control channel, both directions: to the FTP tracker. Before the established",
                "   shortcut below, because control packets belong to an established connection; only",
                "   those: a forged segment of no connection never reaches the tracker.",
            ],
            f"ct state established tcp dport {FTP_PORT} jump ftp_control",
        ),
        ([], f"ct state established tcp sport {FTP_PORT} jump ftp_control"),
    ]


_EXPECT: list[Rule] = [
    (["5. Expected FTP data connections."], "ip saddr . ip daddr . tcp dport @ftp_expect4 accept"),
    ([], "ip6 saddr . ip6 daddr . tcp dport @ftp_expect6 accept"),
]


def _flags_match(flags: tuple[int, ...]) -> str:
    """`tcp flags` matching exactly these flags bytes (the shorter of the set and its complement)."""
    other = [f for f in range(256) if f not in flags]
    if len(other) < len(flags):
        return "tcp flags != { " + ", ".join(f"{f:#04x}" for f in other) + " }"
    return "tcp flags { " + ", ".join(f"{f:#04x}" for f in flags) + " }"


def kernel_block_rules(spec: RulesetSpec) -> list[Rule]:
    """6a. The first probe blocked by the kernel, in the rule before the one that queues it."""
    kb = spec.kernel_block
    if kb is None:
        return []
    v6p = spec.ipv6_prefix
    t = f" timeout {kb.timeout}s" if kb.timeout else ""
    add = "limit name kernel_block counter name kernel_blocks add"
    matches = []
    if kb.tcp_flags:
        matches.append(f"tcp dport @tcp_ports {_flags_match(kb.tcp_flags)}")
    if kb.udp:
        matches.append("udp dport @udp_ports")
    rules: list[Rule] = []
    for m in matches:
        rules.append(([], f"meta nfproto ipv4 ct state new {m} {add} @blocked4 {{ ip saddr{t} }}"))
        if v6p == 128:
            rules.append(([], f"meta nfproto ipv6 ct state new {m} {add} @blocked6 {{ ip6 saddr{t} }}"))
            continue
        rules.append(([], f"meta nfproto ipv6 ct state new {m} ip6 saddr @near6_{v6p} {add} @blocked6 {{ ip6 saddr{t} }}"))
        rules.append(
            ([], f"meta nfproto ipv6 ct state new {m} ip6 saddr != @near6_{v6p} {add} @blocked6_{v6p} {{ ip6 saddr & {_v6_mask(v6p)}{t} }}")
        )
    what = "TCP and UDP" if kb.tcp_flags and kb.udp else "TCP" if kb.tcp_flags else "UDP"
    doc = [
        f"6a. Kernel-side block: a {what} probe the daemon blocks on any hit (the flags below are",
        "    the ones its policy reacts to; never a stack's replies) puts its source into the blocked",
        "    set right here, before it is queued: nothing after it gets through. IPv4 by address, IPv6",
        f"    by its /{v6p} (alone next to a never-block address). Only `ct state new`: conntrack checked",
        "    the checksum (a bad one is `invalid`; the daemon decides those). At most",
        f"    {kb.rate} new entries (limit kernel_block). The daemon still gets the packet: it records",
        "    the block, escalates a repeat offender's time, or withdraws what its valves refuse.",
    ]
    rules[0] = (doc, rules[0][1])
    return rules


def _input(spec: RulesetSpec, backend: str) -> ChainDef:
    q_tcp = f"counter name queued_tcp {_verdict(spec, backend, False)}"
    q_udp = f"counter name queued_udp {_verdict(spec, backend, False)}"
    inuse = "socket" if spec.inuse == "auto" else spec.inuse
    queue_rules: list[Rule] = [
        (
            [
                "6. New, invalid or untracked TCP/UDP to a monitored port: to the scan verdict loop",
                f"   (queue {spec.queue}; "
                + (
                    "`bypass`: with no daemon listening the packet passes)."
                    if spec.bypass
                    else "no bypass (fail-closed): with no daemon listening the packet is dropped)."
                ),
            ],
            f"ct state new,invalid,untracked tcp dport @tcp_ports {q_tcp}",
        ),
        ([], f"ct state new,invalid,untracked udp dport @udp_ports {q_udp}"),
    ]
    rules: list[Rule] = [
        (["The host talking to itself."], 'iif "lo" accept'),
        *_ftp_jump(spec),
        (["2. Established and related traffic."], "ct state established,related accept"),
        (
            ["Only unicast packets addressed to this host: broadcasts and multicast never reach", "the daemon."],
            "fib daddr type != local accept",
        ),
        (["3. Ignored sources."], "ip saddr @ignore4 accept"),
        ([], "ip6 saddr @ignore6 accept"),
    ]
    if inuse == "socket" and _served(spec):
        grace = _nft_time(spec.recent_service_grace)
        rules += [
            (
                [
                    "4. The port is in use right now (a listening or bound socket exists): a service",
                    "   started after nfsentry is never mistaken for a monitored port. The port is",
                    f"   remembered as served for {grace} (recent_service_grace; `update` restarts the timeout).",
                ],
                "meta l4proto tcp socket transparent 0 update @served_tcp { tcp dport } accept",
            ),
            ([], "meta l4proto udp socket transparent 0 update @served_udp { udp dport } accept"),
            (
                [
                    f"   Or it was in use within the last {grace}: a service that stops or restarts (a deploy,",
                    "   a crash) does not turn the clients retrying meanwhile into scanners. Nothing",
                    "   answers them but the kernel (TCP reset, ICMP port unreachable).",
                ],
                "tcp dport @served_tcp accept",
            ),
            ([], "udp dport @served_udp accept"),
        ]
    elif inuse == "socket":
        rules.append(
            (
                [
                    "4. The port is in use right now (a listening or bound socket exists): a service",
                    "   started after nfsentry is never mistaken for a monitored port.",
                ],
                "socket transparent 0 accept",
            )
        )
    elif inuse == "poll":
        rules.append(([], "# 4. In-use ports: polled from /proc/net and left out of tcp_ports/udp_ports."))
    else:
        rules.append(([], "# 4. In-use detection is off: only the FTP expectations exempt a port."))
    rules += _EXPECT + kernel_block_rules(spec) + queue_rules
    return ChainDef(
        "input",
        "input priority filter - 10",
        [
            "Traffic to this host. Before the usual filter chains (priority filter - 10), so the",
            "daemon sees a probe before anything else accepts it.",
        ],
        rules,
    )


def _forward(spec: RulesetSpec, backend: str) -> ChainDef:
    q_tcp = f"counter name queued_tcp {_verdict(spec, backend, False)}"
    q_udp = f"counter name queued_udp {_verdict(spec, backend, False)}"
    rules: list[Rule] = [
        *_ftp_jump(spec),
        (["2. Established and related traffic."], "ct state established,related accept"),
        (["Only traffic to the protected networks behind this gateway."], "ip daddr != @protect4 accept"),
        ([], "ip6 daddr != @protect6 accept"),
        (["3. Ignored sources."], "ip saddr @ignore4 accept"),
        ([], "ip6 saddr @ignore6 accept"),
        *_EXPECT,
        *kernel_block_rules(spec),
        (
            [
                "6. Connection attempts to monitored ports of a protected host: to the scan verdict",
                "   loop. The gateway cannot see which ports the hosts behind it serve: leave those",
                "   out of the monitored ports (tcp_exclude/udp_exclude).",
            ],
            f"ct state new,invalid,untracked tcp dport @tcp_ports {q_tcp}",
        ),
        ([], f"ct state new,invalid,untracked udp dport @udp_ports {q_udp}"),
    ]
    return ChainDef("forward", "forward priority filter - 10", ["Traffic routed through this host to the protected networks."], rules)


def _ftp_chains(spec: RulesetSpec, backend: str) -> list[ChainDef]:
    v4, v6 = _ftp_payload_sets()
    q_ftp = f"counter name queued_ftp {_verdict(spec, backend, True)}"
    output = ChainDef(
        "output",
        "output priority filter - 10",
        ["This host's own FTP control traffic (as a server: its replies; as a client:", "its commands)."],
        [([], 'oif "lo" accept'), ([], f"tcp sport {FTP_PORT} jump ftp_control"), ([], f"tcp dport {FTP_PORT} jump ftp_control")],
    )
    control = ChainDef(
        "ftp_control",
        None,
        [
            "7. FTP control packets (port 21): only segments that carry payload go to the FTP",
            f"   tracker (queue {spec.ftp_queue}). The TCP header's byte 12 holds its length / 4 in the",
            "   upper 4 bits; a packet carries payload when the IP length exceeds the headers.",
        ],
        [
            (
                ["IPv4 with IP options (first byte not 0x45) is rare: the tracker checks it itself."],
                f"meta nfproto ipv4 @nh,0,8 != 0x45 {q_ftp}",
            ),
            ([], f"meta nfproto ipv4 @th,96,8 . ip length {v4} {q_ftp}"),
            ([], f"meta nfproto ipv6 @th,96,8 . ip6 length {v6} {q_ftp}"),
        ],
    )
    return [output, control]


# == what the kernel drops before the input hook (through NFLOG) ================================
# At most this many such packets a second reach the daemon (per table); the rest of a flood is
# dropped unreported (the kernel drops every one of them anyway, see below).
REPORT_LIMIT = "100/second burst 100 packets"
# Devices one netdev chain may hook (the kernel's NFT_NETDEVICE_MAX); more take more chains.
NETDEV_MAX = 256
# Interface names the netdev table names (Linux allows quotes and commas in them; nft text does not).
_DEVICE = re.compile(r"[A-Za-z0-9_.+-]{1,15}")


def _report(spec: RulesetSpec, what: str) -> ChainDef:
    """The chain that hands a packet to the daemon (NFLOG group ``spec.nflog_group``) and drops it."""
    drop = "" if spec.variant == "observe" else " drop"
    rest = "dropped unreported" if drop else "only counted (observe mode: nothing is dropped here)"
    return ChainDef(
        "to_daemon",
        None,
        [f"To the daemon through NFLOG group {spec.nflog_group} ({what}), at most {REPORT_LIMIT};", f"the rest of a flood is {rest}."],
        [
            ([], f"limit rate over {REPORT_LIMIT} counter {'drop' if drop else 'return'}"),
            ([], f"counter log group {spec.nflog_group}{drop}"),
        ],
    )


def _source_routed(spec: RulesetSpec) -> ChainDef:
    rules: list[Rule] = [
        ([], "meta nfproto ipv6 accept"),
        (["Only IPv4 headers longer than 20 bytes carry options."], "ip hdrlength 5 accept"),
        (["3. Ignored sources."], "ip saddr @ignore4 accept"),
    ]
    for proto, ports in (("tcp", "tcp_ports"), ("udp", "udp_ports")):
        for opt in ("lsrr", "ssrr"):
            rules.append(([], f"{proto} dport @{ports} ip option {opt} exists jump to_daemon"))
    return ChainDef(
        "source_routed",
        "prerouting priority raw - 5",
        [
            "8. Source-routed IPv4 (LSRR/SSRR options) never reaches the input hook: the kernel drops",
            "   it after prerouting unless net.ipv4.conf.*.accept_source_route is 1 (the default is 0;",
            "   RFC 7126 recommends dropping it). So the ones to a monitored port go to the daemon from",
            "   here (an IPOPTS finding), and are dropped here: each is reported once, never queued at",
            "   input too. After the blocked sources (raw - 10), before connection tracking. IPv4 with",
            "   other options (RR, TS) reaches input and is queued there (rule 6).",
        ],
        rules,
    )


def ingress_devices(names) -> list[str]:
    """The interfaces a netdev ingress chain hooks: every one but ``lo``, sorted, names nft can
    quote (any other is left out)."""
    return sorted({n for n in names if n != "lo" and _DEVICE.fullmatch(n)})


def format_ingress(spec: RulesetSpec, devices) -> str:
    """``table netdev <table>``: IPv4 frames with a bad header on ``devices`` (see
    :func:`ingress_devices`) to the daemon. The daemon loads it after our inet table and again
    whenever the host's interfaces change (a netdev chain hooks named devices only)."""
    spec = spec.normalized()
    devs = ingress_devices(devices)
    report = _report(spec, "MALFORMED")
    chains = [report]
    for i in range(0, len(devs), NETDEV_MAX):
        part = ", ".join(f'"{d}"' for d in devs[i : i + NETDEV_MAX])
        name = "ingress" if not i else f"ingress_{i // NETDEV_MAX + 1}"
        chains.append(
            ChainDef(
                name,
                f"ingress devices = {{ {part} }} priority -500",
                [],
                [([], "meta protocol ip meta pkttype host @nh,0,8 != 0x45-0x4f jump to_daemon")],
            )
        )
    doc = [
        "9. IPv4 with a bad header (version not 4, header length under 5 words: the first byte",
        "   outside 0x45-0x4f) is dropped in ip_rcv, before any inet hook; a netdev ingress chain",
        "   sees it first. Only frames sent to this host (pkttype host), on every interface but lo:",
        "   a netdev chain hooks named devices, so the daemon loads this table again whenever",
        "   the interfaces change. Reported as MALFORMED with the source the header names.",
    ]
    return "\n".join(_table_text(f"netdev {spec.table}", doc, [], chains)) + "\n"


def model(spec: RulesetSpec, backend: str) -> Model:
    """The ruleset of ``spec`` (normalized here) for ``backend`` ("native" or "compat")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be native or compat to render, not {backend!r}")
    spec = spec.normalized()
    chains = [_prerouting(spec)]
    if spec.before_input:
        chains += [_source_routed(spec), _report(spec, "IPOPTS")]
    chains.append(_input(spec, backend))
    if spec.variant == "gateway":
        chains.append(_forward(spec, backend))
    if spec.ftp:
        chains += _ftp_chains(spec, backend)
    return Model(spec, backend, _sets(spec), chains)


# == nft text ===================================================================================
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


def format_table(m: Model) -> str:
    """The ``table inet NAME { ... }`` block of a model."""
    t = m.spec.table
    out = [f"table inet {t} {{"]
    out.append(f"\t# Counters (nft list counters table inet {t}).")
    for name, doc in COUNTERS.items():
        out.append(f"\tcounter {name} {{")
        out.append(f"\t\t# {doc}")
        out.append("\t}")
    if m.spec.kernel_block is not None:
        out.append("")
        out.append("\t# 6a. How many sources the kernel may block itself (a spoofed flood cannot fill the sets).")
        out.append("\tlimit kernel_block {")
        out.append(f"\t\trate {m.spec.kernel_block.rate}")
        out.append("\t}")
    for s in m.sets:
        out.append("")
        out += [f"\t# {line}" for line in s.doc]
        out.append(f"\tset {s.name} {{")
        out.append(f"\t\ttype {s.type}")
        out.append(f"\t\tflags {', '.join(s.flags)}")
        if s.timeout:
            out.append(f"\t\ttimeout {_nft_time(s.timeout)}")
        if s.size:
            out.append(f"\t\tsize {s.size}")
        if s.counter:
            out.append("\t\tcounter")
        if s.elements:
            out.append("\t\telements = {")
            out += _wrap(s.elements, "\t\t\t")
            out.append("\t\t}")
        out.append("\t}")
    out += _chains_text(m.chains)
    out.append("}")
    return "\n".join(out) + "\n"


def _chains_text(chains: list[ChainDef]) -> list[str]:
    out: list[str] = []
    for c in chains:
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
    return out


def _table_text(name: str, doc: list[str], head: list[str], chains: list[ChainDef]) -> list[str]:
    """``table NAME { ... }`` with its comment, lines ``head`` and chains."""
    return [*(f"# {line}" for line in doc), f"table {name} {{", *head, *_chains_text(chains)[1:], "}"]


def reload_plan(m: Model, current: dict | None) -> tuple[list[str], list[str]]:
    """What loading ``m`` over the table now in the kernel (``current``: {"chains": [names],
    "sets": {name: (type, flags, timeout)}}, None when absent) must clear first: (commands, the
    blocked sets whose entries must move to where ``m`` keeps them). Blocked sets, FTP expectations
    and recently served ports whose definition is unchanged are kept, with their contents and
    running timeouts (a daemon reload during a service restart does not forget the service)."""
    if not current:
        return [], []
    t = m.spec.table
    cmds = [f"flush chain inet {t} {c}" for c in current["chains"]]
    cmds += [f"delete chain inet {t} {c}" for c in current["chains"]]
    moved = []
    for name, sig in current["sets"].items():
        want = m.set(name)
        keep = name.startswith(("blocked", "fleet", "ftp_expect", "served"))
        if keep and want is not None and want.signature == sig:
            continue
        if name.startswith("blocked"):  # definition changed or set renamed: move the entries
            moved.append(name)
        cmds.append(f"delete set inet {t} {name}")
    if m.spec.kernel_block is not None:  # a declared limit keeps its old rate: made anew (created first, if absent)
        cmds += [f"add limit inet {t} kernel_block {{ rate {m.spec.kernel_block.rate} }}", f"delete limit inet {t} kernel_block"]
    return cmds, moved


# == the ruleset as a file ======================================================================
_VARIANT_TEXT = {
    "host": (
        "host protection",
        [
            "Protects this host: connection attempts to monitored ports that no local socket",
            "answers are handed to the daemon, which decides (alert, block); blocked sources are",
            "dropped before connection tracking.",
        ],
    ),
    "gateway": (
        "gateway",
        [
            "Protects this host (input hook) and the networks routed behind it (forward hook,",
            "destinations in the protect4/protect6 sets). Blocked sources are dropped in",
            "prerouting, so they reach neither.",
        ],
    ),
    "observe": (
        "observe only",
        [
            "Queues exactly like the host ruleset but never drops: packets from blocked sources",
            "are only counted (learning mode: see what would be blocked).",
        ],
    ),
}


def _backend_header(s: RulesetSpec, backend: str) -> list[str]:
    if backend == "native":
        return [
            "#",
            "# Backend: native (`queue` statement, kernel module nft_queue). Kernels without it",
            '# reject the file with "No such file or directory": use the compat rendering',
            "# (`nfsentry rules show --backend compat`) and its iptables-nft rules.",
        ]
    head = [
        "#",
        "# Backend: compat (kernel without nft_queue). This table only marks the packets to",
        f"# queue (bits {s.mark_mask:#010x}: {s.scan_mark:#010x} scan, {s.ftp_mark:#010x} FTP); these",
        "# iptables-nft rules queue them (install once; remove with -D CHAIN instead of -I CHAIN 1):",
    ]
    for binary, chain, args in compat_rules(s):
        head.append(f"#   {binary} -I {chain} 1 {shlex.join(args)}")
    return head


def render(spec: RulesetSpec | None = None, backend: str = "native", *, standalone: bool = True) -> str:
    """The complete nft text for ``spec`` and ``backend`` ("native" or "compat").

    ``standalone`` (the shipped files, ``nfsentry rules show``) adds the header comment and the
    two commands that make ``nft -f FILE`` replace an existing table; ``Nft.load`` uses the table
    alone and keeps the blocked sets instead.
    """
    spec = spec or default_spec()
    m = model(spec, backend)
    body = format_table(m)
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
        "# Generated by nfsentry/nft/render.py (`make rules` writes rules/*.nft); edit the renderer, not",
        "# this file: a test checks the shipped files equal its output.",
        "#",
        *(f"# {line}" for line in about),
        "#",
        f"# Everything lives in table inet {t}; nothing else in the ruleset is touched. Read on top",
        "# to bottom: the numbers in the comments follow the order a packet meets the rules:",
        "#   1 blocked sources dropped   2 established accepted   3 ignored sources accepted",
        "#   4 ports in use accepted     5 expected FTP data      6 monitored ports -> daemon",
        "#   7 FTP control -> FTP tracker (checked first, as it is established traffic)",
        *(
            [
                "#   8 source-routed IPv4 -> daemon (prerouting)",
                f"#   9 bad IPv4 headers -> daemon (table netdev {t}, the daemon's: end of this file)",
                f"#     (8 and 9: packets the kernel drops before the input hook; NFLOG group {s.nflog_group})",
            ]
            if s.before_input
            else []
        ),
        "#",
        (
            f"# Queues: {s.queue} = scan verdict loop, {s.ftp_queue} = FTP tracker, both with `bypass`"
            if s.bypass
            else f"# Queues: {s.queue} = scan verdict loop without `bypass` (fail-closed: no daemon "
            f"listening =\n# packets to closed monitored ports are dropped), {s.ftp_queue} = FTP tracker with `bypass`"
        ),
        "# (no daemon listening = traffic passes). In-use ports: "
        + {
            "socket": "the `socket` expression.",
            "poll": "polled from /proc/net by the daemon.",
            "off": "not detected (FTP expectations only).",
        }[inuse]
        + (
            f"\n# A port once in use stays exempt for {_nft_time(s.recent_service_grace)} after its socket is gone (recent_service_grace)."
            if inuse != "off" and s.recent_service_grace
            else ""
        ),
        "#",
        f"# Load:    nft -f FILE     (replaces table inet {t}: running it again forgets the blocked",
        "#                           sources; `nfsentry rules load` and the daemon keep them)",
        f"# Remove:  nft delete table inet {t}",
        *_backend_header(s, backend),
    ]
    text = "\n".join(head) + f"\n\ntable inet {t}\ndelete table inet {t}\n\n" + body
    if s.before_input:
        example = format_ingress(s, ["eth0"]).splitlines()
        text += "\n".join(
            [
                "",
                f"# The daemon also loads table netdev {t} (not this file: its chains name this host's",
                f"# interfaces), for instance on a host whose only interface is eth0; `nft delete table netdev {t}`",
                "# removes it:",
                "#",
                *(line if line.startswith("#") else f"#   {line}" if line.strip() else "#" for line in example),
            ]
        )
        text += "\n"
    return text


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


# == compat backend: the iptables-nft rules =====================================================
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
            out.append(
                (
                    binary,
                    chain,
                    [
                        "-m",
                        "mark",
                        "--mark",
                        f"{value:#x}/{spec.mark_mask:#x}",
                        "-m",
                        "comment",
                        "--comment",
                        compat_tag(spec.table),
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        str(num),
                        *(["--queue-bypass"] if bypass else []),
                    ],
                )
            )
    return out


def compat_key(binary: str, chain: str, args: list[str]) -> tuple:
    """What identifies one of our rules, however iptables prints it: binary, chain, mark, queue, bypass."""

    def after(opt: str) -> str:
        return args[args.index(opt) + 1].lower() if opt in args and args.index(opt) + 1 < len(args) else ""

    return binary, chain, after("--mark"), after("--queue-num"), "--queue-bypass" in args


def compat_tag(table: str) -> str:
    """The comment that tags the compat rules of ``table``."""
    return "nfsentry" if table == "nfsentry" else f"nfsentry:{table}"


def compat_listed(binary: str, listing: str, tag: str) -> list[tuple[str, str, list[str]]]:
    """The rules tagged ``tag`` in an ``iptables-nft -S`` listing: (binary, chain, rulespec)."""
    found = []
    for line in listing.splitlines():
        if not line.startswith("-A "):
            continue
        argv = shlex.split(line)
        if "--comment" in argv and argv[argv.index("--comment") + 1] == tag:
            found.append((binary, argv[1], argv[2:]))
    return found


def filter_chains(items: list[dict]) -> set[tuple[str, str]]:
    """`list chains` (JSON) -> (family, chain) of the iptables-nft filter tables."""
    return {
        (c["family"], c["name"]) for i in items if (c := i.get("chain")) and c.get("table") == "filter" and c.get("family") in ("ip", "ip6")
    }


def cleanup_commands(created: set[tuple[str, str]], before: set[tuple[str, str]]) -> list[str]:
    """Deleting the iptables-nft chains ``created`` since ``before``, and the filter tables of a
    family that had none before (nft refuses the whole if any of them is not empty)."""
    cmds = [f"delete chain {fam} filter {chain}" for fam, chain in sorted(created)]
    for fam in ("ip", "ip6"):
        if not any(f == fam for f, _ in before) and any(f == fam for f, _ in created):
            cmds.append(f"delete table {fam} filter")
    return cmds
