"""Spoofed-SYN flood benchmark, in throw-away namespaces (always deleted, also on errors).

A bounded flood (count AND time) of SYNs to monitored ports from spoofed sources -- IPv4 from
all over 198.19.0.0/16 and one IPv6 /64 per packet from 2001:db8:f000::/36 -- while a real client
opens TCP sessions to an open service on the victim. Three runs side by side:

  none      the flood against the victim with no nfsentry at all (what the flood alone costs)
  counting  nfsentry with scan_trigger 2: every spoofed source is tracked (engine at its
            max_sources cap, the memory worst case), none is blocked
  blocking  nfsentry defaults (scan_trigger 0) + max_blocks_per_minute 60: every source would be
            blocked; the safety valve holds and bounds events and log lines

Printed per run: daemon RSS at the start and peak during the flood, open-service sessions/s
before and during the flood (and the ratio), `nfsentry status` round trip during the flood (the
control socket alone, and the whole CLI), packets queued / dropped by a full queue.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
sys.path.insert(0, str(HERE.parent))

from daemon_util import Nfsentry  # noqa: E402
from lab import Lab, lab_unavailable_reason  # noqa: E402
from test_reliability_util import flood, flood_result, legit_rate, legit_rate_result, legit_rate_start, proc_rss_kb  # noqa: E402

FLOOD_PACKETS = 120_000
FLOOD_RATE = 20_000  # packets/s (the Python sender peaks around 40-50k/s on one core)
FLOOD_MAX_SECONDS = 10
CLIENT_SECONDS = 3
OPEN_PORT = 8080


def control_rtt(d) -> float:
    from nfsentry.ipc import request

    t0 = time.monotonic()
    request(str(d.tmp / "run" / "control.sock"), "status", timeout=30)
    return time.monotonic() - t0


def run(lab, kind: str, tmp: Path) -> dict:
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    d = None
    if kind != "none":
        det = {"scan_trigger": 2} if kind == "counting" else {}
        resp = {"max_blocks_per_minute": 60} if kind == "blocking" else {}
        d = Nfsentry(victim, tmp / kind, overrides={"detection": det, "response": resp, "logging": {"level": "info"}})
        d.start()
    try:
        pid = d.status()["pid"] if d else None
        rss0 = proc_rss_kb(pid) if pid else 0
        before = legit_rate(legit, victim.ip4, OPEN_PORT, CLIENT_SECONDS)
        f = flood(attacker, victim, count=FLOOD_PACKETS, seconds=FLOOD_MAX_SECONDS, rate=FLOOD_RATE)
        time.sleep(0.3)
        client = legit_rate_start(legit, victim.ip4, OPEN_PORT, CLIENT_SECONDS)
        peak, rtt, cli = rss0, [], []
        while f.poll() is None:
            if d:
                peak = max(peak, proc_rss_kb(pid))
                rtt.append(control_rtt(d))
                t0 = time.monotonic()
                d.status()
                cli.append(time.monotonic() - t0)
            else:
                time.sleep(0.2)
        sent = flood_result(f)
        during = legit_rate_result(client)
        out = {
            "kind": kind,
            "sent": sent["sent"],
            "flood_s": sent["seconds"],
            "before": before["per_s"],
            "during": during["per_s"],
            "fail": during["fail"] + before["fail"],
            "rss0": rss0,
            "peak": peak,
            "rtt": rtt,
            "cli": cli,
        }
        if d:
            time.sleep(1)
            st = d.status()
            q = st["queue_drops"].get("queue0", {})
            out.update(
                queued=st["counters"]["queued"],
                qdrop=q.get("queue_dropped", 0),
                blocks=st["counters"]["blocks"],
                tracked=st["engine"]["tracked"],
                refused=st["counters"]["blocks_rate_limited"],
                warnings=sum("block rate limit" in l for l in d.stderr_lines),
                events=len(d.events()),
                rss_end=proc_rss_kb(pid),
            )
        return out
    finally:
        if d:
            d.close()


def main() -> int:
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench_flood: cannot measure: {reason}")
        return 1
    results = []
    with tempfile.TemporaryDirectory(prefix="nfsentry-bench-flood-") as tmp:
        with Lab.standard() as lab:
            victim = lab["victim"]
            for key in ("all", "default", "eth0"):  # spoofed off-link sources reach the input hook
                victim.run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
            victim.tcp_service(OPEN_PORT)
            # every session leaves a TIME_WAIT socket on the client for a minute: let it reuse them,
            # or later runs measure ephemeral-port exhaustion instead of the flood
            lab["legit"].run(["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
            for kind in ("none", "counting", "blocking"):
                results.append(run(lab, kind, Path(tmp)))
    print(
        f"spoofed SYN flood: {FLOOD_PACKETS} packets at <= {FLOOD_RATE}/s (IPv4 198.19.0.0/16 + one IPv6 /64 per "
        f"4th packet), real TCP client to an open port for {CLIENT_SECONDS}s before and during"
    )
    base = next(r for r in results if r["kind"] == "none")
    for r in results:
        ratio = r["during"] / r["before"] if r["before"] else 0
        line = (
            f"  {r['kind']:9} sent {r['sent']} in {r['flood_s']:.1f}s | open service {r['before']:7.0f}/s before, "
            f"{r['during']:7.0f}/s during = {ratio:.2f}"
        )
        if r["kind"] != "none":
            line += f" ({r['during'] / base['during']:.2f} of the no-nfsentry flood)" if base["during"] else ""
        line += f", failed sessions {r['fail']}"
        print(line)
        if r["kind"] == "none":
            continue
        rtt = sorted(r["rtt"]) or [0]
        cli = sorted(r["cli"]) or [0]
        print(
            f"            RSS start {r['rss0'] / 1024:.1f} MB, peak {r['peak'] / 1024:.1f} MB, after {r['rss_end'] / 1024:.1f} MB | "
            f"status round trip during the flood: socket median {statistics.median(rtt) * 1000:.0f} ms max {rtt[-1] * 1000:.0f} ms, "
            f"CLI median {statistics.median(cli) * 1000:.0f} ms max {cli[-1] * 1000:.0f} ms ({len(rtt)} samples)"
        )
        print(
            f"            queued {r['queued']}, dropped by a full queue {r['qdrop']}, engine tracking {r['tracked']} sources, "
            f"blocks {r['blocks']}, refused by the rate limit {r['refused']} ({r['warnings']} warning lines, {r['events']} events)"
        )
    print(json.dumps({r["kind"]: {k: v for k, v in r.items() if k not in ("rtt", "cli", "kind")} for r in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
