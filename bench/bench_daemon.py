"""Daemon benchmarks, measured side by side in one run inside throw-away namespaces.

1. Verdict-loop throughput under a bounded SYN flood to a monitored port, as a ratio to a bare
   NetfilterQueue accept-all loop on the same flood, same ruleset, same queue (target >= 0.85,
   the median of the alternating rounds).
2. Time from the triggering packet to the kernel dropping that source, from a daemon idle for
   IDLE seconds (the common case: nothing, then a scan): the attacker sends one probe to a
   monitored port, then a SYN to an open port right away and every GAP after; the first SYN no
   longer answered marks the block (an upper bound; median over the trials; target <= 0.1 ms).
3. Attacker SYNs to the open port answered after the trigger (target: 0 in every trial).

2 and 3 run twice, side by side: the daemon blocking (``kernel_block = false``, how nfsentry
worked before issue 17) and the kernel blocking from the queueing rule (``kernel_block = true``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon_util import Nfsentry  # noqa: E402
from lab import PYTHON, Lab, lab_unavailable_reason  # noqa: E402

FLOOD_SECONDS = 3
FLOOD_MAX_PACKETS = 400_000
TRIALS = 8

BARE = textwrap.dedent("""
    import sys, time, signal
    from netfilterqueue import NetfilterQueue
    n = 0
    def cb(p):
        global n
        p.get_payload()
        p.accept()
        n += 1
    q = NetfilterQueue()
    q.bind(0, cb, max_len=4096, range=512)
    def stop(*a):
        print(n, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("READY", flush=True)
    q.run()
""")

PROBE = textwrap.dedent("""
    import socket, struct, sys, time, select
    src, dst, trig_port, open_port, count, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    def csum(b):
        if len(b) % 2: b += b"\\0"
        s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        s = (s >> 16) + (s & 0xffff); s += s >> 16
        return ~s & 0xffff
    def syn(sport, dport):
        s, d = socket.inet_aton(src), socket.inet_aton(dst)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 2, 1024, 0, 0)
        c = csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
        return tcp[:16] + struct.pack("!H", c) + tcp[18:]
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    rx.setblocking(False)
    base = 20000 + (int(time.time() * 1000) % 20000)
    t0 = time.perf_counter()
    tx.sendto(syn(base, trig_port), (dst, 0))
    sent = {}
    for i in range(count):
        target = t0 + i * gap   # the first one at once
        while time.perf_counter() < target:
            pass
        sport = base + 1 + i
        tx.sendto(syn(sport, open_port), (dst, 0))
        sent[sport] = time.perf_counter() - t0
    answered = set()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        r, _, _ = select.select([rx], [], [], 0.05)
        if not r:
            continue
        while True:
            try:
                data = rx.recv(4096)
            except BlockingIOError:
                break
            ihl = (data[0] & 15) * 4
            sp, dp = struct.unpack("!HH", data[ihl:ihl + 4])
            flags = data[ihl + 13]
            if sp == open_port and dp in sent and flags & 0x12 == 0x12:
                answered.add(dp)
    print(" ".join(f"{sent[p]:.6f}" for p in sorted(answered)), flush=True)
    print(f"{t0:.6f}", flush=True)
    print(f"{sent[base + 1]:.6f}", flush=True)
