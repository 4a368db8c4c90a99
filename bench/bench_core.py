"""Detection core benchmark: decode + classify + Engine.process per queued packet, the bare
NetfilterQueue callback it runs inside, and the engine's memory under a spoofed-source flood.

Standalone (``python bench/bench_core.py``; ``bench/run.py`` runs it with the others). Prints its
figures; timings are never asserted anywhere. Takes about 30-60 s.

* Per-packet cost of ``Engine.process_raw`` (decode + classify + engine on the raw bytes, the
  daemon's path, with the compiled fast path of nfsentry/core/_fastpath.c; extra lines show the same
  path in pure Python, and the two-step ``decode()`` + ``Engine.process`` path that builds a
  Packet and a Decision for every packet): 1,000,000 packets per line, a realistic mix (60 % TCP SYN, half nmap-shaped
  and half connect()-shaped, 10 % FIN, 30 % UDP; 70 % IPv4 / 30 % IPv6 with several addresses
  per /64; random monitored ports 1-1023; 5,000 packets/s of engine clock), through an engine
  built like the daemon's (ignore set of own addresses and a few CIDRs, an empty FTP
  expectation table, expire() once per engine second). Source mixes (see Mix): ``uniform`` over
  200,000 sources (the worst case: every packet touches a cold table entry, constant eviction
  at the 100,000 cap), ``scanners`` (500 busy scanners + that background), ``few`` (2,000
  sources: the Python work alone). Configurations: the defaults (scan_trigger 0: a source's
  first packet blocks, its later ones are DROP decisions until the block ends) and a counting
  one (scan_trigger 3 + window 5 ports/60 s). Timed in batches of 1,000 packets (each batch built
  before its timer starts); median, mean and p99 over batches, in wall time and in this
  thread's CPU time (which excludes time lost to other processes on a busy machine).
* The bare callback: ``pkt.get_payload(); pkt.accept()`` on a fake packet object, the least a
  NetfilterQueue callback can do, timed the same way, and the full callback (get_payload, decode,
  process, accept) for comparison.
* Memory: RSS before and after pushing 1,000,000 distinct spoofed sources (one SYN each) through
  an engine with the default cap, in a fresh child process per configuration, with RSS read at
  100k/250k/500k/750k/1M sources; plus bytes per tracked source measured with tracemalloc.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfsentry.core.addrs import PrefixSet  # noqa: E402
from nfsentry.core.engine import DEFAULT_MAX_SOURCES, Action, Engine, EngineConfig  # noqa: E402
from nfsentry.core.packet import decode  # noqa: E402

BATCH = 1000
PACKETS = 1_000_000
CALLBACKS = 300_000
SOURCES = 200_000
FEW_SOURCES = 2_000
PPS = 5000.0
EXPIRE_EVERY = int(PPS) // BATCH

DST4 = bytes([198, 18, 0, 1])
DST6 = bytes.fromhex("20010db8000000000000000000000001")
NMAP_OPTS = struct.pack("!BBH", 2, 4, 1460)
# a Linux connect() SYN: MSS, SACK-permitted, timestamps, NOP, window scale (20 bytes)
LINUX_OPTS = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02\x08\x0a" + b"\x00" * 8 + b"\x01\x03\x03\x07"


def tcp_header(sport: int, dport: int, flags: int, window: int, opts: bytes) -> bytes:
    doff = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, window, 0, 0) + opts


_IP4 = struct.Struct("!BBHHHBBH4s4s").pack
_IP6 = struct.Struct("!IHBB16s16s").pack


def checksummed(pseudo: bytes, proto: int, l4: bytes) -> bytes:
    """``l4`` (its checksum field 0) with the right TCP/UDP checksum: the engine counts a packet
    with a wrong one instead of reacting to it, and the bench measures reactions too."""
    total = int.from_bytes(pseudo + l4 + b"\0" * (len(l4) & 1), "big") % 0xFFFF  # one's complement sum
    csum = 0xFFFF - (total or 0xFFFF) or (0xFFFF if proto == 17 else 0)
    at = 16 if proto == 6 else 6
    return l4[:at] + csum.to_bytes(2, "big") + l4[at + 2 :]


def ip4(src: bytes, proto: int, l4: bytes) -> bytes:
    l4 = checksummed(src + DST4 + bytes((0, proto)) + len(l4).to_bytes(2, "big"), proto, l4)
    return _IP4(0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, DST4) + l4


def ip6(src: bytes, proto: int, l4: bytes) -> bytes:
    l4 = checksummed(src + DST6 + len(l4).to_bytes(4, "big") + bytes((0, 0, 0, proto)), proto, l4)
    return _IP6(6 << 28, len(l4), proto, 64, src, DST6) + l4


class Mix:
    """Generates a packet mix, batch by batch (outside the timed region).

    ``uniform``: every packet from a source drawn uniformly from 200,000 (70 % IPv4 10/8, 30 %
    IPv6 in 3fff::/20 /64s with several addresses each): about five packets per source spread over
    the run, so nearly every packet touches a cold, random entry of the engine's tables (the worst
    case for caches; with the 100,000-source cap, constant eviction).
    ``scanners``: 40 % of the packets from 500 active scanners sweeping ports in order, 60 % from
    the uniform background pool (a host on the Internet: a few busy scanners and a lot of noise).
    ``few``: uniform over 2,000 sources: the engine's tables stay in the CPU caches, so this
    shows the cost of the Python work itself, without memory stalls.
    """

    def __init__(self, seed: int = 1, kind: str = "uniform"):
        self.rng = random.Random(seed)
        self.kind = kind
        rng = self.rng
        self.sources = []
        self.nsources = FEW_SOURCES if kind == "few" else SOURCES
        for i in range(self.nsources):
            if rng.random() < 0.7:
                self.sources.append((4, struct.pack("!I", 0x0A000000 + rng.randrange(1 << 24))))
            else:
                net = struct.pack("!HHHH", 0x3FFF, rng.randrange(0x1000), rng.randrange(1 << 16), rng.randrange(64))
                self.sources.append((6, net + struct.pack("!Q", rng.randrange(1, 8))))
        self.scanners = [[src, rng.randrange(1, 1024)] for src in rng.sample(self.sources, 500)]
        sport = 40000  # the engine never looks at source ports; one per kind keeps generation cheap
        self.l4 = [
            [None] + [struct.pack("!HHHH", sport, d, 12, 0) + b"prob" for d in range(1, 1024)],
            [None] + [tcp_header(sport, d, 0x01, 1024, b"") for d in range(1, 1024)],
            [None] + [tcp_header(sport, d, 0x02, 1024, NMAP_OPTS) for d in range(1, 1024)],
            [None] + [tcp_header(sport, d, 0x02, 64240, LINUX_OPTS) for d in range(1, 1024)],
        ]

    def batch(self, n: int = BATCH) -> list[bytes]:
        r = self.rng.random
        scanners = self.scanners if self.kind == "scanners" else None
        sources, l4cache, nsources = self.sources, self.l4, self.nsources
        out = []
        for _ in range(n):
            if scanners is not None and r() < 0.4:
                entry = scanners[int(r() * len(scanners))]
                (fam, src), dport = entry[0], entry[1]
                entry[1] = dport % 1023 + 1
            else:
                fam, src = sources[int(r() * nsources)]
                dport = 1 + int(r() * 1023)
            k = r()
            kind = 0 if k < 0.3 else 1 if k < 0.4 else 2 if k < 0.7 else 3  # UDP, FIN, nmap SYN, connect SYN
            l4 = l4cache[kind][dport]
            proto = 17 if kind == 0 else 6
            out.append(ip4(src, proto, l4) if fam == 4 else ip6(src, proto, l4))
        return out


def ignore_set() -> PrefixSet:
    # what the daemon protects: own addresses, gateway, resolvers, a few configured CIDRs
    return PrefixSet(["198.18.0.1", "198.18.0.254", "127.0.0.0/8", "192.0.2.0/24", "2001:db8::1", "fe80::/10", "::1", "2001:db8:ffff::/48"])


def expectations():
    try:
        from nfsentry.core.ftp import ExpectationTable

        return ExpectationTable()
    except Exception:
        return None


def time_engine(cfg: EngineConfig, label: str, kind: str, two_step: bool = False) -> None:
    mix = Mix(kind=kind)
    engine = Engine(cfg, ignore=ignore_set(), expectations=expectations())
    if two_step:  # decode() to a Packet, then Engine.process: a full Decision for every packet
        proc, dec = engine.process, decode
    else:  # the daemon's path: Engine.process_raw on the bytes
        proc, dec = engine.process_raw, None
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    per_wall, per_cpu = [], []
    now = 1_700_000_000.0
    step = 1.0 / PPS
    for _ in range(PACKETS // BATCH):
        batch = mix.batch()
        t0, c0 = wall(), cpu()
        if two_step:
            for raw in batch:
                proc(dec(raw), now)
                now += step
        else:
            for raw in batch:
                proc(raw, now)
                now += step
        c1, t1 = cpu(), wall()
        per_wall.append((t1 - t0) / BATCH)
        per_cpu.append((c1 - c0) / BATCH)
        if len(per_cpu) % EXPIRE_EVERY == 0:  # once per engine second, like the daemon
            engine.expire(now)
    s = engine.stats
    mixout = ", ".join(f"{a.name} {s[a.name.lower()] / s['packets']:.0%}" for a in Action if s[a.name.lower()] >= s["packets"] / 200)
    print(
        f"  {label:<40} median {statistics.median(per_wall) / 1000:5.2f} us  mean {statistics.fmean(per_wall) / 1000:5.2f}"
        f"  p99 {_pct(per_wall, 99) / 1000:5.2f}  | cpu median {statistics.median(per_cpu) / 1000:5.2f} us"
        f"  mean {statistics.fmean(per_cpu) / 1000:5.2f}"
    )
    print(f"  {'':<40} ({mixout}; {s['evicted']:,} evicted)")


def _pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


class FakeNfqPacket:
    """The shape of netfilterqueue.Packet the daemon's callback touches."""

    __slots__ = ("payload", "verdict")

    def __init__(self, payload: bytes):
        self.payload = payload
        self.verdict = None

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        self.verdict = 1

    def drop(self) -> None:
        self.verdict = 0


