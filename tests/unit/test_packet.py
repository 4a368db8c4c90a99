"""packet.decode: every field, IPv4 options, IPv6 extension headers, fragments, malformed input."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import (
    AH,
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_LSRR,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_SSRR,
    IPOption_Timestamp,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    raw,
)

from nfsentry.core.packet import MAX_EXT_HEADERS, Packet, _decode, addr_text, decode

A4, B4 = "198.18.0.2", "198.18.0.1"
A6, B6 = "2001:db8:1::2", "2001:db8::1"


def n4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


def n6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def both(data: bytes) -> Packet:
    """Decode through the public entry point, and check the general decoder agrees."""
    p = decode(data)
    assert p == _decode(data), "fast path and general decoder disagree"
    return p


# --- well-formed packets -----------------------------------------------------------------------


def test_ipv4_tcp_syn_fields():
    data = raw(IP(src=A4, dst=B4, ttl=51) / TCP(sport=40000, dport=22, flags="S", window=1024, options=[("MSS", 1460)]))
    p = both(data)
    assert (p.family, p.src, p.dst, p.proto) == (4, n4(A4), n4(B4), 6)
    assert (p.sport, p.dport, p.flags, p.window, p.ttl) == (40000, 22, 0x02, 1024, 51)
    assert p.tcp_options == b"\x02\x04\x05\xb4"
    assert p.payload_offset == 20 + 24 == len(data)
    assert (p.ip_options, p.ext_headers, p.frag_offset, p.more_frags, p.malformed) == ((), (), 0, False, None)
    assert p.has_transport


def test_ipv4_tcp_payload_offset_points_at_data():
    data = raw(IP(src=A4, dst=B4) / TCP(dport=21, flags="PA") / b"USER x\r\n")
    p = both(data)
    assert data[p.payload_offset :] == b"USER x\r\n"
    assert p.flags == 0x18 and p.tcp_options == b""


def test_ipv4_udp():
    data = raw(IP(src=A4, dst=B4) / UDP(sport=5353, dport=161) / b"probe")
    p = both(data)
    assert (p.family, p.proto, p.sport, p.dport, p.flags, p.window) == (4, 17, 5353, 161, 0, 0)
    assert data[p.payload_offset :] == b"probe"


def test_ipv4_udp_empty_payload_and_trailing_padding():
    data = raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=7))
    assert len(data) == 28
    p = both(data)
    assert (p.proto, p.dport, p.malformed) == (17, 7, None)
    padded = both(data + b"\x00" * 18)  # bytes beyond the total length are ignored
    assert padded == p


def test_ipv6_tcp_and_udp():
    p = both(raw(IPv6(src=A6, dst=B6, hlim=33) / TCP(sport=1234, dport=443, flags="F")))
    assert (p.family, p.src, p.dst, p.proto, p.sport, p.dport, p.flags, p.ttl) == (6, n6(A6), n6(B6), 6, 1234, 443, 0x01, 33)
    assert p.payload_offset == 60
    u = both(raw(IPv6(src=A6, dst=B6) / UDP(sport=9, dport=53) / b"x"))
    assert (u.proto, u.sport, u.dport, u.payload_offset, u.malformed) == (17, 9, 53, 48, None)


def test_other_protocols_have_no_ports():
    p = both(raw(IP(src=A4, dst=B4) / ICMP()))
    assert (p.proto, p.sport, p.dport, p.payload_offset, p.malformed) == (1, 0, 0, 20, None)
    assert not p.has_transport


def test_memoryview_and_bytearray_input():
    data = raw(IP(src=A4, dst=B4) / TCP(dport=80, flags="S"))
    assert decode(memoryview(data)) == decode(bytearray(data)) == decode(data)


def test_addr_text():
    assert addr_text(n4(A4)) == A4
    assert addr_text(n6(A6)) == A6
    assert addr_text(b"") == ""


# --- IPv4 options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt,name",
    [
        (IPOption_RR(routers=["192.0.2.1"]), "RR"),
        (IPOption_LSRR(routers=["192.0.2.1"]), "LSRR"),
        (IPOption_SSRR(routers=["192.0.2.1"]), "SSRR"),
        (IPOption_Timestamp(flg=0, timestamp=[0]), "TS"),
        (IPOption_Router_Alert(), "opt-148"),
    ],
)
def test_ipv4_option_names(opt, name):
    data = raw(IP(src=A4, dst=B4, options=[opt]) / TCP(sport=1, dport=79, flags="S"))
    p = both(data)
    assert p.ip_options == (name,)
    assert (p.dport, p.flags, p.malformed) == (79, 0x02, None)


def test_ipv4_several_options_and_padding_not_reported():
    opts = bytes([1, 7, 7, 4, 0, 0, 0, 0, 1, 131, 3, 4, 0])  # NOP, RR(len 7), NOP, LSRR(len 3), EOL
    opts += b"\x00" * (-len(opts) % 4)
    data = _ip4(opts, _tcp(22, 0x02))
    p = both(data)
    assert p.ip_options == ("RR", "LSRR")
    assert p.dport == 22 and p.malformed is None


def _tcp(dport: int, flags: int, doff_words: int = 5, options: bytes = b"", sport: int = 40000) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff_words << 4, flags, 1024, 0, 0) + options


def _ip4(
    options: bytes, payload: bytes, proto: int = 6, ihl: int | None = None, tot: int | None = None, frag: int = 0, ver: int = 4
) -> bytes:
    ihl = (20 + len(options)) // 4 if ihl is None else ihl
    tot = 20 + len(options) + len(payload) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", (ver << 4) | ihl, 0, tot, 1, frag, 64, proto, 0, n4(A4), n4(B4))
    return hdr + options + payload


@pytest.mark.parametrize(
    "opts,reason",
    [
        (bytes([7, 1, 0, 0]), "ipv4 option RR has bad length 1"),
        (bytes([7, 12, 0, 0]), "ipv4 option RR runs past the header"),
        (bytes([1, 1, 1, 68]), "ipv4 option TS runs past the header"),
    ],
)
def test_ipv4_bad_options_are_malformed(opts, reason):
    p = both(_ip4(opts, _tcp(22, 0x02)))
    assert p.malformed == reason
    assert p.src == n4(A4)  # still attributable


# --- IPv6 extension headers ------------------------------------------------------------------------


def test_ipv6_extension_headers_walked_to_tcp():
    pkt = (
        IPv6(src=A6, dst=B6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(type=0, addresses=["2001:db8::9"])
        / IPv6ExtHdrDestOpt()
        / TCP(sport=5, dport=25, flags="S")
    )
    p = both(raw(pkt))
    assert p.ext_headers == (0, 43, 60)
    assert p.ip_options == ("HBH", "RH0", "DSTOPTS")
    assert (p.proto, p.dport, p.flags, p.malformed) == (6, 25, 0x02, None)
    assert p.payload_offset == len(raw(pkt))


def test_ipv6_ah_length_rule():
    # AH: (payload len + 2) * 4 bytes; scapy's AH with 12 bytes of ICV -> 24 bytes
    ah = struct.pack("!BBHII", 6, 4, 0, 0x100, 1) + b"\x00" * 12
    tcp = _tcp(110, 0x01)
    data = struct.pack("!IHBB16s16s", 6 << 28, len(ah) + len(tcp), 51, 64, n6(A6), n6(B6)) + ah + tcp
    p = both(data)
    assert p.ext_headers == (51,)
    assert (p.proto, p.dport, p.flags, p.ip_options, p.malformed) == (6, 110, 0x01, (), None)


def test_ipv6_first_fragment_has_transport_and_later_fragments_do_not():
    first = raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1, id=7) / UDP(sport=1, dport=69, len=3000) / (b"x" * 64))
    p = both(first)
    assert (p.proto, p.dport, p.more_frags, p.frag_offset, p.ext_headers, p.malformed) == (17, 69, True, 0, (44,), None)
    later = raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=3, m=0, id=7, nh=6) / (b"\x00\x16" * 20))
    q = both(later)
    assert (q.proto, q.sport, q.dport, q.flags, q.frag_offset, q.more_frags) == (6, 0, 0, 0, 24, False)
    assert q.payload_offset == 48 and q.malformed is None and not q.has_transport


def test_ipv6_no_next_header():
    data = struct.pack("!IHBB16s16s", 6 << 28, 0, 59, 64, n6(A6), n6(B6))
    p = both(data)
    assert (p.proto, p.malformed, p.dport) == (59, None, 0)


def _v6(chain: list[tuple[int, bytes]], final: int, payload: bytes) -> bytes:
    """chain: [(header type, body)] where body already has its next-header byte patched below."""
    body = b""
    types = [t for t, _ in chain] + [final]
    for i, (t, b) in enumerate(chain):
        body += bytes([types[i + 1]]) + b[1:]
    body += payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), types[0], 64, n6(A6), n6(B6)) + body


DST8 = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # dest-options header, 8 bytes, PadN


def test_ipv6_too_many_extension_headers_is_malformed():
    ok = _v6([(60, DST8)] * MAX_EXT_HEADERS, 6, _tcp(22, 0x02))
    assert both(ok).malformed is None and both(ok).dport == 22
    bad = _v6([(60, DST8)] * (MAX_EXT_HEADERS + 1), 6, _tcp(22, 0x02))
    p = both(bad)
    assert p.malformed == f"more than {MAX_EXT_HEADERS} ipv6 extension headers"
    assert p.src == n6(A6)


def test_ipv6_hop_by_hop_not_first_is_malformed():
    p = both(_v6([(60, DST8), (0, DST8)], 6, _tcp(22, 0x02)))
    assert p.malformed == "ipv6 hop-by-hop header not first"


def test_ipv6_extension_header_past_packet_is_malformed():
    long_len = bytes([6, 5]) + b"\x00" * 6  # claims 48 bytes, has 8
    p = both(_v6([(60, long_len)], 6, b""))
    assert p.malformed == "ipv6 extension header 60 runs past the packet"
    p = both(_v6([(60, DST8)], 6, b"")[:-3])
    assert p.malformed is not None


# --- IPv4 fragments -------------------------------------------------------------------------------


def test_ipv4_first_fragment_and_later_fragment():
    first = _ip4(b"", _tcp(22, 0x02), frag=0x2000)
    p = both(first)
    assert (p.more_frags, p.frag_offset, p.dport, p.flags, p.malformed) == (True, 0, 22, 2, None)
    later = _ip4(b"", b"\x00\x16" * 8, frag=0x0003)  # offset 3*8 = 24 bytes, last fragment
    q = both(later)
    assert (q.frag_offset, q.more_frags, q.sport, q.dport, q.flags, q.proto) == (24, False, 0, 0, 0, 6)
    assert q.payload_offset == 20 and q.malformed is None


def test_ipv4_tiny_first_fragment_is_malformed():
    p = both(_ip4(b"", _tcp(22, 0x02)[:8], frag=0x2000))
    assert p.malformed == "truncated tcp header (8 bytes)"
    assert (p.sport, p.dport) == (40000, 22)  # ports still reported


def test_ipv4_fragment_udp_length_may_exceed_first_fragment():
    udp = struct.pack("!HHHH", 1, 161, 4000, 0) + b"x" * 32
    p = both(_ip4(b"", udp, proto=17, frag=0x2000))
    assert (p.dport, p.malformed) == (161, None)


def test_ipv4_fragment_beyond_64k_is_malformed():
    p = both(_ip4(b"", b"x" * 16, frag=0x1FFF))
    assert p.malformed == "ipv4 fragment ends beyond 65535 bytes"


# --- malformed inputs --------------------------------------------------------------------------------

MALFORMED = [
    (b"", "empty packet"),
    (b"\x45", "truncated ipv4 header (1 bytes)"),
    (b"\x55" + b"\x00" * 39, "bad ip version 5"),
    (b"\x00" * 40, "bad ip version 0"),
    (_ip4(b"", _tcp(22, 2), ihl=4), "ipv4 ihl 4 < 5"),
    (_ip4(b"", _tcp(22, 2), ihl=15), "ipv4 header (60 bytes) longer than packet (40)"),
    (_ip4(b"", _tcp(22, 2), tot=12), "ipv4 total length 12 shorter than header (20)"),
    (_ip4(b"", _tcp(22, 2), tot=80), "truncated ipv4 packet (total length 80 > 40 bytes)"),
    (_ip4(b"", _tcp(22, 2)[:12]), "truncated tcp header (12 bytes)"),
    (_ip4(b"", _tcp(22, 2, doff_words=4)), "tcp data offset 4 < 5"),
    (_ip4(b"", _tcp(22, 2, doff_words=7)), "tcp header (28 bytes) longer than packet (20)"),
    (_ip4(b"", struct.pack("!HHHH", 1, 53, 4, 0), proto=17), "bad udp length 4 (8 bytes present)"),
    (_ip4(b"", struct.pack("!HHHH", 1, 53, 9, 0), proto=17), "bad udp length 9 (8 bytes present)"),
    (_ip4(b"", b"\x00\x01\x00", proto=17), "truncated udp header (3 bytes)"),
    (b"\x60" + b"\x00" * 30, "truncated ipv6 header (31 bytes)"),
    (struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, n6(A6), n6(B6)), "truncated ipv6 packet (payload length 20 > 0 bytes)"),
]


@pytest.mark.parametrize("data,reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_reasons(data, reason):
    p = both(data)
    assert p.malformed == reason
    assert isinstance(p, Packet)
    assert not p.has_transport


def test_malformed_keeps_what_was_decoded():
    p = both(_ip4(b"", _tcp(22, 2, doff_words=4)))
    assert (p.family, p.src, p.dst, p.proto, p.sport, p.dport, p.flags) == (4, n4(A4), n4(B4), 6, 40000, 22, 2)


def test_ipv6_udp_length_zero_is_allowed_only_for_ipv6():
    udp = struct.pack("!HHHH", 1, 53, 0, 0) + b"q"
    v6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, n6(A6), n6(B6)) + udp
    assert both(v6).malformed is None
    assert both(_ip4(b"", udp, proto=17)).malformed == "bad udp length 0 (9 bytes present)"


# --- property tests: never raises, fast path == reference decoder ---------------------------------

VALID = [
    raw(IP(src=A4, dst=B4) / TCP(sport=40000, dport=22, flags="S", window=1024, options=[("MSS", 1460)])),
    raw(IP(src=A4, dst=B4) / TCP(dport=80, flags="FPU")),
    raw(IP(src=A4, dst=B4, options=[IPOption_RR(routers=["192.0.2.1"])]) / TCP(dport=1, flags="")),
    raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=161) / b"abc"),
    raw(IP(src=A4, dst=B4, flags="MF") / UDP(sport=1, dport=161) / b"abc"),
    raw(IPv6(src=A6, dst=B6) / TCP(dport=443, flags="SEC", options=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)])),
    raw(IPv6(src=A6, dst=B6) / UDP(dport=53) / b"x"),
    raw(
        IPv6(src=A6, dst=B6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
        / IPv6ExtHdrFragment(m=1)
        / IPv6ExtHdrDestOpt()
        / TCP(dport=25)
    ),
    raw(IPv6(src=A6, dst=B6) / AH(nh=6, payloadlen=4, icv=b"\x00" * 12) / TCP(dport=25)),
]


def _check(data: bytes) -> Packet:
    p = _decode(data)  # the reference decoder must not raise either
    assert isinstance(p, Packet)
    assert decode(data) == p
    assert p.malformed is None or isinstance(p.malformed, str)
    assert 0 <= p.payload_offset <= max(len(data), 0) or p.malformed
    if p.malformed is None and p.family:
        assert len(p.src) == len(p.dst) == (4 if p.family == 4 else 16)
    return p


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data):
    _check(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=100).map(lambda b: b"\x45" + b))
def test_random_ipv4_looking_bytes_never_raise(data):
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=40, max_size=140).map(lambda b: b"\x60" + b[1:]))
def test_random_ipv6_looking_bytes_never_raise(data):
    _check(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 200)),
)
def test_mutated_and_truncated_valid_packets_never_raise(base, edits, cut):
    data = bytearray(base)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    _check(bytes(data))


@pytest.mark.parametrize("data", VALID)
def test_valid_samples_decode_cleanly(data):
    p = _check(data)
    assert p.malformed is None


def test_common_shapes_take_the_fast_path(monkeypatch):
    """Plain TCP/UDP over IPv4 (no options) / IPv6 (no extension headers) never reach the general
    decoder; everything else does (the equivalence tests above then cover both)."""
    import nfsentry.core.packet as packet

    calls = []
    real = packet._decode
    monkeypatch.setattr(packet, "_decode", lambda raw: calls.append(raw) or real(raw))
    for data in (VALID[0], VALID[1], VALID[3], VALID[5], VALID[6]):
        packet.decode(data)
    assert calls == []
    for data in (VALID[2], VALID[4], VALID[7]):
        packet.decode(data)
    assert len(calls) == 3
