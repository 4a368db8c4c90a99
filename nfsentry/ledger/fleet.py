"""The ledger's fleet part: blocks pulled from a CrowdSec Local API (LAPI) into the fleet sets.

The fleet sets (``fleet4``, ``fleet6``: addresses; ``fleet4net``, ``fleet6net``: prefixes) are
filled only here, kernel first and then the database (``fleet_blocks``), under the ledger's rule
with the fleet's own terms:

* what is enforced is what the LAPI's decisions want (``nfsentry.fleet.pull`` works that out,
  network by network: the latest end of its live decisions, or nothing): a later or longer
  decision for an entry in force replaces its kernel timeout (a shorter one left after a deletion
  shortens it), a deleted decision takes it out;
* never a never-block network (own addresses, gateways, resolvers, the SSH session, the ignore
  list: ``neverblock``), never a prefix shorter than ``min_prefix4``/``min_prefix6``, never more
  than ``max_pulled`` entries: such decisions are refused and counted;
* prefixes never overlap in an interval set: one inside a broader one in force waits (it comes in
  when the broader one goes), a broader one replaces the narrower ones in force;
* the database's pulled blocks are put back at start (:meth:`FleetLedger.restore`), with the time
  they have left, even with the LAPI unreachable; kernel entries it does not know are taken out.

Pure logic and I/O are split: :class:`FleetGuard` and :func:`plan_prefixes` are pure; the class
talks to ``nft`` (``Nft.fleet_apply``/``list_fleet``) and the store.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nfsentry.core.addrs import PrefixSet
from nfsentry.core.units import kernel_timeout

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
SLACK = 1.0  # an end this close to the one in force changes nothing in the kernel (whole seconds)


class FleetSets(Protocol):
    """What the fleet ledger needs of the kernel side (nfsentry.nft.Nft)."""

    def fleet_apply(self, put: Any, remove: Any = ()) -> int: ...
    def list_fleet(self) -> list[dict]: ...


@dataclass
class Pulled:
    """One network the LAPI's decisions want blocked, and until when."""

    network: str  # canonical: "198.18.0.2", "198.18.6.0/24", "2001:db8::/64"
    expires: float  # epoch seconds
    decision_id: int | None = None  # the decision that ends last
    origin: str | None = None  # "nfsentry/host1", "cscli", ...
    machine: str | None = None  # the pushing nfsentry machine, when the origin names it
    scenario: str | None = None
    scope: str | None = None  # "Ip" | "Range"


