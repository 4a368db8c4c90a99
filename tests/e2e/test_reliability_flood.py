"""Bounded spoofed-SYN floods against the real daemon: sources from all over 198.19.0.0/16 and
one IPv6 /64 per packet, to monitored ports (count AND time bounded, see test_reliability_util).

While the flood runs the daemon's memory stays flat (engine cap ``max_sources``; the safety valves
bound events and log lines), ``nfsentry status`` keeps answering, and a real client keeps using
an open service without a single failed session. The throughput ratio is bench material
(bench/bench_flood.py), not a timed assertion.
"""

from __future__ import annotations

import json
import time

import pytest
from daemon_util import Nfsentry
from test_reliability_util import flood, flood_result, legit_rate_result, legit_rate_start, proc_rss_kb, timed_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OPEN_PORT = 8080
MAX_RSS_GROWTH_KB = 25_000  # before the valves were rate-limited a 40k-packet block flood added ~75 MB


def off_link_sources_allowed(victim) -> None:
    for key in ("all", "default", "eth0"):
        victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])


def run_flood(lab, d, count: int, rate: int, seconds: float = 12) -> dict:
    """Flood while sampling the daemon's RSS and status round-trips and running a legit client."""
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    pid = d.status()["pid"]
    rss0 = proc_rss_kb(pid)
    f = flood(attacker, victim, count=count, seconds=seconds, rate=rate)
    time.sleep(0.5)
    client = legit_rate_start(legit, victim.ip4, OPEN_PORT, seconds=3)
    peak, lat, replies = rss0, [], []
    while f.poll() is None:
        peak = max(peak, proc_rss_kb(pid))
        t, st = timed_status(d)
        lat.append(t)
        replies.append(st)
    sent = flood_result(f)
    legit = legit_rate_result(client)
    # the daemon drains what the flood left queued (a busy machine takes longer than the old fixed 1 s);
    # "nothing stuck" is asserted below
    deadline = time.monotonic() + 30
    while (st := d.status())["queue_drops"].get("queue0", {}).get("waiting", 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    st = d.status()
    return {"rss0": rss0, "peak": max(peak, proc_rss_kb(pid)), "lat": lat, "replies": replies, "sent": sent, "legit": legit, "status": st}


def common_asserts(r: dict) -> None:
    assert r["sent"]["sent"] > 10_000, r["sent"]
    assert r["peak"] - r["rss0"] < MAX_RSS_GROWTH_KB, (r["rss0"], r["peak"])
    assert r["replies"] and max(r["lat"]) < 15, r["lat"]  # status answered throughout
    assert r["legit"]["ok"] > 0 and r["legit"]["fail"] == 0, r["legit"]  # the open service kept working
    q = r["status"]["queue_drops"].get("queue0", {})
    assert q.get("waiting", 0) == 0  # nothing stuck in the queue
    assert r["status"]["counters"]["errors"] == 0


def test_counting_flood_keeps_memory_at_the_engine_cap(lab, tmp_path):
    """scan_trigger 2: every spoofed source is tracked, none reacts; max_sources bounds the state."""
    victim = lab["victim"]
    off_link_sources_allowed(victim)
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"detection": {"scan_trigger": 2, "max_sources": 1000}})
    d.start()
    try:
        r = run_flood(lab, d, count=60_000, rate=15_000)
        common_asserts(r)
        eng = r["status"]["engine"]
        assert eng["tracked"] <= 1000 and eng["evicted"] > 10_000, eng
        assert r["status"]["counters"]["queued"] > 10_000
        # the compiled fast path decided the flood: new spoofed sources are counted without Python
        assert r["status"]["engine_kind"] == "compiled"
        assert eng["compiled_handled"] > 0.9 * eng["packets"], eng
        assert r["status"]["blocked"] == 0 and d.events("block") == []
        print(json.dumps({k: r[k] for k in ("rss0", "peak", "sent", "legit")}))
    finally:
        d.close()


def test_blocking_flood_is_bounded_by_the_block_rate_limit(lab, tmp_path):
    """scan_trigger 0 (the default): every spoofed source would be blocked; max_blocks_per_minute
    holds, the warning is logged at most every 10 s and refused alerts are capped at 60 a minute."""
    victim = lab["victim"]
    off_link_sources_allowed(victim)
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"response": {"max_blocks_per_minute": 20}, "detection": {"max_sources": 1000}})
    d.start()
    try:
        r = run_flood(lab, d, count=40_000, rate=10_000, seconds=8)
        common_asserts(r)
        c = r["status"]["counters"]
        # the kernel-side block added spoofed sources too (at most 20/minute): the ones the
        # daemon's valve refused are withdrawn within its next duties
        wait_for(lambda: d.status()["blocked"] == 20, timeout=20, what="the kernel's refused blocks withdrawn")
        assert c["blocks"] == 20
        assert c["blocks_rate_limited"] > 10_000 and c["alerts_suppressed"] > 10_000, c
        assert c["events_lost"] == 0
        warnings = [l for l in d.stderr_lines if "block rate limit (20/min) reached" in l]
        assert 1 <= len(warnings) <= 2, warnings
        assert len(d.events()) <= 20 * 2 + 60 + 5  # blocks + their detections + capped alerts
        print(json.dumps({k: r[k] for k in ("rss0", "peak", "sent", "legit")}))
    finally:
        d.close()
