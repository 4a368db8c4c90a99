"""The safety valves between a block decision and the kernel. Pure: a block decision in, an
:class:`Admit` (possibly narrowed) or a :class:`Refused` out; the clock and the kernel's entry
count are given by the caller.

* IPv6 narrowing: a block of a source's prefix (the /64) that would cover an address nfsentry
  never blocks (this host, its gateway, a resolver, the ignore list...) blocks the (possibly
  forged) source address alone. The address then has its own offence count: a neighbour never
  inherits another address's escalation. A packet from an address narrowed moments ago (queued
  before its kernel block landed) is a :data:`DUPLICATE`, not a new block.
* ``max_blocks_per_minute``: at most that many blocks in any 60 s (a spoofed flood cannot make
  the kernel set churn).
* ``max_blocked``: at most that many entries in the kernel's blocked sets.

The engine consults the valves before it records a block, so a refused or narrowed block never
has to be undone afterwards.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DUPLICATE_WINDOW = 10.0  # seconds an address narrowed and blocked alone counts as just blocked
NARROWED_MEMORY = 1024  # narrowed addresses remembered for DUPLICATE_WINDOW


@dataclass(frozen=True, slots=True)
class Admit:
    key: bytes  # what to block: the decision's key, or the source address alone (narrowed)
    prefixlen: int
    narrowed: bool


@dataclass(frozen=True, slots=True)
class Refused:
    counter: str  # the daemon's counter: "blocks_rate_limited" or "blocks_capped"
    why: str  # one line for the log
    action: str  # what was done instead, for the event: "alert (rate-limited)", "alert (cap)"


DUPLICATE = Refused("duplicate", "blocked alone moments ago", "drop")


class Valves:
    """The valves' configuration and their small state (recent blocks, recent narrowings)."""

    def __init__(
        self, max_per_minute: int = 0, max_blocked: int = 0, never_block: Iterable[str] = (), blocked_count: Callable[[], int] = lambda: 0
    ) -> None:
        self.max_per_minute = max_per_minute
        self.max_blocked = max_blocked
        self.blocked_count = blocked_count
        self._recent: deque[float] = deque()
        self._narrowed: OrderedDict[bytes, float] = OrderedDict()
        self.set_never_block(never_block)

    def set_never_block(self, networks: Iterable[str]) -> None:
        self._never6 = [n for n in (ipaddress.ip_network(x, strict=False) for x in networks) if n.version == 6]

    def forget_narrowed(self) -> None:
        """After an unblock: an address scanning again is a new block, not a duplicate."""
        self._narrowed.clear()

    def _covers_never_block(self, key: bytes, prefixlen: int) -> bool:
        net = ipaddress.IPv6Network((key, prefixlen))
        return any(net.overlaps(n) for n in self._never6)

    def judge(self, key: bytes, prefixlen: int, src: bytes, now: float) -> Admit | Refused:
        """Narrow, then the rate limit, then the cap. ``now`` is the engine's clock."""
        narrowed = False
        if len(key) == 16 and prefixlen < 128 and self._never6 and self._covers_never_block(key, prefixlen):
            seen = self._narrowed.get(src)
            if seen is not None and seen > now - DUPLICATE_WINDOW:
                return DUPLICATE
            key, prefixlen, narrowed = src, 128, True
        limit = self.max_per_minute
        if limit:
            recent = self._recent
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= limit:
                return Refused("blocks_rate_limited", f"block rate limit ({limit}/min) reached", "alert (rate-limited)")
        if self.max_blocked and self.blocked_count() >= self.max_blocked:
            return Refused("blocks_capped", f"blocked-set cap ({self.max_blocked}) reached", "alert (cap)")
        if limit:
            self._recent.append(now)
        if narrowed:
            self._narrowed[src] = now
            self._narrowed.move_to_end(src)
            if len(self._narrowed) > NARROWED_MEMORY:
                self._narrowed.popitem(last=False)
        return Admit(key, prefixlen, narrowed)
