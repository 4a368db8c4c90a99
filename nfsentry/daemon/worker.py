"""The worker thread (``nfsentry-worker``): everything slow, fed by the bounded event queue
(``Daemon.events``): SQLite (the database part of the ledger's block changes, history), the
alerter (syslog/JSON/files), reverse DNS, external commands, hosts.deny; and, periodically,
refreshing the never-block list and recounting the kernel's blocked sets.

Every second it also checks that nfsentry's table is still in the kernel (a `nft flush ruleset`,
as restarting Debian's nftables service does, removes it): if not, it loads the ruleset again and
puts every block back with its remaining time (the ledger's rule 4), or marks the daemon DEGRADED;
and it reports the blocks the kernel timed out (``expire`` events, rule 6).

With ``[monitor] before_input`` it also keeps table netdev nfsentry on every interface (checked
every second, loaded again when the interfaces change).

It never touches the engine: what the main thread must apply (a new never-block list, the blocked
count) is handed over with ``Daemon.in_main_thread``. Through any storage fault the kernel set
stays authoritative: failed writes wait in order and are retried; a database deleted, replaced or
corrupted while running is moved aside, recreated and re-imported from the kernel. Counters
written: ``Counters.worker``.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any

from nfsentry.config.derive import ruleset_spec
from nfsentry.core.events import decision_event, ftp_report_event
from nfsentry.daemon.counters import Part
from nfsentry.ledger.ledger import Ledger
from nfsentry.ledger.neverblock import never_block_networks
from nfsentry.sinks.alerts import Alerter
from nfsentry.sinks.store import Store, StoreCorrupt, StoreError, move_aside

log = logging.getLogger("nfsentry")

WATCH_INTERVAL = 1.0  # seconds between checks that the table is still there and expiry reports
PRUNE_FIRST = 30.0  # [storage] history_days: the first pass this long after start-up (not to slow it)
PRUNE_INTERVAL = 3600.0  # then hourly
PRUNE_BATCH = 5000  # rows per DELETE transaction
PRUNE_SLICE = 0.25  # seconds of deleting before the worker serves its events again
MAX_PENDING = 100_000  # storage writes kept through a fault; beyond, counted in storage_dropped


def resolve(addr: str) -> str | None:
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError):
        return None


class Worker(Part):
    def __init__(self, daemon: Any) -> None:
        super().__init__(daemon, daemon.counters.worker)
        self.store: Store | None = None  # opened by Daemon.prepare (open_store)
        self.alerter: Alerter | None = None
        self.pending_store: list[tuple[str, dict]] = []  # writes to retry after a storage fault
        self._store_retry_at = 0.0
        self._next_watch = 0.0
        self._next_prune = time.monotonic() + PRUNE_FIRST
        self._pruned = 0  # history rows deleted in the pass under way
        self._ingress_problem: str | None = None  # the last netdev table error logged (once each)
        self.last_detection: float | None = None  # status: the time of the latest detection
        self.thread = threading.Thread(target=self.loop, name="nfsentry-worker", daemon=True)

    def open_store(self) -> None:
        """At start-up (main thread, before the worker runs) and after a storage fault: a corrupt
        database is moved aside and a new one started (the kernel's blocked set is re-imported)."""
        db_path = self.d.cfg.db_path
        try:
            self.store = Store(db_path)
        except StoreCorrupt as e:
            dest = move_aside(db_path)
            log.error("%s; moved aside to %s, re-importing the kernel's blocked set", e, dest)
            self.store = Store(db_path)
        f = self.d.cfg.data.get("fleet", {})
        self.store.fleet_push = bool(f.get("enabled") and f.get("push"))  # blocks queued for the LAPI (Ledger.persist)

    def loop(self) -> None:
        last_refresh = time.monotonic()
        while True:
            try:
                kind, obj, extra = self.events.get(timeout=1.0)
            except queue.Empty:
                kind = None
            try:
                if kind == "stop":
                    self.flush_pending(force=True)
                    return
                if kind is not None:
                    self.handle_event(kind, obj, extra)
                if self.pending_store:
                    self.flush_pending()
                elif time.monotonic() >= self._store_retry_at:
                    self._store_retry_at = time.monotonic() + 5
                    try:  # a database deleted or overwritten while nothing happens is redone within seconds
                        self._check_store()
                    except StoreCorrupt:
                        self.store_write("check", {})
                    except (StoreError, OSError) as e:
                        self.storage_fault(e)
                if time.monotonic() >= self._next_prune:
                    self.prune_history()
                if time.monotonic() >= self._next_watch:
                    self._next_watch = time.monotonic() + WATCH_INTERVAL
                    self.watch_ruleset()
                    self.watch_interfaces()
                    self.report_expired()
                if time.monotonic() - last_refresh >= self.d.cfg.durations["refresh_interval"]:
                    last_refresh = time.monotonic()
                    self.refresh_never_block()
                    if self.d.cfg["response"]["max_blocked"]:
                        self.refresh_blocked_count()
            except Exception as e:  # the worker must survive anything
                self.counts["errors"] += 1
                log.error("worker: %s: %s", type(e).__name__, e)

    def handle_event(self, kind: str, obj: Any, extra: dict) -> None:
        if kind == "warning":
            log.warning(obj["message"])
            return
        if kind == "ftp_debug":
            log.debug(obj.describe())
            return
        if kind == "ledger":  # block state changed through the ledger: its database part, then report
            self.ledger_event(*obj)
            return
        if kind == "reopen":  # SIGHUP or `nfsentry reload` (logrotate's postrotate): files opened again
            self.alerter.reopen()
            return
        if kind == "reconfigure":  # a reload: the alerter is rebuilt from the new [logging] section
            old, self.alerter = self.alerter, Alerter(obj, self.d.foreground)
            if old is not None:
                old.close()
            return
        cfg = self.d.cfg
        if kind == "ftp":  # an FTP tracker report: an event like the others
            kind, obj = "event", ftp_report_event(obj, extra.get("suppressed", 0))
        if kind in ("detection", "block"):
            ev = decision_event(obj, kind, cfg.event_policy())
            if extra.get("action"):
                ev["action"] = extra["action"]
                ev["blocked"] = False
        else:
            ev = obj
        if ev.get("event") in ("detection", "block") and cfg["logging"]["resolve_hosts"]:
            ev["host"] = resolve(ev["src"])
        if ev.get("event") == "detection":
            self.last_detection = ev.get("ts")
            by, key = self.d.counters.detections_by, (str(ev.get("label") or "-"), str(ev.get("proto") or "-"))
            by[key] = by.get(key, 0) + 1
        # storage first: a block is only reported once it is durable
        self.store_write("block" if ev["event"] == "block" else "history", ev)
        self.alerter.emit(ev)
        if ev["event"] == "block" and ev.get("action") != "manual":
            self.extra_actions(ev)
        elif ev["event"] == "detection" and ev.get("action") == "command":
            self.extra_actions(ev)

    def ledger_event(self, op: str, ev: dict) -> None:
        self.store_write(op, ev)
        if op == "unblock_all":
            for net in ev["networks"]:
                self.alerter.emit({"ts": ev["ts"], "event": "unblock", "network": net, "src": net, "reason": ev["reason"]})
        elif op in ("block", "unblock"):
            self.alerter.emit(ev)
        elif op == "blocks":  # a bulk block: each reported like a manual block
            for one in ev["events"]:
                self.alerter.emit(one)

    def extra_actions(self, ev: dict) -> None:
        from nfsentry.sinks import actions

        r = self.d.cfg["response"]
        if r["command"] and ev.get("action") in ("block", "command"):
            rc, out = actions.run_command(r["command"], ev["network"], ev.get("port") or 0, ev.get("label") or "scan")
            log.info("command for %s exited %d%s", ev["network"], rc, f": {out}" if out else "")
        if r["hosts_deny"] and ev.get("action") == "block":
            try:
                actions.append_hosts_deny(r["hosts_deny"], ev["network"])
            except OSError as e:
                log.error("cannot append to %s: %s", r["hosts_deny"], e.strerror or e)

    # == storage ====================================================================================
    def store_write(self, op: str, ev: dict) -> None:
        """Persist one event. Through any storage fault the kernel set stays authoritative: failed
        writes wait in order (bounded) and the worker retries them at most once a second."""
        if self.pending_store:  # storage is faulty: queue behind what already waits
            self._keep_pending(op, ev)
            return
        try:
            self._persist(op, ev)
        except (StoreError, OSError) as e:
            self.storage_fault(e)
            self._keep_pending(op, ev)

    def _keep_pending(self, op: str, ev: dict) -> None:
        if len(self.pending_store) < MAX_PENDING:
            self.pending_store.append((op, ev))
        else:
            self.counts["storage_dropped"] += 1

    def storage_fault(self, e: Exception) -> None:
        self.counts["storage_errors"] += 1
        self._store_retry_at = time.monotonic() + 1.0
        n = self.counts["storage_errors"]
        if n <= 3 or n % 100 == 0:
            log.error("storage fault (kernel set stays authoritative, will retry): %s", e)

    def _check_store(self) -> None:
        """(Re)open the database when it is not open or its file was deleted or replaced; raise
        StoreCorrupt when it was overwritten in place."""
        db_path = self.d.cfg.db_path
        if self.store is not None and not self.store.replaced():
            if self.store.damaged():
                raise StoreCorrupt(f"{db_path}: database is corrupt (overwritten while open: no SQLite header)")
            return
        if self.store is not None:
            log.error(
                "the database %s was deleted or replaced while running: starting a new one, re-importing the kernel's blocked set", db_path
            )
        self.reopen_store()

    def _persist(self, op: str, ev: dict) -> None:
        try:
            self._check_store()
            self._store_op(op, ev)
        except StoreCorrupt as e:
            self.counts["storage_errors"] += 1
            try:
                dest = move_aside(self.d.cfg.db_path)
            except FileNotFoundError:
                dest = None
            log.error(
                "%s; %s, starting a new one and re-importing the kernel's blocked set",
                e,
                f"moved aside to {dest}" if dest else "it is gone",
            )
            self.reopen_store()
            self._store_op(op, ev)

    def _store_op(self, op: str, ev: dict) -> None:
        if self.store is None:
            raise StoreError("no database open")
        if op != "check":  # "check": nothing to write, only (re)open the database
            Ledger.persist(self.store, op, ev)
            fleet = getattr(self.d, "fleet", None)
            if op in ("block", "blocks") and fleet is not None:
                fleet.wake()  # queued for the LAPI: the fleet thread delivers it now

    def flush_pending(self, force: bool = False) -> None:
        if not self.pending_store or (not force and time.monotonic() < self._store_retry_at):
            return
        pending, self.pending_store = self.pending_store, []
        for i, (op, ev) in enumerate(pending):
            try:
                self._persist(op, ev)
            except (StoreError, OSError) as e:
                self.pending_store = pending[i:] + self.pending_store
                self.storage_fault(e)
                return
        log.info("storage recovered: %d pending writes done", len(pending))

    def reopen_store(self) -> None:
        """The database file vanished or broke while running: start a fresh one and re-import
        the kernel set (authoritative) so nothing is forgotten."""
        if self.store:
            self.store.close()
            self.store = None
        self.open_store()
        Ledger(self.d.nft, self.store).restore(put_back=False)

    def prune_history(self) -> None:
        """[storage] history_days: delete history rows older than that, a few thousand per
        transaction for at most PRUNE_SLICE seconds at a time (the events keep flowing between
        slices, and the packet path never waits for any of it); once none is left, give the space
        back (Store.reclaim). Hourly; 0 keeps everything."""
        days = self.d.cfg["storage"]["history_days"]
        now = time.monotonic()
        if not days or self.store is None or self.pending_store:
            self._next_prune = now + PRUNE_INTERVAL
            return
        cutoff = time.time() - days * 86400
        end = now + PRUNE_SLICE
        try:
            while True:
                n = self.store.prune_history(cutoff, PRUNE_BATCH)
                self._pruned += n
                if n < PRUNE_BATCH:
                    break
                if time.monotonic() >= end:
                    self._next_prune = time.monotonic()  # more to delete: the next turn of the loop
                    return
            if self._pruned:
                how = self.store.reclaim()
                log.info("history: %d entries older than %d days deleted (space reclaimed: %s)", self._pruned, days, how)
                self.counts["history_pruned"] += self._pruned
        except (StoreError, OSError) as e:
            self.storage_fault(e)
            self._next_prune = time.monotonic() + 60
            return
        self._pruned = 0
        self._next_prune = time.monotonic() + PRUNE_INTERVAL

    # == periodic refreshes =========================================================================
    def refresh_never_block(self) -> None:
        """Host addresses may change while running: new ones join the kernel's ignore set here, and
        the main thread's never-block list (engine and valves) through a duty."""
        d = self.d
        self.counts["never_block_refreshes"] += 1
        nets = sorted(set(never_block_networks(d.cfg)) | d.runtime_ignore)
        if nets != d.never_block:
            added = set(nets) - set(d.never_block)
            for n in added:
                try:
                    d.nft.add_ignore(n)
                except Exception as e:
                    log.error("cannot add %s to the ignore set: %s", n, e)
            log.info("host addresses changed: %d never-block networks now", len(nets))
            d.in_main_thread(lambda: d.set_never_block(nets))

    def refresh_blocked_count(self) -> None:
        """Listing 100,000 blocks takes ~0.5 s: done here, never on the packet thread; the main
        thread takes the count (blocks made since are added as they happen, Verdicts.block_now)."""
        try:
            n = self.d.nft.blocked_count()
        except Exception as e:
            log.error("cannot count the blocked sets: %s", e)
            return
        verdicts = self.d.verdicts
        self.d.in_main_thread(lambda: setattr(verdicts, "kernel_blocked", n))

    def watch_ruleset(self) -> None:
        with self.d.ruleset_lock:  # never in the middle of a reload or `rules unload --force`
            self._watch_ruleset()

    def _watch_ruleset(self) -> None:
        """Is nfsentry's table still in the kernel? If it was flushed or deleted outside
        nfsentry, load the ruleset again and put every block back with its remaining time."""
        d = self.d
        try:
            loaded = d.nft.loaded()
        except Exception as e:
            d.degraded = f"cannot read the ruleset: {e}"
            return
        if d.unloaded_by_admin:  # unloaded on purpose: back only when the admin loads it again
            if loaded:
                rep = Ledger(d.nft, self.store).restore() if self.store is not None else None
                d.unloaded_by_admin, d.degraded = False, None
                log.warning("ruleset loaded again: detecting, %d blocks put back", rep.put_back if rep else 0)
            return
        if loaded:
            return
        log.warning(
            "the table inet %s is gone from the kernel (flushed or deleted outside nfsentry): loading it again with every block",
            d.nft.table,
        )
        try:
            d.nft.load(ruleset_spec(d.cfg, d.never_block), backend=d.cfg["nft"]["backend"])
            rep = Ledger(d.nft, self.store).restore() if self.store is not None else None
        except Exception as e:
            d.degraded = f"the ruleset was removed and could not be loaded again: {e}"
            log.error("DEGRADED: %s", d.degraded)
            return
        d.degraded = None
        self.counts["ruleset_restored"] += 1
        log.warning(
            "ruleset restored: table inet %s loaded again, %d blocks put back with their remaining time",
            d.nft.table,
            rep.put_back if rep else 0,
        )

    def watch_interfaces(self) -> None:
        with self.d.ruleset_lock:  # never in the middle of a reload or `rules unload --force`
            self._watch_interfaces()

    def _watch_interfaces(self) -> None:
        """[monitor] before_input: table netdev nfsentry hooks every interface there is now (a
        netdev chain hooks named devices: a link added, or deleted and added again, needs the table
        loaded again). One chain listing a second when nothing changed; each new error logged once."""
        d = self.d
        if not d.cfg["monitor"]["before_input"] or d.unloaded_by_admin or d.degraded:
            return
        try:
            if d.nft.sync_ingress(spec=ruleset_spec(d.cfg, d.never_block)):
                log.info("interfaces changed: table netdev %s hooks %s", d.nft.table, ", ".join(sorted(d.nft.ingress_listed() or ())))
            self._ingress_problem = None
        except Exception as e:
            d.nft.ingress_error = str(e)
            if str(e) != self._ingress_problem:
                self._ingress_problem = str(e)
                log.warning("table netdev %s (IPv4 with a bad header) not loaded, retrying every second: %s", d.nft.table, e)

    def report_expired(self) -> None:
        """Blocks the kernel timed out: an ``expire`` event each (JSON, syslog, history), once."""
        if self.store is None or self.pending_store:
            return
        try:
            expired = Ledger(self.d.nft, self.store).expire_due()
        except (StoreError, OSError) as e:
            self.storage_fault(e)
            return
        for ev in expired:
            self.counts["blocks_expired"] += 1
            self.alerter.emit(ev)
