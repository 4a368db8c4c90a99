"""Issue 16 row 15: `nfsentry replay` of a dual-stack capture reports the scans of both families
(the protected host's address is guessed per family), reads the common link types (Ethernet,
Linux cooked, pcapng) with the capture's timestamps, and its cost is linear in packets (the
blocked sources are a set, not a list scanned per packet)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from nfsentry import replay as R
from nfsentry.config import schema as C

V4, V6 = "198.18.0.1", "2001:db8::1"
T0 = 1_700_000_000.0
MACS = {"src": "02:00:00:00:00:02", "dst": "02:00:00:00:00:01"}


def config(tmp_path: Path, scan_trigger: int = 2) -> C.Config:
    p = tmp_path / "c.toml"
    p.write_text(
        f'[storage]\nstate_dir = "{tmp_path}/state"\n[daemon]\ncontrol_socket = "{tmp_path}/run/c.sock"\n'
        f'[logging]\njson_file = ""\nsyslog = false\n[detection]\nscan_trigger = {scan_trigger}\n'
    )
    return C.load(str(p), read_files=False)


def dual_stack_scans(link: str = "ether") -> list:
    """More IPv4 than IPv6 traffic (the old guess kept only the busiest address: IPv4); a SYN scan
    from an IPv4 scanner, a FIN scan from an IPv6 scanner in another /64, benign traffic."""
    from scapy.all import IP, TCP, Ether, IPv6
    from scapy.layers.l2 import CookedLinux

    def frame(l3):
        return Ether(**MACS) / l3 if link == "ether" else CookedLinux(proto=0x0800 if l3.version == 4 else 0x86DD) / l3

    pkts, t = [], T0
    for port in range(20, 30):
        pkts.append(frame(IP(src="198.18.7.2", dst=V4) / TCP(sport=50000, dport=port, flags="S")))
    for port in (110, 111, 112, 113):
        pkts.append(frame(IPv6(src="2001:db8:7::2", dst=V6) / TCP(sport=50001, dport=port, flags="F")))
    for p in pkts:
        t += 0.01
        p.time = t
    return pkts


def summary(events):
    return [(e["event"], e["network"], e["label"], e["port"]) for e in events]


EXPECTED = [
    ("detection", "198.18.7.2", "SYN", 22),
    ("block", "198.18.7.2", "SYN", 22),
    ("detection", "2001:db8:7::/64", "FIN", 112),
    ("block", "2001:db8:7::/64", "FIN", 112),
]


def test_dual_stack_capture_reports_both_families_without_local(tmp_path):
    from scapy.all import wrpcap

    cap = tmp_path / "dual.pcap"
    wrpcap(str(cap), dual_stack_scans())
    events = R.replay(str(cap), config(tmp_path))
    assert summary(events) == EXPECTED, summary(events)
    assert abs(events[0]["ts"] - (T0 + 0.03)) < 0.001 and abs(events[2]["ts"] - (T0 + 0.13)) < 0.001


def test_linux_cooked_and_pcapng_captures_give_the_same_decisions(tmp_path):
    from scapy.all import wrpcap
    from scapy.utils import wrpcapng

    sll = tmp_path / "any.pcap"
    wrpcap(str(sll), dual_stack_scans("sll"))  # tcpdump -i any
    ng = tmp_path / "dual.pcapng"
    wrpcapng(str(ng), dual_stack_scans())
    for cap in (sll, ng):
        events = R.replay(str(cap), config(tmp_path))
        assert summary(events) == EXPECTED, (cap, summary(events))
        assert abs(events[0]["ts"] - (T0 + 0.03)) < 0.001


def write_many_sources(path: Path, sources_per_family: int, packets_per_source: int) -> int:
    """Crafted SYNs (scapy templates, source address patched) from many IPv4 sources and as many
    IPv6 sources, each in its own /64, interleaved: every source sends ``packets_per_source``."""
    from scapy.all import IP, TCP, Ether, IPv6, PcapWriter

    t4 = bytes(Ether(**MACS) / IP(src="198.19.0.1", dst=V4) / TCP(sport=40000, dport=22, flags="S"))
    t6 = bytes(Ether(**MACS) / IPv6(src="2001:db8:100::5", dst=V6) / TCP(sport=40000, dport=23, flags="S"))
    base4 = int(ipaddress.ip_address("198.19.0.1"))
    base6 = int(ipaddress.ip_address("2001:db8:100::5"))
    w = PcapWriter(str(path), linktype=1, sync=False)
    w.write_header(None)
    n, usec = 0, 0
    for k in range(packets_per_source):
        for i in range(sources_per_family):
            usec += 7
            port = (20 + k).to_bytes(2, "big")
            src4 = (base4 + i).to_bytes(4, "big")
            src6 = (base6 + (i << 64)).to_bytes(16, "big")
            w.write_packet(t4[:26] + src4 + t4[30:36] + port + t4[38:], sec=int(T0) + usec // 10**6, usec=usec % 10**6)
            w.write_packet(t6[:22] + src6 + t6[38:56] + port + t6[58:], sec=int(T0) + usec // 10**6, usec=usec % 10**6)
            n += 2
    w.close()
    return n


def test_many_sources_of_both_families_are_linear(tmp_path):
    """24,000 sources (12,000 per family), 3 SYNs each: every source is blocked exactly once (its
    third packet never reaches the engine: the blocked set is consulted), in a time linear in the
    packets (the list scanned per packet took minutes for this)."""
    cap = tmp_path / "many.pcap"
    per_family = 12_000
    n = write_many_sources(cap, per_family, 3)
    t = time.monotonic()
    events = R.replay(str(cap), config(tmp_path, scan_trigger=1))
    took = time.monotonic() - t
    print(f"\nreplay: {n} packets from {2 * per_family} sources in {took:.1f}s")
    blocks = [e for e in events if e["event"] == "block"]
    v4 = {b["network"] for b in blocks if ":" not in b["network"]}
    v6 = {b["network"] for b in blocks if ":" in b["network"]}
    assert len(blocks) == 2 * per_family and len(v4) == per_family and len(v6) == per_family
    assert all(b["port"] == 21 for b in blocks)  # the second SYN blocks; the third is dropped
    assert "2001:db8:100::/64" in v6 and f"2001:db8:100:{per_family - 1:x}::/64" in v6
    assert took < 240, f"replay of {n} packets took {took:.0f}s: not linear"