""")


def rate_from_hping(attacker, target: str, port: int) -> None:
    attacker.run(
        ["timeout", str(FLOOD_SECONDS), "hping3", "-S", "-p", str(port), "--flood", "-c", str(FLOOD_MAX_PACKETS), target],
        check=False,
        timeout=FLOOD_SECONDS + 10,
    )


ROUNDS = 5


def throughput(lab: Lab, tmp: Path) -> tuple[list[float], list[float]]:
    """Alternate nfsentry and the bare loop ROUNDS times (other load on the machine hits both)."""
    nfs, bare = [], []
    for i in range(ROUNDS):
        a, b = throughput_round(lab, tmp / f"r{i}")
        nfs.append(a)
        bare.append(b)
    return nfs, bare


def throughput_round(lab: Lab, tmp: Path) -> tuple[float, float]:
    victim, attacker = lab["victim"], lab["attacker"]
    # the same ruleset for both loops: nfsentry's, with a trigger so high a single source never blocks
    d = Nfsentry(
        victim, tmp / "tp", overrides={"detection": {"scan_trigger": 1_000_000, "instant_labels": []}, "logging": {"json_file": ""}}
    )
    d.start()
    # Measured exactly as the bare loop below: the flood's own time (until hping3 returns), then
    # 0.3 s for the queue to drain, then the count. (Until issue 17 the time also included
    # starting `nfsentry status` for the second count, ~0.4 s of 3.4 on a quiet machine: a ratio
    # ~10 % low for nfsentry.) The counts come over the control socket: no program start.
    before = d.control("status")["counters"]["queued"]
    t = time.monotonic()
    rate_from_hping(attacker, victim.ip4, 7)
    elapsed = time.monotonic() - t
    time.sleep(0.3)
    after = d.control("status")["counters"]["queued"]
    nfs_rate = (after - before) / elapsed
    d.stop()
    # keep the table (keep_blocks_on_exit): reload the full ruleset for the bare loop
    d.cli("rules", "load")
    bare = victim.popen([PYTHON, "-u", "-c", BARE])
    assert "READY" in bare.stdout.readline()
    t = time.monotonic()
    rate_from_hping(attacker, victim.ip4, 7)
    elapsed = time.monotonic() - t
    time.sleep(0.3)
    bare.terminate()
    n = int(bare.stdout.readline().strip() or 0)
    bare.wait(timeout=10)
    d.cli("rules", "unload")
    d.close()
    return nfs_rate, n / elapsed


IDLE = 10.0  # seconds the daemon is left idle before each trigger
GAP = 0.00005  # seconds between the SYNs to the open port after the trigger
PROBES = 2000  # 100 ms of SYNs: longer than the daemon's slowest cold block


def latency(lab: Lab, tmp: Path, kernel_block: bool) -> tuple[list[float], list[int], int, dict]:
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(8080)
    d = Nfsentry(victim, tmp / f"lat-{kernel_block}", overrides={"response": {"kernel_block": kernel_block}})
    d.start()
    lats, reached = [], []
    try:
        # control: a "trigger" to an unmonitored port blocks nothing, so every probe is answered
        res = attacker.run([PYTHON, "-c", PROBE, attacker.ip4, victim.ip4, "9999", "8080", "300", str(GAP)], timeout=30)
        control = len(res.stdout.splitlines()[0].split())
        for i in range(TRIALS):
            time.sleep(IDLE)  # idle: no packet reaches the daemon meanwhile
            res = attacker.run([PYTHON, "-c", PROBE, attacker.ip4, victim.ip4, "7", "8080", str(PROBES), str(GAP)], timeout=60)
            lines = res.stdout.splitlines()
            answered = [float(x) for x in lines[0].split()] if lines and lines[0].strip() else []
            first = float(lines[2]) if len(lines) > 2 else GAP
            d.wait_event("block", attacker.ip4, timeout=10)
            # the block landed after the last answered SYN, and before the next one was sent
            lats.append((max(answered) + GAP) if answered else first)
            reached.append(len(answered))
            d.control("unblock", all=True)
            d.json_file.write_text("")
        internal = d.control("status")["block_latency_ms"]
    finally:
        d.close()
    return lats, reached, control, internal


def main() -> int:
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench_daemon: cannot measure: {reason}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="nfsentry-bench-"))
    with Lab.standard() as lab:
        nfs, bare = throughput(lab, tmp)
    print(f"verdict-loop throughput under a bounded SYN flood ({FLOOD_SECONDS}s, hping3 --flood, {ROUNDS} alternating rounds):")
    print("  bare NetfilterQueue accept-all: " + "  ".join(f"{r:8.0f}" for r in bare) + " pkt/s")
    print("  nfsentry verdict loop:          " + "  ".join(f"{r:8.0f}" for r in nfs) + " pkt/s")
    print(
        f"  ratio nfsentry / bare (best of each): {max(nfs) / max(bare):.2f}   "
        f"(median of each: {statistics.median(nfs) / statistics.median(bare):.2f}; target >= 0.85)"
    )
    print(
        f"first probe -> kernel drop, from a daemon idle for {IDLE:.0f} s ({TRIALS} trials each, SYNs to an open port "
        f"every {GAP * 1e6:.0f} us after the trigger; upper bounds):"
    )
    for kb, name in ((False, "before: the daemon blocks (kernel_block = false)"), (True, "now: the kernel blocks (kernel_block = true)")):
        with Lab.standard() as lab:
            lats, reached, control, internal = latency(lab, tmp, kb)
        ms = sorted(x * 1000 for x in lats)
        print(f"  {name}")
        print(f"    probe control (trigger to an unmonitored port): {control}/300 SYNs answered (must be ~300)")
        print(
            f"    trigger -> kernel drop: median {statistics.median(ms):.3f} ms   min {ms[0]:.3f} ms   max {ms[-1]:.3f} ms   (target <= 0.1 ms)"
        )
        print(
            f"    inside the daemon, decision -> set element committed: median {internal.get('median')} ms, "
            f"max {internal.get('max')} ms over {internal.get('n')} blocks"
        )
        print(
            f"    attacker SYNs to the open port answered after the trigger: median {statistics.median(reached):.0f}, "
            f"max {max(reached)}, per trial {reached}   (target: 0 in every trial)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
