"""Persistence: SQLite in WAL mode for current blocks, offenders and the attack history.

The kernel's blocked sets are authoritative while nfsentry runs; the database is what survives a
restart (and a ``kill -9``: every block is committed before it is reported in a log line). The
state directory is created 0700 and the database file 0600.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    network    TEXT PRIMARY KEY,
    family     INTEGER NOT NULL,
    src        TEXT,
    reason     TEXT,
    labels     TEXT,          -- JSON list
    ports      TEXT,          -- JSON list
    first_seen REAL,
    created    REAL NOT NULL,
    expires    REAL,          -- NULL = until unblocked
    offences   INTEGER NOT NULL DEFAULT 1,
    origin     TEXT NOT NULL DEFAULT 'auto'   -- auto | manual | kernel
);
CREATE TABLE IF NOT EXISTS offenders (
    network  TEXT PRIMARY KEY,
    offences INTEGER NOT NULL,
    last     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    event   TEXT NOT NULL,
    src     TEXT,
    network TEXT,
    proto   TEXT,
    port    INTEGER,
    label   TEXT,
    action  TEXT,
    detail  TEXT           -- the whole event as JSON
);
CREATE INDEX IF NOT EXISTS history_ts ON history(ts);
CREATE INDEX IF NOT EXISTS history_src ON history(src);
-- `nfsentry stats`: each figure is read from one of these indexes alone, in its order (no table
-- lookups, no sorting of the rows), so a million rows take well under a second (bench/bench_stats.py)
CREATE INDEX IF NOT EXISTS history_event_ts ON history(event, ts);
CREATE INDEX IF NOT EXISTS history_event_src ON history(event, src, ts);
CREATE INDEX IF NOT EXISTS history_event_label ON history(event, label, ts);
CREATE INDEX IF NOT EXISTS history_event_port ON history(event, proto, port, ts);
CREATE INDEX IF NOT EXISTS blocks_expires ON blocks(expires);
-- fleet (CrowdSec LAPI): the pulled blocks in force in the fleet sets (restored at start, even
-- with the LAPI down), the blocks waiting to be pushed (in order), the decisions lifted here only
CREATE TABLE IF NOT EXISTS fleet_blocks (
    network     TEXT PRIMARY KEY,
    family      INTEGER NOT NULL,
    expires     REAL NOT NULL,
    created     REAL NOT NULL,
    decision_id INTEGER,
    origin      TEXT,          -- the decision's origin ("nfsentry/host2", "cscli", ...)
    machine     TEXT,          -- the pushing machine when known
    scenario    TEXT,
    scope       TEXT
);
CREATE TABLE IF NOT EXISTS fleet_outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    network TEXT NOT NULL,
    expires REAL,              -- NULL = until unblocked
    event   TEXT NOT NULL      -- the block event as JSON
);
CREATE TABLE IF NOT EXISTS fleet_lifted (
    decision_id INTEGER PRIMARY KEY,
    network     TEXT NOT NULL,
    ts          REAL NOT NULL
);
"""


class StoreError(Exception):
    """A storage fault (locked, disk full, I/O error); the message is one line."""


class StoreCorrupt(StoreError):
    """The database file is not a usable nfsentry database."""


def _secure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except PermissionError:
        pass


