"""The LAPI's decision stream -> what each network wants (pure: JSON and a clock in).

``GET /v1/decisions/stream?startup=true`` answers every live decision; without ``startup``, the
decisions created (``new``) and deleted or expired (``deleted``) since the last call. A network
may have several decisions (another machine's push, a ``cscli`` ban, a longer one later): it is
wanted until the latest end of its live decisions, and not at all once none is left (the
LAPI 1.4.6 reports a value as deleted only when none is left; a longer decision deleted while a
shorter one remains is reported by nothing but the next full resync, which shortens it). So
:meth:`PullState.feed` keeps every live decision by id and returns only the networks whose wanted
state changed (``Pulled``, or None), which the ledger's fleet part applies.

Left out: this host's own pushes coming back (origin ``nfsentry/<machine_id>``: the local block is
already in force), decisions lifted here by ``unblock --local``, types other than ``ban``, scopes
other than ``Ip`` and ``Range``, and values that are not an address or prefix (counted).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nfsentry.ledger.fleet import Pulled

ORIGIN_PREFIX = "nfsentry/"
_GO = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """A Go duration as the LAPI writes them ("3h59m59.84s", "-1.32ms", "0s") -> seconds.
    ValueError on anything else."""
    s = str(text).strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _GO.finditer(s):
        if m.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"bad duration {text!r}")
    return sign * total


def machine_of(origin: str | None) -> str | None:
    """The nfsentry machine that pushed a decision ("nfsentry/host1" -> "host1"), or None."""
    if origin and origin.startswith(ORIGIN_PREFIX) and len(origin) > len(ORIGIN_PREFIX):
        return origin[len(ORIGIN_PREFIX) :]
    return None


@dataclass
class Decision:
    id: int
    network: str
    until: float
    origin: str | None
    scenario: str | None
    scope: str


def network_of(scope: str, value: str) -> str:
    """A decision's value as the fleet sets hold it ("198.18.0.2", "198.18.6.0/24"). ValueError."""
    sc = scope.lower()
    if sc == "ip":
        a = ipaddress.ip_address(value.strip())
        return str(a)
    if sc == "range":
        net = ipaddress.ip_network(value.strip(), strict=False)
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    raise ValueError(f"scope {scope!r}")


