"""Storage faults with the real daemon: the database locked by another process, the disk full
(a 1 MB tmpfs in the daemon's own private mount namespace: nothing is mounted on the host), the
database deleted or overwritten while running, and a corrupt database at start-up.

Each time the daemon keeps protecting (the kernel's blocked set is authoritative: scanners are
still blocked), logs the fault once, and catches up when storage is back, without losing a block.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time

import pytest
from daemon_util import NFSENTRY, Nfsentry
from lab import PYTHON
from test_reliability_util import wait_for

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080


class NfsentryOnTmpfs(Nfsentry):
    """The daemon in a private mount namespace (unshare -m) with its state_dir on a small tmpfs."""

    size = "1m"

    def start(self, timeout: float = 120, extra_args=None) -> NfsentryOnTmpfs:
        self.stderr_lines = []
        state = self.sections["storage"]["state_dir"]
        os.makedirs(state, exist_ok=True)
        script = f'mount -t tmpfs -o size={self.size},mode=0700 nfsentry-test {shlex.quote(state)} && exec "$@"'
        self.proc = self.host.popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                NFSENTRY,
                "run",
                "--foreground",
                "--config",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any("is active" in l for l in self.stderr_lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise RuntimeError("nfsentry did not start:\n" + "".join(self.stderr_lines))
            time.sleep(0.05)
        self.pid = self.status()["pid"]
        return self

    def in_mount_ns(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", *argv], capture_output=True, text=True, timeout=60, check=check)

    def db_blocks(self) -> set[str]:
        code = (
            "import sqlite3, sys, json; c = sqlite3.connect(sys.argv[1]);"
            "print(json.dumps([r[0] for r in c.execute('SELECT network FROM blocks')]))"
        )
        out = self.in_mount_ns([PYTHON, "-c", code, str(self.tmp / "state" / "nfsentry.db")]).stdout
        return set(json.loads(out))


def db_blocks(d: Nfsentry) -> set[str]:
    import sqlite3

    db = sqlite3.connect(f"file:{d.tmp / 'state' / 'nfsentry.db'}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT network FROM blocks")}
    except sqlite3.OperationalError as e:  # read while the daemon is recreating it: not there yet
        if "no such table" not in str(e):
            raise
        return set()
    finally:
        db.close()


def storage_log(d: Nfsentry, text: str) -> list[str]:
    return [l for l in d.stderr_lines if text in l]


def test_locked_database_keeps_protecting_and_catches_up(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        db = str(d.tmp / "state" / "nfsentry.db")
        holder = victim.popen(
            [
                PYTHON,
                "-u",
                "-c",
                "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
                "c.execute('BEGIN EXCLUSIVE'); print('LOCKED', flush=True); time.sleep(600)",
                db,
            ]
        )
        assert holder.stdout.readline().strip() == "LOCKED"
        d.cli("block", "198.19.3.3", "--reason", "while locked")
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"  # blocked in the kernel at once
        st = wait_for(lambda: (s := d.status())["counters"]["storage_errors"] and s, timeout=60, what="the storage fault")
        assert st["blocked"] == 2
        wait_for(lambda: storage_log(d, "storage fault"), timeout=60, what="the fault logged")
        holder.kill()  # (it holds the lock for up to 10 minutes: longer than any wait above)
        holder.wait()
        wait_for(lambda: d.status()["pending_storage_writes"] == 0, timeout=60, what="the pending writes")
        assert db_blocks(d) == {"198.19.3.3", attacker.ip4}
        assert storage_log(d, "storage recovered")
        assert len(storage_log(d, "storage fault")) <= 3
    finally:
        d.close()


def test_disk_full_keeps_protecting_and_catches_up_when_space_is_back(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    d = NfsentryOnTmpfs(victim, tmp_path / "nfs")
    d.start()
    try:
        fill = str(d.tmp / "state" / "fill")
        res = d.in_mount_ns(["dd", "if=/dev/zero", f"of={fill}", "bs=4k"], check=False)  # until ENOSPC
        assert res.returncode != 0 and "No space left" in res.stderr, res.stderr
        for i in range(1, 30):  # enough writes to outgrow the WAL pages already allocated
            d.cli("block", f"198.19.4.{i}", "--reason", "disk full " + "x" * 200)
            if d.status()["counters"]["storage_errors"]:
                break
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
        # (whether writes are still pending at this instant depends on timing: SQLite may find a
        # freed page for a retry; what must hold is the fault seen, protection kept, and no loss)
        assert d.status()["counters"]["storage_errors"] >= 1
        assert wait_for(lambda: storage_log(d, "disk is full"), timeout=60, what="the fault logged")
        kernel = {b["network"] for b in d.blocked()}
        d.in_mount_ns(["rm", fill])
        wait_for(lambda: d.status()["pending_storage_writes"] == 0, timeout=60, what="the pending writes")
        assert d.db_blocks() == kernel
    finally:
        d.close()


def test_database_deleted_then_overwritten_while_running_is_rebuilt_from_the_kernel(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        state = d.tmp / "state"
        d.cli("block", "198.19.5.5")
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        wait_for(lambda: db_blocks(d) == {"198.19.5.5", attacker.ip4}, what="the blocks stored")
        for suffix in ("", "-wal", "-shm"):
            (state / f"nfsentry.db{suffix}").unlink(missing_ok=True)
        # no new event needed: the worker notices within seconds and re-imports the kernel set
        wait_for(lambda: (state / "nfsentry.db").exists(), timeout=60, what="the database recreated")
        wait_for(lambda: db_blocks(d) == {"198.19.5.5", attacker.ip4}, timeout=60, what="the kernel set re-imported")
        assert storage_log(d, "was deleted or replaced while running")
        assert (state / "nfsentry.db").stat().st_mode & 0o777 == 0o600
        # overwritten in place (same inode): moved aside, rebuilt
        with open(state / "nfsentry.db", "r+b") as f:
            f.write(os.urandom(4096))
        d.cli("block", "198.19.6.6")
        wait_for(lambda: any(".corrupt-" in p.name for p in state.iterdir()), timeout=60, what="the corrupt file moved aside")
        wait_for(lambda: db_blocks(d) == {"198.19.5.5", "198.19.6.6", attacker.ip4}, timeout=60, what="the rebuilt database")
        assert storage_log(d, "database is corrupt")
        assert d.status()["counters"]["errors"] == 0
    finally:
        d.close()


def test_corrupt_database_at_startup_is_moved_aside_and_the_kernel_set_reimported(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        attacker.nmap("-sN -Pn --max-retries 0 -p 9", victim.ip4)
        d.wait_event("block", attacker.ip4)
        d.cli("block", "2001:db8:9::/48", "--for", "2h")
        assert d.stop(signal.SIGTERM) == 0  # blocks stay in the kernel (keep_blocks_on_exit)
        state = d.tmp / "state"
        for suffix in ("-wal", "-shm"):
            (state / f"nfsentry.db{suffix}").unlink(missing_ok=True)
        (state / "nfsentry.db").write_bytes(b"this is not a database\n" * 500)
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"  # still dropped meanwhile
        d.start()
        lines = storage_log(d, "database is corrupt")
        assert len(lines) == 1 and "moved aside to" in lines[0] and "re-importing" in lines[0], d.stderr_lines
        aside = [p for p in state.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
        nets = {b["network"]: b for b in d.blocked()}
        assert set(nets) == {attacker.ip4, "2001:db8:9::/48"}
        assert 3600 < nets["2001:db8:9::/48"]["expires_in"] <= 7200
        assert db_blocks(d) == set(nets)
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
    finally:
        d.close()
