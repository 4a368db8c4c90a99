"""`nfsentry stats` over a history database of 1,000,000 rows.

Standalone (``python bench/bench_stats.py [ROWS]``; ``bench/run.py`` runs it with the others).
Prints its figures; timings are never asserted anywhere. Takes about 3-4 minutes (most of it
building the databases; nothing is written outside a temporary directory).

Two databases of ROWS history rows (default 1,000,000; 95 % detections, 5 % blocks; 65,536
IPv4 sources; 8 labels; 7 favourite ports plus random ones), written through ``Store.add_history``
in one transaction:

* ``week``: every row within the last 7 days (the worst case: every row is in the window that
  `stats` counts by default);
* ``quarter``: rows spread over 90 days (the default retention), about 1/13 of them in the week.

For each: ``stats.compute`` (every figure: 24 hourly and 7 daily counts of detections and blocks,
the totals, top sources, ports and labels), cold (first run after opening the database) and warm
(median of 5 runs), in wall time; and the time of each query kind alone. Also the cost of the
``history_event_*`` indexes at insert time (rows per second written with and without them).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nfsentry.cli import stats as S  # noqa: E402
from nfsentry.sinks.store import Store  # noqa: E402

LABELS = ["SYN"] * 8 + ["FIN", "NULL", "XMAS", "UDP", "ACK", "MAIMON"]
PORTS = [22, 23, 80, 443, 3389, 8080, 445]


def fill(path: Path, rows: int, span: float, now: float, indexes: bool = True) -> float:
    """Write ``rows`` rows spread over ``span`` seconds before ``now``; returns rows per second."""
    s = Store(path)
    if not indexes:
        for name in ("history_event_ts", "history_event_src", "history_event_label", "history_event_port"):
            s.db.execute(f"DROP INDEX {name}")
    rnd = random.Random(1)
    t0 = time.perf_counter()
    s.db.execute("BEGIN")
    for i in range(rows):
        label = rnd.choice(LABELS)
        src = f"198.18.{rnd.randrange(256)}.{rnd.randrange(256)}"
        s.add_history(
            {
                "ts": now - rnd.random() * span,
                "event": "block" if i % 20 == 0 else "detection",
                "src": src,
                "network": src,
                "proto": "udp" if label == "UDP" else "tcp",
                "port": rnd.choice(PORTS) if rnd.random() < 0.8 else rnd.randrange(1, 1024),
                "label": label,
                "action": "block",
                "reason": "scan_trigger 0 reached",
            }
        )
    s.db.execute("COMMIT")
    rate = rows / (time.perf_counter() - t0)
    s.close()
    return rate


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(path: Path, now: float) -> None:
    s = Store(path, readonly=True)
    cold = timed(lambda: S.compute(s, now))
    warm = statistics.median(timed(lambda: S.compute(s, now)) for _ in range(5))
    st = S.compute(s, now)
    since = st["since"]
    parts = {
        "counting the week's detections and blocks": timed(lambda: [s.count_events(e, [(since, now)]) for e in ("detection", "block")]),
        "top sources": timed(lambda: s.top_detections("src", since, now)),
        "top ports": timed(lambda: s.top_detections("port", since, now)),
        "top labels": timed(lambda: s.top_detections("label", since, now)),
    }
    s.close()
    print(f"  {st['detections']:,} detections and {st['blocks']:,} blocks in the 7 days")
    print(f"  stats.compute: cold {cold:.3f} s, warm {warm:.3f} s (median of 5)")
    print("  " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="nfsentry-bench-stats-") as tmp:
        results = {}
        for name, span in (("week", 7 * 86400.0), ("quarter", 90 * 86400.0)):
            path = Path(tmp) / f"{name}.db"
            rate = fill(path, rows, span, now)
            results[name] = rate
            print(f"{name}: {rows:,} rows over {span / 86400:.0f} days (written at {rate:,.0f} rows/s with the stats indexes)")
            measure(path, now)
            path.unlink()
        bare = fill(Path(tmp) / "bare.db", min(rows, 200_000), 7 * 86400.0, now, indexes=False)
        print(f"insert cost of the stats indexes: {bare:,.0f} rows/s without them, {results['week']:,.0f} with")
        print(json.dumps({"rows": rows, "insert_rows_per_s": {"with_indexes": round(results["week"]), "without": round(bare)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