class PullState:
    """Every live decision of the stream, by id; what each network wants."""

    def __init__(self, machine_id: str = "", lifted: Iterable[int] = (), clock: Callable[[], float] = time.time) -> None:
        self.own_origin = f"{ORIGIN_PREFIX}{machine_id}" if machine_id else None
        self.lifted = set(lifted)
        self.clock = clock
        self.decisions: dict[int, Decision] = {}
        self.by_net: dict[str, set[int]] = {}
        self.skipped: Counter = Counter()  # own, lifted, type, scope, value
        self._seed_ids = -1

    def seed(self, pulled: Iterable[Pulled]) -> None:
        """The blocks restored from the database (the LAPI may be down): each as its decision,
        until the next full resync says what is live."""
        for p in pulled:
            did = p.decision_id
            if did is None or did in self.decisions:
                did, self._seed_ids = self._seed_ids, self._seed_ids - 1
            self._add(Decision(did, p.network, p.expires, p.origin, p.scenario, p.scope or ("Range" if "/" in p.network else "Ip")))

    def want(self, net: str) -> Pulled | None:
        """The network's wanted state: its latest-ending live decision, or None."""
        ids = self.by_net.get(net)
        if not ids:
            return None
        d = max((self.decisions[i] for i in ids), key=lambda d: (d.until, d.id))
        return Pulled(d.network, d.until, d.id if d.id >= 0 else None, d.origin, machine_of(d.origin), d.scenario, d.scope)

    def _add(self, d: Decision) -> None:
        old = self.decisions.get(d.id)
        if old is not None:
            self._drop(d.id)
        self.decisions[d.id] = d
        self.by_net.setdefault(d.network, set()).add(d.id)

    def _drop(self, did: int) -> str | None:
        d = self.decisions.pop(did, None)
        if d is None:
            return None
        ids = self.by_net.get(d.network)
        if ids is not None:
            ids.discard(did)
            if not ids:
                del self.by_net[d.network]
        return d.network

    def parse(self, item: dict[str, Any], now: float, known: dict[int, Decision] | None = None) -> Decision | None:
        """One stream entry -> a Decision, or None (counted in ``skipped``). ``known``: decisions
        held already (a full resync lists them again): a value equal to the network one of them
        holds under that id and scope is not parsed again."""
        try:
            did = int(item["id"])
            scope = str(item.get("scope", ""))
            if str(item.get("type", "ban")).lower() != "ban":
                self.skipped["type"] += 1
                return None
            if scope.lower() not in ("ip", "range"):
                self.skipped["scope"] += 1
                return None
            value = str(item["value"])
            k = known.get(did) if known else None
            net = k.network if k is not None and k.network == value and k.scope.lower() == scope.lower() else network_of(scope, value)
            left = go_duration(item.get("duration", "0s"))
        except (KeyError, TypeError, ValueError):
            self.skipped["value"] += 1
            return None
        return Decision(did, net, now + left, item.get("origin"), item.get("scenario"), "Range" if scope.lower() == "range" else "Ip")

    def feed(self, data: dict[str, Any] | None, startup: bool = False) -> dict[str, Pulled | None]:
        """One stream answer -> {network: its wanted state now} for the networks that changed.
        ``startup``: the answer holds every live decision (a full resync): the rest are gone."""
        now = self.clock()
        data = data or {}
        touched: set[str] = set()
        before: dict[str, Pulled | None] = {}

        def touch(net: str) -> None:
            if net not in touched:
                touched.add(net)
                before[net] = self.want(net)

        known: dict[int, Decision] = {}
        if startup:
            for net in list(self.by_net):
                touch(net)
            known, self.decisions, self.by_net = self.decisions, {}, {}
        # A deleted entry means no live decision is left for its value (the LAPI 1.4.6 reports one
        # only then, once per value, and repeats it for a while): every decision for it goes.
        # Before the new ones: a decision made since then for the same value stays.
        for item in data.get("deleted") or []:
            nets = set()
            try:
                d0 = self.decisions.get(int(item["id"]))
                if d0 is not None:
                    nets.add(d0.network)
            except (KeyError, TypeError, ValueError):
                pass
            try:
                nets.add(network_of(str(item.get("scope", "")), str(item["value"])))
            except (KeyError, TypeError, ValueError):
                pass
            for net in nets:
                if net in self.by_net:
                    touch(net)
                    for did in list(self.by_net[net]):
                        self._drop(did)
        for item in data.get("new") or []:
            d = self.parse(item, now, known)
            if d is None:
                continue
            if self.own_origin is not None and d.origin == self.own_origin:
                self.skipped["own"] += 1
                continue
            if d.id in self.lifted:
                self.skipped["lifted"] += 1
                continue
            if d.until <= now:
                continue
            old = self.decisions.get(d.id)
            if old is not None:
                touch(old.network)
            touch(d.network)
            self._add(d)
        changed: dict[str, Pulled | None] = {}
        for net in touched:
            after = self.want(net)
            b = before.get(net)
            if after is None and b is None:
                continue
            if after is None or b is None or abs(after.expires - b.expires) > 0.5 or after.decision_id != b.decision_id:
                changed[net] = after
        return changed

    def lift(self, network: str) -> list[int]:
        """``unblock --local``: the network's decisions are never enforced again here."""
        ids = sorted(i for i in self.by_net.get(network, ()) if i >= 0)
        self.lifted.update(ids)
        for i in list(self.by_net.get(network, ())):
            self._drop(i)
        return ids

    def expire(self) -> None:
        """Forget decisions whose end has passed (the ledger expires their entries itself)."""
        now = self.clock()
        for did in [i for i, d in self.decisions.items() if d.until <= now]:
            self._drop(did)
