"""The FTP control queue (queue 1): its receive loop and callback run in the ``nfsentry-ftp``
thread. It feeds the FTP tracker and adds the expectations it announces, to the kernel set and to
the engine's table (:class:`LockedExpectations`, the one object shared with the main thread, under a
lock the engine skips while the table is empty). Reports go to the worker. It never touches the
engine itself. Counters written: ``Counters.ftp``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from typing import Any

from nfsentry.core.ftp import ExpectationTable, FtpTracker
from nfsentry.core.packet import decode
from nfsentry.daemon.counters import Part

log = logging.getLogger("nfsentry")

_U32 = struct.Struct("!I")
FTP_REPORT_WINDOW = 10.0  # seconds
FTP_REPORTS_PER_WINDOW = 20  # FTP tracker reports logged per window; the rest only counted


class LockedExpectations:
    """The FTP thread adds expectations while the engine (main thread) matches them. An empty
    table (the usual case) answers without taking the lock."""

    __slots__ = ("table", "lock", "pending")

    def __init__(self, table) -> None:
        self.table = table
        self.lock = threading.Lock()
        self.pending = table.pending  # the table's live dict: the engine's lock-free emptiness test

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


class FtpQueue(Part):
    def __init__(self, daemon: Any) -> None:
        super().__init__(daemon, daemon.counters.ftp)
        self.ftp = FtpTracker()
        self.expectations = LockedExpectations(ExpectationTable())
        self._report_budget, self._report_reset, self._suppressed = FTP_REPORTS_PER_WINDOW, 0.0, 0

    def run(self, q) -> None:
        """The FTP thread: the queue's blocking receive loop (returns every 0.2 s when idle)."""
        while not self.d.stop_flag:
            try:
                q.run(block=True)
            except OSError as e:
                self.internal_error("ftp queue", e)
                time.sleep(0.01)

    def on_packet(self, p) -> None:
        """An FTP control segment with payload. The verdict comes first (the tracker never holds
        FTP traffic); a data-connection SYN racing the kernel set waits in queue 0 until this
        returns, and by then the engine's ExpectationTable knows it."""
        try:
            self.counts["ftp_packets"] += 1
            raw = p.get_payload()  # valid until the callback returns, verdict or not
            pkt = decode(raw)
            off = pkt.payload_offset
            if pkt.malformed or pkt.proto != 6 or pkt.frag_offset or pkt.more_frags or off >= len(raw):
                return
            # The TCP sequence number (header = 20 bytes + options, right before the payload) lets
            # the tracker drop retransmitted bytes of a line split across segments.
            seq = _U32.unpack_from(raw, off - 16 - len(pkt.tcp_options))[0]
            events = self.ftp.feed(pkt.src, pkt.dst, pkt.sport, pkt.dport, raw[off:], time.time(), seq)
            for ev in events:
                self.on_event(ev)
        except Exception as e:
            self.internal_error("ftp packet", e)
        finally:
            p.accept()  # after the expectation is recorded: the peer cannot race it

    def on_event(self, ev) -> None:
        if ev.kind == "expectation":
            # One pending expectation per control connection: what it supersedes leaves the kernel
            # set in the same transaction.
            removed = self.expectations.add(ev)
            self.counts["ftp_expectations"] += 1
            try:
                self.d.nft.expect_ftp(
                    ev.peer_text,
                    ev.addr_text,
                    ev.port,
                    ev.timeout(time.time()),
                    remove=[(o.peer_text, o.addr_text, o.port) for o in removed if o.key != ev.key],
                )
            except Exception as e:
                self.internal_error("ftp expectation", e)
            if log.isEnabledFor(logging.DEBUG):
                self.enqueue("ftp_debug", ev)
            return
        # A report (bounce, 227 naming another address, malformed or oversized line): an event
        # (JSON, syslog, history) built in the worker; at most FTP_REPORTS_PER_WINDOW per window
        # so a hostile peer cannot flood the logs.
        now = time.monotonic()
        if now >= self._report_reset:
            self._report_reset, self._report_budget = now + FTP_REPORT_WINDOW, FTP_REPORTS_PER_WINDOW
        if self._report_budget <= 0:
            self.counts["ftp_reports_suppressed"] += 1
            self._suppressed += 1
            return
        self._report_budget -= 1
        self.counts["ftp_reports"] += 1
        self.enqueue("ftp", ev, suppressed=self._suppressed)
        self._suppressed = 0

    def status(self) -> dict[str, Any]:
        return {
            "tracker": dict(self.ftp.stats),
            "flows": len(self.ftp),
            "pending": len(self.expectations),
            "expectations": dict(self.expectations.stats),
        }
