"""The ledger: the one owner of block state.

Every change to blocks (detection, manual, restore, fleet) goes through :class:`Ledger`, which
keeps the kernel's blocked sets and the database in step under the rule written at the top of
:mod:`nfsentry.ledger.rule` (and in docs/DESIGN.md). The daemon and the CLI (when no daemon runs)
use the same class; they differ only in *when* the database part runs:

* the CLI applies it at once (``Ledger(nft, store)``);
* the daemon hands it to its worker thread (``Ledger(nft, store=None, defer=...)``), which later
  calls :meth:`Ledger.persist` (the packet thread never waits for SQLite).

What each database operation does is defined once, in :meth:`Ledger.persist`.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nfsentry.ledger.fleet import fleet_entries
from nfsentry.ledger.rule import ends_at, kernel_timeout, merge, plan_restore


class BlockSets(Protocol):
    """What the ledger needs of the kernel side (nfsentry.nft.Nft)."""

    def block(self, network: Any, timeout_s: float | None = 0) -> bool: ...
    def bulk_block(self, items: Any, replace: Any = ()) -> int: ...
    def unblock(self, network: Any) -> bool: ...
    def withdraw(self, networks: Any) -> None: ...
    def unblock_all(self) -> int: ...
    def list_blocked(self) -> list[dict]: ...
    def find_blocks(self, network: Any) -> list[dict]: ...
    def blocks_inside(self, network: Any) -> list[dict]: ...
    def list_fleet(self) -> list[dict]: ...


Defer = Callable[[str, dict], None]

ORIGINS = ("detection", "manual", "kernel", "fleet")


def canonical(network: str) -> str:
    """Address or prefix text as the kernel lists it ("198.18.0.2", "2001:db8::/64")."""
    net = ipaddress.ip_network(str(network).strip(), strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def block_event(net: str, duration: float, reason: str | None, origin: str, now: float, **extra: Any) -> dict[str, Any]:
    """The event (history row, database block) of a block the ledger makes."""
    ev = {
        "ts": now,
        "event": "block",
        "network": net,
        "src": net,
        "family": 6 if ":" in net else 4,
        "reason": reason,
        "duration": float(kernel_timeout(duration)),
        "expires": ends_at(duration, now),
        "offences": 1,
        "action": "manual" if origin == "manual" else "block",
        "origin": origin,
        "labels": [],
        "ports": [],
        "blocked": True,
    }
    ev.update(extra)
    return ev


def unblock_event(net: str, reason: str, now: float, **extra: Any) -> dict[str, Any]:
    ev = {"ts": now, "event": "unblock", "network": net, "src": net, "reason": reason}
    ev.update(extra)
    return ev


@dataclass
class BlockResult:
    network: str
    status: str  # "blocked" (new), "extended" (longer than before), "kept" (already blocked as long or longer)
    expires: float | None  # the end of the block now in force (None = permanent)
    by: str  # the entry in force: the network itself, or a broader block that covers it
    event: dict[str, Any] | None = None  # what was recorded (None when kept)


@dataclass
class UnblockResult:
    removed: list[str] = field(default_factory=list)  # entries lifted (kernel and database)
    covered: dict[str, list[str]] = field(default_factory=dict)  # target -> broader blocks left in place
    not_blocked: list[str] = field(default_factory=list)  # targets nothing blocked


@dataclass
class RestoreReport:
    put_back: int = 0  # database blocks the kernel had lost, put back with their time left
    adopted: int = 0  # kernel entries the database did not know, recorded
    ended: int = 0  # database entries whose time was up, dropped
    kernel: int = 0  # entries in the kernel afterwards
    blocks: list[dict[str, Any]] = field(default_factory=list)  # the database's live blocks (for the engine)
    offenders: list[dict[str, Any]] = field(default_factory=list)  # offence counts (for the engine)


class Ledger:
    """The only code that adds, extends, removes, lists and restores blocks."""

    def __init__(self, nft: BlockSets, store: Any = None, defer: Defer | None = None, clock: Callable[[], float] = time.time) -> None:
        self.nft = nft
        self.store = store
        self.defer = defer
        self.clock = clock

    # -- the database part, defined once ----------------------------------------------------------
    def record(self, op: str, ev: dict[str, Any]) -> None:
        """Apply a database operation now (CLI) or hand it to the daemon's worker (``defer``)."""
        if self.defer is not None:
            self.defer(op, ev)
        elif self.store is not None:
            self.persist(self.store, op, ev)

    @staticmethod
    def persist(store: Any, op: str, ev: dict[str, Any]) -> None:
        """What each operation does to the database (``store``: nfsentry.sinks.store.Store)."""
        if op == "block":  # a block in force: its row (created or refreshed) and its history row
            store.add_block(ev)
            store.add_history(ev)
            if pushed(store, ev):  # [fleet] push: queued for the LAPI (the fleet thread delivers it)
                store.outbox_add(ev)
        elif op == "blocks":  # many at once (bulk block): the same, in one transaction
            store.add_blocks(ev["events"], history=True)
            for one in ev["events"]:
                if pushed(store, one):
                    store.outbox_add(one)
        elif op == "unblock":  # a block lifted through nfsentry: gone for good (rule 3)
            store.remove_block(ev["network"])
            store.forget_offender(ev["network"])
            store.add_history(ev)
        elif op == "forget":  # nothing in the kernel: make sure no record brings it back
            store.remove_block(ev["network"])
        elif op == "withdraw":  # kernel-side blocks withdrawn (rule 9): no record may bring one back
            for net in ev["networks"]:
                store.remove_block(net)
        elif op == "unblock_all":
            store.remove_all_blocks()
            store.forget_all_offenders()
            for net in ev.get("networks", []):
                store.add_history(unblock_event(net, ev["reason"], ev["ts"]))
        elif op == "expire":  # the kernel timed it out: the record goes too (rule 6), reported once
            if store.remove_block(ev["network"]):
                store.add_history(ev)
        elif op == "history":
            store.add_history(ev)
        else:
            raise ValueError(f"unknown ledger operation {op!r}")

    # -- adding ------------------------------------------------------------------------------------
    def block(self, network: str, duration: float, reason: str | None = None, origin: str = "manual", **extra: Any) -> BlockResult:
        """Block ``network`` for ``duration`` seconds (0 = until unblocked), never shortening a
        block already in force (rule 7). The caller has checked the never-block list."""
        net = canonical(network)
        timeout = kernel_timeout(duration)
        self._put_back_lost()
        now = self.clock()
        found = self.nft.find_blocks(net)
        for b in found:  # the exact entry first, then broader blocks covering it
            if merge(b["expires_in"], duration) == "keep":
                end = None if b["expires_in"] is None else now + b["expires_in"]
                return BlockResult(net, "kept", end, b["network"])
        exact = any(b["network"] == net for b in found)
        self.nft.block(net, timeout)
        ev = block_event(net, duration, reason or (None if exact else "manual block"), origin, now, **extra)
        self.record("block", ev)
        return BlockResult(net, "extended" if exact else "blocked", ev["expires"], net, ev)

    def block_many(self, items: list[tuple[str, float, str | None]], origin: str = "manual") -> list[BlockResult]:
        """Block many ``(network, duration, reason)`` at once, in one kernel transaction and one
        database transaction, under :meth:`block`'s rule (7: a block in force is never shortened;
        a network twice in ``items`` counts once, with its longer duration). The caller has
        checked the never-block list. Returns one result per distinct network, in ``items``' order."""
        wanted: dict[str, tuple[float, str | None]] = {}
        for network, duration, reason in items:
            net = canonical(network)
            kernel_timeout(duration)  # rule 8 (and a negative duration is refused before anything)
            if net in wanted and merge(_left(wanted[net][0]), duration) == "keep":
                continue
            wanted[net] = (duration, reason if reason is not None or net not in wanted else wanted[net][1])
        self._put_back_lost()
        now = self.clock()
        inforce = _Blocks(self.nft.list_blocked())
        results: list[BlockResult] = []
        adds: list[tuple[str, int]] = []
        extend: list[str] = []
        events = []
        for net, (duration, reason) in wanted.items():
            found = inforce.covering(net)
            keep = next((b for b in found if merge(b["expires_in"], duration) == "keep"), None)
            if keep is not None:
                end = None if keep["expires_in"] is None else now + keep["expires_in"]
                results.append(BlockResult(net, "kept", end, keep["network"]))
                continue
            exact = any(b["network"] == net for b in found)
            adds.append((net, kernel_timeout(duration)))
            if exact:
                extend.append(net)
            ev = block_event(net, duration, reason or (None if exact else "manual block"), origin, now)
            events.append(ev)
            results.append(BlockResult(net, "extended" if exact else "blocked", ev["expires"], net, ev))
        if adds:
            self.nft.bulk_block(adds, replace=extend)
            self.record("blocks", {"events": events})
        return results

    def _put_back_lost(self) -> None:
        """Rule 4 before a change made without the daemon: the database's blocks the kernel lost
        (a flushed ruleset loaded again empty) are put back first, so an unblock lifts them too
        and a block never shortens them. (The daemon puts them back on its own within a second.)"""
        if self.store is None or self.defer is not None:
            return
        now = self.clock()
        kernel = {b["network"]: b.get("expires_in") for b in self.nft.list_blocked()}
        db = {b["network"]: b["expires"] for b in self.store.blocks(now, include_expired=True)}
        lost = plan_restore(kernel, db, now).put_back
        if lost:
            self.nft.bulk_block(lost)

    def withdraw(self, networks: list[str]) -> None:
        """Rule 9: kernel-side blocks the daemon's rules refused leave the kernel, whether or not
        it still holds them, and no record of them stays (a restore may have adopted one)."""
        self.nft.withdraw(networks)
        self.record("withdraw", {"networks": list(networks)})

    def block_detected(self, network: str, duration: float) -> None:
        """The packet path's block (kernel only): its event reaches :meth:`persist` through the
        daemon's worker ("block"), after the verdict and the reports."""
        self.nft.block(network, kernel_timeout(duration))

    # -- removing ----------------------------------------------------------------------------------
    def unblock(self, targets: list[str], covering: bool = False, reason: str = "unblocked by admin") -> UnblockResult:
        """Lift the blocks of each target: the entry that is exactly it, every entry inside it (a
        prefix), and the broader blocks covering it only when ``covering`` (else they are named
        in the result and stay). A target nothing blocks is reported, and no history row is made."""
        res = UnblockResult()
        self._put_back_lost()
        now = self.clock()
        for target in targets:
            net = canonical(target)
            found = self.nft.find_blocks(net)
            lift = [b["network"] for b in found if b["network"] == net]
            cover = [b["network"] for b in found if b["network"] != net]
            if "/" in net:
                lift += [b["network"] for b in self.nft.blocks_inside(net) if b["network"] not in lift]
            if cover and covering:
                lift += cover
            elif cover:
                res.covered[net] = cover
            if not lift and not cover:
                res.not_blocked.append(net)
                self.record("forget", {"network": net})
            for n in lift:
                if n in res.removed:
                    continue
                self.nft.unblock(n)
                self.record("unblock", unblock_event(n, reason, now))
                res.removed.append(n)
        return res

    def unblock_all(self, reason: str = "unblocked by admin (--all)") -> list[str]:
        """Every block leaves the kernel and the database (whatever the kernel had lost too)."""
        nets = [b["network"] for b in self.nft.list_blocked()]
        self.nft.unblock_all()
        self.record("unblock_all", {"ts": self.clock(), "networks": nets, "reason": reason})
        return nets

    def expire_due(self) -> list[dict[str, Any]]:
        """Database blocks whose time is up and that the kernel no longer holds (it timed them
        out): each leaves the database with an ``expire`` history row (rule 6). Returns the
        events, for the alerts. Needs the database here (the CLI, or the daemon's worker)."""
        now = self.clock()
        out = []
        for b in self.store.expired_blocks(now):
            net = b["network"]
            if any(k["network"] == net for k in self.nft.find_blocks(net)):
                continue  # the kernel still holds it (a clock step): its time is not up there
            ev = {
                "ts": now,
                "event": "expire",
                "network": net,
                "src": net,
                "reason": "block timed out",
                "expired": b["expires"],
                "origin": b.get("origin"),
            }
            self.persist(self.store, "expire", ev)
            out.append(ev)
        return out

    # -- reading -----------------------------------------------------------------------------------
    def entries(self, family: int | None = None) -> list[dict[str, Any]]:
        """The kernel's blocks (what is dropped), annotated from the database (why)."""
        kernel = self.nft.list_blocked()
        db: dict[str, dict] = {}
        if self.store is not None:
            try:
                db = {b["network"]: b for b in self.store.blocks(include_expired=True)}
            except Exception:  # the kernel is what counts; the reasons are best effort
                db = {}
        now = self.clock()
        out = []
        for k in kernel:
            net = k["network"]
            fam = 6 if ":" in net else 4
            if family and fam != family:
                continue
            b = db.get(net, {})
            left = k.get("expires_in")
            out.append(
                {
                    "network": net,
                    "family": fam,
                    "reason": b.get("reason") or "",
                    "labels": b.get("labels", []),
                    "ports": b.get("ports", []),
                    "first_seen": b.get("first_seen"),
                    "blocked_at": b.get("created"),
                    "expires": (now + left) if left else None,
                    "expires_in": left,
                    "offences": b.get("offences", 1),
                    "origin": b.get("origin", "kernel"),
                    "packets": k.get("packets"),  # dropped since the block (the element's counter; None: not counted)
                }
            )
        if family in (None, 4, 6):
            out += [e for e in fleet_entries(self.nft, self.store, now) if not family or e["family"] == family]
        return out

    # -- restoring ---------------------------------------------------------------------------------
    def restore(self, put_back: bool = True) -> RestoreReport:
        """Make the kernel and the database agree (start-up, a flushed ruleset, a new database):
        rules 4-6. ``put_back=False`` when the database is the one that was lost."""
        now = self.clock()
        kernel = {b["network"]: b.get("expires_in") for b in self.nft.list_blocked()}
        db = {b["network"]: b["expires"] for b in self.store.blocks(now, include_expired=True)}
        plan = plan_restore(kernel, db, now)
        if put_back and plan.put_back:
            self.nft.bulk_block(plan.put_back)
        adopted = [block_event(net, 0, "adopted from the kernel set", "kernel", now, expires=end) for net, end in plan.adopt]
        if adopted:
            self.store.add_blocks(adopted)
        for net in plan.ended:
            self.store.remove_block(net)
        kept = len(kernel) + (len(plan.put_back) if put_back else 0)
        return RestoreReport(
            put_back=len(plan.put_back) if put_back else 0,
            adopted=len(adopted),
            ended=len(plan.ended),
            kernel=kept,
            blocks=self.store.blocks(now),
            offenders=self.store.offenders(),
        )


