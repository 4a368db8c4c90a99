"""History retention ([storage] history_days): what a pruning pass costs the worker thread.

A database with ROWS history rows (OLD_SHARE of them older than the cutoff, with a realistic JSON
detail) is pruned the way the worker does it (PRUNE_BATCH rows a transaction), then the space is
given back (incremental vacuum + WAL checkpoint). Reported: rows a second, the longest single
transaction (how long the worker holds the write lock: events wait at most a slice plus this),
the reclaim time and the file size before and after. Runs in a temporary directory.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from nfsentry.daemon.worker import PRUNE_BATCH
from nfsentry.sinks.store import Store

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
OLD_SHARE = 0.9
DAY = 86400.0


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nfsentry.db"
        now = time.time()
        Store(path).close()  # the schema as the daemon makes it (auto_vacuum incremental)
        db = sqlite3.connect(path)
        old = int(ROWS * OLD_SHARE)
        t0 = time.monotonic()
        for start in range(0, ROWS, 100_000):
            rows = []
            for i in range(start, min(ROWS, start + 100_000)):
                ts = now - 200 * DAY + i if i < old else now - (i - old)
                src = f"198.18.{i % 256}.{(i // 256) % 256}"
                detail = f'{{"ts": {ts}, "event": "detection", "src": "{src}", "proto": "tcp", "port": 22, "label": "SYN", "reason": "scan_trigger 0 reached"}}'
                rows.append((ts, "detection", src, src, "tcp", 22, "SYN", "block", detail))
            db.executemany(
                "INSERT INTO history(ts, event, src, network, proto, port, label, action, detail) VALUES (?,?,?,?,?,?,?,?,?)", rows
            )
            db.commit()
        db.close()
        s = Store(path)
        s.reclaim()
        before = size(path)
        print(f"built {ROWS:,} rows ({old:,} older than the cutoff) in {time.monotonic() - t0:.1f}s, {before / 1e6:.1f} MB")
        cutoff = now - 90 * DAY
        longest, total, batches = 0.0, 0, 0
        t0 = time.monotonic()
        while True:
            b0 = time.monotonic()
            n = s.prune_history(cutoff, PRUNE_BATCH)
            longest = max(longest, time.monotonic() - b0)
            total += n
            batches += 1
            if n < PRUNE_BATCH:
                break
        prune_s = time.monotonic() - t0
        t0 = time.monotonic()
        how = s.reclaim()
        reclaim_s = time.monotonic() - t0
        after = size(path)
        left = s.history_count()
        s.close()
        if total != old or left != ROWS - old:
            print(f"wrong result: deleted {total}, left {left}")
            return 1
        print(
            f"pruned {total:,} rows in {prune_s:.2f}s ({total / prune_s:,.0f} rows/s, {batches} transactions of {PRUNE_BATCH}); "
            f"longest transaction {longest * 1000:.0f} ms"
        )
        print(f"reclaim ({how}) {reclaim_s:.2f}s; file {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
