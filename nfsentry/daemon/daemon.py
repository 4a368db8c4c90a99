"""The daemon's wiring and lifecycle: start-up, the main thread's loop and duties, signals,
reload, status and shutdown. The parts it wires together:

- main thread: the scan queue's blocking receive loop (``NetfilterQueue.run``; SO_RCVTIMEO makes
  an idle queue return every 0.2 s). Its callback is :meth:`verdict.Verdicts.on_packet`. Control
  requests, duties handed over by other threads, reloads and periodic expiry run here too
  (:meth:`Daemon.service`, from the callback when ``verdicts.pending`` asks, or between receives),
  so the engine is only ever touched by this thread (no locks on the packet path).
- ``nfsentry-ftp``: the FTP control queue (:mod:`ftpqueue`).
- ``nfsentry-ticker``: asks for the main thread's duties once a second.
- ``nfsentry-worker``: everything slow (:mod:`worker`).
- ``nfsentry-control``: the control socket (:mod:`control`), handing requests to the main thread.
- ``nfsentry-nflog`` ([monitor] before_input): packets the kernel drops before the input hook,
  logged by the rules to NFLOG (:mod:`nflog`), handed to the main thread's engine.
- ``nfsentry-notify`` (started by systemd with ``Type=notify``): the watchdog, fed while the main
  thread lives, and STATUS= lines (:mod:`sdnotify`). READY=1 once the rules are loaded and the
  queues bound; RELOADING=1 ... READY=1 around a reload; STOPPING=1 at shutdown.

Counters: one dict per writing thread (:mod:`counters`).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfsentry import __version__
from nfsentry.config import schema as C
from nfsentry.config.derive import build_valves, engine_config, ruleset_spec
from nfsentry.config.schema import Config, ConfigError
from nfsentry.core.addrs import PrefixSet
from nfsentry.core.engine import Engine
from nfsentry.core.events import latency_summary
from nfsentry.core.units import count_ports, ranges_text
from nfsentry.daemon.control import Commands, ControlServer
from nfsentry.daemon.counters import Counters
from nfsentry.daemon.ftpqueue import FtpQueue
from nfsentry.daemon.metrics import Metrics, open_metrics
from nfsentry.daemon.nflog import EarlyPackets, NflogError
from nfsentry.daemon.sdnotify import Notifier, Watchdog, notify_loop, watchdog_interval
from nfsentry.daemon.sdnotify import status as sdnotify_status
from nfsentry.daemon.verdict import Stop, Verdicts
from nfsentry.daemon.worker import Worker
from nfsentry.ledger.ledger import Ledger
from nfsentry.ledger.neverblock import never_block_networks
from nfsentry.sinks.alerts import Alerter
from nfsentry.sinks.store import StoreError

log = logging.getLogger("nfsentry")


class StartupError(Exception):
    """Start-up refused; str() is one line. exit_code: 1 (runtime), 2 (config), 77 (permission)."""

    def __init__(self, msg: str, exit_code: int = 1) -> None:
        super().__init__(msg)
        self.exit_code = exit_code


def require_root() -> None:
    if os.geteuid() != 0:
        raise StartupError("nfsentry: must run as root (needs CAP_NET_ADMIN for nftables and NFQUEUE)", 77)


class Daemon:
    def __init__(self, cfg: Config, foreground: bool = True) -> None:
        self.cfg = cfg
        self.foreground = foreground
        self.started = time.time()
        self.events: queue.Queue = queue.Queue(maxsize=100_000)  # to the worker
        self.duties: queue.Queue = queue.Queue()  # callables other threads hand to the main thread
        self.counters = Counters()
        self.last_error_log = 0.0  # internal errors: one log line per 10 s, whichever thread
        self._last_tick = self._last_sweep = 0.0
        self.stop_flag = False
        self.reload_flag = False
        self.runtime_ignore: set[str] = set()  # `unblock --ignore` while running: kept across refreshes
        self.never_block: list[str] = []
        self.nft: Any = None
        self.queues: list = []
        self.server: ControlServer | None = None
        self.verdicts = Verdicts(self)
        self.commands = Commands(self)
        self.worker = Worker(self)
        self.ftpq: FtpQueue | None = None
        self.early: EarlyPackets | None = None  # [monitor] before_input: the NFLOG listener
        self.degraded: str | None = None  # why protection is not what it should be (status: DEGRADED)
        self.engine_stats: dict[str, Any] = {}  # the engine's stats as of the last tick (main thread)
        self.unloaded_by_admin = False  # `rules unload --force`: not put back until loaded again by hand
        self.fleet: Any = None  # [fleet] enabled: the fleet thread (daemon/fleet.py)
        self.notify = Notifier.from_environment()  # systemd (Type=notify); inert without NOTIFY_SOCKET
        interval = watchdog_interval()
        self.watchdog = Watchdog(self.notify, interval) if interval and self.notify.enabled else None
        # held by whoever loads, unloads or puts back the ruleset: the main thread (reload, `rules
        # unload --force`) and the worker (a table gone, interfaces changed). Without it the worker
        # could see the table gone mid-unload and load it straight back.
        self.ruleset_lock = threading.RLock()
        self.metrics: Metrics | None = None  # [metrics]: the endpoint and/or textfile (None: off)
        self.adopted = 0  # kernel entries the database did not know, adopted at start-up

    # == start-up ===================================================================================
    def prepare(self) -> None:
        """Everything that can fail before the kernel is touched."""
        require_root()
        from nfsentry import nft as N  # a missing python3-nftables is one clear line here

        self.N = N
        check_paths(self.cfg)
        self.worker.alerter = Alerter(self.cfg, self.foreground)
        if self.worker.alerter.syslog_problem:
            log.warning(self.worker.alerter.syslog_problem)
        try:
            self.worker.open_store()
        except StoreError as e:
            raise StartupError(f"nfsentry: {e}", 1) from None

    def build_core(self) -> None:
        self.never_block = never_block_networks(self.cfg)
        self.ftpq = FtpQueue(self)
        self.engine = Engine(engine_config(self.cfg), ignore=PrefixSet(self.never_block), expectations=self.ftpq.expectations)
        self.engine.valves = self.valves = self.make_valves(self.cfg)
        self.verdicts.engine = self.engine
        self.engine_stats = dict(self.engine.stats)

    def make_valves(self, cfg: Config):
        """The engine's safety valves; the blocked count they read is the main thread's (Verdicts)."""
        verdicts = self.verdicts
        return build_valves(cfg, self.never_block, lambda: verdicts.kernel_blocked)

    def start(self) -> None:
        self.prepare()
        self.build_core()
        try:  # bound before the kernel is touched: a taken port or a bad textfile directory changes nothing
            self.metrics = open_metrics(self)
        except (OSError, ValueError) as e:
            raise StartupError(f"nfsentry: {e}", 1 if isinstance(e, OSError) else 2) from None
        N = self.N
        self.notify.status("loading the ruleset")
        try:
            self.use_nft(N.Nft(table=self.cfg["nft"]["table"]))
            self.nft.load(ruleset_spec(self.cfg, self.never_block), backend=self.cfg["nft"]["backend"])
        except N.NftError as e:
            raise StartupError(f"nfsentry: loading the ruleset failed, nothing changed: {e}", 1) from None
        try:
            self.restore_blocks()
            if self.cfg["fleet"]["enabled"]:  # pulled blocks back before the LAPI is asked anything
                from nfsentry.daemon.fleet import Fleet

                self.fleet = Fleet(self)
                self.fleet.restore(self.never_block)
            self.bind_queues()
            self.server = ControlServer(self.cfg["daemon"]["control_socket"], self.commands.control_request)
        except Exception:
            self.stop_kernel_side(keep=True)
            raise
        self.server.start()
        self.worker.thread.start()
        if self.fleet is not None:
            self.fleet.start()
        if self.metrics is not None:
            self.metrics.start()
        st = self.nft.status()
        self.backend = st.get("backend")
        self.inuse = st.get("inuse")
        cfg = self.cfg
        log.info(
            "nfsentry %s is active: queue backend %s, in-use detection %s, engine %s, mode %s, "
            "monitoring tcp %s (%d ports) udp %s (%d ports), %d never-block networks, %d blocks restored",
            __version__,
            self.backend,
            self.inuse,
            self.engine_kind(),
            cfg["monitor"]["mode"],
            ranges_text(cfg.tcp_ports),
            count_ports(cfg.tcp_ports),
            ranges_text(cfg.udp_ports),
            count_ports(cfg.udp_ports),
            len(self.never_block),
            self.restored,
        )

    def use_nft(self, nft) -> None:
        """Block state goes through the ledger: its kernel part on the calling thread (main), its
        database part on the worker (a "ledger" event)."""
        self.nft = nft
        enqueue = self.verdicts.enqueue
        self.ledger = Ledger(nft, store=None, defer=lambda op, ev: enqueue("ledger", (op, ev)))

    def restore_blocks(self) -> None:
        """Kernel set and database agree after this (the ledger's rule): database blocks the
        kernel lost are put back with their remaining time; kernel entries the database does not
        know (made just before a kill -9, or after a corrupt database was moved aside) are
        adopted. The engine learns the live blocks and offence counts."""
        rep = Ledger(self.nft, self.worker.store).restore()
        for off in rep.offenders:
            self.engine.restore_offender(off["network"], off["offences"])
        for b in rep.blocks:
            self.engine.mark_blocked(b["network"], b["expires"] or 0.0)
        self.restored = len(rep.blocks)
        self.adopted = rep.adopted
        self.verdicts.kernel_blocked = rep.kernel

    def bind_queues(self) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        maxlen = self.cfg["daemon"]["queue_maxlen"]
        q = NetfilterQueue()
        q.bind(self.cfg["nft"]["queue"], self.verdicts.on_packet, max_len=maxlen, mode=COPY_PACKET, range=512)
        self.queues.append(q)
        if self.cfg["monitor"]["ftp"]:
            fq = NetfilterQueue()
            fq.bind(self.cfg["nft"]["ftp_queue"], self.ftpq.on_packet, max_len=maxlen, mode=COPY_PACKET, range=4096)
            self.queues.append(fq)
        if self.cfg["monitor"]["before_input"]:
            early = EarlyPackets(self)
            try:
                early.open(self.cfg["nft"]["nflog_group"])
            except NflogError as e:
                raise StartupError(f"nfsentry: [monitor] before_input: {e}", 1) from None
            self.early = early

    # == main loop ===================================================================================
    def run(self) -> int:
        """Main thread: the scan queue in a blocking recv loop (the lowest-overhead shape
        NetfilterQueue offers; a select() loop cost 10-20% of throughput). SO_RCVTIMEO makes an
        idle queue return every 0.2 s; a busy one services duties from its callback."""
        signal.signal(signal.SIGTERM, self._sig_stop)
        signal.signal(signal.SIGINT, self._sig_stop)
        signal.signal(signal.SIGHUP, self._sig_reload)
        for q in self.queues:
            _recv_timeout(q.get_fd(), 0.2)
        threads = [threading.Thread(target=self._ticker, name="nfsentry-ticker", daemon=True)]
        if len(self.queues) > 1:
            threads.append(threading.Thread(target=self.ftpq.run, args=(self.queues[1],), name="nfsentry-ftp", daemon=True))
        if self.early is not None:
            threads.append(threading.Thread(target=self.early.run, name="nfsentry-nflog", daemon=True))
        for t in threads:
            t.start()
        if self.notify.enabled:  # the rules are loaded, the queues bound, the signals handled: ready
            if self.watchdog is not None:  # the loop starts now (start-up may have taken longer than the limit)
                self.watchdog.alive = time.monotonic()
            self.notify.ready(self.status_line())
            args = (self.notify, self.watchdog, self.status_line, lambda: self.stop_flag)
            threading.Thread(target=notify_loop, args=args, name="nfsentry-notify", daemon=True).start()
        try:
            while not self.stop_flag:
                try:
                    self.queues[0].run(block=True)  # returns after 0.2 s without packets
                except Stop:
                    break
                except OSError as e:
                    self.verdicts.internal_error("queue recv", e)
                    time.sleep(0.01)
                self.service()
        finally:
            self.stop_flag = True
            for t in threads[1:]:
                t.join(timeout=2)
            self.shutdown()
        return 0

    def _ticker(self) -> None:
        while not self.stop_flag:
            time.sleep(1.0)
            self.verdicts.pending = True

    def service(self) -> None:
        """Duties of the main thread (the only one that touches the engine): control requests,
        duties other threads handed over, reload, periodic expiry."""
        self.verdicts.pending = False
        if self.watchdog is not None:  # the main thread lives: the notify thread may feed the watchdog
            self.watchdog.alive = time.monotonic()
        self.verdicts.withdraw_pending()  # before any request: a block asked for now is never withdrawn
        if self.early is not None and self.early.backlog:
            self.early.drain()
        self.commands.run()
        while not self.duties.empty():
            self.duties.get_nowait()()
        if self.reload_flag:
            self.reload_flag = False
            self.reload()
        now = time.time()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self.engine_stats = dict(self.engine.stats)  # for status, read on the control thread
            self.ftpq.expectations.expire(now)
            # the quiet-source sweep walks every tracked source (~5 ms per 100,000):
            # every 10 s is plenty, since a returning source is re-checked on its next hit
            if now - self._last_sweep >= 10.0:
                self._last_sweep = now
                self.engine.expire(now)

    def _sig_stop(self, signum, frame) -> None:
        self.stop_flag = True
        self.verdicts.pending = True

    def _sig_reload(self, signum, frame) -> None:
        self.reload_flag = True
        self.verdicts.pending = True

    def wake(self) -> None:
        """Ask the main thread to run its duties soon (any thread)."""
        self.verdicts.pending = True

    def in_main_thread(self, duty: Callable[[], Any]) -> None:
        """Run ``duty`` on the main thread (the only one that touches the engine), soon."""
        self.duties.put(duty)
        self.wake()

    def set_never_block(self, nets: list[str]) -> None:
        """Main thread: the never-block list changed (engine ignore set and valves)."""
        self.never_block = nets
        self.engine.ignore = PrefixSet(nets)
        self.valves.set_never_block(nets)
        fleet = self.fleet
        if fleet is not None:  # pulled blocks never hold a never-block address either
            fleet.post(lambda: fleet.set_never_block(nets))

    # == shutdown ===================================================================================
    def shutdown(self) -> None:
        self.notify.stopping()
        keep = self.cfg["response"]["keep_blocks_on_exit"]
        for q in self.queues:
            try:
                q.unbind()
            except Exception:
                pass
        self.queues = []
        if self.early is not None:
            self.early.close()
        if self.server:
            self.server.close()
        if self.fleet is not None:
            self.fleet.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.stop_kernel_side(keep)
        self.verdicts.enqueue("stop", None)
        if self.worker.thread.is_alive():
            self.worker.thread.join(timeout=10)
        log.info("nfsentry stopped (%s)", "blocked sets kept in the kernel" if keep else "table removed")
        if self.worker.alerter:
            self.worker.alerter.close()

    def stop_kernel_side(self, keep: bool) -> None:
        if self.nft is None:
            return
        try:
            if keep:
                self.nft.keep_blocks_only()
            else:
                self.nft.unload()
        except Exception as e:
            log.error("cleaning up the ruleset failed: %s", e)

    # == reload, status ==============================================================================
    def reload(self) -> tuple[bool, str]:
        """Main thread (SIGHUP or a control request): a configuration that fails to load or whose
        ruleset the kernel refuses changes nothing. Either way the files the alerter appends to
        are opened again (logrotate's postrotate runs `nfsentry reload`) and systemd is told
        RELOADING=1, then READY=1."""
        self.notify.reloading()
        self.verdicts.enqueue("reopen", None)
        try:
            return self._reload()
        finally:
            self.notify.ready(self.status_line())

    def _reload(self) -> tuple[bool, str]:
        path = self.cfg.path
        ps = getattr(self.cfg, "portsentry_source", None)
        try:
            if ps:
                from nfsentry.config import portsentry as P

                new = P.load_as_config(ps["conf"], ps["defaults"])
            else:
                new = C.load(path) if path else C.defaults()
        except (ConfigError, OSError, ValueError) as e:
            log.error("reload refused, the running configuration stays: %s", e)
            return False, f"reload refused: {e}"
        restart = restart_only_changes(self.cfg, new)
        if restart:
            msg = (
                f"reload refused, the running configuration stays: {', '.join(restart)} changed, which needs a "
                "restart (systemctl restart nfsentry)"
            )
            log.error(msg)
            return False, msg
        old = self.cfg
        self.cfg = new
        try:
            never_block = sorted(set(never_block_networks(new)) | self.runtime_ignore)
            with self.ruleset_lock:
                self.nft.load(ruleset_spec(new, never_block), backend=new["nft"]["backend"])
            self.never_block = never_block
        except Exception as e:
            self.cfg = old
            log.error("reload refused, the running configuration stays: %s", e)
            return False, f"reload refused: {e}"
        self.engine.configure(engine_config(new))
        self.engine.valves = self.valves = self.make_valves(new)
        self.set_never_block(self.never_block)
        self.verdicts.build_lean_verdicts()
        self.verdicts.enqueue("reconfigure", new)  # [logging]: the worker rebuilds its alerter
        log.info("configuration reloaded from %s", path or "built-in defaults")
        return True, "reloaded"

    def status_line(self) -> str:
        """One line for systemd's STATUS= (``systemctl status``); any thread, reads only."""
        if self.degraded:
            return f"DEGRADED: {self.degraded}"
        c = self.counters.total()
        return f"detecting: {self.verdicts.kernel_blocked} blocked; since start {c['detections']} detections, {c['blocks']} blocks"

    def engine_kind(self) -> str:
        """ "compiled" when process_raw's common cases run in nfsentry._fastpath, else "python"."""
        return "compiled" if getattr(self.engine, "compiled", False) else "python"

    def status(self) -> dict[str, Any]:
        """Control thread: reads only (see status_of)."""
        return status_of(self)


# keys a reload cannot apply (sockets, queues, files opened once at start): a change is refused by name
RESTART_ONLY = (
    ("daemon", "control_socket"),
    ("daemon", "queue_maxlen"),
    ("storage", "state_dir"),
    ("storage", "database"),
    ("nft", "table"),
    ("nft", "queue"),
    ("nft", "ftp_queue"),
    ("monitor", "ftp"),
    ("monitor", "before_input"),
    ("nft", "nflog_group"),
    *(("fleet", key) for key in C.DEFAULTS["fleet"]),
    ("metrics", "listen"),
    ("metrics", "textfile"),
)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The restart-only keys whose value differs between two configurations ("daemon.control_socket")."""
    return [f"{sec}.{key}" for sec, key in RESTART_ONLY if old[sec].get(key) != new[sec].get(key)]


def check_paths(cfg: Config) -> None:
    """The state directory, log files, database and hosts.deny are writable (StartupError, exit 2)."""
    state_dir = Path(cfg["storage"]["state_dir"])
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        if not os.access(state_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        raise StartupError(f"nfsentry: [storage] state_dir {state_dir}: {e.strerror or e}", 2) from None
    for key in ("json_file", "history_file", "blocked_file"):
        p = cfg["logging"][key]
        if p:
            try:
                Path(p).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                if not os.access(Path(p).parent, os.W_OK):
                    raise PermissionError(13, "not writable")
            except OSError as e:
                raise StartupError(f"nfsentry: [logging] {key} {p}: {e.strerror or e}", 2) from None
    checks = []
    if cfg["storage"]["database"]:
        checks.append(("[storage] database", cfg.db_path, True))
    if cfg["response"]["hosts_deny"]:
        checks.append(("[response] hosts_deny", Path(cfg["response"]["hosts_deny"]), False))
    for what, p, create in checks:
        try:
            if create:
                p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not p.parent.is_dir():
                raise FileNotFoundError(2, "no such directory")
            if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
                raise PermissionError(13, "not writable")
        except OSError as e:
            raise StartupError(f"nfsentry: {what} {p}: {e.strerror or e}", 2) from None


def _recv_timeout(fd: int, seconds: float) -> None:
    """SO_RCVTIMEO on a queue's netlink socket: a blocking run() returns when idle."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))
    finally:
        s.close()


def queue_drops() -> dict[str, Any]:
    """Per-queue drop counters from /proc/net/netfilter/nfnetlink_queue."""
    out = {}
    try:
        for line in Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines():
            f = line.split()
            if len(f) >= 7:
                out[f"queue{f[0]}"] = {"waiting": int(f[2]), "queue_dropped": int(f[5]), "user_dropped": int(f[6])}
    except OSError:
        pass
    return out


def status_of(d: Daemon) -> dict[str, Any]:
    """Control thread: reads only."""
    cfg = d.cfg
    st = {
        "pid": os.getpid(),
        "version": __version__,
        "started": d.started,
        "uptime": time.time() - d.started,
        "backend": getattr(d, "backend", None),
        "inuse": getattr(d, "inuse", None),
        "engine_kind": d.engine_kind(),
        "mode": cfg["monitor"]["mode"],
        "dry_run": cfg["response"]["dry_run"],
        "tcp_ports": ranges_text(cfg.tcp_ports),
        "udp_ports": ranges_text(cfg.udp_ports),
        "tcp_port_count": count_ports(cfg.tcp_ports),
        "udp_port_count": count_ports(cfg.udp_ports),
        "never_block": len(d.never_block),
        "never_block_list": list(d.never_block),
        "last_detection": d.worker.last_detection,
        "config": cfg.path,
        "counters": d.counters.total(),
        "engine": d.engine_stats,  # the main thread's snapshot (the control thread never reads the engine)
        "event_backlog": d.events.qsize(),
        "pending_storage_writes": len(d.worker.pending_store),
        "queue_drops": queue_drops(),
        "block_latency_ms": latency_summary(d.verdicts.block_latency),
        "ftp": d.ftpq.status(),
        "before_input": d.early.status() if d.early is not None else None,
        "systemd": sdnotify_status(d.notify, d.watchdog),
    }
    kb = d.verdicts.kb
    st["kernel_block"] = {"active": False}
    if kb is not None:
        st["kernel_block"] = {"active": True, "tcp": bool(kb.tcp_flags), "udp": kb.udp, "rate": kb.rate, "timeout": kb.timeout}
    try:
        st["kernel"] = d.nft.counters()
        st["blocked"] = d.nft.blocked_count()
        if d.early is not None:
            st["before_input"]["devices"] = sorted(d.nft.ingress_listed() or ())
            st["before_input"]["ingress_error"] = d.nft.ingress_error
        st["kernel_block"]["blocks"] = st["kernel"].get("kernel_blocks", 0)
    except Exception as e:
        st["kernel_error"] = str(e)
    st["fleet"] = d.fleet.status() if d.fleet is not None else {"enabled": False}
    st["state"] = "degraded" if d.degraded else "running"
    if d.degraded:
        st["degraded"] = d.degraded
    return st
