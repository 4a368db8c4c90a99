"""Set elements: which set a blocked source goes to, the nft commands that add, replace and
delete elements, and the parsers of nft's set, chain and counter listings.

Pure: builds command text and reads listing text/JSON; :class:`nfsentry.nft.client.Nft` runs the
commands. Blocked sources: single addresses in the hash sets ``blocked4`` / ``blocked6``, the
daemon's IPv6 prefix in ``blocked6_<len>`` (stored as the network address), any other prefix in the
interval sets ``blocked4net`` / ``blocked6net`` (whose entries may not overlap: see
:func:`plan_nets`).

Network parsing stays here rather than in ``nfsentry.core.addrs``: core's ``parse_network`` works on
raw bytes (family, key, prefix length) and accepts ``/0``, which a block must refuse.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from typing import Any

from nfsentry.core import addrs as _addrs

__all__ = [
    "parse_network",
    "network_text",
    "set_for",
    "timeout_text",
    "port_elems",
    "block_commands",
    "replace_commands",
    "delete_command",
    "flush_commands",
    "plan_nets",
    "block_items",
    "bulk_commands",
    "ftp_element",
    "expect_ftp_commands",
    "port_set_commands",
    "set_item_texts",
    "parse_set_text",
    "parse_set_items",
    "element_key",
    "element_expires",
    "elem_networks",
    "parse_sets",
    "served_commands",
    "parse_chains",
    "parse_rules",
    "parse_counters",
    "ruleset_facts",
    "v6_prefix_of",
    "parse_ingress_devices",
    "fleet_set_for",
    "fleet_commands",
]


# == networks ===================================================================================
def parse_network(network: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'198.18.0.2', '198.18.0.0/24', '2001:db8:1::/64' -> network (host bits cleared). No /0.
    (core.addrs is the one implementation.)"""
    return _addrs.parse_network(str(network).strip(), "address or prefix")


network_text = _addrs.network_text


def set_for(network: Any, v6_prefix: int | None) -> tuple[str, str, Any]:
    """The blocked set for an address or prefix: (set name, element text, ip_network or None for a
    single address). ``v6_prefix``: the table's ``blocked6_<len>`` (None: it has none, or unknown:
    such a prefix then goes to ``blocked6net``). ValueError on a bad address or a /0."""
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
    if net.prefixlen == v6_prefix:
        return f"blocked6_{net.prefixlen}", str(net.network_address), net
    return "blocked6net", str(net), net


def fleet_set_for(network: Any) -> tuple[str, str]:
    """The fleet set of a pulled address or prefix and its element text: (``fleet4`` | ``fleet6`` for
    an address, ``fleet4net`` | ``fleet6net`` for a prefix, element). ValueError on a bad one or a /0."""
    if isinstance(network, str) and "/" not in network:  # an address: parsed as one (10,000 in a pull)
        a = ipaddress.ip_address(network.strip())
        return f"fleet{a.version}", str(a)
    net = parse_network(network)
    fam = "4" if net.version == 4 else "6"
    if net.prefixlen == net.max_prefixlen:
        return f"fleet{fam}", str(net.network_address)
    return f"fleet{fam}net", str(net)


def fleet_commands(table: str, put: Iterable[tuple[str, int, bool]], remove: Iterable[str]) -> str:
    """One transaction on the fleet sets. ``put``: (network, timeout s, present): a new element
    is added with its timeout; one ``present`` already is added (a no-op), deleted and added again
    with the new timeout, which replaces it on every kernel (a longer decision extends it, a
    shorter one that remains after a deletion shortens it). ``remove``: networks deleted whether
    or not the kernel still holds them (added first: ``delete`` alone fails on a missing element).
    The caller keeps the interval sets free of overlaps."""
    cmds = []
    for network in remove:
        setname, elem = fleet_set_for(network)
        cmds.append(f"add element inet {table} {setname} {{ {elem} }}\ndelete element inet {table} {setname} {{ {elem} }}")
    again: dict[str, list[str]] = {}
    adds: dict[str, list[str]] = {}
    for network, timeout, present in put:
        setname, elem = fleet_set_for(network)
        if present:
            again.setdefault(setname, []).append(elem)
        adds.setdefault(setname, []).append(f"{elem}{timeout_text(timeout)}")
    for setname, elems in again.items():  # one command per set: 10,000 elements parse in one go
        body = ", ".join(elems)
        cmds.append(f"add element inet {table} {setname} {{ {body} }}\ndelete element inet {table} {setname} {{ {body} }}")
    for setname, elems in adds.items():
        cmds.append(f"add element inet {table} {setname} {{ {', '.join(elems)} }}")
    return "\n".join(cmds)


