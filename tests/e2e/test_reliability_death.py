"""Daemon death: ``kill -9`` in the middle of a spoofed flood.

While the daemon is dead: open services keep working; the blocked set keeps dropping; queued
packets are not stuck. With ``[nft] fail_open = true`` (the default, `bypass`) a probe to a closed
monitored port is answered by the kernel as if nfsentry were not there (RST); with ``false``
(fail-closed) it is dropped. A systemd-style restart restores the ruleset and every block, with no
duplicate and none lost, in the kernel and in the database.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from daemon_util import Nfsentry, kernel_blocks
from test_reliability_util import flood, flood_result, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPEN_PORT = 8080
CLOSED_MONITORED = 7


def queue_listeners(victim) -> dict[int, dict]:
    """/proc/net/netfilter/nfnetlink_queue of the victim's namespace: queue -> {waiting, dropped}."""
    out = {}
    text = victim.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7:
            out[int(f[0])] = {"waiting": int(f[2]), "queue_dropped": int(f[5])}
    return out


def db_blocks(d) -> list[str]:
    db = sqlite3.connect(f"file:{d.tmp / 'state' / 'nfsentry.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT network FROM blocks")]
    finally:
        db.close()


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_kill9_during_a_flood_then_restart(lab, tmp_path, fail_open):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    for key in ("all", "default", "eth0"):
        victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"response": {"max_blocks_per_minute": 25}, "nft": {"fail_open": fail_open}})
    d.start()
    try:
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip6)  # a real scanner, blocked first
        d.wait_event("block", attacker.ip6)  # alone: its /64 holds the victim too
        # the flood must outlast the checks of the dead daemon below (a few seconds quiet, far more on a
        # busy machine): it may run 60 s and is ended once they are done
        f = flood(attacker, victim, count=300_000, seconds=60, rate=5_000)
        t_flood = time.monotonic()
        wait_for(lambda: d.status()["counters"]["blocks"] >= 10, timeout=30, what="blocks during the flood")
        d.kill9()
        kernel_at_death = {b["network"] for b in d.blocked()}
        assert len(kernel_at_death) >= 10

        # dead daemon, flood still running
        assert f.poll() is None, "the flood ended before the checks"
        assert victim.nft("list table inet nfsentry").returncode == 0  # protection stays loaded
        assert 0 not in queue_listeners(victim)  # nobody bound to queue 0
        assert legit.connect(victim.ip4, OPEN_PORT) == "connected"
        assert legit.connect(victim.ip6, OPEN_PORT) == "connected"
        assert attacker.connect(victim.ip6, OPEN_PORT, timeout=1.5) == "timeout"  # still blocked
        probe = legit.connect(victim.ip4, CLOSED_MONITORED, timeout=1.5)
        assert probe == ("refused" if fail_open else "timeout")  # bypass vs fail-closed
        assert f.poll() is None, "the flood ended before the checks"
        time.sleep(max(0.0, t_flood + 9 - time.monotonic()))  # at least the 45,000 packets of old
        f.terminate()
        sent = flood_result(f)
        assert sent["sent"] > 20_000

        # With the daemon dead the kernel-side block kept blocking first probes (the flood's, and
        # legit's probe of the closed monitored port, unless the flood used up kernel_block_rate):
        # they are kernel blocks like the others.
        kernel_at_restart = set(kernel_blocks(victim))
        assert kernel_at_death <= kernel_at_restart

        # systemd restarts it
        d.start()
        nets = [b["network"] for b in d.blocked()]
        assert len(nets) == len(set(nets))  # no duplicate
        assert set(nets) == kernel_at_restart  # none lost, none invented (the new ones adopted)
        in_db = db_blocks(d)
        assert len(in_db) == len(set(in_db)) and set(in_db) == kernel_at_restart
        assert attacker.connect(victim.ip6, OPEN_PORT, timeout=1.5) == "timeout"
        assert legit.connect(victim.ip6, OPEN_PORT) == "connected"  # (its IPv4 probed a trap: maybe blocked)
        assert 0 in queue_listeners(victim)
        st = d.status()
        assert st["blocked"] == len(kernel_at_restart) and st["counters"]["errors"] == 0
        # and it protects again: a new scanner is blocked
        attacker.nmap("-sS -Pn --max-retries 0 -p 9", victim.ip4)
        d.wait_event("block", attacker.ip4)
    finally:
        d.close()
