"""The packet path: the scan queue's callback and what a reaction does. Main thread only (it is
the one thread that touches the engine), so nothing here takes a lock.

Most packets take the lean path: the engine's process_raw answers PASS/IGNORE/COUNT/DROP with a
small int (``lean_code(action, proto)``), turned into the verdict by one table lookup
(``lean_verdicts``, built from the configuration); only reactions come back as a Decision
(:meth:`Verdicts.decided`): a block goes into the kernel set through the ledger right after the
verdict, and the reports go to the worker. Counters written: ``Counters.main``.

Kernel-side block (``[response] kernel_block``): the rule that queued a first probe may have put
its source into the blocked set already (nft/render.py, 6a). When the engine blocks it too, the
ledger's block records it (and sets the escalated time); when the engine does not (a valve
refused it, it narrowed it, the source is ignored or expected, the checksum is bad), the element
is withdrawn: collected here, removed by :meth:`Verdicts.withdraw_pending` at the start of the
main thread's next duties (one transaction for a batch), unless a block of it was made meanwhile.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from nfsentry.config.derive import kernel_block
from nfsentry.core.addrs import mask, network_text
from nfsentry.core.engine import LEAN_CODES, Action, lean_code
from nfsentry.core.packet import decode
from nfsentry.core.valves import Admit
from nfsentry.daemon.counters import Part

# Kernel-side blocks to withdraw are removed in one transaction once this many wait, or at the
# main thread's next duties (within 0.2 s when the queue is idle, 1 s when busy): under a spoofed
# flood the valves refuse, one nft transaction per packet would slow the verdict loop to a crawl.
WITHDRAW_BATCH = 64


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
        # seconds from a packet's callback to its verdict and reaction done, sampled: the packet in
        # hand when the duties are due (~1/s under load); the metrics take them (popleft)
        self.loop_samples: collections.deque = collections.deque(maxlen=4096)
        self._valve_alerts: collections.deque = collections.deque()  # alerts reported for refused blocks
        self._valve_warned = -1e9
        self._valve_refused = 0
        self.withdrawals: dict[str, None] = {}  # kernel-side blocks to withdraw (ordered, no repeats)
        self.build_lean_verdicts()

    def on_packet(self, p) -> None:
        """Exactly one verdict per packet, whatever fails; then, when the control thread, a signal
        or the 1 s ticker asked for it, the main thread's other duties, so they also run during a
        flood that keeps the queue busy (run() never returns then). This is the per-packet cost:
        keep it flat."""
        self.counts["queued"] += 1
        now = time.time()
        try:
            raw = p.get_payload()
            r = self.engine.process_raw(raw, now)
        except Exception as e:
            self.failed(p, e, False)
        else:
            if r.__class__ is int:
                v = self.lean_verdicts[r]
                try:
                    if v:
                        if v & 1:
                            p.drop()
                            if v & 2:
                                self.counts["dropped_by_verdict"] += 1
                        else:
                            p.accept()
                        if v & 4:
                            self.not_blocked_here(decode(raw), False)
                    else:
                        p.accept()
                except Exception as e:
                    self.failed(p, e, False)
            else:
                self.decided(p, r)
        if self.pending:  # about once a second under load (the ticker): this packet's time is the sample
            self.loop_samples.append(time.time() - now)
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
            if self.kb is not None:
                self.not_blocked_here(d.packet, False)
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
        proto)``): bits: 1 drop (else accept), 2 count it in ``dropped_by_verdict``. PASS and
        IGNORE accept; COUNT gets ``probe_verdict``; DROP (a source already blocked, still in the
        queue) is dropped when the kernel blocks that protocol, else gets ``probe_verdict``. Plus 4:
        the kernel may have blocked the source from the queueing rule (PASS, IGNORE, COUNT of a
        protocol it does that for): :meth:`not_blocked_here` checks. Rebuilt on reload."""
        cfg = self.d.cfg
        self.kb = kernel_block(cfg)
        probe = 1 if cfg["response"]["probe_verdict"] == "drop" else 0
        table = bytearray(LEAN_CODES)
        for proto in range(256):
            table[lean_code(Action.COUNT, proto)] = probe
            table[lean_code(Action.DROP, proto)] = 3 if self.kernel_blocks(proto) else probe
            if self.kb is not None and ((proto == 6 and self.kb.tcp_flags) or (proto == 17 and self.kb.udp)):
                for action in (Action.PASS, Action.IGNORE, Action.COUNT):
                    table[lean_code(action, proto)] |= 4
        self.lean_verdicts = bytes(table)
        self.kb_tcp = frozenset(self.kb.tcp_flags) if self.kb else frozenset()

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

    def not_blocked_here(self, pkt, narrowed: bool) -> None:
        """The engine did not block ``pkt``'s source as the kernel's first-probe rule does (6a):
        if that rule matched this packet, its element is withdrawn (soon, see withdraw_pending).
        IPv4: the address; IPv6: its /prefix, and the address alone unless the engine blocked
        exactly that (``narrowed``): the kernel's near-never-block set decides which it added."""
        kb = self.kb
        if kb is None or pkt.malformed is not None or pkt.frag_offset:
            return
        if not ((pkt.proto == 6 and pkt.flags in self.kb_tcp) or (pkt.proto == 17 and kb.udp)):
            return
        src = pkt.src
        if len(src) == 4:
            self.withdrawals[network_text(src, 32)] = None
        elif len(src) == 16:
            v6p = self.engine.cfg.ipv6_prefix
            self.withdrawals[network_text(mask(src, v6p), v6p)] = None
            if not narrowed and v6p < 128:
                self.withdrawals[network_text(src, 128)] = None
        else:
            return
        if len(self.withdrawals) >= WITHDRAW_BATCH:  # else the next duties (0.2 s idle, 1 s busy) do it
            self.pending = True

    def withdraw_pending(self) -> None:
        """Main thread, first of its duties: remove the kernel-side blocks the engine disagreed
        with, except those blocked since (by the engine or by hand: both run on this thread)."""
        if not self.withdrawals:
            return
        nets, self.withdrawals = list(self.withdrawals), {}
        now = time.time()
        nets = [n for n in nets if not self.engine.is_blocked(n, now)]
        if not nets:
            return
        try:
            self.d.ledger.withdraw(nets)
        except Exception as e:
            self.internal_error("nft withdraw", e)
            return
        self.counts["kernel_blocks_withdrawn"] += len(nets)

    def block_now(self, d) -> None:
        """The source goes into the kernel set now (the verdict is already given). The engine
        consulted the safety valves before it recorded the block (core.valves): the decision is
        already narrowed, or turned into an alert (``d.valve`` is a Refused)."""
        if d.valve is not None and d.valve.__class__ is not Admit:
            if self.kb is not None:
                self.not_blocked_here(d.packet, False)
            self.not_blocked(d, d.valve)
            return
        if d.valve is not None and self.kb is not None:  # narrowed to the address: not its network
            self.not_blocked_here(d.packet, True)
        if self.withdrawals:  # first free the room refused kernel-side blocks hold in a sized set
            self.withdraw_pending()
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
