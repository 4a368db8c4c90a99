"""classify: the flag table (every label), ECN bits, flag strings, SYN hints, findings."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_SSRR, IPv6, IPv6ExtHdrFragment, raw

from nfsentry.core import classify as C
from nfsentry.core.packet import decode

A4, B4 = "198.18.0.2", "198.18.0.1"


def tcp(flags, **kw) -> object:
    return decode(raw(IP(src=A4, dst=B4) / TCP(sport=40000, dport=22, flags=flags, **kw)))


@pytest.mark.parametrize(
    "flags,label,letters",
    [
        ("S", "SYN", "S"),
        ("F", "FIN", "F"),
        ("", "NULL", ""),
        ("FPU", "XMAS", "FPU"),
        ("FSRPAU", "FULL-XMAS", "FSRPAU"),
        ("A", "ACK", "A"),
        ("FA", "MAIMON", "FA"),
        ("SR", "UNKNOWN", "SR"),
        ("SF", "UNKNOWN", "FS"),
        ("SA", "UNKNOWN", "SA"),
        ("R", "UNKNOWN", "R"),
        ("FPUA", "UNKNOWN", "FPAU"),
        ("PA", "UNKNOWN", "PA"),
    ],
)
def test_every_label(flags, label, letters):
    p = tcp(flags)
    assert C.classify(p) == label
    assert C.FLAG_STRINGS[p.flags] == C.flag_string(p.flags) == letters


def test_udp_malformed_fragment_and_other_protocols():
    assert C.classify(decode(raw(IP(src=A4, dst=B4) / UDP(dport=161)))) == "UDP"
    assert C.classify(decode(raw(IP(src=A4, dst=B4) / TCP(dport=22))[:30])) == "MALFORMED"
    assert C.classify(decode(b"")) == "MALFORMED"
    later = decode(raw(IPv6(src="2001:db8::2", dst="2001:db8::1") / IPv6ExtHdrFragment(offset=8, nh=6) / (b"\x00" * 24)))
    assert later.frag_offset == 64 and C.classify(later) == "UNKNOWN"
    assert C.classify(decode(raw(IP(src=A4, dst=B4) / ICMP()))) == "UNKNOWN"


def test_ecn_bits_do_not_change_labels():
    assert C.classify(tcp("SEC")) == "SYN"  # RFC 3168 ECN-setup SYN
    assert C.classify(tcp("SE")) == "SYN"
    assert C.classify(tcp("FC")) == "FIN"
    assert C.classify(tcp("AE")) == "ACK"
    assert C.classify(tcp("FSRPAUEC")) == "FULL-XMAS"
    # only ECN bits: the flags byte is not zero, so not a NULL probe
    for f, letters in (("E", "E"), ("C", "C"), ("EC", "EC")):
        p = tcp(f)
        assert C.classify(p) == "UNKNOWN"
        assert C.label_text("UNKNOWN", C.FLAG_STRINGS[p.flags]) == f"UNKNOWN({letters})"


def _reference_label(flags: int) -> str:
    """The table spelled out independently of classify.py's construction."""
    names = {n for n, bit in (("F", 1), ("S", 2), ("R", 4), ("P", 8), ("A", 16), ("U", 32)) if flags & bit}
    if flags == 0:
        return "NULL"
    if not names:
        return "UNKNOWN"
    if names == {"S"}:
        return "SYN"
    if names == {"F"}:
        return "FIN"
    if names == {"F", "P", "U"}:
        return "XMAS"
    if names == {"F", "S", "R", "P", "A", "U"}:
        return "FULL-XMAS"
    if names == {"A"}:
        return "ACK"
    if names == {"F", "A"}:
        return "MAIMON"
    return "UNKNOWN"


def test_table_is_exhaustive_over_all_256_flag_bytes():
    for f in range(256):
        assert C.LABEL_BY_FLAGS[f] == C.label_for_flags(f) == _reference_label(f), hex(f)
        letters = C.FLAG_STRINGS[f]
        assert len(letters) == bin(f).count("1")
        assert letters == "".join(c for c in "FSRPAUEC" if c in letters)  # FSRPAUEC order


