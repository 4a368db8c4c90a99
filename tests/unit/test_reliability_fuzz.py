"""Coverage-guided fuzzing (atheris/libFuzzer) of everything a queued packet goes through: the
decoder, the classifier, the engine and the daemon's verdict path (``Daemon.on_packet`` with a
fake NFQUEUE packet). Any exception escaping, or a packet without exactly one verdict, fails.

hypothesis already fuzzes the decoder's structure (tests/unit/test_packet.py); atheris adds
coverage guidance from real IPv4/IPv6/TCP/UDP seeds. Bounded: a fixed number of runs and a time
limit. Skipped when atheris is not installed (``pip install atheris``; test extras).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris not installed (pip install atheris)")

REPO = Path(__file__).resolve().parents[2]

HARNESS = textwrap.dedent(r"""
    import sys, tempfile
    import atheris

    # coverage guidance from nfsentry's own code (the packet path); the standard library it imports
    # is not the subject, and instrumenting it cost ~10 s of start-up and most of each run
    with atheris.instrument_imports(include=["nfsentry"]):
        from nfsentry.core import packet
        from nfsentry.core import classify
        from nfsentry.core import engine
        from nfsentry.daemon import daemon
        from nfsentry.daemon.ftpqueue import FtpQueue
        from nfsentry.config.derive import engine_config
        from nfsentry.ledger.neverblock import never_block_networks
        from nfsentry.config import schema as config
        from nfsentry.core.addrs import PrefixSet

    tmp = tempfile.mkdtemp()
    cfg = config.validate({"storage": {"state_dir": tmp + "/state"}, "logging": {"json_file": "", "syslog": False},
                           "ignore": {"own_addresses": False, "gateways": False, "resolvers": False,
                                      "addresses": ["198.18.0.4", "2001:db8::4"]},
                           "detection": {"window_ports": 3, "max_sources": 100}})

    class Nft:
        def block(self, net, timeout=0):
            return True

        def withdraw(self, nets):  # kernel-side blocks the engine disagreed with
            pass

    d = daemon.Daemon(cfg, foreground=False)
    d.never_block = never_block_networks(cfg)
    d.engine = d.verdicts.engine = engine.Engine(engine_config(cfg), ignore=PrefixSet(d.never_block))
    d.use_nft(Nft())
    d.ftpq = FtpQueue(d)  # the main thread's duties (Daemon.service) expire its expectations

    class Pkt:
        __slots__ = ("payload", "n")
        def __init__(self, payload):
            self.payload, self.n = payload, 0
        def get_payload(self):
            return self.payload
        def accept(self):
            self.n += 1
        def drop(self):
            self.n += 1

    clock = [1000.0]

    def one(data):
        p = packet.decode(data)            # never raises
        classify.classify(p)
        d.engine.process(p, clock[0])
        clock[0] += 0.01
        q = Pkt(data)
        d.verdicts.on_packet(q)
        if q.n != 1:
            raise AssertionError(f"{q.n} verdicts for {data.hex()}")
        c = d.counters  # each part's own dict: Counters.total() would sum them all on every run
        if c.main["errors"] or c.ftp["errors"] or c.worker["errors"] or c.nflog["errors"]:
            raise AssertionError(f"internal error on {data.hex()}")
        while not d.events.empty():
            d.events.get_nowait()

    # The seeds, as scapy built them (kept as bytes: importing scapy cost seconds of every run):
    #   IP(src="198.18.0.2", dst="198.18.0.1", options=b"\x07\x07\x04" + b"\0" * 5) / TCP(dport=22, flags="S", options=[("MSS", 1460), ("WScale", 7)])
    #   IP(src="198.18.0.2", dst="198.18.0.1", flags="MF", frag=0) / UDP(dport=53) / b"x"
    #   IP(src="198.18.0.2", dst="198.18.0.1") / ICMP()
    #   IPv6(src="2001:db8::2", dst="2001:db8::1") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=0) / TCP(dport=7, flags="FPU")
    #   IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP(dport=161) / b"pub"
    SEEDS = [bytes.fromhex(h) for h in (
        "47000038000100004006e190c6120002c6120001070704000000000000140016000000000000000070022000d1cd0000020405b403030700",
        "4500001d000120004011cea7c6120002c6120001003500350009fb4978",
        "4500001c000100004001eeb8c6120002c61200010800f7ff00000000",
        "600000000024004020010db800000000000000000000000220010db80000000000000000000000012c0001040000000006000000"
        "0000000000140007000000000000000050292000342c0000",
        "60000000000b114020010db800000000000000000000000220010db8000000000000000000000001003500a1000bd117707562",
    )]

    def seeds():
        return SEEDS

    def TestOneInput(data):
        one(data)

    if __name__ == "__main__":
        corpus = tempfile.mkdtemp()
        for i, s in enumerate(seeds()):
            open(f"{corpus}/seed{i}", "wb").write(s)
            one(s)
        atheris.Setup([sys.argv[0], *sys.argv[1:], corpus], TestOneInput)
        atheris.Fuzz()
""")


# Inputs per run. Until issue 14 the run was bounded by time (15 s) and reached ~28,000 inputs on a
# busy machine (1,700/s: the standard library was instrumented too). Only nfsentry's code is
# instrumented now (4,200/s busy): 60,000 inputs is more than any earlier run got, in less time.
RUNS = 60_000


def test_atheris_fuzz_of_the_packet_path(tmp_path):
    script = tmp_path / "fuzz_packet_path.py"
    script.write_text(HARNESS)
    res = subprocess.run(
        # RUNS inputs, or at most 15 s (a very busy machine); see RUNS
        [sys.executable, str(script), f"-runs={RUNS}", "-max_total_time=15", "-max_len=256", "-rss_limit_mb=1024", "-print_final_stats=1"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    tail = (res.stdout + res.stderr)[-3000:]
    assert res.returncode == 0, tail
    assert "Done" in tail or "stat::number_of_executed_units" in tail, tail
