"""The daemon: NFQUEUE verdict loop + worker thread, joining the engine and the nft layer.

Threads:
- main: the scan queue's blocking receive loop (``NetfilterQueue.run``; SO_RCVTIMEO makes an idle
  queue return every 0.2 s, see :meth:`Daemon.run`). Each queued packet is run through the engine
  in the queue's callback and given its verdict at once; a block goes into the kernel set right
  after the verdict. Control requests (block/unblock/reload), reloads and periodic expiry run here
  too (:meth:`Daemon.service`, from the callback when the ticker or a request asks, or between
  receives), so the engine is only ever touched by this thread (no locks on the packet path).
- ftp: the FTP control queue's receive loop (the tracker; it only adds FTP expectations, under a
  lock, see :class:`LockedExpectations`).
- ticker: sets the "duties pending" flag once a second.
- worker: everything slow (SQLite, syslog/JSON/files, DNS, external commands, hosts.deny,
  refreshing the host's own addresses), fed by a bounded queue.
- control: the UNIX control socket (nfsentry.ipc) forwarding requests to the main thread.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from nfsentry import __version__
from nfsentry.config import schema as C
from nfsentry.sinks.alerts import Alerter
from nfsentry.config.schema import Config, ConfigError
from nfsentry.core.addrs import normalize_block_target, normalize_network
from nfsentry.core.engine import LEAN_CODES, Action, lean_code
from nfsentry.core.events import decision_event, ftp_report_event, latency_summary
from nfsentry.core.units import count_ports, ranges_text
from nfsentry.ipc import ControlServer
from nfsentry.core.valves import Admit, Valves
from nfsentry.ledger.ledger import Ledger
from nfsentry.sinks.store import Store, StoreCorrupt, StoreError, move_aside

log = logging.getLogger("nfsentry")

_U32 = struct.Struct("!I")
FTP_REPORT_WINDOW = 10.0      # seconds
FTP_REPORTS_PER_WINDOW = 20   # FTP tracker reports logged per window; the rest only counted


class StartupError(Exception):
    """Start-up refused; str() is one line. exit_code: 1 (runtime), 2 (config), 77 (permission)."""

    def __init__(self, msg: str, exit_code: int = 1) -> None:
        super().__init__(msg)
        self.exit_code = exit_code


# -- host facts (never-block list) ---------------------------------------------------------------
def _ip_json(args: list[str]) -> list[dict]:
    try:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=5).stdout
        return json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def own_addresses() -> set[str]:
    addrs = {"127.0.0.0/8", "::1/128"}
    for link in _ip_json(["addr", "show"]):
        for a in link.get("addr_info", []):
            local = a.get("local")
            if local and not local.startswith("fe80:"):
                addrs.add(local)
    return addrs


def gateways() -> set[str]:
    gws = set()
    for fam in ("-4", "-6"):
        for r in _ip_json([fam, "route", "show", "default"]):
            if r.get("gateway") and not r["gateway"].startswith("fe80:"):
                gws.add(r["gateway"])
    return gws


def resolvers(path: str = "/etc/resolv.conf") -> set[str]:
    out = set()
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    out.add(str(ipaddress.ip_address(parts[1].split("%")[0])))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def ssh_client() -> str | None:
    """The address of the SSH session running this command, if any (never block the admin)."""
    for var in ("SSH_CONNECTION", "SSH_CLIENT"):
        v = os.environ.get(var, "").split()
        if v:
            try:
                return str(ipaddress.ip_address(v[0]))
            except ValueError:
                pass
    return None


def never_block_networks(cfg: Config) -> list[str]:
    """Everything nfsentry must never block: config ignore list + host facts."""
    nets = {str(n) for n in cfg.ignore}
    ig = cfg["ignore"]
    if ig["own_addresses"]:
        nets |= own_addresses()
    if ig["gateways"]:
        nets |= gateways()
    if ig["resolvers"]:
        nets |= resolvers(ig.get("resolv_conf", "/etc/resolv.conf"))
    ssh = ssh_client()
    if ssh:
        nets.add(ssh)
    return sorted({str(ipaddress.ip_network(n, strict=False)) for n in nets})


def require_root() -> None:
    if os.geteuid() != 0:
        raise StartupError("nfsentry: must run as root (needs CAP_NET_ADMIN for nftables and NFQUEUE)", 77)


class Daemon:
    def __init__(self, cfg: Config, foreground: bool = True) -> None:
        self.cfg = cfg
        self.foreground = foreground
        self.started = time.time()
        self.events: queue.Queue = queue.Queue(maxsize=100_000)
        self.commands: queue.Queue = queue.Queue()
        self.duties: queue.Queue = queue.Queue()  # callables other threads hand to the main thread
        self.pending = False  # main-thread duties waiting (commands, reload, ticks)
        self._last_tick = self._last_sweep = 0.0
        self.stop_flag = False
        self.reload_flag = False
        self.build_lean_verdicts()
        self.counters = {"queued": 0, "ftp_packets": 0, "detections": 0, "blocks": 0, "dropped_by_verdict": 0,
                         "errors": 0, "events_lost": 0, "blocks_rate_limited": 0, "blocks_capped": 0,
                         "never_block_refused": 0, "storage_errors": 0,
                         "alerts_suppressed": 0, "storage_dropped": 0, "never_block_refreshes": 0,
                         "blocks_narrowed": 0}
        self._last_error_log = 0.0
        self._valve_alerts: collections.deque = collections.deque()  # alerts reported for refused blocks
        self._valve_warned = -1e9
        self._valve_refused = 0
        self._store_retry_at = 0.0
        self.runtime_ignore: set[str] = set()  # `unblock --ignore` while running: kept across refreshes
        self.kernel_blocked = 0  # entries in the kernel's blocked sets (recounted by the worker)
        self.block_latency: collections.deque = collections.deque(maxlen=256)  # seconds, last blocks
        self.nft = None
        self.queues: list = []
        self.control: ControlServer | None = None
        self.worker: threading.Thread | None = None
        self.store: Store | None = None
        self.alerter: Alerter | None = None
        self.pending_store: list[tuple[str, dict]] = []  # writes to retry after a storage fault

    # == start-up ===================================================================================
    def prepare(self) -> None:
        """Everything that can fail before the kernel is touched."""
        require_root()
        from nfsentry import nft as N  # a missing python3-nftables is one clear line here
        self.N = N
        state_dir = Path(self.cfg["storage"]["state_dir"])
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(state_dir, 0o700)
            if not os.access(state_dir, os.W_OK):
                raise PermissionError(13, "not writable")
        except OSError as e:
            raise StartupError(f"nfsentry: [storage] state_dir {state_dir}: {e.strerror or e}", 2) from None
        for key in ("json_file", "history_file", "blocked_file"):
            p = self.cfg["logging"][key]
            if p:
                try:
                    Path(p).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                    if not os.access(Path(p).parent, os.W_OK):
                        raise PermissionError(13, "not writable")
                except OSError as e:
                    raise StartupError(f"nfsentry: [logging] {key} {p}: {e.strerror or e}", 2) from None
        checks = []
        if self.cfg["storage"]["database"]:
            checks.append(("[storage] database", self.cfg.db_path, True))
        if self.cfg["response"]["hosts_deny"]:
            checks.append(("[response] hosts_deny", Path(self.cfg["response"]["hosts_deny"]), False))
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
        self.alerter = Alerter(self.cfg, self.foreground)
        if self.alerter.syslog_problem:
            log.warning(self.alerter.syslog_problem)
        try:
            self.store = Store(self.cfg.db_path)
        except StoreCorrupt as e:
            dest = move_aside(self.cfg.db_path)
            log.error("%s; moved aside to %s, re-importing the kernel's blocked set", e, dest)
            self.store = Store(self.cfg.db_path)
        except StoreError as e:
            raise StartupError(f"nfsentry: {e}", 1) from None

    def build_core(self) -> None:
        from nfsentry.core.engine import Engine
        from nfsentry.core.addrs import PrefixSet
        from nfsentry.core.ftp import ExpectationTable, FtpTracker
        self.never_block = never_block_networks(self.cfg)
        self.expectations = LockedExpectations(ExpectationTable())
        self.ftp = FtpTracker()
        self.counters.update(ftp_expectations=0, ftp_reports=0, ftp_reports_suppressed=0)
        self._ftp_report_budget, self._ftp_report_reset, self._ftp_suppressed = FTP_REPORTS_PER_WINDOW, 0.0, 0
        self.engine = Engine(engine_config(self.cfg), ignore=PrefixSet(self.never_block), expectations=self.expectations)
        self.engine.valves = self.valves = build_valves(self.cfg, self.never_block, lambda: self.kernel_blocked)

    def start(self) -> None:
        self.prepare()
        self.build_core()
        N = self.N
        try:
            self.nft = N.Nft(table=self.cfg["nft"]["table"])
            spec = ruleset_spec(self.cfg, self.never_block)
            self.nft.load(spec, backend=self.cfg["nft"]["backend"])
            self.use_nft(self.nft)
        except N.NftError as e:
            raise StartupError(f"nfsentry: loading the ruleset failed, nothing changed: {e}", 1) from None
        try:
            self.restore_blocks()
            self.bind_queues()
            self.control = ControlServer(self.cfg["daemon"]["control_socket"], self.control_request)
        except Exception:
            self.stop_kernel_side(keep=True)
            raise
        self.control.start()
        self.worker = threading.Thread(target=self.worker_loop, name="nfsentry-worker", daemon=True)
        self.worker.start()
        st = self.nft.status()
        self.backend = st.get("backend")
        self.inuse = st.get("inuse")
        log.info("nfsentry %s is active: queue backend %s, in-use detection %s, engine %s, mode %s, monitoring tcp %s (%d ports) udp %s (%d ports), "
                 "%d never-block networks, %d blocks restored", __version__, self.backend, self.inuse, self.engine_kind(), self.cfg["monitor"]["mode"],
                 ranges_text(self.cfg.tcp_ports), count_ports(self.cfg.tcp_ports), ranges_text(self.cfg.udp_ports),
                 count_ports(self.cfg.udp_ports), len(self.never_block), self.restored)

    def use_nft(self, nft) -> None:
        """Block state goes through the ledger: its kernel part on the calling thread, its
        database part on the worker (a "ledger" event)."""
        self.nft = nft
        self.ledger = Ledger(nft, store=None, defer=lambda op, ev: self.enqueue("ledger", (op, ev)))

    def restore_blocks(self) -> None:
        """Kernel set and database agree after this (the ledger's rule): database blocks the
        kernel lost are put back with their remaining time; kernel entries the database does not
        know (made just before a kill -9, or after a corrupt database was moved aside) are
        adopted. The engine learns the live blocks and offence counts."""
        rep = Ledger(self.nft, self.store).restore()
        for off in rep.offenders:
            self.engine.restore_offender(off["network"], off["offences"])
        for b in rep.blocks:
            self.engine.mark_blocked(b["network"], b["expires"] or 0.0)
        self.restored = len(rep.blocks)
        self.kernel_blocked = rep.kernel

    def bind_queues(self) -> None:
        from netfilterqueue import NetfilterQueue, COPY_PACKET
        q = NetfilterQueue()
        q.bind(self.cfg["nft"]["queue"], self.on_packet, max_len=self.cfg["daemon"]["queue_maxlen"], mode=COPY_PACKET, range=512)
        self.queues.append(q)
        if self.cfg["monitor"]["ftp"]:
            fq = NetfilterQueue()
            fq.bind(self.cfg["nft"]["ftp_queue"], self.on_ftp_packet, max_len=self.cfg["daemon"]["queue_maxlen"], mode=COPY_PACKET, range=4096)
            self.queues.append(fq)

    # == the packet path ============================================================================
    def on_packet(self, p) -> None:
        """The scan queue's callback (main thread): exactly one verdict per packet, whatever
        fails; then, when the control thread, a signal or the 1 s ticker asked for it, the main
        thread's other duties, so they also run during a flood that keeps the queue busy (run()
        never returns then).

        Most packets take the lean path: the engine's process_raw answers PASS/IGNORE/COUNT/DROP
        with a small int (``lean_code(action, proto)``), turned into the verdict by one table lookup
        (``lean_verdicts``, built from the configuration); only reactions come back as a Decision
        (``decided``). This is the per-packet cost: keep it flat."""
        self.counters["queued"] += 1
        try:
            r = self.engine.process_raw(p.get_payload(), time.time())
        except Exception as e:
            self.failed(p, e, False)
        else:
            if r.__class__ is int:
                v = self.lean_verdicts[r]
                try:
                    if v:
                        p.drop()
                        if v == 2:
                            self.counters["dropped_by_verdict"] += 1
                    else:
                        p.accept()
                except Exception as e:
                    self.failed(p, e, False)
            else:
                self.decided(p, r)
        if self.pending:
            self.service()
            if self.stop_flag:
                raise _Stop()

    def decided(self, p, d) -> None:
        """A reaction (ALERT/BLOCK): the verdict, then the block and the reports."""
        verdict_done = False
        try:
            if (d.action == Action.BLOCK or d.valve is not None) and self.kernel_blocks(d.proto):
                p.drop()
                verdict_done = True
                self.block_now(d)
                return
            self.probe_verdict(p)
            verdict_done = True
            if d.action >= Action.ALERT:  # ALERT, or BLOCK in log/command/dry-run/observe modes
                self.counters["detections"] += 1
                self.enqueue("detection", d)
        except Exception as e:
            self.failed(p, e, verdict_done)

    def failed(self, p, e: Exception, verdict_done: bool) -> None:
        """An internal error on the packet path: the packet is accepted unless its verdict went
        out already (a verdict that failed to go out counts as not given), and it is reported."""
        if not verdict_done:
            try:
                p.accept()
            except Exception:
                pass
        self.internal_error("packet", e)

    def build_lean_verdicts(self) -> None:
        """The verdict for each lean result of ``Engine.process_raw`` (index ``lean_code(action,
        proto)``): 0 accept, 1 drop, 2 drop and count it in ``dropped_by_verdict``. PASS and
        IGNORE accept; COUNT gets ``probe_verdict``; DROP (a source already blocked, still in the
        queue) is dropped when the kernel blocks that protocol, else gets ``probe_verdict``."""
        probe = 1 if self.cfg["response"]["probe_verdict"] == "drop" else 0
        table = bytearray(LEAN_CODES)
        for proto in range(256):
            table[lean_code(Action.COUNT, proto)] = probe
            table[lean_code(Action.DROP, proto)] = 2 if self.kernel_blocks(proto) else probe
        self.lean_verdicts = bytes(table)

    def probe_verdict(self, p) -> None:
        if self.cfg["response"]["probe_verdict"] == "drop":
            p.drop()
        else:
            p.accept()

    def kernel_blocks(self, proto: int) -> bool:
        r = self.cfg["response"]
        mode = r["tcp"] if proto == 6 else r["udp"]
        return mode == "block" and not r["dry_run"] and self.cfg["monitor"]["mode"] != "observe"

    def block_now(self, d) -> None:
        """The source goes into the kernel set now (the verdict is already given). The engine
        consulted the safety valves before it recorded the block (core.valves): the decision is
        already narrowed, or turned into an alert (``d.valve`` is a Refused)."""
        if d.valve is not None and d.valve.__class__ is not Admit:
            self.not_blocked(d, d.valve)
            return
        try:
            self.ledger.block_detected(d.network, d.duration)
        except Exception as e:
            self.internal_error("nft block", e)
            return
        # from the engine's decision (taken as the packet was dequeued) to the set element committed
        self.block_latency.append(time.time() - d.ts)
        if d.valve is not None:
            self.counters["blocks_narrowed"] += 1
        self.counters["blocks"] += 1
        self.kernel_blocked += 1
        self.counters["detections"] += 1
        self.enqueue("detection", d)
        self.enqueue("block", d)

    def refresh_blocked_count(self) -> None:
        """Listing 100,000 blocks takes ~0.5 s: done in the worker, never on the packet thread.
        Blocks made since the last count are added as they happen (block_now)."""
        try:
            self.kernel_blocked = self.nft.blocked_count()
        except Exception as e:
            log.error("cannot count the blocked sets: %s", e)

    def not_blocked(self, d, refused) -> None:
        """A block refused by a safety valve (max_blocks_per_minute, max_blocked): counted, and the
        source is only alerted and forgotten. Under a spoofed flood this runs for every packet, so
        the warning is logged at most every 10 s (with how many were refused since) and at most
        60 such alerts a minute are reported one by one; the rest only count (alerts_suppressed)."""
        counter, why, action = refused.counter, refused.why, refused.action
        self.counters[counter] += 1
        self.counters["detections"] += 1
        self._valve_refused += 1
        mono = time.monotonic()
        if mono - self._valve_warned >= 10:
            n, self._valve_refused, self._valve_warned = self._valve_refused, 0, mono
            more = f" ({n} sources not blocked since the last warning)" if n > 1 else ""
            self.enqueue("warning", {"message": f"{why}: {d.network} only alerted{more}", "network": d.network})
        alerts = self._valve_alerts
        while alerts and alerts[0] <= mono - 60:
            alerts.popleft()
        if len(alerts) < 60:
            alerts.append(mono)
            self.enqueue("detection", d, action=action)
        else:
            self.counters["alerts_suppressed"] += 1

    def on_ftp_packet(self, p) -> None:
        """Queue 1: an FTP control segment with payload. The verdict comes first (the tracker never
        holds FTP traffic); a data-connection SYN racing the kernel set waits in queue 0 until this
        returns, and by then the engine's ExpectationTable knows it."""
        try:
            self.counters["ftp_packets"] += 1
            raw = p.get_payload()  # valid until the callback returns, verdict or not
            pkt = self.decode(raw)
            off = pkt.payload_offset
            if pkt.malformed or pkt.proto != 6 or pkt.frag_offset or pkt.more_frags or off >= len(raw):
                return
            # The TCP sequence number (header = 20 bytes + options, right before the payload) lets
            # the tracker drop retransmitted bytes of a line split across segments.
            seq = _U32.unpack_from(raw, off - 16 - len(pkt.tcp_options))[0]
            events = self.ftp.feed(pkt.src, pkt.dst, pkt.sport, pkt.dport, raw[off:], time.time(), seq)
            for ev in events:
                self.on_ftp_event(ev)
        except Exception as e:
            self.internal_error("ftp packet", e)
        finally:
            p.accept()  # after the expectation is recorded: the peer cannot race it

    def on_ftp_event(self, ev) -> None:
        if ev.kind == "expectation":
            # One pending expectation per control connection: what it supersedes leaves the kernel
            # set in the same transaction.
            removed = self.expectations.add(ev)
            self.counters["ftp_expectations"] += 1
            try:
                self.nft.expect_ftp(ev.peer_text, ev.addr_text, ev.port, ev.timeout(time.time()),
                                    remove=[(o.peer_text, o.addr_text, o.port) for o in removed if o.key != ev.key])
            except Exception as e:
                self.internal_error("ftp expectation", e)
            if log.isEnabledFor(logging.DEBUG):
                self.enqueue("ftp_debug", ev)
            return
        # A report (bounce, 227 naming another address, malformed or oversized line): an event
        # (JSON, syslog, history) built in the worker; at most FTP_REPORTS_PER_WINDOW per window
        # so a hostile peer cannot flood the logs.
        now = time.monotonic()
        if now >= self._ftp_report_reset:
            self._ftp_report_reset, self._ftp_report_budget = now + FTP_REPORT_WINDOW, FTP_REPORTS_PER_WINDOW
        if self._ftp_report_budget <= 0:
            self.counters["ftp_reports_suppressed"] += 1
            self._ftp_suppressed += 1
            return
        self._ftp_report_budget -= 1
        self.counters["ftp_reports"] += 1
        self.enqueue("ftp", ev, suppressed=self._ftp_suppressed)
        self._ftp_suppressed = 0

    def ftp_status(self) -> dict[str, Any]:
        return {"tracker": dict(self.ftp.stats), "flows": len(self.ftp), "pending": len(self.expectations),
                "expectations": dict(self.expectations.stats)}

    def decode(self, raw):
        from nfsentry.core.packet import decode
        self.decode = decode  # bind once: the hot path calls the function directly afterwards
        return decode(raw)

    def internal_error(self, where: str, e: Exception) -> None:
        self.counters["errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            self.enqueue("warning", {"message": f"internal error in {where}: {type(e).__name__}: {e} (errors so far: {self.counters['errors']})"})

    def enqueue(self, kind: str, obj: Any, **extra) -> None:
        try:
            self.events.put_nowait((kind, obj, extra))
        except queue.Full:
            self.counters["events_lost"] += 1

    # == main loop ===================================================================================
    def run(self) -> int:
        """Main thread: the scan queue in a blocking recv loop (the lowest-overhead shape
        NetfilterQueue offers; a select() loop cost 10-20% of throughput). SO_RCVTIMEO makes an
        idle queue return every 0.2 s; a busy one services duties from its callback. The FTP
        queue runs in its own thread."""
        signal.signal(signal.SIGTERM, self._sig_stop)
        signal.signal(signal.SIGINT, self._sig_stop)
        signal.signal(signal.SIGHUP, self._sig_reload)
        for q in self.queues:
            _recv_timeout(q.get_fd(), 0.2)
        threads = [threading.Thread(target=self._ticker, name="nfsentry-ticker", daemon=True)]
        if len(self.queues) > 1:
            threads.append(threading.Thread(target=self._queue_loop, args=(self.queues[1], "ftp queue"),
                                            name="nfsentry-ftp", daemon=True))
        for t in threads:
            t.start()
        try:
            while not self.stop_flag:
                try:
                    self.queues[0].run(block=True)  # returns after 0.2 s without packets
                except _Stop:
                    break
                except OSError as e:
                    self.internal_error("queue recv", e)
                    time.sleep(0.01)
                self.service()
        finally:
            self.stop_flag = True
            for t in threads[1:]:
                t.join(timeout=2)
            self.shutdown()
        return 0

    def _queue_loop(self, q, what: str) -> None:
        while not self.stop_flag:
            try:
                q.run(block=True)
            except OSError as e:
                self.internal_error(what, e)
                time.sleep(0.01)

    def _ticker(self) -> None:
        while not self.stop_flag:
            time.sleep(1.0)
            self.pending = True

    def service(self) -> None:
        """Duties of the main thread (the only one that touches the engine): control requests,
        reload, periodic expiry."""
        self.pending = False
        self.run_commands()
        while not self.duties.empty():
            self.duties.get_nowait()()
        if self.reload_flag:
            self.reload_flag = False
            self.reload()
        now = time.time()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self.expectations.expire(now)
            # the quiet-source sweep walks every tracked source (~5 ms per 100,000):
            # every 10 s is plenty, since a returning source is re-checked on its next hit
            if now - self._last_sweep >= 10.0:
                self._last_sweep = now
                self.engine.expire(now)

    def _sig_stop(self, signum, frame) -> None:
        self.stop_flag = True
        self.pending = True

    def _sig_reload(self, signum, frame) -> None:
        self.reload_flag = True
        self.pending = True

    def _wake(self) -> None:
        self.pending = True

    def in_main_thread(self, duty) -> None:
        """Run ``duty`` on the main thread (the only one that touches the engine), soon."""
        self.duties.put(duty)
        self._wake()

    def set_never_block(self, nets: list[str]) -> None:
        """Main thread: the never-block list changed (engine ignore set and valves)."""
        from nfsentry.core.addrs import PrefixSet
        self.never_block = nets
        self.engine.ignore = PrefixSet(nets)
        self.valves.set_never_block(nets)

    def shutdown(self) -> None:
        keep = self.cfg["response"]["keep_blocks_on_exit"]
        for q in self.queues:
            try:
                q.unbind()
            except Exception:
                pass
        self.queues = []
        if self.control:
            self.control.close()
        self.stop_kernel_side(keep)
        self.enqueue("stop", None)
        if self.worker:
            self.worker.join(timeout=10)
        log.info("nfsentry stopped (%s)", "blocked sets kept in the kernel" if keep else "table removed")
        if self.alerter:
            self.alerter.close()

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

    # == control requests (executed in the main thread) ============================================
    def control_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Called in the control thread: hand over to the main thread and wait for the answer."""
        if req["cmd"] == "status":
            return {"ok": True, **self.status()}
        box: dict[str, Any] = {}
        done = threading.Event()
        self.commands.put((req, box, done))
        self._wake()
        if not done.wait(30):
            return {"ok": False, "error": "the daemon did not execute the request within 30s"}
        return box["reply"]

    def run_commands(self) -> None:
        while True:
            try:
                req, box, done = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                box["reply"] = self.execute(req)
            except (ValueError, ConfigError) as e:  # bad input from the CLI: its exit code 2
                box["reply"] = {"ok": False, "error": str(e), "code": 2}
            except Exception as e:
                box["reply"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            done.set()

    def execute(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "block":
            net = normalize_block_target(req["network"], self.never_block if not req.get("force") else [])
            duration = float(req.get("duration", self.cfg.durations["block_duration"]))
            res = self.ledger.block(net, duration, req.get("reason"))
            if res.status != "kept":
                self.engine.mark_blocked(net, res.expires or 0.0)
                self.counters["blocks"] += 1
            return {"ok": True, "blocked": net, "status": res.status, "expires": res.expires, "by": res.by}
        if cmd == "unblock":
            reason = req.get("reason") or "unblocked by admin"
            self.valves.forget_narrowed()  # an unblocked address scanning again is a new block
            if req.get("all"):
                removed, covered, not_blocked = self.ledger.unblock_all(), {}, []
            else:
                res = self.ledger.unblock([normalize_network(n) for n in req.get("networks", [])],
                                          covering=bool(req.get("covering")), reason=reason)
                removed, covered, not_blocked = res.removed, res.covered, res.not_blocked
            for net in removed:
                self.engine.forget(net)
                if req.get("ignore"):
                    self.add_ignore(net)
            return {"ok": True, "unblocked": removed, "covered": covered, "not_blocked": not_blocked}
        if cmd == "reload":
            ok, msg = self.reload()
            return {"ok": ok, "message": msg} if ok else {"ok": False, "error": msg}
        if cmd == "ignore":
            net = normalize_network(req["network"])
            self.add_ignore(net)
            return {"ok": True, "ignored": net}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def add_ignore(self, net: str) -> None:
        self.nft.add_ignore(net)
        self.runtime_ignore.add(net)
        self.set_never_block(sorted(set(self.never_block) | {net}))

    def engine_kind(self) -> str:
        """"compiled" when process_raw's common cases run in nfsentry._fastpath, else "python"."""
        return "compiled" if getattr(self.engine, "compiled", False) else "python"

    def status(self) -> dict[str, Any]:
        st = {"pid": os.getpid(), "version": __version__, "started": self.started, "uptime": time.time() - self.started,
              "backend": getattr(self, "backend", None), "inuse": getattr(self, "inuse", None), "engine_kind": self.engine_kind(),
              "mode": self.cfg["monitor"]["mode"], "dry_run": self.cfg["response"]["dry_run"],
              "tcp_ports": ranges_text(self.cfg.tcp_ports), "udp_ports": ranges_text(self.cfg.udp_ports),
              "tcp_port_count": count_ports(self.cfg.tcp_ports), "udp_port_count": count_ports(self.cfg.udp_ports),
              "never_block": len(self.never_block), "config": self.cfg.path, "counters": dict(self.counters),
              "engine": dict(getattr(self.engine, "stats", {})), "event_backlog": self.events.qsize(),
              "pending_storage_writes": len(self.pending_store), "queue_drops": queue_drops(),
              "block_latency_ms": latency_summary(self.block_latency)}
        st["ftp"] = self.ftp_status()
        try:
            st["kernel"] = self.nft.counters()
            st["blocked"] = self.nft.blocked_count()
        except Exception as e:
            st["kernel_error"] = str(e)
        return st

    # == reload ====================================================================================
    def reload(self) -> tuple[bool, str]:
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
        old = self.cfg
        self.cfg = new
        try:
            never_block = sorted(set(never_block_networks(new)) | self.runtime_ignore)
            self.nft.load(ruleset_spec(new, never_block), backend=new["nft"]["backend"])
            self.never_block = never_block
        except Exception as e:
            self.cfg = old
            log.error("reload refused, the running configuration stays: %s", e)
            return False, f"reload refused: {e}"
        self.engine.configure(engine_config(new))
        self.engine.valves = self.valves = build_valves(new, self.never_block, lambda: self.kernel_blocked)
        self.set_never_block(self.never_block)
        self.build_lean_verdicts()
        log.info("configuration reloaded from %s", path or "built-in defaults")
        return True, "reloaded"

    # == worker thread ==============================================================================
    def worker_loop(self) -> None:
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
                if time.monotonic() - last_refresh >= self.cfg.durations["refresh_interval"]:
                    last_refresh = time.monotonic()
                    self.refresh_never_block()
                    if self.cfg["response"]["max_blocked"]:
                        self.refresh_blocked_count()
            except Exception as e:  # the worker must survive anything
                self.counters["errors"] += 1
                log.error("worker: %s: %s", type(e).__name__, e)

    def handle_event(self, kind: str, obj: Any, extra: dict) -> None:
        if kind == "warning":
            log.warning(obj["message"])
            return
        if kind == "ftp_debug":
            log.debug(obj.describe())
            return
        if kind == "ledger":  # block state changed through the ledger: its database part, then report
            op, ev = obj
            self.store_write(op, ev)
            if op == "unblock_all":
                for net in ev["networks"]:
                    self.alerter.emit({"ts": ev["ts"], "event": "unblock", "network": net, "src": net, "reason": ev["reason"]})
            elif op in ("block", "unblock"):
                self.alerter.emit(ev)
            return
        if kind == "ftp":  # an FTP tracker report: an event like the others
            kind, obj = "event", ftp_report_event(obj, extra.get("suppressed", 0))
        if kind in ("detection", "block"):
            ev = decision_event(obj, kind, self.cfg.event_policy())
            if extra.get("action"):
                ev["action"] = extra["action"]
                ev["blocked"] = False
        else:
            ev = obj
        if ev.get("event") in ("detection", "block") and self.cfg["logging"]["resolve_hosts"]:
            ev["host"] = resolve(ev["src"])
        # storage first: a block is only reported once it is durable
        self.store_write("block" if ev["event"] == "block" else "history", ev)
        self.alerter.emit(ev)
        if ev["event"] == "block" and ev.get("action") != "manual":
            self.extra_actions(ev)
        elif ev["event"] == "detection" and ev.get("action") == "command":
            self.extra_actions(ev)

    def extra_actions(self, ev: dict) -> None:
        from nfsentry.sinks import actions
        r = self.cfg["response"]
        if r["command"] and ev.get("action") in ("block", "command"):
            rc, out = actions.run_command(r["command"], ev["network"], ev.get("port") or 0, ev.get("label") or "scan")
            log.info("command for %s exited %d%s", ev["network"], rc, f": {out}" if out else "")
        if r["hosts_deny"] and ev.get("action") == "block":
            try:
                actions.append_hosts_deny(r["hosts_deny"], ev["network"])
            except OSError as e:
                log.error("cannot append to %s: %s", r["hosts_deny"], e.strerror or e)

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
        if len(self.pending_store) < 100_000:
            self.pending_store.append((op, ev))
        else:
            self.counters["storage_dropped"] += 1

    def storage_fault(self, e: Exception) -> None:
        self.counters["storage_errors"] += 1
        self._store_retry_at = time.monotonic() + 1.0
        n = self.counters["storage_errors"]
        if n <= 3 or n % 100 == 0:
            log.error("storage fault (kernel set stays authoritative, will retry): %s", e)

    def _check_store(self) -> None:
        """(Re)open the database when it is not open or its file was deleted or replaced; raise
        StoreCorrupt when it was overwritten in place."""
        if self.store is not None and not self.store.replaced():
            if self.store.damaged():
                raise StoreCorrupt(f"{self.cfg.db_path}: database is corrupt (overwritten while open: no SQLite header)")
            return
        if self.store is not None:
            log.error("the database %s was deleted or replaced while running: starting a new one, "
                      "re-importing the kernel's blocked set", self.cfg.db_path)
        self.reopen_store()

    def _persist(self, op: str, ev: dict) -> None:
        try:
            self._check_store()
            self._store_op(op, ev)
        except StoreCorrupt as e:
            self.counters["storage_errors"] += 1
            try:
                dest = move_aside(self.cfg.db_path)
            except FileNotFoundError:
                dest = None
            log.error("%s; %s, starting a new one and re-importing the kernel's blocked set", e,
                      f"moved aside to {dest}" if dest else "it is gone")
            self.reopen_store()
            self._store_op(op, ev)

    def _store_op(self, op: str, ev: dict) -> None:
        if self.store is None:
            raise StoreError("no database open")
        if op != "check":  # "check": nothing to write, only (re)open the database
            Ledger.persist(self.store, op, ev)

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
        try:
            self.store = Store(self.cfg.db_path)
        except StoreCorrupt as e:
            dest = move_aside(self.cfg.db_path)
            log.error("%s; moved aside to %s", e, dest)
            self.store = Store(self.cfg.db_path)
        Ledger(self.nft, self.store).restore(put_back=False)

    def refresh_never_block(self) -> None:
        self.counters["never_block_refreshes"] += 1
        nets = sorted(set(never_block_networks(self.cfg)) | self.runtime_ignore)
        if nets != self.never_block:
            added = set(nets) - set(self.never_block)
            for n in added:
                try:
                    self.nft.add_ignore(n)
                except Exception as e:
                    log.error("cannot add %s to the ignore set: %s", n, e)
            log.info("host addresses changed: %d never-block networks now", len(nets))
            self.in_main_thread(lambda: self.set_never_block(nets))


class _Stop(BaseException):
    """Raised from the scan queue's callback to leave NetfilterQueue.run() on SIGTERM/SIGINT."""


def _recv_timeout(fd: int, seconds: float) -> None:
    """SO_RCVTIMEO on a queue's netlink socket: a blocking run() returns when idle."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))
    finally:
        s.close()


class LockedExpectations:
    """The FTP thread adds expectations while the engine (main thread) matches them. An empty
    table (the usual case) answers without taking the lock."""

    __slots__ = ("table", "lock", "pending")

    def __init__(self, table) -> None:
        self.table = table
        self.lock = threading.Lock()
        self.pending = table.pending   # the table's live dict: the engine's lock-free emptiness test

    def match(self, src, dst, dport, now, sport=None) -> bool:
        if not self.table:
            return False
        with self.lock:
            return self.table.match(src, dst, dport, now, sport=sport)

    def add(self, exp):
        with self.lock:
            return self.table.add(exp)

    def expire(self, now: float) -> int:
        with self.lock:
            return self.table.expire(now)

    def __len__(self) -> int:
        return len(self.table)

    def __bool__(self) -> bool:
        return bool(self.table)

    def __iter__(self):
        with self.lock:
            return iter(list(self.table))

    @property
    def stats(self):
        return self.table.stats


# == helpers shared with the CLI ====================================================================
def resolve(addr: str) -> str | None:
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError):
        return None


def queue_drops() -> dict[str, int]:
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


def build_valves(cfg: Config, never_block: list[str], blocked_count) -> Valves:
    r = cfg["response"]
    return Valves(r["max_blocks_per_minute"], r["max_blocked"], never_block, blocked_count)


def engine_config(cfg: Config):
    from nfsentry.core.engine import EngineConfig
    d, r = cfg["detection"], cfg["response"]
    return EngineConfig(
        scan_trigger=d["scan_trigger"], window_ports=d["window_ports"], window_seconds=cfg.durations["window_seconds"],
        instant_labels=frozenset(d["instant_labels"]), respond={"tcp": r["tcp"], "udp": r["udp"]},
        block_duration=cfg.durations["block_duration"], block_max_duration=cfg.durations["max_block_duration"],
        escalation_factor=float(r["escalation_factor"]), ipv6_prefix=d["ipv6_prefix"], max_sources=d["max_sources"],
        max_ports_per_source=d["max_ports_per_source"])


def ruleset_spec(cfg: Config, never_block: list[str]):
    from nfsentry.nft import RulesetSpec
    m, n = cfg["monitor"], cfg["nft"]
    return RulesetSpec(bypass=n["fail_open"], variant=m["mode"], tcp_ports=list(cfg.tcp_ports),
                       udp_ports=list(cfg.udp_ports), ignore=list(never_block),
                       queue=n["queue"], ftp_queue=n["ftp_queue"], ftp=m["ftp"], inuse=m["inuse"], mark=n["mark"], table=n["table"],
                       ipv6_prefix=cfg["detection"]["ipv6_prefix"], protect=list(m["protect"]))