def test_label_text_and_descriptions():
    assert C.label_text("UNKNOWN", "SR") == "UNKNOWN(SR)"
    assert C.label_text("UNKNOWN", "") == "UNKNOWN"
    assert C.label_text("SYN", "S") == "SYN"
    assert "connect()" in C.describe("SYN") and "half-open" in C.describe("SYN")
    for label in C.LABELS:
        assert C.describe(label) != ""


def test_labels_cover_the_configuration_vocabulary():
    from nfsentry.config.schema import LABELS as CONFIG_LABELS

    assert set(CONFIG_LABELS) <= set(C.LABELS)
    assert CONFIG_LABELS is C.LABELS  # one definition (core.classify), config imports it


# --- SYN hints --------------------------------------------------------------------------------------

LINUX_SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123, 0)), ("NOP", None), ("WScale", 7)]


@pytest.mark.parametrize("window", sorted(C.NMAP_SYN_WINDOWS))
def test_nmap_raw_syn_shape(window):
    p = tcp("S", window=window, options=[("MSS", 1460)])
    assert len(p.tcp_options) == 4 and p.payload_offset == 20 + 24
    assert C.syn_hint(p) == "nmap"
    assert C.classify(p) == "SYN"  # the hint never changes the label


def test_connect_syn_has_no_hint():
    # What a Linux connect() sends: the ambiguity stays in the label, no hint.
    assert C.syn_hint(tcp("S", window=64240, options=LINUX_SYN_OPTS)) == ""
    assert C.syn_hint(tcp("SEC", window=64240, options=LINUX_SYN_OPTS)) == ""
    # nmap's window but a full option set, or MSS-only with an OS window: no hint
    assert C.syn_hint(tcp("S", window=1024, options=LINUX_SYN_OPTS)) == ""
    assert C.syn_hint(tcp("S", window=29200, options=[("MSS", 1460)])) == ""
    # nmap's shape with ECN bits is not what nmap sends
    assert C.syn_hint(tcp("SEC", window=1024, options=[("MSS", 1460)])) == ""


def test_optionless_syn_hint_and_non_syn():
    assert C.syn_hint(tcp("S", window=1024)) == "no-options"  # masscan / hping3 / scapy
    assert C.syn_hint(tcp("F")) == ""
    assert C.syn_hint(tcp("SA", options=[("MSS", 1460)])) == ""
    assert C.syn_hint(decode(raw(IP(src=A4, dst=B4) / UDP(dport=1)))) == ""


# --- findings and backscatter shapes ------------------------------------------------------------------


def test_findings():
    p = decode(
        raw(
            IP(src=A4, dst=B4, options=[IPOption_RR(routers=["192.0.2.1"]), IPOption_SSRR(routers=["192.0.2.2"])])
            / TCP(dport=22, flags="S")
        )
    )
    assert C.findings(p) == ("IPOPTS(RR,SSRR)",)
    assert C.classify(p) == "SYN"  # IP options do not change the scan label
    bad = decode(raw(IP(src=A4, dst=B4) / TCP(dport=22))[:30])
    assert C.findings(bad) == ("MALFORMED(truncated ipv4 packet (total length 40 > 30 bytes))",)
    later = decode(raw(IP(src=A4, dst=B4, frag=2, proto=6) / (b"\x00" * 16)))
    assert C.findings(later) == ("FRAGMENT(offset=16)",)
    assert C.findings(tcp("S")) == ()


def test_reply_shapes():
    for f in ("R", "RA", "SA", "SAE", "RAC"):
        assert C.is_reply_shaped(tcp(f).flags), f
    for f in ("S", "F", "", "A", "FA", "SR", "FSRPAU", "SRA", "RP"):
        assert not C.is_reply_shaped(tcp(f).flags), f