def pushed(store: Any, ev: dict[str, Any]) -> bool:
    """Does this recorded block go to the fleet's outbox? With [fleet] push on, every block the
    ledger makes but a pulled one (and what only would have been blocked)."""
    return bool(getattr(store, "fleet_push", False)) and ev.get("origin") != "fleet" and ev.get("blocked", True) is not False


def _left(duration: float) -> float | None:
    """A requested duration as "seconds left" for :func:`merge` (0 = permanent: None)."""
    t = kernel_timeout(duration)
    return None if t == 0 else float(t)


class _Blocks:
    """One listing of the blocked sets, asked "which entries are or cover this network" without
    asking the kernel again (bulk block): exact entries by name, prefixes by (family, length)."""

    def __init__(self, listing: list[dict[str, Any]]) -> None:
        self.by_net = {b["network"]: b for b in listing}
        self.lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for b in listing:
            if "/" in b["network"]:
                n = ipaddress.ip_network(b["network"])
                self.lengths[n.version].add(n.prefixlen)

    def covering(self, network: str) -> list[dict[str, Any]]:
        """The entry that is exactly ``network`` first, then the broader ones holding it."""
        net = ipaddress.ip_network(network)
        out = [self.by_net[network]] if network in self.by_net else []
        for length in sorted(self.lengths[net.version], reverse=True):
            if length >= net.prefixlen:
                continue
            b = self.by_net.get(str(net.supernet(new_prefix=length)))
            if b is not None:
                out.append(b)
        return out
