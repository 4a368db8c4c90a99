"""[storage] history_days: old history rows are deleted off the packet path (the worker, in short
transactions) and their space given back (incremental vacuum, or one VACUUM for a database made
before); the key is validated like every other."""

from __future__ import annotations

import queue
import sqlite3
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from nfsentry.cli.app import app
from nfsentry.config import schema as C
from nfsentry.daemon import worker as W
from nfsentry.daemon.counters import Counters
from nfsentry.sinks.store import SCHEMA, Store

DAY = 86400.0


def fill(db_path, old: int, recent: int, now: float) -> None:
    """``old`` rows 100 to 200 days old, ``recent`` rows under 89 days old, with a realistic
    payload, written straight with sqlite3 (one transaction), plus a block and an offender."""
    db = sqlite3.connect(db_path)
    detail = '{"event": "detection", "reason": "' + "x" * 300 + '"}'
    rows = [
        (now - 100 * DAY - i * 60, "detection", f"198.18.{i % 250}.{i % 200}", "198.18.0.0", "tcp", 22, "SYN", "block", detail)
        for i in range(old)
    ]
    rows += [(now - i * 600, "detection", "198.19.0.1", "198.19.0.1", "tcp", 22, "SYN", "block", detail) for i in range(recent)]
    db.executemany("INSERT INTO history(ts, event, src, network, proto, port, label, action, detail) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    db.execute("INSERT OR IGNORE INTO blocks(network, family, created, expires) VALUES ('198.18.7.7', 4, ?, NULL)", (now - 300 * DAY,))
    db.execute("INSERT OR IGNORE INTO offenders(network, offences, last) VALUES ('198.18.7.7', 3, ?)", (now - 300 * DAY,))
    db.commit()
    db.close()


def file_bytes(path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_prune_deletes_only_older_rows_in_batches_and_gives_the_space_back(tmp_path):
    path = tmp_path / "nfsentry.db"
    now = time.time()
    s = Store(path)
    fill(path, old=20_000, recent=500, now=now)
    s.reclaim()  # the WAL checkpointed: the file holds everything
    before = file_bytes(path)
    cutoff = now - 90 * DAY
    assert s.history_count(cutoff) == 20_000
    batches = []
    while True:
        n = s.prune_history(cutoff, 5000)
        batches.append(n)
        if n < 5000:
            break
    assert batches == [5000, 5000, 5000, 5000, 0]
    assert s.history_count(cutoff) == 0 and s.history_count() == 500
    assert {r[0] for r in s.db.execute("SELECT src FROM history")} == {"198.19.0.1"}
    assert [b["network"] for b in s.blocks()] == ["198.18.7.7"] and s.offenders()[0]["offences"] == 3  # blocks are not history
    assert s.reclaim() == "incremental"  # a database this version made frees pages as it goes
    assert s.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    after = file_bytes(path)
    assert after < before / 5, (before, after)
    s.close()


def test_a_database_made_before_is_vacuumed_once_then_incremental(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # as an earlier version made it: no auto_vacuum
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA)
    old.close()
    now = time.time()
    fill(path, old=3000, recent=10, now=now)
    s = Store(path)
    assert s.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    before = file_bytes(path)
    assert s.prune_history(now - 90 * DAY) == 3000
    assert s.reclaim() == "vacuum"
    assert s.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2 and s.history_count() == 10
    assert file_bytes(path) < before / 5
    assert s.reclaim() == "incremental"
    s.close()


def worker_for(tmp_path, days: int):
    cfg = C.validate({"storage": {"state_dir": str(tmp_path), "history_days": days}})
    d = SimpleNamespace(cfg=cfg, counters=Counters(), events=queue.Queue())
    w = W.Worker(d)
    w.store = Store(cfg.db_path)
    return w


def run_pass(w) -> None:
    """What the worker's loop does: call prune_history whenever it is due, until the pass ends."""
    deadline = time.monotonic() + 120
    w._next_prune = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= w._next_prune:
            w.prune_history()
        if w._next_prune > time.monotonic() + W.PRUNE_INTERVAL / 2:
            return
    raise AssertionError("the pruning pass did not end")


def test_the_worker_prunes_in_slices_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "PRUNE_BATCH", 1000)
    w = worker_for(tmp_path, 90)
    now = time.time()
    fill(w.store.path, old=12_345, recent=7, now=now)
    run_pass(w)
    assert w.store.history_count() == 7 and w.counts["history_pruned"] == 12_345
    # a slice ends after PRUNE_SLICE seconds with more left: the loop serves events and comes back
    monkeypatch.setattr(W, "PRUNE_SLICE", 0.0)
    fill(w.store.path, old=2500, recent=0, now=now)
    w._next_prune = 0.0
    w.prune_history()
    assert w.store.history_count() == 7 + 1500 and 0 < w._next_prune <= time.monotonic()
    run_pass(w)
    assert w.store.history_count() == 7 and w.counts["history_pruned"] == 12_345 + 2500
    w.store.close()


def test_zero_keeps_everything_and_a_storage_fault_waits(tmp_path):
    w = worker_for(tmp_path, 0)
    fill(w.store.path, old=100, recent=1, now=time.time())
    run_pass(w)
    assert w.store.history_count() == 101 and w.counts["history_pruned"] == 0
    w.d.cfg = C.validate({"storage": {"state_dir": str(tmp_path), "history_days": 90}})  # a reload
    w.pending_store.append(("history", {}))  # storage faulty: writes wait, pruning too
    run_pass(w)
    assert w.store.history_count() == 101
    w.pending_store.clear()
    run_pass(w)
    assert w.store.history_count() == 1
    w.store.close()


@pytest.mark.parametrize(
    "value, fragment",
    [("-1", "[storage] history_days: -1 outside 0-36500"), ("40000", "outside 0-36500"), ('"90d"', "expected an integer")],
)
def test_history_days_is_validated_one_line_exit_2(tmp_path, value, fragment):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[storage]\nstate_dir = "{tmp_path}/state"\nhistory_days = {value}\n')
    with pytest.raises(C.ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        C.load(conf)
    res = CliRunner().invoke(app, ["config", "check", str(conf)])
    assert res.exit_code == 2 and fragment in res.stderr and res.stderr.count("\n") == 1, (res.exit_code, res.stderr)
    assert C.validate({"storage": {"history_days": 0}})["storage"]["history_days"] == 0
    assert C.defaults()["storage"]["history_days"] == 90
