"""The fleet thread (``nfsentry-fleet``, [fleet] enabled): this host's blocks to a CrowdSec Local
API, the fleet's decisions into the fleet sets. Never the packet thread: it owns its own LAPI
connection, its own database connection and the ledger's fleet part (``ledger/fleet.py``).

* push (a watcher): every block the ledger records (but a pulled one) is queued in the database's
  outbox in the same write as its row (``Ledger.persist``); this thread delivers the oldest first,
  in batches, as alerts carrying a decision (``fleet/lapi.alert_for``), and removes them from the
  outbox only once the LAPI has acknowledged them. A LAPI outage or a restart loses nothing: the
  outbox waits (a block whose time ran out meanwhile is not pushed).
* pull (a bouncer): at start and every ``resync_interval`` the whole stream (``startup=true``),
  every ``pull_interval`` the deltas; ``fleet/pull.PullState`` says which networks changed and the
  fleet ledger applies them (never-block, minimum prefix, ``max_pulled``). The database's pulled
  blocks were put back at start, before the LAPI was asked anything.

Other threads hand it work with :meth:`Fleet.call` (``unblock``, a new never-block list) and read
:meth:`Fleet.status` (a snapshot). Counters: its own dict.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from nfsentry.daemon.handoff import Handoff
from nfsentry.fleet.lapi import Lapi, LapiError, alert_for
from nfsentry.fleet.pull import PullState
from nfsentry.ledger.fleet import FleetGuard, FleetLedger
from nfsentry.sinks.store import Store, StoreError

log = logging.getLogger("nfsentry")

BATCH = 100  # alerts per push
CHECK_INTERVAL = 10.0  # seconds between checks that the kernel still holds the fleet entries
LOG_EVERY = 10.0
CATCHUP = 0.25  # a full resync once new decisions stop coming for this long (2 empty pulls at 100 ms)
CATCHUP_LATEST = 5.0  # ... or this long after the first of them
CATCHUP_EVERY = 2.0  # ... and at most this often  # refusals and LAPI errors: one log line per this many seconds


class Fleet:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        cfg = daemon.cfg
        f = cfg["fleet"]
        self.push_on, self.pull_on = bool(f["push"]), bool(f["pull"])
        self.interval = cfg.durations["pull_interval"]
        self.resync = cfg.durations["resync_interval"]
        self.machine_id = f["machine_id"]
        self.scenario = f["scenario"]
        self.host = socket.gethostname()
        self.lapi = Lapi(
            f["url"], f["machine_id"], f["password"], f["api_key"], [f["scenario"]], cfg.durations["timeout"], f["cert"], f["key"], f["ca"]
        )
        self.store: Store | None = None
        self.ledger: FleetLedger | None = None
        self.state = PullState(f["machine_id"])
        self.wake_event = threading.Event()
        self.jobs = Handoff()
        self.stop_flag = False
        self.counts: Counter = Counter()
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.last_pull: float | None = None
        self.last_push: float | None = None
        self.last_resync = 0.0
        self.catchup_at: float | None = None
        self.new_since: float | None = None
        self._last_check = 0.0
        self._last_expire = 0.0
        self._last_log: dict[str, float] = {}
        self._snapshot: dict[str, Any] = {}
        # the stages of the last pulls that changed something, in ms (bench/bench_fleet.py reads them)
        self.timings: deque[dict[str, Any]] = deque(maxlen=8)
        self.thread = threading.Thread(target=self.loop, name="nfsentry-fleet", daemon=True)

    # == start-up (main thread, after the ruleset is loaded) ========================================
    def restore(self, never_block: list[str]) -> int:
        """Pulled blocks back from the database (the LAPI is not asked). Returns how many."""
        f = self.d.cfg["fleet"]
        self.store = Store(self.d.cfg.db_path)
        guard = FleetGuard(never_block, f["min_prefix4"], f["min_prefix6"], f["max_pulled"])
        self.ledger = FleetLedger(self.d.nft, self.store, guard)
        restored = self.ledger.restore()
        self.state.lifted = self.store.fleet_lifted()
        self.state.seed(restored)
        self._snap()
        return len(self.ledger.applied)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag = True
        self.wake_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.lapi.close()
        if self.store is not None:
            self.store.close()

    # == other threads ==============================================================================
    def wake(self) -> None:
        """A block was queued for the LAPI (worker thread): deliver it now."""
        self.wake_event.set()

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn`` on the fleet thread and return its result (raise what it raised)."""
        box = self.jobs.submit(fn, self.wake_event.set, timeout)
        if box is None:
            raise TimeoutError(f"the fleet thread did not answer within {timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the fleet thread soon (no answer)."""
        self.jobs.submit(fn, self.wake_event.set, None)

    def status(self) -> dict[str, Any]:
        return dict(self._snapshot)

    # == the thread =================================================================================
    def loop(self) -> None:
        next_pull = 0.0
        while not self.stop_flag:
            self.wake_event.clear()  # a wake from now on runs the loop again at once
            try:
                self._jobs()
                if self.push_on:
                    self.push_pending()
                now = time.monotonic()
                if self.pull_on and now >= next_pull:
                    next_pull = now + self.interval
                    self.pull()
                self.housekeeping()
            except Exception as e:  # the thread must survive anything
                self.counts["errors"] += 1
                self._log("error", "fleet: %s: %s", type(e).__name__, e)
            self._snap()
            wait = max(0.0, next_pull - time.monotonic()) if self.pull_on else 1.0
            if self.push_on and self.counts["outbox_waiting"] and not self.reachable:
                wait = min(wait, 1.0)
            self.wake_event.wait(wait)

    def _jobs(self) -> None:
        self.jobs.serve(lambda fn: fn())

    # -- push ----------------------------------------------------------------------------------------
    def push_pending(self) -> None:
        """Deliver the outbox, oldest first, until it is empty or the LAPI fails."""
        assert self.store is not None
        while True:
            try:
                rows = self.store.outbox_peek(BATCH)
            except StoreError as e:
                self._log("store", "fleet: reading the outbox: %s", e)
                return
            self.counts["outbox_waiting"] = len(rows)
            if not rows:
                return
            now = time.time()
            alerts, ids, stale = [], [], []
            for r in rows:
                a = alert_for(r["event"], self.scenario, self.machine_id, self.host, now)
                (stale if a is None else ids).append(r["id"])
                if a is not None:
                    alerts.append(a)
            if alerts:
                try:
                    self.lapi.push(alerts)
                except LapiError as e:
                    self._unreachable(e, "push")
                    return
                self._reached()
                self.last_push = time.time()
                self.counts["pushed"] += len(alerts)
            self.counts["push_expired"] += len(stale)
            self.store.outbox_done(ids + stale)
            if len(rows) < BATCH:
                self.counts["outbox_waiting"] = 0
                return

    # -- pull ----------------------------------------------------------------------------------------
    def pull(self) -> None:
        assert self.ledger is not None
        now = t0 = time.monotonic()
        startup = (
            now - self.last_resync >= self.resync or self.last_pull is None or (self.catchup_at is not None and now >= self.catchup_at)
        )
        try:
            data = self.lapi.stream(startup=startup)
        except LapiError as e:
            self._unreachable(e, "pull")
            self.last_resync = 0.0  # the first pull after an outage is a full resync
            return
        self._reached()
        if startup:
            self.last_resync = time.monotonic()
            self.catchup_at = self.new_since = None
            self.counts["resyncs"] += 1
        elif data.get("new"):
            # The LAPI (1.4.6, SQLite) stamps a decision when it makes it and commits it later: a
            # delta taken meanwhile never lists the ones stamped before it and committed after
            # (seen: 91 of 10,000 pushed in one alert). So new decisions are followed by a full
            # resync once they stop coming for CATCHUP s (at most CATCHUP_LATEST s after the first
            # of them, and CATCHUP_EVERY s after the last resync at the soonest).
            now = time.monotonic()
            if self.new_since is None:
                self.new_since = now
            self.catchup_at = min(max(now + CATCHUP, self.last_resync + CATCHUP_EVERY), self.new_since + CATCHUP_LATEST)
        self.last_pull = time.time()
        self.counts["pulls"] += 1
        t1 = time.monotonic()
        changes = self.state.feed(data, startup=startup)
        if changes:
            t2 = time.monotonic()
            res = self.ledger.apply(changes)
            ms = {k: round(v * 1000, 1) for k, v in self.ledger.last_times.items()}
            read, parse = getattr(self.lapi, "last_times", (0.0, 0.0))  # a stand-in in the unit tests has none
            self.timings.append(
                {
                    "at": time.time(),
                    "startup": startup,
                    "decisions": len(data.get("new") or []) + len(data.get("deleted") or []),
                    "changes": len(changes),
                    "put": len(res.put),
                    "fetch_ms": round(read * 1000, 1),
                    "parse_ms": round(parse * 1000, 1),
                    "feed_ms": round((t2 - t1) * 1000, 1),
                    **{f"{k}_ms": v for k, v in ms.items()},
                    "total_ms": round((time.monotonic() - t0) * 1000, 1),
                }
            )
            self.counts["pulled_put"] += len(res.put)
            self.counts["pulled_removed"] += len(res.removed)
            if res.put or res.removed:
                log.info(
                    "fleet: %d pulled block(s) in force or extended%s, %d lifted%s",
                    len(res.put),
                    _some(res.put, changes),
                    len(res.removed),
                    f" ({', '.join(res.removed[:3])}{', ...' if len(res.removed) > 3 else ''})" if res.removed else "",
                )
            if res.refused:
                self.counts["refused"] += len(res.refused)
                net, why = next(iter(res.refused.items()))
                self._log(
                    "refused",
                    "fleet: refused %d pulled decision(s) (e.g. %s: %s); see `nfsentry fleet status`",
                    len(res.refused),
                    net,
                    REFUSAL_TEXT.get(why, why),
                )

    def housekeeping(self) -> None:
        """Once a second: ended entries out of the books; every CHECK_INTERVAL: the kernel's."""
        assert self.ledger is not None
        now = time.monotonic()
        if now - self._last_expire < 1.0:
            return
        self._last_expire = now
        self.ledger.expire()
        self.state.expire()
        if now - self._last_check >= CHECK_INTERVAL:
            self._last_check = now
            n = self.ledger.check_kernel()
            if n:
                log.warning("fleet: %d pulled block(s) the kernel had lost put back", n)

    # -- unblock, never-block (run here through call/post) ---------------------------------------------
    def unblock(self, networks: list[str], local: bool) -> dict[str, Any]:
        """Lift the pulled blocks of ``networks`` here; not ``local``: delete their decisions at
        the LAPI first (a LAPI that cannot be reached refuses the whole request)."""
        assert self.ledger is not None and self.store is not None
        from nfsentry.ledger.fleet import canonical

        lifted, deleted = [], 0
        for network in networks:
            net = canonical(network)
            if net not in self.ledger.applied and net not in self.ledger.waiting and net not in self.state.by_net:
                continue
            ids = sorted(i for i in self.state.by_net.get(net, ()) if i >= 0)
            if not local:
                deleted += self.lapi.delete(net, ids)  # LapiError: the caller says so, nothing lifted
            self.state.lift(net)  # its decisions: never enforced here again
            if local:
                self.store.fleet_lift(ids, net, time.time())
            self.ledger.apply({net: None})
            lifted.append(net)
        self._snap()
        return {"lifted": lifted, "deleted_at_lapi": deleted}

    def set_never_block(self, nets: list[str]) -> None:
        assert self.ledger is not None
        res = self.ledger.reset_never_block(nets)
        if res.removed:
            log.warning("fleet: %d pulled block(s) now never-block, lifted: %s", len(res.removed), ", ".join(res.removed[:5]))

    # -- reporting -----------------------------------------------------------------------------------
    def _unreachable(self, e: LapiError, what: str) -> None:
        self.reachable = False
        self.last_error = str(e)
        self.counts[f"{what}_errors"] += 1
        self._log("lapi", "fleet: %s failed: %s (will retry)", what, e)

    def _reached(self) -> None:
        if self.reachable is False:
            log.info("fleet: LAPI %s reachable again", self.lapi.url)
        self.reachable = True
        self.last_error = None

    def _log(self, kind: str, fmt: str, *args: Any) -> None:
        """One log line per kind every LOG_EVERY seconds; the rest counted."""
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[kind] = now
            log.warning(fmt, *args)
        else:
            self.counts[f"log_suppressed_{kind}"] += 1

    def _snap(self) -> None:
        depth = None
        if self.store is not None and self.push_on:
            try:
                depth = self.store.outbox_depth()
            except StoreError:
                depth = None
        self._snapshot = {
            "enabled": True,
            "url": self.lapi.url,
            "machine_id": self.machine_id or None,
            "push": self.push_on,
            "pull": self.pull_on,
            "pull_interval": self.interval,
            "reachable": self.reachable,
            "last_error": self.last_error,
            "last_pull": self.last_pull,
            "last_push": self.last_push,
            "outbox": depth,
            "counts": dict(self.counts),
            "pulled": self.ledger.counts() if self.ledger is not None else {},
            "decisions": len(self.state.decisions),
            "skipped": dict(self.state.skipped),
            "pull_timings": list(self.timings),
        }


def _some(nets: list[str], changes: dict) -> str:
    """ " (198.18.0.2 from host1, ...)" for a log line: at most three."""
    if not nets:
        return ""
    parts = []
    for net in nets[:3]:
        p = changes.get(net)
        who = (p.machine or p.origin) if p is not None else None
        parts.append(f"{net} from {who}" if who else net)
    return f" ({', '.join(parts)}{', ...' if len(nets) > 3 else ''})"


REFUSAL_TEXT = {
    "never_block": "a never-block address (own, gateway, resolver, SSH session, ignore list)",
    "prefix": "a prefix shorter than [fleet] min_prefix4/min_prefix6",
    "max_pulled": "[fleet] max_pulled reached",
    "bad": "not an address or prefix",
}
