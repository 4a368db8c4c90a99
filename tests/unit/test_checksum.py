"""Bad TCP/UDP checksums (issue 17 part 2): core.packet.bad_checksum on crafted bytes, and the
engine's rule: a packet that would react but carries a wrong checksum is counted (stats["badsum"]),
never reacted to; a right checksum reacts as before; packets that would not react are not checked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inet_checksum import fill_checksum
from scapy.all import IP, TCP, UDP, IPOption_LSRR, IPOption_RR, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, raw

from nfsentry.core.engine import Action, Engine, EngineConfig
from nfsentry.core.packet import bad_checksum, decode, decode_ipv4

S4, D4, S6, D6 = "198.18.0.2", "198.18.0.1", "2001:db8::2", "2001:db8::1"


def corrupt(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x5A
    return bytes(b)


GOOD = {
    "v4 tcp syn": IP(src=S4, dst=D4) / TCP(dport=7, flags="S"),
    "v4 tcp options+data": IP(src=S4, dst=D4) / TCP(dport=7, flags="PA", options=[("MSS", 1460), ("NOP", None)]) / b"odd",
    "v4 udp": IP(src=S4, dst=D4) / UDP(dport=9) / b"abc",
    "v4 ip options RR": IP(src=S4, dst=D4, options=[IPOption_RR()]) / TCP(dport=7, flags="S"),
    "v6 tcp": IPv6(src=S6, dst=D6) / TCP(dport=7, flags="S") / b"x",
    "v6 udp": IPv6(src=S6, dst=D6) / UDP(dport=9) / b"abcde",
    "v6 hop-by-hop": IPv6(src=S6, dst=D6) / IPv6ExtHdrHopByHop() / UDP(dport=9) / b"q",
}


@pytest.mark.parametrize("name", GOOD)
def test_right_checksums_are_not_bad_and_one_flipped_byte_is(name):
    data = raw(GOOD[name])
    assert bad_checksum(data) is False
    assert bad_checksum(corrupt(data)) is True  # a payload or header byte of the segment
    assert bad_checksum(corrupt(data, len(data) - 2)) is True
    # the decoded packet may be passed in (the engine's fast shapes decode only here)
    assert bad_checksum(corrupt(data), decode(corrupt(data))) is True


@pytest.mark.parametrize("name", GOOD)
def test_the_verifier_agrees_with_an_independent_word_loop(name):
    data = raw(GOOD[name])
    pkt = decode(data)
    start = pkt.payload_offset - (20 + len(pkt.tcp_options) if pkt.proto == 6 else 8)
    at = start + (16 if pkt.proto == 6 else 6)
    zeroed = data[:at] + b"\x12\x34" + data[at + 2 :]
    assert bad_checksum(zeroed) is True
    assert fill_checksum(zeroed) == data and bad_checksum(fill_checksum(zeroed)) is False


def test_what_nmap_badsum_and_hping3_b_send_is_bad():
    # nmap --badsum: a wrong checksum on a SYN / UDP probe; hping3 -b: the same for its packets
    for pkt in (
        IP(src=S4, dst=D4) / TCP(dport=7, flags="S", chksum=0xBEEF),
        IP(src=S4, dst=D4) / UDP(dport=9, chksum=0xBEEF),
        IPv6(src=S6, dst=D6) / TCP(dport=7, flags="S", chksum=0xBEEF),
        IPv6(src=S6, dst=D6) / UDP(dport=9, chksum=1),
    ):
        assert bad_checksum(raw(pkt)) is True, pkt.summary()


def test_what_cannot_be_verified_is_never_called_bad():
    udp0_v4 = raw(IP(src=S4, dst=D4) / UDP(dport=9, chksum=0))  # IPv4: 0 means "no checksum"
    lsrr = raw(IP(src=S4, dst=D4, options=[IPOption_LSRR(routers=["198.18.0.9"])]) / TCP(dport=7, flags="S", chksum=1))
    rh = raw(IPv6(src=S6, dst=D6) / IPv6ExtHdrRouting(addresses=["2001:db8::9"]) / TCP(dport=7, chksum=1))
    frag = raw(IPv6(src=S6, dst=D6) / IPv6ExtHdrFragment(m=1) / TCP(dport=7, chksum=1))
    syn = raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S", chksum=1))
    truncated = syn[:-4]  # a copy shorter than the packet: malformed, nothing to sum
    icmp = raw(IP(src=S4, dst=D4, proto=1) / b"\x08\x00\x00\x00")
    for data in (udp0_v4, lsrr, rh, frag, truncated, icmp, b"", b"\x45"):
        assert bad_checksum(data) is False, data.hex()
    # IPv6 forbids a zero UDP checksum (RFC 8200): the stack drops it
    assert bad_checksum(raw(IPv6(src=S6, dst=D6) / UDP(dport=9, chksum=0))) is True


def test_decode_ipv4_reads_a_bad_version_frame_as_ipv4():
    data = raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S"))
    for version in (0, 5, 6, 15):
        p = decode_ipv4(bytes([version << 4 | 5]) + data[1:])
        assert p.family == 4 and p.src == bytes([198, 18, 0, 2]) and p.proto == 6
        assert p.malformed == f"bad ip version {version} in an ipv4 frame"
    assert decode_ipv4(data) == decode(data)
    ihl4 = decode_ipv4(bytes([0x44]) + data[1:])
    assert ihl4.malformed == "ipv4 ihl 4 < 5" and ihl4.src == bytes([198, 18, 0, 2])
    assert decode_ipv4(b"\x65\x00").malformed.startswith("bad ip version 6")


# == the engine ==========================================================================================
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    "probe",
    [
        IP(src=S4, dst=D4) / TCP(dport=7, flags="S"),
        IP(src=S4, dst=D4) / UDP(dport=9),
        IP(src=S4, dst=D4) / TCP(dport=7, flags=""),  # NULL: an instant label
        IPv6(src=S6, dst=D6) / TCP(dport=7, flags="S"),
        IPv6(src=S6, dst=D6) / UDP(dport=9) / b"z",
    ],
    ids=["v4-syn", "v4-udp", "v4-null", "v6-syn", "v6-udp"],
)
def test_a_bad_checksum_is_counted_never_reacted_to(compiled, probe):
    e = Engine(EngineConfig(scan_trigger=0), compiled=compiled)
    good = raw(probe)
    bad = corrupt(good)
    for i in range(5):
        r = e.process_raw(bad, 100.0 + i)
        assert r == (int(Action.COUNT) << 8 | decode(good).proto), r
    assert e.stats["badsum"] == 5 and e.stats["block"] == 0 and e.stats["alert"] == 0
    assert not e.is_blocked(S4 if probe.version == 4 else S6, 200.0)
    # counted as hits, like any counted packet; the first right one reacts
    d = e.process_raw(good, 110.0)
    assert d.action == Action.BLOCK and d.hits == 6
    assert e.stats["badsum"] == 5


def test_log_mode_never_alerts_on_a_bad_checksum():
    e = Engine(EngineConfig(scan_trigger=0, respond={"tcp": "log", "udp": "log"}))
    bad = corrupt(raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S")))
    assert e.process_raw(bad, 1.0) == int(Action.COUNT) << 8 | 6
    assert e.stats["alert"] == 0 and e.stats["badsum"] == 1


def test_packets_that_would_not_react_are_not_checked():
    e = Engine(EngineConfig(scan_trigger=3))
    bad = corrupt(raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S")))
    for i in range(3):
        e.process_raw(bad, 1.0 + i)
    assert e.stats["badsum"] == 0 and e.stats["count"] == 3
    e.process_raw(bad, 5.0)  # the fourth would react: now it is checked
    assert e.stats["badsum"] == 1 and e.stats["block"] == 0


def test_process_without_bytes_checks_nothing():
    # Engine.process(pkt) has no bytes (replay, the NFLOG path): it reacts as before
    e = Engine(EngineConfig(scan_trigger=0))
    bad = corrupt(raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S")))
    assert e.process(decode(bad), 1.0).action == Action.BLOCK
    assert e.stats["badsum"] == 0


def test_a_blocked_source_still_drops_whatever_its_checksum():
    e = Engine(EngineConfig(scan_trigger=0))
    e.mark_blocked(S4, 1e9)
    bad = corrupt(raw(IP(src=S4, dst=D4) / TCP(dport=7, flags="S")))
    assert e.process_raw(bad, 1.0) == int(Action.DROP) << 8 | 6
    assert e.stats["badsum"] == 0


_SEEDS = [fill_checksum(raw(p)) for p in GOOD.values()] + [
    raw(IP(src=S4, dst=D4) / UDP(dport=9, chksum=0) / b"xy"),
    raw(IPv6(src=S6, dst=D6) / UDP(dport=9, chksum=0)),
    raw(IP(src=S4, dst=D4, flags="MF") / TCP(dport=7)),
]


@settings(max_examples=1500, deadline=None)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 120)),
    extra=st.binary(max_size=6),
)
def test_the_fast_shapes_read_from_the_bytes_agree_with_the_decoded_path(seed, edits, cut, extra):
    data = bytearray(seed)
    for at, value in edits:
        if data:
            data[at % len(data)] = value
    data = bytes(data[:cut] if cut is not None else data) + extra
    assert bad_checksum(data) == bad_checksum(data, decode(data))
