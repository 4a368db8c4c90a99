"""The daemon's counters, one dict per writing thread, and what every thread's part shares.

No lock anywhere, on the packet path or elsewhere: each dict is written by one thread only, so an
increment (``d[k] += 1``, a read then a write) can never lose another thread's increment. The
status request (control thread) reads them and sums them; every key exists from the start, so a
dict never grows while it is copied.

Who writes what:

- ``main`` (the scan queue's callback, control commands, duties): queued, dropped_by_verdict,
  detections, blocks, blocks_manual, blocks_narrowed, blocks_rate_limited, blocks_capped, never_block_refused,
  kernel_blocks_withdrawn, alerts_suppressed, errors, events_lost.
- ``ftp`` (the FTP queue's thread): ftp_packets, ftp_expectations, ftp_reports,
  ftp_reports_suppressed, errors, events_lost.
- ``worker`` (the worker thread): storage_errors, storage_dropped, never_block_refreshes,
  ruleset_restored, blocks_expired, history_pruned, errors.
- ``nflog`` (the NFLOG thread, [monitor] before_input): nflog_packets, nflog_lost, errors,
  events_lost.

``blocks`` counts every block made (the packet path's and those asked for through the control
socket); ``blocks_manual`` the latter (``nfsentry block``, ``block -f``).

One breakdown for the metrics (:mod:`metrics`), written by the worker thread only, as it reports
the detections (a new key appears there; a reader copies the dict, which CPython does under the
GIL in one step): ``detections_by`` {(label, proto): detections reported} (the ``detections``
count less ``alerts_suppressed`` and the events lost).
"""

from __future__ import annotations

import queue
import time
from typing import Any

MAIN = (
    "queued",
    "dropped_by_verdict",
    "detections",
    "blocks",
    "blocks_manual",
    "blocks_narrowed",
    "blocks_rate_limited",
    "blocks_capped",
    "never_block_refused",
    "kernel_blocks_withdrawn",
    "alerts_suppressed",
    "errors",
    "events_lost",
)
FTP = ("ftp_packets", "ftp_expectations", "ftp_reports", "ftp_reports_suppressed", "errors", "events_lost")
WORKER = ("storage_errors", "storage_dropped", "never_block_refreshes", "ruleset_restored", "blocks_expired", "history_pruned", "errors")
NFLOG = ("nflog_packets", "nflog_lost", "errors", "events_lost")


class Counters:
    """``main``, ``ftp``, ``worker``, ``nflog``: each written by its thread only. ``counters[key]``
    and :meth:`total` give the sums, for status and tests."""

    __slots__ = ("main", "ftp", "worker", "nflog", "detections_by")

    def __init__(self) -> None:
        self.main = dict.fromkeys(MAIN, 0)
        self.ftp = dict.fromkeys(FTP, 0)
        self.worker = dict.fromkeys(WORKER, 0)
        self.nflog = dict.fromkeys(NFLOG, 0)
        self.detections_by: dict[tuple[str, str], int] = {}

    def total(self) -> dict[str, int]:
        out = dict.fromkeys(MAIN + FTP + WORKER + NFLOG, 0)
        for part in (self.main, self.ftp, self.worker, self.nflog):
            for k, v in part.copy().items():
                out[k] += v
        return out

    def __getitem__(self, key: str) -> int:
        return self.total()[key]


class Part:
    """One thread's part of the daemon: its own counters dict (``counts``), and what it hands the
    worker (``enqueue``) or reports (``internal_error``, at most one log line per 10 s daemon-wide)."""

    def __init__(self, daemon: Any, counts: dict[str, int]) -> None:
        self.d = daemon
        self.counts = counts
        self.events: queue.Queue = daemon.events

    def enqueue(self, kind: str, obj: Any, **extra: Any) -> None:
        try:
            self.events.put_nowait((kind, obj, extra))
        except queue.Full:
            self.counts["events_lost"] += 1

    def internal_error(self, where: str, e: Exception) -> None:
        self.counts["errors"] += 1
        now = time.monotonic()
        if now - self.d.last_error_log > 10:
            self.d.last_error_log = now
            self.enqueue(
                "warning", {"message": f"internal error in {where}: {type(e).__name__}: {e} (errors so far: {self.d.counters['errors']})"}
            )