def v6_prefix_of(set_names: Iterable[str]) -> int:
    """The daemon's IPv6 block prefix of a table with these sets (128: no ``blocked6_<len>``)."""
    return next((int(n.split("_", 1)[1]) for n in set_names if re.fullmatch(r"blocked6_\d+", n)), 128)


# == element texts and commands =================================================================
def timeout_text(timeout: float | None) -> str:
    if not timeout:
        return ""
    if timeout < 0:
        raise ValueError(f"negative timeout {timeout!r}")
    if float(timeout).is_integer():
        return f" timeout {int(timeout)}s"
    return f" timeout {max(1, int(round(timeout * 1000)))}ms"


def port_elems(ranges) -> list[str]:
    """[(lo, hi)] -> the elements of an inet_service interval set ("22", "1-1023")."""
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]


def block_commands(table: str, setname: str, elem: str, timeout: float | None) -> str:
    """Block ``elem`` in a hash set with a new timeout: add (a no-op when present) + delete + add,
    which replaces the timeout on every kernel."""
    return (
        f"add element inet {table} {setname} {{ {elem} }}\ndelete element inet {table} {setname} {{ {elem} }}\n"
        f"add element inet {table} {setname} {{ {elem}{timeout_text(timeout)} }}"
    )


def delete_command(table: str, setname: str, elems: Iterable[Any]) -> str:
    return f"delete element inet {table} {setname} {{ {', '.join(str(e) for e in elems)} }}"


def replace_commands(table: str, setname: str, deletes: list, add: str) -> str:
    """Delete ``deletes`` (covered entries of an interval set) and add the element text ``add``."""
    cmds = [delete_command(table, setname, deletes)] if deletes else []
    cmds.append(f"add element inet {table} {setname} {{ {add} }}")
    return "\n".join(cmds)


def flush_commands(table: str, sets: Iterable[str]) -> str:
    return "\n".join(f"flush set inet {table} {s}" for s in sets)


def plan_nets(new: dict, existing: list) -> tuple[dict, list]:
    """Non-overlapping interval-set content: (networks to add -> timeout, existing ones to delete).

    New networks covered by a broader new or existing one are dropped (already blocked); existing
    networks covered by a new one are replaced by it. (Lookups by prefix length: a bulk block of
    thousands of prefixes costs one set lookup per distinct length, not one test per pair.)
    """
    taken = _Cover(existing)
    adds: dict = {}
    for net in sorted(new, key=lambda n: (n.version, n.prefixlen)):
        if taken.holder(net, net.prefixlen) is not None:
            continue
        adds[net] = new[net]
        taken.add(net)
    added = _Cover(adds)
    deletes = [o for o in existing if added.holder(o, o.prefixlen - 1) is not None]  # a broader add holds it
    adds = {n: t for n, t in adds.items() if n not in taken.listed}
    return adds, deletes


class _Cover:
    """Networks by (version, prefix length, masked address): "which one holds this network"."""

    def __init__(self, nets: Iterable[Any]) -> None:
        self.keys: set[tuple[int, int, int]] = set()
        self.lengths: dict[int, set[int]] = {4: set(), 6: set()}
        self.listed = set(nets)
        for n in self.listed:
            self.add(n)

    def add(self, net: Any) -> None:
        self.keys.add((net.version, net.prefixlen, int(net.network_address) >> (net.max_prefixlen - net.prefixlen)))
        self.lengths[net.version].add(net.prefixlen)

    def holder(self, net: Any, longest: int) -> tuple[int, int] | None:
        """(version, length) of a network here holding ``net`` with a prefix of at most ``longest``."""
        addr = int(net.network_address)
        for length in self.lengths[net.version]:
            if length <= longest and (net.version, length, addr >> (net.max_prefixlen - length)) in self.keys:
                return net.version, length
        return None