def canonical(network: str) -> str:
    net = ipaddress.ip_network(str(network).strip(), strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


class FleetGuard:
    """The safety policy of pulled decisions (pure): the reason one is refused, or None."""

    def __init__(self, never_block: Iterable[str], min_prefix4: int = 24, min_prefix6: int = 48, max_pulled: int = 100_000) -> None:
        self.min_prefix = {4: min_prefix4, 6: min_prefix6}
        self.max_pulled = max_pulled
        self.set_never_block(never_block)

    def set_never_block(self, nets: Iterable[str]) -> None:
        self.never = [ipaddress.ip_network(n, strict=False) for n in nets]
        self._exact = PrefixSet([str(n) for n in self.never])

    def refuse(self, network: str) -> str | None:
        if "/" not in network:  # a single address (the common case: parsed once, as an address)
            try:
                addr = ipaddress.ip_address(network)
            except ValueError:
                return "bad"
            return "never_block" if self._exact.contains(addr.packed) else None
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError:
            return "bad"
        if net.prefixlen == 0:
            return "prefix"
        if net.prefixlen < net.max_prefixlen:
            if net.prefixlen < self.min_prefix[net.version]:
                return "prefix"
            if any(n.version == net.version and n.overlaps(net) for n in self.never):  # type: ignore[arg-type]
                return "never_block"
        elif self._exact.contains(net.network_address.packed):
            return "never_block"
        return None


def _key(net: Net) -> tuple[int, int, int]:
    return net.version, net.prefixlen, int(net.network_address) >> (net.max_prefixlen - net.prefixlen)


class _Prefixes:
    """Prefixes in force, asked "which one holds this" and "which ones lie inside this"."""

    def __init__(self) -> None:
        self.keys: dict[tuple[int, int, int], str] = {}
        self.lengths: dict[int, Counter] = {4: Counter(), 6: Counter()}

    def add(self, net: Net) -> None:
        self.keys[_key(net)] = str(net)
        self.lengths[net.version][net.prefixlen] += 1

    def discard(self, net: Net) -> None:
        if self.keys.pop(_key(net), None) is not None:
            self.lengths[net.version][net.prefixlen] -= 1

    def holder(self, net: Net) -> str | None:
        """A prefix in force that holds ``net`` (broader or the same), or None."""
        addr = int(net.network_address)
        for length, n in self.lengths[net.version].items():
            if n > 0 and length <= net.prefixlen:
                found = self.keys.get((net.version, length, addr >> (net.max_prefixlen - length)))
                if found is not None:
                    return found
        return None

    def inside(self, net: Net) -> list[str]:
        """The prefixes in force strictly inside ``net``."""
        top = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
        out = []
        for (v, length, masked), text in self.keys.items():
            if v == net.version and length > net.prefixlen and masked >> (length - net.prefixlen) == top:
                out.append(text)
        return out


@dataclass
class FleetResult:
    put: list[str] = field(default_factory=list)  # entered the kernel or got a new timeout
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # network -> reason
    waiting: list[str] = field(default_factory=list)  # inside a broader prefix in force


class FleetLedger:
    """The only code that writes the fleet sets and the ``fleet_blocks`` table."""

    def __init__(self, nft: FleetSets, store: Any, guard: FleetGuard, clock: Callable[[], float] = time.time) -> None:
        self.nft = nft
        self.store = store
        self.guard = guard
        self.clock = clock
        self.applied: dict[str, Pulled] = {}  # in the kernel (and the database)
        self.waiting: dict[str, Pulled] = {}  # wanted, inside a broader prefix in force
        self.wanted: dict[str, Pulled] = {}  # everything the decisions want (refused ones included)
        self.refused: Counter = Counter()  # refusals by reason (each network once per refusal)
        self.refused_now: dict[str, str] = {}  # network -> reason, for those wanted and refused now
        self._prefixes = _Prefixes()
        self.last_times: dict[str, float] = {}  # the last apply's stages in seconds: guard, nft, store

    # -- start-up --------------------------------------------------------------------------------
    def restore(self) -> list[Pulled]:
        """The database's pulled blocks back in the kernel with the time they have left (the LAPI
        may be down), ended ones dropped, fleet entries the database does not know taken out.
        Returns the blocks in force (the pull state is seeded with them)."""
        now = self.clock()
        rows = self.store.fleet_blocks() if self.store is not None else []
        live = [r for r in rows if r["expires"] > now]
        ended = [r["network"] for r in rows if r["expires"] <= now]
        kernel = {e["network"] for e in self.nft.list_fleet()}
        keep = {r["network"] for r in live}
        stray = sorted(kernel - keep)
        want = {
            r["network"]: Pulled(r["network"], r["expires"], r["decision_id"], r["origin"], r["machine"], r["scenario"], r["scope"])
            for r in live
        }
        self.applied, self.waiting, self._prefixes = {}, {}, _Prefixes()
        put = []
        for net, p in want.items():
            if self.guard.refuse(net) is not None:  # the never-block list changed meanwhile
                (stray if net in kernel else ended).append(net)
                continue
            n = ipaddress.ip_network(net)
            if n.prefixlen < n.max_prefixlen:
                if self._prefixes.holder(n) is not None:
                    self.waiting[net] = p
                    continue
                self._prefixes.add(n)
            put.append((net, kernel_timeout(p.expires - now), net in kernel))
            self.applied[net] = p
        self.nft.fleet_apply(put, stray)
        if self.store is not None and (ended or stray):
            self.store.fleet_put([], [*ended, *stray])
        self.wanted = dict(want)
        return list(want.values())

    # -- changes ---------------------------------------------------------------------------------
    def apply(self, changes: dict[str, Pulled | None]) -> FleetResult:
        """Networks whose wanted state changed (None: no live decision wants it any more), in one
        kernel transaction and one database transaction."""
        t0 = time.monotonic()
        now = self.clock()
        res = FleetResult()
        put: dict[str, tuple[int, bool]] = {}
        remove: list[str] = []
        rows: list[Pulled] = []
        gone: list[str] = []
        # removals first: a prefix that goes may let narrower waiting ones in
        freed: list[Net] = []
        for net, p in changes.items():
            if p is not None and p.expires > now:
                continue
            self.wanted.pop(net, None)
            self.refused_now.pop(net, None)
            self.waiting.pop(net, None)
            if net in self.applied:
                del self.applied[net]
                remove.append(net)
                gone.append(net)
                res.removed.append(net)
                n = ipaddress.ip_network(net)
                if n.prefixlen < n.max_prefixlen:
                    self._prefixes.discard(n)
                    freed.append(n)
        later = {net: p for net, p in changes.items() if p is not None and p.expires > now}
        for n in freed:  # waiting prefixes the removed ones held
            for net, p in list(self.waiting.items()):
                w = ipaddress.ip_network(net)
                if w.version == n.version and w.subnet_of(n):  # type: ignore[arg-type]
                    del self.waiting[net]
                    later.setdefault(net, p)
        cap = self.guard.max_pulled
        for net, p in later.items():
            self.wanted[net] = p
            why = self.guard.refuse(net)
            if why is None and net not in self.applied and cap and len(self.applied) >= cap:
                why = "max_pulled"
            if why is not None:
                if self.refused_now.get(net) != why:
                    self.refused[why] += 1
                self.refused_now[net] = why
                res.refused[net] = why
                continue
            self.refused_now.pop(net, None)
            old = self.applied.get(net)
            if old is not None:
                if abs(old.expires - p.expires) > SLACK:
                    put[net] = (kernel_timeout(p.expires - now), True)
                    res.put.append(net)
                self.applied[net] = p
                rows.append(p)
                continue
            if "/" in net:  # canonical networks: a prefix has one, an address none
                n = ipaddress.ip_network(net)
                holder = self._prefixes.holder(n)
                if holder is not None:
                    self.waiting[net] = p
                    res.waiting.append(net)
                    continue
                for inner in self._prefixes.inside(n):  # a broader prefix replaces the ones inside it
                    self.waiting[inner] = self.applied.pop(inner)
                    self._prefixes.discard(ipaddress.ip_network(inner))
                    put.pop(inner, None)
                    remove.append(inner)
                    gone.append(inner)
                self._prefixes.add(n)
            put[net] = (kernel_timeout(p.expires - now), False)
            self.applied[net] = p
            rows.append(p)
            res.put.append(net)
        t1 = time.monotonic()
        if put or remove:
            self.nft.fleet_apply([(net, t, present) for net, (t, present) in put.items()], remove)
        t2 = time.monotonic()
        if self.store is not None and (rows or gone):
            self.store.fleet_put([_row(p, now) for p in rows], gone)
        self.last_times = {"guard": t1 - t0, "nft": t2 - t1, "store": time.monotonic() - t2}
        return res

    def expire(self) -> list[str]:
        """Entries whose time is up (the kernel timed them out): out of the books and the
        database; narrower prefixes they held come in. Returns the networks."""
        now = self.clock()
        ended = [net for net, p in self.applied.items() if p.expires <= now]
        ended += [net for net, p in self.waiting.items() if p.expires <= now]
        if ended:
            self.apply({net: None for net in ended})
        return ended

    def reset_never_block(self, nets: Iterable[str]) -> FleetResult:
        """A new never-block list: entries in force that it now holds leave the kernel."""
        self.guard.set_never_block(nets)
        bad = [net for net in self.applied if self.guard.refuse(net) is not None]
        res = self.apply({net: None for net in bad})
        for net in bad:  # still wanted, and refused
            p = self.wanted.get(net)
            if p is None:
                continue
            self.wanted[net] = p
            why = self.guard.refuse(net) or "never_block"
            self.refused[why] += 1
            self.refused_now[net] = why
        return res

    def check_kernel(self) -> int:
        """Rule 4 for the fleet sets: entries in force the kernel lost (a flushed ruleset loaded
        again) are put back with their time left. Returns how many."""
        now = self.clock()
        kernel = {e["network"] for e in self.nft.list_fleet()}
        lost = [
            (net, kernel_timeout(p.expires - now), False)
            for net, p in self.applied.items()
            if net not in kernel and p.expires > now + SLACK
        ]
        if lost:
            self.nft.fleet_apply(lost, ())
        return len(lost)

    def counts(self) -> dict[str, Any]:
        fam = Counter(6 if ":" in net else 4 for net in self.applied)
        return {
            "in_force": len(self.applied),
            "in_force4": fam[4],
            "in_force6": fam[6],
            "waiting": len(self.waiting),
            "refused_now": len(self.refused_now),
            "refused": dict(self.refused),
        }


def lift_offline(nft: FleetSets, store: Any, row: dict[str, Any], local: bool, now: float) -> None:
    """`unblock` with no daemon running: one pulled block out of the fleet sets, then the
    database (its decision remembered as lifted here when ``local``)."""
    nft.fleet_apply([], [row["network"]])
    store.fleet_put([], [row["network"]])
    if local and row.get("decision_id") is not None:
        store.fleet_lift([row["decision_id"]], row["network"], now)


def _row(p: Pulled, now: float) -> dict[str, Any]:
    return {
        "network": p.network,
        "expires": p.expires,
        "decision_id": p.decision_id,
        "origin": p.origin,
        "machine": p.machine,
        "scenario": p.scenario,
        "scope": p.scope,
        "created": now,
    }


def fleet_entries(nft: Any, store: Any, now: float) -> list[dict[str, Any]]:
    """The fleet sets as ``Ledger.entries`` rows (what the kernel drops), annotated from the
    database (which decision, which machine)."""
    try:
        kernel = nft.list_fleet()
    except Exception:  # a table made before the fleet sets existed
        return []
    db: dict[str, dict] = {}
    if store is not None:
        try:
            db = {r["network"]: r for r in store.fleet_blocks()}
        except Exception:
            db = {}
    out = []
    for k in kernel:
        net = k["network"]
        b = db.get(net, {})
        left = k.get("expires_in")
        machine = b.get("machine")
        who = machine or b.get("origin") or "?"
        out.append(
            {
                "network": net,
                "family": 6 if ":" in net else 4,
                "reason": f"fleet decision {b.get('decision_id', '?')} ({b.get('scenario') or 'ban'}) from {who}",
                "labels": [],
                "ports": [],
                "first_seen": None,
                "blocked_at": b.get("created"),
                "expires": (now + left) if left else None,
                "expires_in": left,
                "offences": 1,
                "origin": "fleet",
                "machine": machine,
                "decision_id": b.get("decision_id"),
                "decision_origin": b.get("origin"),
            }
        )
    return out
