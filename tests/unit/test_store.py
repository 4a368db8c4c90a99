"""SQLite persistence: blocks, offenders, history, permissions, corruption handling."""

from __future__ import annotations

import os
import stat
import time

import pytest

from nfsentry.sinks.store import Store, StoreCorrupt, move_aside


def ev(net, ts, expires=None, offences=1, event="block"):
    return {
        "ts": ts,
        "event": event,
        "network": net,
        "src": net,
        "reason": "test",
        "labels": ["SYN"],
        "ports": [22],
        "expires": expires,
        "offences": offences,
    }


def test_blocks_round_trip_and_expiry(tmp_path):
    s = Store(tmp_path / "state" / "db.sqlite")
    now = time.time()
    s.add_block(ev("198.18.0.2", now, now + 3600))
    s.add_block(ev("2001:db8:1::/64", now, None, offences=3))
    s.add_block(ev("198.18.0.9", now - 100, now - 1))
    active = {b["network"]: b for b in s.blocks(now)}
    assert set(active) == {"198.18.0.2", "2001:db8:1::/64"}
    assert active["198.18.0.2"]["labels"] == ["SYN"] and active["198.18.0.2"]["ports"] == [22]
    assert active["2001:db8:1::/64"]["expires"] is None and active["2001:db8:1::/64"]["family"] == 6
    assert [b["network"] for b in s.expired_blocks(now)] == ["198.18.0.9"]
    assert {o["network"]: o["offences"] for o in s.offenders()}["2001:db8:1::/64"] == 3
    assert s.remove_block("198.18.0.2") and not s.remove_block("198.18.0.2")
    assert sorted(s.remove_all_blocks()) == ["198.18.0.9", "2001:db8:1::/64"]
    assert s.blocks(now, include_expired=True) == []


def test_upsert_refreshes_and_offenders_only_grow(tmp_path):
    s = Store(tmp_path / "db")
    s.add_block(ev("198.18.0.2", 1.0, 10.0, offences=2))
    s.add_block(ev("198.18.0.2", 5.0, 50.0, offences=1))
    (b,) = s.blocks(0)
    assert b["expires"] == 50.0 and b["first_seen"] == 1.0
    assert s.offenders()[0]["offences"] == 2
    s.forget_offender("198.18.0.2")
    assert s.offenders() == []


def test_history_filters(tmp_path):
    s = Store(tmp_path / "db")
    for i, src in enumerate(["198.18.0.2", "198.18.0.3", "198.18.0.2"]):
        s.add_history(
            {
                "ts": 100.0 + i,
                "event": "detection",
                "src": src,
                "network": src,
                "proto": "tcp",
                "port": 22 + i,
                "label": "SYN",
                "action": "block",
            }
        )
    assert [h["port"] for h in s.history()] == [22, 23, 24]
    assert [h["port"] for h in s.history(source="198.18.0.2")] == [22, 24]
    assert [h["port"] for h in s.history(since=101.5)] == [24]


def test_files_are_private(tmp_path):
    d = tmp_path / "state"
    Store(d / "nfsentry.db").add_block(ev("198.18.0.2", 1.0))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / "nfsentry.db").st_mode) == 0o600


def test_survives_a_crash_of_the_writer(tmp_path):
    """Committed blocks are on disk for the next process even if the writer never closes."""
    import subprocess
    import sys

    db = tmp_path / "db"
    code = f"""
import os, sys
sys.path.insert(0, {str(os.getcwd())!r})
from nfsentry.sinks.store import Store
s = Store({str(db)!r})
s.add_block({{"ts": 1.0, "event": "block", "network": "198.18.0.7", "expires": None}})
os._exit(9)
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert [b["network"] for b in Store(db).blocks(0)] == ["198.18.0.7"]


def test_corrupt_file_is_detected_and_moved_aside(tmp_path):
    db = tmp_path / "db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreCorrupt, match="corrupt"):
        Store(db)
    dest = move_aside(db)
    assert dest.exists() and not db.exists() and "corrupt" in dest.name
    assert Store(db).blocks(0) == []