def block_items(items: Iterable[Any]) -> list[tuple[Any, Any]]:
    """Blocks as ``Nft.bulk_block`` takes them ("net", (net, timeout_s) or {"network": net,
    "timeout"/"expires_in": s}) -> [(net, timeout_s)] (0 = permanent)."""
    norm = []
    for it in items:
        if isinstance(it, dict):
            norm.append((it["network"], it.get("expires_in") or it.get("timeout") or 0))
        elif isinstance(it, (tuple, list)):
            norm.append((it[0], it[1] if len(it) > 1 else 0))
        else:
            norm.append((it, 0))
    return norm


def bulk_commands(table: str, items: list, existing: dict, v6_prefix: int | None, replace: Iterable[Any] = ()) -> str:
    """One transaction adding [(network, timeout_s)]. ``existing``: {interval set: its networks},
    merged with the new prefixes (see :func:`plan_nets`); hash sets take every element as is.
    ``replace``: networks of ``items`` that are entries already (exactly) in their set, whose
    timeout is replaced (add, a no-op when present; delete; add: see :func:`block_commands`)."""
    per_set: dict[str, dict] = {}
    nets: dict[str, dict] = {}
    again = {str(n) for n in replace}
    refresh: dict[str, list[str]] = {}
    for network, timeout in items:
        setname, elem, net = set_for(network, v6_prefix)
        if str(network) in again:
            refresh.setdefault(setname, []).append(elem)
            per_set.setdefault(setname, {})[elem] = timeout
        elif setname.endswith("net"):
            nets.setdefault(setname, {})[net] = timeout
        else:
            per_set.setdefault(setname, {})[elem] = timeout
    cmds = []
    for setname, elems in refresh.items():
        body = ", ".join(elems)
        cmds.append(f"add element inet {table} {setname} {{ {body} }}\ndelete element inet {table} {setname} {{ {body} }}")
    for setname, new in nets.items():
        adds, deletes = plan_nets(new, existing.get(setname, []))
        if deletes:
            cmds.append(delete_command(table, setname, deletes))
        if adds:
            per_set.setdefault(setname, {}).update({str(n): to for n, to in adds.items()})
    for setname, elems in per_set.items():
        body = ", ".join(f"{e}{timeout_text(to)}" for e, to in elems.items())
        cmds.append(f"add element inet {table} {setname} {{ {body} }}")
    return "\n".join(cmds)