def time_callbacks() -> None:
    mix = Mix(seed=2)
    engine = Engine(EngineConfig(scan_trigger=3, window_ports=5), ignore=ignore_set(), expectations=expectations())
    proc = engine.process_raw
    now = time.time

    def bare(pkt):
        pkt.get_payload()
        pkt.accept()

    def full(pkt):
        r = proc(pkt.get_payload(), now())
        if r.__class__ is int:
            if r >> 8 == 5:  # DROP
                pkt.drop()
            else:
                pkt.accept()
        elif r.action == 4:
            pkt.drop()
        else:
            pkt.accept()

    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for name, cb in (("bare callback: get_payload(); accept()", bare), ("full callback: payload, decode, process, verdict", full)):
        per_wall, per_cpu = [], []
        for _ in range(CALLBACKS // BATCH):
            pkts = [FakeNfqPacket(r) for r in mix.batch()]
            t0, c0 = wall(), cpu()
            for p in pkts:
                cb(p)
            c1, t1 = cpu(), wall()
            per_wall.append((t1 - t0) / BATCH)
            per_cpu.append((c1 - c0) / BATCH)
        print(
            f"  {name:<50} median {statistics.median(per_wall) / 1000:5.3f} us  mean "
            f"{statistics.fmean(per_wall) / 1000:5.3f}  | cpu median {statistics.median(per_cpu) / 1000:5.3f} us"
        )


# --- memory (child processes) ---------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


_SPOOF = ip4(bytes(4), 6, tcp_header(40000, 22, 0x02, 1024, NMAP_OPTS))
_SPOOF_HEAD, _SPOOF_TAIL = _SPOOF[:12], _SPOOF[16:]
_PACK_I = struct.Struct("!I").pack


def spoofed(i: int) -> bytes:
    """An nmap-shaped SYN from the i-th spoofed source 11.0.0.0 + i."""
    return _SPOOF_HEAD + _PACK_I(0x0B000000 + i) + _SPOOF_TAIL


def memory_child(mode: str) -> None:
    cfg = EngineConfig() if mode == "default" else EngineConfig(scan_trigger=3)
    engine = Engine(cfg, ignore=ignore_set(), expectations=expectations())
    proc = engine.process
    gc.collect()
    before = rss_mb()
    marks = []
    t0 = time.perf_counter()
    now = 1_700_000_000.0
    for i in range(1, 1_000_001):
        proc(decode(spoofed(i)), now)
        now += 0.00002  # 50,000 spoofed packets/s: nothing expires
        if i in (100_000, 250_000, 500_000, 750_000, 1_000_000):
            marks.append((i, rss_mb()))
    took = time.perf_counter() - t0
    s = engine.stats
    line = ", ".join(f"{i // 1000}k: {mb:.0f} MB" for i, mb in marks)
    print(f"  {mode:<9} RSS before {before:.0f} MB; {line}  ({took:.1f} s, {took:.1f} us/packet)")
    print(
        f"  {'':<9} tracked {s['tracked']}, evicted {s['evicted']}; blocked {s['blocked']}, "
        f"evicted {s['blocked_evicted']}; offenders {s['offenders']}, evicted {s['offenders_evicted']}"
    )


def bytes_per_source() -> None:
    import tracemalloc

    n = 20_000
    for mode, cfg in (("tracked source (COUNT)", EngineConfig(scan_trigger=3)), ("blocked source + offender (BLOCK)", EngineConfig())):
        engine = Engine(cfg)
        pkts = [decode(spoofed(i)) for i in range(n)]
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i, p in enumerate(pkts):
            engine.process(p, 1000.0 + i * 1e-4)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        print(f"  {mode:<36} {used / n:6.0f} bytes each (tracemalloc, {n} sources)")


TIMING_CONFIGS = {
    "defaults": ("defaults (scan_trigger 0)", dict()),
    "counting": ("scan_trigger 3 + window 5/60s", dict(scan_trigger=3, window_ports=5, window_seconds=60.0)),
    # 2,000 sources: short, non-escalating blocks so that the decision mix stays mostly COUNT
    "short-blocks": (
        "scan_trigger 3 + window, 0.2 s blocks",
        dict(scan_trigger=3, window_ports=5, block_duration=0.2, escalation_factor=1.0),
    ),
}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        memory_child(sys.argv[2])
        return
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--time":  # one line, in a fresh process
        kind, (text, kw) = sys.argv[2], TIMING_CONFIGS[sys.argv[3]]
        two_step = sys.argv[4:] == ["two-step"]
        tag = " [two-step]" if two_step else " [pure Python]" if os.environ.get("NFSENTRY_PURE_PYTHON") else ""
        time_engine(EngineConfig(**kw), f"{kind}, {text}{tag}", kind, two_step)
        return
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the children's
    t_start = time.monotonic()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}"
        " (figures from a busy machine are noisy: compare the cpu columns)"
    )
    print(
        f"\nper queued packet: decode + classify + engine (Engine.process_raw on the raw bytes, as the daemon"
        f" calls it),\n{PACKETS:,} packets per line, timed in batches"
        f" of {BATCH}, each line in a fresh process\n(wall = elapsed, cpu = this thread's CPU time: the same unless"
        " other processes compete)"
    )
    for kind in ("uniform", "scanners"):
        for config in ("defaults", "counting"):
            subprocess.run([sys.executable, __file__, "--time", kind, config], check=True)
    subprocess.run([sys.executable, __file__, "--time", "few", "short-blocks"], check=True)
    print("for comparison, the same path in pure Python (NFSENTRY_PURE_PYTHON=1: no compiled fast path):")
    pure = dict(os.environ, NFSENTRY_PURE_PYTHON="1")
    for kind, config in (("uniform", "counting"), ("scanners", "defaults")):
        subprocess.run([sys.executable, __file__, "--time", kind, config], check=True, env=pure)
    print("and the two-step path (decode() -> Packet, Engine.process -> Decision for every packet) that replay and the unit tests use:")
    for kind, config in (("uniform", "counting"), ("scanners", "defaults")):
        subprocess.run([sys.executable, __file__, "--time", kind, config, "two-step"], check=True)
    print(
        f"\nNetfilterQueue callback shape ({CALLBACKS:,} calls each on a fake packet object, uniform mix,"
        " scan_trigger 3;\nthe C-to-Python crossing of the real binding comes on top of both)"
    )
    time_callbacks()
    print(f"\nmemory: 1,000,000 distinct spoofed sources, default cap max_sources={DEFAULT_MAX_SOURCES:,}")
    for mode in ("default", "counting"):
        subprocess.run([sys.executable, __file__, "--memory", mode], check=True)
    bytes_per_source()
    print(f"\nbench_core took {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
