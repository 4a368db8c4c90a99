"""nftables layer benchmarks, in lab namespaces this script creates and always deletes.

1. one block through the bindings (median, with an almost empty set and with 100,000 blocks)
2. bulk restore of 100,000 blocks in one transaction (and listing / reloading them)
3. kernel drop rate: a bounded SYN flood (hping3, count- and time-limited) from the attacker at
   the victim, once with an empty ruleset and once with the attacker in the blocked set; the
   victim's received packets per second are compared (ratio) and nft's counter shows how many
   the blocked set dropped.

Targets (issue 4): median block <= 0.2 ms, bulk 100,000 <= 1 s. Exits non-zero only when it could
not measure.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from lab import PYTHON, Lab, lab_unavailable_reason  # noqa: E402

N_BULK = 100_000
N_SINGLE = 500
FLOOD_SECONDS = 3
FLOOD_MAX_PACKETS = 5_000_000

SET_OPS = textwrap.dedent(f"""
    import json, statistics, sys, time
    sys.path.insert(0, {str(REPO)!r})
    from nfsentry.nft import Nft, RulesetSpec
    n = Nft()
    st = n.load(RulesetSpec())
    res = {{"backend": st["backend"]}}

    def single(prefix):
        ts = []
        for i in range({N_SINGLE}):
            t = time.perf_counter(); n.block(f"{{prefix}}.{{i >> 8}}.{{i & 255}}", 3600); ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1000, sorted(ts)[int(len(ts) * 0.95)] * 1000

    res["single_empty_ms"], res["single_empty_p95_ms"] = single("203.0")
    items = [(f"10.{{i >> 16 & 255}}.{{i >> 8 & 255}}.{{i & 255}}", 3600) for i in range({N_BULK})]
    runs = []
    for _ in range(3):
        n._cmd("flush set inet nfsentry blocked4", "flush")
        t = time.perf_counter(); n.bulk_block(items); runs.append(time.perf_counter() - t)
    res["bulk_s"] = statistics.median(runs)
    res["single_full_ms"], res["single_full_p95_ms"] = single("203.1")
    t = time.perf_counter(); count = len(n.list_blocked()); res["list_s"] = time.perf_counter() - t
    res["listed"] = count
    t = time.perf_counter(); n.load(RulesetSpec()); res["reload_s"] = time.perf_counter() - t
    t = time.perf_counter(); n.counters(); res["counters_s"] = time.perf_counter() - t
    n.unload()
    print(json.dumps(res))
""")


def rx_packets(host) -> int:
    return int(host.run(["cat", "/sys/class/net/eth0/statistics/rx_packets"]).stdout)


def flood(attacker, victim) -> tuple[float, int, float]:
    """(received packets per second at the victim, packets sent by hping3's count, seconds)."""
    before = rx_packets(victim)
    t = time.monotonic()
    attacker.run(
        ["timeout", "-s", "INT", str(FLOOD_SECONDS), "hping3", "--flood", "-q", "-S", "-p", "9", "-c", str(FLOOD_MAX_PACKETS), victim.ip4],
        check=False,
        timeout=FLOOD_SECONDS + 20,
    )
    took = time.monotonic() - t
    time.sleep(0.2)
    got = rx_packets(victim) - before
    return got / took, got, took


def main() -> int:
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench_nft: cannot measure: {reason}")
        return 1
    t0 = time.monotonic()
    with Lab.standard() as lab:
        victim, attacker = lab["victim"], lab["attacker"]
        res = json.loads(victim.run([PYTHON, "-c", SET_OPS], timeout=300).stdout.strip().splitlines()[-1])
        print(f"queue backend: {res['backend']}")
        print(
            f"block one source (bindings), median: {res['single_empty_ms']:.3f} ms (p95 {res['single_empty_p95_ms']:.3f}) "
            f"with an empty set; {res['single_full_ms']:.3f} ms (p95 {res['single_full_p95_ms']:.3f}) "
            f"with {N_BULK:,} blocks   [target <= 0.2 ms]"
        )
        print(f"bulk restore of {N_BULK:,} blocks, one transaction: {res['bulk_s']:.3f} s   [target <= 1 s]")
        print(
            f"list {res['listed']:,} blocks: {res['list_s']:.2f} s; reload keeping them: {res['reload_s']:.3f} s; "
            f"read counters: {res['counters_s']:.3f} s"
        )

        if shutil.which("hping3") is None:
            print("drop rate: hping3 missing, not measured")
            return 0
        # Empty ruleset: the victim's stack answers every SYN with a RST.
        victim.nft("flush ruleset")
        empty_pps, empty_n, _ = flood(attacker, victim)
        # The attacker blocked: dropped at prerouting (raw - 10), before conntrack.
        victim.run(
            [
                PYTHON,
                "-c",
                f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                "from nfsentry.nft import Nft, RulesetSpec\n"
                f"n = Nft(); n.load(RulesetSpec()); n.block({attacker.ip4!r}, 600)",
            ]
        )
        blocked_pps, blocked_n, _ = flood(attacker, victim)
        dropped = json.loads(
            victim.run(
                [
                    PYTHON,
                    "-c",
                    f"import sys, json; sys.path.insert(0, {str(REPO)!r})\n"
                    "from nfsentry.nft import Nft\n"
                    "print(json.dumps(Nft().counters()))",
                ]
            ).stdout
        )["blocked_pkts4"]
        victim.run([PYTHON, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom nfsentry.nft import Nft\nNft().unload()"])
        print(f"SYN flood ({FLOOD_SECONDS} s, hping3 --flood, at most {FLOOD_MAX_PACKETS:,} packets):")
        print(f"  empty ruleset:          {empty_pps:,.0f} packets/s received ({empty_n:,} packets, each answered)")
        print(
            f"  source in blocked4:     {blocked_pps:,.0f} packets/s received ({blocked_n:,} packets, "
            f"{dropped:,} dropped by the blocked set = {dropped / max(1, blocked_n):.1%})"
        )
        print(f"  drop-rate ratio blocked/empty: {blocked_pps / max(1.0, empty_pps):.2f}")
    print(f"bench_nft: {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