class Store:
    """One connection; not shared between threads (the daemon's worker thread owns one)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            try:
                _secure_dir(self.path.parent)
                if not self.path.exists():
                    fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
            except OSError as e:  # read-only file system, no space, a file where the directory should be
                raise StoreError(f"{self.path}: {e.strerror or e}") from None
        try:
            uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
            self.db = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreCorrupt(f"{self.path}: database is corrupt ({ok})")
            if not readonly:
                # a new database frees pages as it goes (history retention: reclaim); set before any table
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
            for suffix in ("-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    try:
                        os.chmod(p, 0o600)
                    except OSError:
                        pass
        except sqlite3.DatabaseError as e:
            msg = str(e)
            if _is_corruption(msg):
                raise StoreCorrupt(f"{self.path}: database is corrupt ({msg})") from None
            raise StoreError(f"{self.path}: {msg}") from None
        try:
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
        except OSError:
            self._identity = None

    def damaged(self) -> bool:
        """Was the file overwritten or truncated behind SQLite's back (no SQLite header)? SQLite
        itself may not notice for a long time: its cache and the WAL still hold the data."""
        if self.readonly:
            return False
        try:
            with open(self.path, "rb") as f:
                return f.read(16) != b"SQLite format 3\x00"
        except OSError:
            return True

    def replaced(self) -> bool:
        """Is the file at our path gone or another file than the one we have open (deleted,
        renamed or replaced while running)? Writes would then land in an unreachable inode."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    # -- helpers -----------------------------------------------------------------------------
    def _run(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, tuple(args))
        except sqlite3.DatabaseError as e:
            if _is_corruption(str(e)):
                raise StoreCorrupt(f"{self.path}: database is corrupt ({e})") from None
            raise StoreError(f"{self.path}: {e}") from None

    def _many(self, sql: str, rows: list[tuple]) -> None:
        """One statement for many rows (one call into sqlite3: 10,000 pulled blocks in one go)."""
        if not rows:
            return
        try:
            self.db.executemany(sql, rows)
        except sqlite3.DatabaseError as e:
            if _is_corruption(str(e)):
                raise StoreCorrupt(f"{self.path}: database is corrupt ({e})") from None
            raise StoreError(f"{self.path}: {e}") from None

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    # -- blocks ------------------------------------------------------------------------------
    def add_block(self, ev: dict[str, Any]) -> None:
        """Insert or refresh a block from an event dict (see docs/DESIGN.md)."""
        self._run(
            "INSERT INTO blocks(network, family, src, reason, labels, ports, first_seen, created, expires, offences, origin)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(network) DO UPDATE SET reason=coalesce(excluded.reason, reason), labels=excluded.labels, ports=excluded.ports,"
            " created=excluded.created, expires=excluded.expires, offences=excluded.offences, origin=excluded.origin",
            (
                ev["network"],
                ev.get("family", 6 if ":" in ev["network"] else 4),
                ev.get("src"),
                ev.get("reason", ""),
                json.dumps(ev.get("labels", [])),
                json.dumps(ev.get("ports", [])),
                ev.get("first_seen", ev["ts"]),
                ev["ts"],
                ev.get("expires"),
                ev.get("offences", 1),
                ev.get("origin", "auto"),
            ),
        )
        if ev.get("offences"):
            self._run(
                "INSERT INTO offenders(network, offences, last) VALUES (?,?,?)"
                " ON CONFLICT(network) DO UPDATE SET offences=max(offences, excluded.offences), last=excluded.last",
                (ev["network"], ev["offences"], ev["ts"]),
            )

    def add_blocks(self, events: list[dict[str, Any]], history: bool = False) -> None:
        """Many blocks in one transaction (restore, bulk block); ``history``: each with its history row."""
        self._run("BEGIN")
        try:
            for ev in events:
                self.add_block(ev)
                if history:
                    self.add_history(ev)
            self._run("COMMIT")
        except BaseException:
            self._run("ROLLBACK")
            raise

    def remove_block(self, network: str) -> bool:
        return self._run("DELETE FROM blocks WHERE network = ?", (network,)).rowcount > 0

    def remove_all_blocks(self) -> list[str]:
        nets = [r["network"] for r in self._run("SELECT network FROM blocks")]
        self._run("DELETE FROM blocks")
        return nets

    def forget_offender(self, network: str) -> None:
        self._run("DELETE FROM offenders WHERE network = ?", (network,))

    def forget_all_offenders(self) -> None:
        self._run("DELETE FROM offenders")

    def blocks(self, now: float | None = None, include_expired: bool = False) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        sql = "SELECT * FROM blocks"
        args: tuple = ()
        if not include_expired:
            sql += " WHERE expires IS NULL OR expires > ?"
            args = (now,)
        rows = self._run(sql + " ORDER BY created", args).fetchall()
        return [self._block_row(r) for r in rows]

    def expired_blocks(self, now: float) -> list[dict[str, Any]]:
        rows = self._run("SELECT * FROM blocks WHERE expires IS NOT NULL AND expires <= ?", (now,)).fetchall()
        return [self._block_row(r) for r in rows]

    @staticmethod
    def _block_row(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        d["labels"] = json.loads(d["labels"] or "[]")
        d["ports"] = json.loads(d["ports"] or "[]")
        return d

    def offenders(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._run("SELECT * FROM offenders")]

    # -- fleet ---------------------------------------------------------------------------------
    # Set by whoever opens the store with [fleet] push on: every block the ledger records (but a
    # pulled one) is queued for the LAPI in the same transaction as its row (Ledger.persist).
    fleet_push = False

    def _fleet_rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """A read of a fleet table (a read-only database made before the fleet tables has none)."""
        try:
            return self._run(sql, args).fetchall()
        except StoreError as e:
            if "no such table" in str(e):
                return []
            raise

    def outbox_add(self, ev: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO fleet_outbox(ts, network, expires, event) VALUES (?,?,?,?)",
            (ev["ts"], ev["network"], ev.get("expires"), json.dumps(ev, default=str)),
        )

    def outbox_peek(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` blocks waiting to be pushed, in order: {"id", "ts", "network", "expires", "event"}."""
        rows = self._fleet_rows("SELECT * FROM fleet_outbox ORDER BY id LIMIT ?", (limit,))
        return [{**dict(r), "event": json.loads(r["event"])} for r in rows]

    def outbox_done(self, ids: Iterable[int]) -> None:
        """Delivered (or given up: expired before delivery): out of the outbox, in one transaction."""
        ids = list(ids)
        if ids:
            self._run(f"DELETE FROM fleet_outbox WHERE id IN ({','.join('?' * len(ids))})", ids)

    def outbox_depth(self) -> int:
        rows = self._fleet_rows("SELECT count(*) AS n FROM fleet_outbox")
        return rows[0]["n"] if rows else 0

    def fleet_put(self, rows: list[dict[str, Any]], remove: Iterable[str] = ()) -> None:
        """Pulled blocks now in force (created or refreshed) and the ones gone, in one transaction."""
        self._run("BEGIN")
        try:
            self._many("DELETE FROM fleet_blocks WHERE network = ?", [(net,) for net in remove])
            self._many(
                "INSERT OR REPLACE INTO fleet_blocks(network, family, expires, created, decision_id, origin, machine, scenario, scope)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r["network"],
                        6 if ":" in r["network"] else 4,
                        r["expires"],
                        r["created"],
                        r.get("decision_id"),
                        r.get("origin"),
                        r.get("machine"),
                        r.get("scenario"),
                        r.get("scope"),
                    )
                    for r in rows
                ],
            )
            self._run("COMMIT")
        except BaseException:
            self._run("ROLLBACK")
            raise

    def fleet_blocks(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._fleet_rows("SELECT * FROM fleet_blocks ORDER BY created")]

    def fleet_lift(self, decision_ids: Iterable[int], network: str, ts: float) -> None:
        """Decisions lifted here only (`unblock --local`): a pull never enforces them again."""
        for i in decision_ids:
            self._run("INSERT OR REPLACE INTO fleet_lifted(decision_id, network, ts) VALUES (?,?,?)", (int(i), network, ts))

    def fleet_lifted(self) -> set[int]:
        return {r["decision_id"] for r in self._fleet_rows("SELECT decision_id FROM fleet_lifted")}

    # -- history -----------------------------------------------------------------------------
    def add_history(self, ev: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO history(ts, event, src, network, proto, port, label, action, detail) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                ev["ts"],
                ev["event"],
                ev.get("src"),
                ev.get("network"),
                ev.get("proto"),
                ev.get("port"),
                ev.get("label"),
                ev.get("action"),
                json.dumps(ev, default=str),
            ),
        )

    def history(
        self, since: float | None = None, source: str | None = None, limit: int = 1000, until: float | None = None, label: str | None = None
    ) -> list[dict[str, Any]]:
        """The last ``limit`` history rows (oldest first), each with its row ``id``. ``source``: an
        address matches rows whose src or network is exactly it (indexed); a prefix matches every
        row whose source address or network lies inside it (SQLite has no CIDR type: a text
        prefilter, then ipaddress). ``since`` <= ts < ``until``; ``label``: the row's label
        (case-insensitive)."""
        inside = _prefix_matcher(source) if source else None
        sql, args = "SELECT id, src, network, detail FROM history WHERE 1=1", []
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts < ?"
            args.append(until)
        if label:
            sql += " AND upper(label) = upper(?)"
            args.append(label)
        if source and inside is None:
            sql += " AND (src = ? OR network = ?)"
            args += [source, source]
        elif inside is not None:
            pattern, family_char = _prefix_prefilter(source)
            if pattern:
                sql += " AND (src GLOB ? OR network GLOB ?)"
                args += [pattern, pattern]
            else:
                sql += " AND (instr(coalesce(src, ''), ?) > 0 OR instr(coalesce(network, ''), ?) > 0)"
                args += [family_char, family_char]
        sql += " ORDER BY id DESC"
        if inside is None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = []
        for r in self._run(sql, args):
            if inside is not None and not (inside(r["src"]) or inside(r["network"])):
                continue
            rows.append(r)
            if len(rows) >= limit:
                break
        return [self._history_row(r) for r in reversed(rows)]

    def history_entry(self, row_id: int) -> dict[str, Any] | None:
        """One history row by its id (``history show ID``), or None."""
        r = self._run("SELECT id, detail FROM history WHERE id = ?", (row_id,)).fetchone()
        return None if r is None else self._history_row(r)

    # -- statistics (`nfsentry stats`) ------------------------------------------------------------
    def count_events(self, event: str, ranges: list[tuple[float, float]]) -> list[int]:
        """How many ``event`` rows have ``start`` <= ts < ``end``, for each (start, end) of ``ranges``
        (each a range of the ``history_event_ts`` index)."""
        sql = "SELECT count(*) FROM history WHERE event = ? AND ts >= ? AND ts < ?"
        return [self._run(sql, (event, start, end)).fetchone()[0] for start, end in ranges]

    def top_detections(self, by: str, since: float, until: float, limit: int = 10) -> list[tuple[Any, ...]]:
        """The detections with ``since`` <= ts < ``until`` most frequent by ``by`` ("src", "label" or
        "port": proto, port): [(*key, n)], most first, ties by key. One pass over the index led by
        that key (``history_event_src`` ...), whatever the window."""
        cols = {"src": "src", "label": "label", "port": "proto, port"}[by]
        sql = (
            f"SELECT {cols}, count(*) AS n FROM history WHERE event = 'detection' AND ts >= ? AND ts < ?"
            f" GROUP BY {cols} ORDER BY n DESC, {cols} LIMIT ?"
        )
        return [tuple(r) for r in self._run(sql, (since, until, limit))]

    @staticmethod
    def _history_row(r: sqlite3.Row) -> dict[str, Any]:
        ev = json.loads(r["detail"])
        ev["id"] = r["id"]
        return ev

    # -- retention ([storage] history_days) -----------------------------------------------------
    def prune_history(self, before: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` history rows older than ``before`` (oldest first), in one short
        transaction; returns how many. The caller repeats while it returns ``limit``."""
        sql = "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE ts < ? ORDER BY ts LIMIT ?)"
        return self._run(sql, (before, limit)).rowcount

    def reclaim(self) -> str:
        """Give the pages deleted rows freed back to the file system: an incremental vacuum when
        the database frees pages that way (every database this version creates), else one VACUUM
        that also switches it to that; then a checkpoint that empties the WAL file. Returns
        "incremental" or "vacuum"."""
        if self._run("PRAGMA auto_vacuum").fetchone()[0] == 2:
            # executescript steps it to the end; execute() stops after one step: one page freed
            try:
                self.db.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: {e}") from None
            how = "incremental"
        else:
            self._run("PRAGMA auto_vacuum=INCREMENTAL")
            self._run("VACUUM")
            how = "vacuum"
        self._run("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return how

    def history_count(self, before: float | None = None) -> int:
        """History rows (older than ``before``, when given)."""
        if before is None:
            return self._run("SELECT count(*) FROM history").fetchone()[0]
        return self._run("SELECT count(*) FROM history WHERE ts < ?", (before,)).fetchone()[0]


def _prefix_matcher(source: str) -> Callable[[str | None], bool] | None:
    """For a prefix (not a single address): a test "is this address or network inside it"."""
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return None
    if net.prefixlen == net.max_prefixlen:
        return None
    seen: dict[str, bool] = {}

    def inside(text: str | None) -> bool:
        if not text:
            return False
        hit = seen.get(text)
        if hit is None:
            try:
                other = ipaddress.ip_network(text, strict=False)
                hit = other.version == net.version and other.subnet_of(net)  # type: ignore[arg-type]
            except ValueError:
                hit = False
            if len(seen) < 100_000:
                seen[text] = hit
        return hit

    return inside


def _prefix_prefilter(source: str) -> tuple[str | None, str]:
    """A GLOB every IPv4 text inside the prefix matches (its whole octets: "198.18.50.*"), or
    None, and a character every text of its family holds (IPv6 ":", IPv4 ".")."""
    net = ipaddress.ip_network(source, strict=False)
    if net.version == 6:
        return None, ":"
    octets = net.prefixlen // 8
    if octets == 0:
        return None, "."
    return ".".join(str(net.network_address).split(".")[:octets]) + ".*", "."


def _is_corruption(msg: str) -> bool:
    return "not a database" in msg or "malformed" in msg or "corrupt" in msg


def move_aside(path: str | Path) -> Path:
    """Rename a corrupt database (and its WAL files) out of the way; returns the new name."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, dest)
    for suffix in ("-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            os.replace(p, Path(str(dest) + suffix))
    return dest