def ftp_element(peer: Any, server: Any, port: Any) -> tuple[Any, Any, str, str]:
    """(peer, server, set name, ``peer . server . port``) of an FTP expectation; ValueError if bad."""
    a, b = ipaddress.ip_address(str(peer)), ipaddress.ip_address(str(server))
    if a.version != b.version:
        raise ValueError(f"FTP expectation mixes address families: {peer} -> {server}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"bad FTP data port {port!r}")
    return a, b, "ftp_expect4" if a.version == 4 else "ftp_expect6", f"{a} . {b} . {int(port)}"


def expect_ftp_commands(table: str, peer: Any, server: Any, port: Any, timeout: float, remove: Iterable[tuple[Any, Any, Any]] = ()) -> str:
    """Add one FTP expectation for ``timeout`` s (at least 1 s); delete the ``remove`` ones in the
    same transaction, each re-added for 1s first, as ``delete`` alone fails on a missing element."""
    _, _, setname, elem = ftp_element(peer, server, port)
    cmds = []
    for old in remove:
        _, _, oset, oelem = ftp_element(*old)
        cmds += [f"add element inet {table} {oset} {{ {oelem} timeout 1s }}", f"delete element inet {table} {oset} {{ {oelem} }}"]
    cmds.append(f"add element inet {table} {setname} {{ {elem}{timeout_text(max(1, timeout))} }}")
    return "\n".join(cmds)


def served_commands(table: str, tcp: Iterable[int], udp: Iterable[int], monitored: tuple) -> str:
    """Commands adding the ``tcp``/``udp`` ports inside the ``monitored`` (tcp ranges, udp ranges)
    to served_tcp/served_udp (with the sets' own timeout); "" when there are none. Each starts on a
    new line."""
    out = ""
    for name, ports, ranges in (("served_tcp", tcp, monitored[0]), ("served_udp", udp, monitored[1])):
        inside = sorted(p for p in set(ports) if any(lo <= p <= hi for lo, hi in ranges))
        if inside:
            out += f"\nadd element inet {table} {name} {{ {', '.join(map(str, inside))} }}"
    return out


def port_set_commands(table: str, ports: tuple) -> str:
    """Rewrite tcp_ports and udp_ports: ``ports`` = (tcp ranges, udp ranges)."""
    cmds = []
    for name, ranges in zip(("tcp_ports", "udp_ports"), ports):
        cmds.append(f"flush set inet {table} {name}")
        if ranges:
            cmds.append(f"add element inet {table} {name} {{ {', '.join(port_elems(ranges))} }}")
    return "\n".join(cmds)


# == set listings (`nft -T list set`, text) ======================================================
_TEXT_ELEM = re.compile(
    r"\s*([0-9A-Fa-f.:]+(?:/\d+|-[0-9A-Fa-f.:]+)?)(?:\s+\.\s+\S+)*"
    r"(?:\s+timeout\s+(\d+)(ms|s))?(?:\s+expires\s+(\d+)(ms|s))?\s*"
)
_EXPIRES = re.compile(r"\s+expires\s+(\d+)(ms|s)")
_COUNTER = re.compile(r"\s+counter\s+packets\s+(\d+)\s+bytes\s+(\d+)")


def set_item_texts(text: str) -> list[str]:
    """The element texts of one `list set` output (stripped; none when the set is empty)."""
    start = text.find("elements = {")
    if start < 0:
        return []
    body = text[start + len("elements = {") : text.index("}", start)]
    return [item.strip() for item in body.split(",") if item.strip()]


def parse_set_text(setname: str, text: str) -> list[dict]:
    """Entries of `nft -T list set` text output (numeric times)."""
    return parse_set_items(setname, set_item_texts(text))


def element_key(item: str) -> str:
    """An element's identity in a listing: its text without the time left and its counter."""
    return _COUNTER.sub("", _EXPIRES.sub("", item))


def element_expires(item: str) -> float | None:
    """Seconds an element has left (None: no timeout)."""
    m = _EXPIRES.search(item)
    return None if m is None else int(m.group(1)) / (1 if m.group(2) == "s" else 1000)


def elem_networks(setname: str, val: Any) -> list:
    """A set element value (JSON: a prefix or range object; text: an address, prefix or the
    network address of ``blocked6_<len>``) -> list of networks."""
    if isinstance(val, dict) and "prefix" in val:
        return [ipaddress.ip_network(f"{val['prefix']['addr']}/{val['prefix']['len']}")]
    if isinstance(val, dict) and "range" in val:
        lo, hi = (ipaddress.ip_address(a) for a in val["range"])
        return list(ipaddress.summarize_address_range(lo, hi))
    m = re.fullmatch(r"blocked6_(\d+)", setname)
    if m:
        return [ipaddress.ip_network(f"{val}/{m.group(1)}", strict=False)]
    return [ipaddress.ip_network(str(val))]


def parse_set_items(setname: str, items: list[str]) -> list[dict]:
    """Entries of the element texts of `nft -T list set`:
    {"network", "timeout" (s, 0 = none), "expires_in" (s, None = no timeout), "set"}, plus
    "packets" when the set counts per element (`counter`: the packets the entry matched)."""
    out = []
    for item in items:
        counted = _COUNTER.search(item)
        if counted:
            item = _COUNTER.sub("", item)
        m = _TEXT_ELEM.fullmatch(item)
        if not m or not item.strip():
            continue
        val, to, to_u, ex, ex_u = m.groups()
        timeout = (int(to) if to_u == "s" else int(to) / 1000) if to else 0
        expires = (int(ex) if ex_u == "s" else int(ex) / 1000) if ex else 0
        extra = {"packets": int(counted.group(1))} if counted else {}
        if setname in ("blocked4", "blocked6", "fleet4", "fleet6"):  # nft prints canonical addresses: skip ipaddress
            out.append({"network": val, "timeout": timeout, "expires_in": expires if timeout else None, "set": setname, **extra})
            continue
        if "-" in val:
            lo, hi = (ipaddress.ip_address(a) for a in val.split("-"))
            nets = list(ipaddress.summarize_address_range(lo, hi))
        else:
            nets = elem_networks(setname, val)
        for net in nets:
            out.append(
                {"network": network_text(net), "timeout": timeout, "expires_in": expires if timeout else None, "set": setname, **extra}
            )
    return out


# == JSON listings (`nft -j`) ===================================================================
def parse_sets(items: list[dict]) -> dict[str, tuple[str, tuple[str, ...], int, int]]:
    """`list sets table ...` -> {set name: (type, sorted flags, default timeout in seconds or 0, size or 0)},
    comparable with ``render.SetDef.signature``: ``dynamic`` is left out (nft 1.0.6's JSON omits it);
    a set whose elements count packets (its statements hold a counter) has the flag ``counter``."""
    sets = {}
    for i in items:
        if "set" in i:
            st = i["set"]
            typ = st["type"] if isinstance(st["type"], str) else " . ".join(st["type"])
            counter = ["counter"] if any(isinstance(x, dict) and "counter" in x for x in st.get("stmt", []) or []) else []
            flags = tuple(sorted([f for f in st.get("flags", []) if f != "dynamic"] + counter))
            sets[st["name"]] = (typ, flags, int(st.get("timeout", 0)), int(st.get("size", 0)))
    return sets


def parse_chains(items: list[dict], table: str, family: str | None = None) -> list[str]:
    """`list chains` -> the names of the chains of ``table`` (in ``family``, when given)."""
    return [c["name"] for i in items if (c := i.get("chain")) and c.get("table") == table and (family is None or c.get("family") == family)]


def parse_rules(items: list[dict]) -> dict[str, list[str]]:
    """`list table` -> {chain: [each rule's expressions as JSON text]}."""
    rules: dict[str, list[str]] = {}
    for i in items:
        if "rule" in i:
            rules.setdefault(i["rule"]["chain"], []).append(json.dumps(i["rule"].get("expr", [])))
    return rules


def parse_counters(items: list[dict], names: Iterable[str]) -> dict[str, int]:
    """`list counters table ...` -> packets per counter (``names`` start at 0), plus the sums
    ``queued`` (tcp + udp) and ``blocked_pkts`` (4 + 6)."""
    out = {name: 0 for name in names}
    for i in items:
        c = i.get("counter")
        if c:
            out[c["name"]] = c.get("packets", 0)
    out["queued"] = out["queued_tcp"] + out["queued_udp"]
    out["blocked_pkts"] = out["blocked_pkts4"] + out["blocked_pkts6"]
    out["fleet_pkts"] = out.get("fleet_pkts4", 0) + out.get("fleet_pkts6", 0)
    return out


def ruleset_facts(chains: list[str], rules: dict[str, list[str]], inuse: str | None) -> dict[str, Any]:
    """What a loaded table is, read from its chains and rules (``parse_rules``): backend (native,
    compat or None), in-use method (``inuse``: what this session loaded, when the rules cannot
    tell poll from off) and variant (host, gateway, observe, or blocks-only)."""
    text = " ".join(r for rs in rules.values() for r in rs)
    backend = "native" if '"queue"' in text else "compat" if '"mangle"' in text else None
    if "socket" in text:
        method = "socket"
    else:
        method = inuse if inuse in ("poll", "off") else "poll-or-off"
    if "input" not in chains:
        variant = "blocks-only"
    elif "forward" in chains:
        variant = "gateway"
    else:
        variant = "host" if '"drop"' in " ".join(rules.get("prerouting", [])) else "observe"
    return {"backend": backend, "inuse": method, "variant": variant}


_HOOKED = re.compile(r'hook ingress (?:devices = \{ ([^}]*) \}|device "?([^"\s]+)"?)')


def parse_ingress_devices(text: str) -> set[str]:
    """The devices the ingress chains hook, from a text listing of a netdev table (libnftables
    1.0.6 leaves them out of its JSON): ``devices = { eth0, "br-x" }`` or ``device "eth0"``."""
    found: set[str] = set()
    for many, one in _HOOKED.findall(text):
        found |= {d.strip().strip('"') for d in many.split(",") if d.strip()} if many else {one}
    return found
