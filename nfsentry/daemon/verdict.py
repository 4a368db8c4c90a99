"""The packet path: the scan queue's callback and what a reaction does. Main thread only (it is
the one thread that touches the engine), so nothing here takes a lock.

Most packets take the lean path: the engine's process_raw answers PASS/IGNORE/COUNT/DROP with a
small int (``lean_code(action, proto)``), turned into the verdict by one table lookup
(``lean_verdicts``, built from the configuration); only reactions come back as a Decision
(:meth:`Verdicts.decided`): a block goes into the kernel set through the ledger right after the
verdict, and the reports go to the worker. Counters written: ``Counters.main``.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from nfsentry.core.engine import LEAN_CODES, Action, lean_code
from nfsentry.core.valves import Admit
from nfsentry.daemon.counters import Part


class Stop(BaseException):
    """Raised from the scan queue's callback to leave NetfilterQueue.run() on SIGTERM/SIGINT."""


class Verdicts(Part):
    """``on_packet`` is the scan queue's callback. ``pending`` is the main thread's "duties
    waiting" flag (set by other threads, signals and the ticker; cleared by ``Daemon.service``):
    it lives here so the per-packet test is one attribute of ``self``."""

    def __init__(self, daemon: Any) -> None:
        super().__init__(daemon, daemon.counters.main)
        self.engine: Any = None  # set by Daemon.build_core
        self.service = daemon.service  # bound once: the callback calls it directly
        self.pending = False
        self.kernel_blocked = 0  # entries in the kernel's blocked sets (recounted by the worker)
        self.block_latency: collections.deque = collections.deque(maxlen=256)  # seconds, last blocks
        self._valve_alerts: collections.deque = collections.deque()  # alerts reported for refused blocks
        self._valve_warned = -1e9
        self._valve_refused = 0
        self.build_lean_verdicts()

    def on_packet(self, p) -> None:
        """Exactly one verdict per packet, whatever fails; then, when the control thread, a signal
        or the 1 s ticker asked for it, the main thread's other duties, so they also run during a
        flood that keeps the queue busy (run() never returns then). This is the per-packet cost:
        keep it flat."""
        self.counts["queued"] += 1
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
                            self.counts["dropped_by_verdict"] += 1
                    else:
                        p.accept()
                except Exception as e:
                    self.failed(p, e, False)
            else:
                self.decided(p, r)
        if self.pending:
            self.service()
            if self.d.stop_flag:
                raise Stop()

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
                self.counts["detections"] += 1
                self.enqueue("detection", d)
        except Exception as e:
            self.failed(p, e, verdict_done)

    def logged(self, d) -> None:
        """A reaction to a packet the kernel only logged (NFLOG, :mod:`nflog`): dropped already or
        never delivered, so no verdict; the block and the reports as for a queued packet."""
        if (d.action == Action.BLOCK or d.valve is not None) and self.kernel_blocks(d.proto):
            self.block_now(d)
        else:
            self.counts["detections"] += 1
            self.enqueue("detection", d)

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
        queue) is dropped when the kernel blocks that protocol, else gets ``probe_verdict``.
        Rebuilt on reload."""
        probe = 1 if self.d.cfg["response"]["probe_verdict"] == "drop" else 0
        table = bytearray(LEAN_CODES)
        for proto in range(256):
            table[lean_code(Action.COUNT, proto)] = probe
            table[lean_code(Action.DROP, proto)] = 2 if self.kernel_blocks(proto) else probe
        self.lean_verdicts = bytes(table)

    def probe_verdict(self, p) -> None:
        if self.d.cfg["response"]["probe_verdict"] == "drop":
            p.drop()
        else:
            p.accept()

    def kernel_blocks(self, proto: int) -> bool:
        cfg = self.d.cfg
        r = cfg["response"]
        mode = r["tcp"] if proto == 6 else r["udp"]
        return mode == "block" and not r["dry_run"] and cfg["monitor"]["mode"] != "observe"

    def block_now(self, d) -> None:
        """The source goes into the kernel set now (the verdict is already given). The engine
        consulted the safety valves before it recorded the block (core.valves): the decision is
        already narrowed, or turned into an alert (``d.valve`` is a Refused)."""
        if d.valve is not None and d.valve.__class__ is not Admit:
            self.not_blocked(d, d.valve)
            return
        try:
            self.d.ledger.block_detected(d.network, d.duration)
        except Exception as e:
            self.internal_error("nft block", e)
            return
        # from the engine's decision (taken as the packet was dequeued) to the set element committed
        self.block_latency.append(time.time() - d.ts)
        if d.valve is not None:
            self.counts["blocks_narrowed"] += 1
        self.counts["blocks"] += 1
        self.kernel_blocked += 1
        self.counts["detections"] += 1
        self.enqueue("detection", d)
        self.enqueue("block", d)

    def not_blocked(self, d, refused) -> None:
        """A block refused by a safety valve (max_blocks_per_minute, max_blocked): counted, and the
        source is only alerted and forgotten. Under a spoofed flood this runs for every packet, so
        the warning is logged at most every 10 s (with how many were refused since) and at most
        60 such alerts a minute are reported one by one; the rest only count (alerts_suppressed)."""
        counter, why, action = refused.counter, refused.why, refused.action
        self.counts[counter] += 1
        self.counts["detections"] += 1
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
            self.counts["alerts_suppressed"] += 1
