"""The NFLOG hand-off (daemon/nflog.py) without a kernel: what the listener thread receives waits
in a bounded backlog until the main thread's service drains it through the engine; reactions block
and report like the queue's; a netdev frame with a bad version is read as IPv4 (its source blocked);
NFLOG copies are never checksum-checked (offloaded checksums are copied as they are)."""

from __future__ import annotations

from scapy.all import IP, TCP, IPOption_LSRR, raw

from nfsentry.config import schema as C
from nfsentry.daemon import daemon as D
from nfsentry.daemon import nflog as N


class Ledger:
    def __init__(self):
        self.blocked = []

    def block_detected(self, network, duration):
        self.blocked.append((network, duration))


def make(monkeypatch):
    monkeypatch.setattr(D, "never_block_networks", lambda cfg: ["198.18.0.1/32"])
    d = D.Daemon(C.defaults())
    d.build_core()
    d.ledger = Ledger()
    d.early = N.EarlyPackets(d)
    return d


def events(d):
    out = []
    while not d.events.empty():
        kind, obj, _ = d.events.get_nowait()
        out.append((kind, obj))
    return out


def test_logged_packets_reach_the_engine_on_the_main_thread_and_block(monkeypatch):
    d = make(monkeypatch)
    lsrr = raw(IP(src="198.18.0.2", dst="198.18.0.1", options=[IPOption_LSRR(routers=["198.18.0.9"])]) / TCP(dport=7, flags="S", chksum=1))
    syn = raw(IP(src="198.18.0.3", dst="198.18.0.1") / TCP(dport=7, flags="S"))
    bad_version = bytes([0x55]) + syn[1:]
    d.early._on_packet(2, 0x0800, lsrr)  # from prerouting (family ipv4)
    d.early._on_packet(N.NFPROTO_NETDEV, N.ETH_P_IP, bad_version)  # from the netdev table
    own = bytes([0x44]) + raw(IP(src="198.18.0.1", dst="198.18.0.1") / TCP(dport=7))[1:]
    d.early._on_packet(N.NFPROTO_NETDEV, N.ETH_P_IP, own)  # a never-block source: ignored
    assert len(d.early.backlog) == 3 and d.verdicts.pending
    assert d.ledger.blocked == []  # nothing happens on the NFLOG thread
    d.service()
    assert not d.early.backlog and not d.verdicts.pending
    assert d.ledger.blocked == [("198.18.0.2", 3600.0), ("198.18.0.3", 3600.0)]
    reported = events(d)
    kinds = [(k, o.network) for k, o in reported]
    assert kinds == [("detection", "198.18.0.2"), ("block", "198.18.0.2"), ("detection", "198.18.0.3"), ("block", "198.18.0.3")]
    first, second = reported[0][1], reported[2][1]
    assert first.ip_options == ("LSRR",) and first.label == "SYN"  # a bad checksum, reacted to all the same
    assert second.label == "MALFORMED" and second.malformed == "bad ip version 5 in an ipv4 frame"
    assert d.engine.stats["badsum"] == 0 and d.engine.stats["ignore"] == 1
    assert d.counters["nflog_packets"] == 3 and d.counters["blocks"] == 2


def test_log_mode_alerts_and_the_backlog_is_bounded(monkeypatch):
    d = make(monkeypatch)
    d.cfg["response"]["tcp"] = "log"
    d.engine.configure(D.engine_config(d.cfg))
    d.verdicts.build_lean_verdicts()
    syn = bytes([0x44]) + raw(IP(src="198.18.0.4", dst="198.18.0.1") / TCP(dport=7, flags="S"))[1:]
    for _ in range(N.MAX_BACKLOG + 5):
        d.early._on_packet(N.NFPROTO_NETDEV, N.ETH_P_IP, syn)
    assert len(d.early.backlog) == N.MAX_BACKLOG and d.counters["nflog_lost"] == 5
    d.service()
    assert d.ledger.blocked == []
    assert [k for k, _ in events(d)][:1] == ["detection"] and d.counters["detections"] >= 1
