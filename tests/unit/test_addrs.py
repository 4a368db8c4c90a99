"""addrs: PrefixSet membership for every prefix length, keys, network text."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsentry.core.addrs import (
    PrefixSet,
    addr_text,
    family_of,
    key_for,
    mask,
    masker,
    network_text,
    normalize_block_target,
    normalize_network,
    parse_key,
    parse_network,
)


def n(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def test_v4_cidrs_and_exact_addresses():
    s = PrefixSet(["10.0.0.0/8", "192.0.2.7", "198.51.100.128/25"])
    assert n("10.0.0.0") in s and n("10.255.255.255") in s
    assert n("11.0.0.0") not in s and n("9.255.255.255") not in s
    assert s.contains(n("192.0.2.7")) and not s.contains(n("192.0.2.8"))
    assert n("198.51.100.128") in s and n("198.51.100.255") in s and n("198.51.100.127") not in s
    assert len(s) == 3


def test_v6_cidrs_and_exact_addresses():
    s = PrefixSet(["2001:db8:1::/48", "2001:db8:ff::1", "fe80::/10"])
    assert n("2001:db8:1:ffff::1") in s and n("2001:db8:2::1") not in s
    assert n("2001:db8:ff::1") in s and n("2001:db8:ff::2") not in s
    assert n("febf:ffff::1") in s and n("fec0::1") not in s


def test_families_do_not_mix_and_bad_lengths_are_outside():
    s = PrefixSet(["0.0.0.0/0"])
    assert n("203.0.113.9") in s
    assert n("::1") not in s and n("::ffff:203.0.113.9") not in s
    assert not s.contains(b"") and not s.contains(b"\x01\x02\x03") and not s.contains(b"\x00" * 5)
    assert n("2001:db8::1") in PrefixSet(["::/0"])
    assert not PrefixSet().contains(n("10.0.0.1"))


@pytest.mark.parametrize("plen", [0, 1, 7, 8, 9, 23, 24, 31, 32])
def test_every_v4_prefix_length_boundaries(plen):
    net = ipaddress.ip_network(f"172.16.5.77/{plen}", strict=False)
    s = PrefixSet([str(net)])
    assert net.network_address.packed in s and net.broadcast_address.packed in s
    below = int(net.network_address) - 1
    above = int(net.broadcast_address) + 1
    if below >= 0:
        assert below.to_bytes(4, "big") not in s
    if above < 2**32:
        assert above.to_bytes(4, "big") not in s


@pytest.mark.parametrize("plen", [0, 1, 16, 32, 47, 48, 56, 63, 64, 65, 120, 127, 128])
def test_every_v6_prefix_length_boundaries(plen):
    net = ipaddress.ip_network(f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff/{plen}", strict=False)
    s = PrefixSet([net])
    assert net.network_address.packed in s and net.broadcast_address.packed in s
    below = int(net.network_address) - 1
    above = int(net.broadcast_address) + 1
    if below >= 0:
        assert below.to_bytes(16, "big") not in s
    if above < 2**128:
        assert above.to_bytes(16, "big") not in s


def test_many_entries_few_prefix_lengths():
    s = PrefixSet(f"10.{i // 256}.{i % 256}.0/24" for i in range(5000))
    s.update(f"2001:db8:{i:x}::/48" for i in range(3000))
    assert len(s) == 8000
    assert len(s._v4) == 1 and len(s._v6) == 1  # one lookup per distinct prefix length
    assert n("10.19.135.200") in s and n("10.20.0.1") not in s
    assert n("2001:db8:bb7::1") in s and n("2001:db8:bb8::1") not in s


def test_add_forms_and_iteration():
    s = PrefixSet()
    s.add("10.1.2.3/8")  # host bits cleared
    s.add(ipaddress.ip_address("192.0.2.1"))
    s.add(n("2001:db8::5"), prefixlen=64)
    s.add(n("198.51.100.9"))
    s.add("10.0.0.0/8")  # duplicate
    assert len(s) == 4
    assert list(s) == ["10.0.0.0/8", "192.0.2.1", "198.51.100.9", "2001:db8::/64"]
    assert bool(s) and not bool(PrefixSet())
    with pytest.raises(ValueError):
        s.add("not-an-address")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 2**128 - 1), st.integers(0, 128)), min_size=1, max_size=8),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2**128 - 1)), min_size=1, max_size=20),
)
def test_contains_agrees_with_ipaddress(nets, addrs):
    networks = []
    for v6, value, plen in nets:
        if v6:
            networks.append(ipaddress.ip_network((value, plen), strict=False))
        else:
            networks.append(ipaddress.ip_network((value % 2**32, plen % 33), strict=False))
    s = PrefixSet(networks)
    probes = [ipaddress.ip_address(v if six else v % 2**32) for six, v in addrs]
    # also probe the network edges
    probes += [x for net in networks for x in (net.network_address, net.broadcast_address)]
    for a in probes:
        assert s.contains(a.packed) == any(a in net for net in networks if net.version == a.version)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 2**128 - 1), st.integers(8, 128)), min_size=1, max_size=6),
    st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=10),
)
def test_contains_with_prefilters_agrees_with_ipaddress(nets, addrs):
    """Prefix lengths >= 8 keep the first-bytes prefilters on; probe near every network."""
    networks = [
        ipaddress.ip_network((v, p), strict=False) if six else ipaddress.ip_network((v % 2**32, p % 33), strict=False) for six, v, p in nets
    ]
    s = PrefixSet(networks)
    probes = []
    for net in networks:
        for x in (int(net.network_address), int(net.broadcast_address)):
            for delta in (-1, 0, 1):
                if 0 <= x + delta <= (2**32 - 1 if net.version == 4 else 2**128 - 1):
                    probes.append(ipaddress.ip_address(x + delta) if net.version == 6 else ipaddress.IPv4Address(x + delta))
    probes += [ipaddress.IPv6Address(v) for v in addrs] + [ipaddress.IPv4Address(v % 2**32) for v in addrs]
    for a in probes:
        assert s.contains(a.packed) == any(a in net for net in networks if net.version == a.version)


def test_prefilter_shapes():
    s = PrefixSet(["10.0.0.0/7", "2001:db8::/32", "2001:db9:8000::/33"])
    assert s.pre4 == frozenset({10, 11}) and s.pre6_bytes == 4 and len(s.pre6) == 2
    assert n("11.1.1.1") in s and n("12.0.0.0") not in s and n("2001:db9:8000::1") in s and n("2001:db9::1") not in s
    s = PrefixSet(["2001:d00::/20", "2001:db8::/24"])  # shorter than /32: 2-byte prefilter
    assert s.pre6_bytes == 2 and n("2001:db8:ff::1") in s and n("2001:1000::1") not in s and n("2002::1") not in s
    s = PrefixSet(["2000::/3"])  # too wide: no v6 prefilter
    assert s.pre6 is None and n("3fff::1") in s and n("4000::1") not in s
    s = PrefixSet(["2001:db8::/19", "2400::/9"])  # /9: 128 two-byte heads
    assert s.pre6_bytes == 2 and len(s.pre6) == 1 + 128
    assert n("2001:1fff::1") in s and n("2001:2000::1") not in s and n("247f::1") in s and n("2480::1") not in s


# --- keys and text ----------------------------------------------------------------------------------


def test_key_for():
    assert key_for(n("198.18.0.2")) == n("198.18.0.2")
    assert key_for(n("2001:db8:1:2:3:4:5:6")) == n("2001:db8:1:2::")
    assert key_for(n("2001:db8:1:2:3:4:5:6"), 48) == n("2001:db8:1::")
    assert key_for(n("2001:db8:1:2:3:4:5:6"), 60) == n("2001:db8:1::")
    assert key_for(n("2001:db8:1:ff:3:4:5:6"), 60) == n("2001:db8:1:f0::")
    assert key_for(n("2001:db8:1:2:3:4:5:6"), 128) == n("2001:db8:1:2:3:4:5:6")
    # two addresses of one /64 are one key
    assert key_for(n("2001:db8:1::1")) == key_for(n("2001:db8:1::ffff:2")) != key_for(n("2001:db8:2::1"))


def test_masker_matches_mask_for_every_length():
    a = n("2001:db8:ffff:eeee:dddd:cccc:bbbb:aaaa")
    for plen in range(0, 129):
        expected = ipaddress.ip_network((int.from_bytes(a, "big"), plen), strict=False).network_address.packed
        assert masker(plen)(a) == mask(a, plen) == expected, plen
    assert mask(n("10.1.2.3"), 12) == n("10.0.0.0") and mask(n("10.31.2.3"), 12) == n("10.16.0.0")
    assert mask(n("10.1.2.3"), 0) == n("0.0.0.0") and mask(n("10.1.2.3"), 40) == n("10.1.2.3")


def test_network_text():
    assert network_text(n("198.18.0.2"), 32) == "198.18.0.2"
    assert network_text(n("198.18.0.2")) == "198.18.0.2"
    assert network_text(n("10.0.0.0"), 8) == "10.0.0.0/8"
    assert network_text(n("2001:db8:1::"), 64) == "2001:db8:1::/64"
    assert network_text(n("2001:db8::1"), 128) == "2001:db8::1"
    assert network_text(b"") == ""


def test_parse_key_round_trips():
    assert parse_key("198.18.0.2") == (4, n("198.18.0.2"), 32)
    assert parse_key(" 10.9.8.7/8 ") == (4, n("10.0.0.0"), 8)
    assert parse_key("2001:db8:1::/64") == (6, n("2001:db8:1::"), 64)
    assert parse_key("2001:db8:1::5") == (6, n("2001:db8:1::5"), 128)
    assert parse_key(n("2001:db8:1::5")) == (6, n("2001:db8:1::5"), 128)
    assert parse_key(ipaddress.ip_address("192.0.2.1")) == (4, n("192.0.2.1"), 32)
    assert parse_key("0.0.0.0/0") == (4, bytes(4), 0)  # refusing /0 is parse_network's job
    for text in ("2001:db8:1::/64", "198.18.0.2", "10.0.0.0/8"):
        fam, key, plen = parse_key(text)
        assert network_text(key, plen) == text and family_of(key) == fam
    for bad in ("nope", "10.0.0.0/33", "", None, b"\x01\x02"):
        with pytest.raises(ValueError):
            parse_key(bad)
    assert socket.inet_ntop(socket.AF_INET6, parse_key("2001:db8::/32")[1]) == "2001:db8::"


def test_block_targets_never_cover_never_block_networks_or_everything():
    never_block = ["198.18.0.1/32", "2001:db8::1/128", "198.18.0.22/32"]
    for target, frag in (
        ("0.0.0.0/0", "/0"),
        ("::/0", "/0"),
        ("10.0.0.0/4", "/4"),
        ("2001::/8", "/8"),
        ("198.18.0.0/24", "never blocks"),
        ("198.18.0.22", "never blocks"),
        ("2001:db8::/64", "never blocks"),
        ("1.2.3.4; rm -rf /", "bad address"),
        ("$(reboot)", "bad address"),
        ("", "bad address"),
    ):
        with pytest.raises(ValueError, match=frag.replace("/", ".")):
            normalize_block_target(target, never_block)
    assert normalize_block_target("198.18.0.2/32", never_block) == "198.18.0.2"
    assert normalize_block_target("2001:db8:1::5/64", never_block) == "2001:db8:1::/64"


@pytest.mark.parametrize(
    "target, expect",
    [
        ("::ffff:198.18.0.2", "198.18.0.2"),
        ("::FFFF:198.18.0.2/128", "198.18.0.2"),
        ("::ffff:198.18.0.0/120", "198.18.0.0/24"),
        ("::ffff:c612:2", "198.18.0.2"),
        ("198.18.0.2", "198.18.0.2"),
        ("2001:db8::ffff:198.18.0.2", "2001:db8::ffff:c612:2"),
    ],
)
def test_ipv4_mapped_ipv6_targets_become_the_ipv4_address(target, expect):
    assert normalize_network(target) == expect
    assert normalize_block_target(target) == expect


def test_a_mapped_target_is_checked_as_the_ipv4_address_it_is():
    with pytest.raises(ValueError, match="covers 198.18.0.1/32"):
        normalize_block_target("::ffff:198.18.0.1", ["198.18.0.1/32"])
    with pytest.raises(ValueError, match="refusing to block 127.0.0.1: a loopback"):
        normalize_block_target("::ffff:127.0.0.1")
    with pytest.raises(ValueError, match="refusing to block 0.0.0.0/0"):
        normalize_block_target("::ffff:0.0.0.0/96")


@pytest.mark.parametrize(
    "target, kind",
    [
        ("224.0.0.1", "multicast"),
        ("239.1.2.0/24", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::/16", "multicast"),
        ("169.254.1.1", "link-local"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::/64", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.0/8", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
    ],
)
def test_targets_that_are_never_a_source_are_refused_in_one_line(target, kind):
    for force in ((), ["198.18.0.0/24"]):
        with pytest.raises(ValueError) as e:
            normalize_block_target(target, force)
        msg = str(e.value)
        assert msg.startswith(f"refusing to block {normalize_network(target)}: ") and kind in msg and "\n" not in msg


def test_normalize_network():
    assert normalize_network(" 198.18.0.5/24 ") == "198.18.0.0/24"
    assert normalize_network("2001:db8:1::5/64") == "2001:db8:1::/64"
    assert normalize_network("2001:db8::1/128") == "2001:db8::1"
    assert normalize_network("0.0.0.0/0", allow_everything=True) == "0.0.0.0/0"
    for bad, frag in (
        ("0.0.0.0/0", "would match every address"),
        ("::/0", "would match every address"),
        ("not-an-ip", "bad address or prefix"),
        ("198.18.0.300", "bad address or prefix"),
        ("fe80::1%eth0", "zone-scoped"),
        ("", "bad address or prefix"),
    ):
        with pytest.raises(ValueError, match=frag):
            normalize_network(bad)


def test_parse_network_refuses_everything_and_zones_with_one_clear_line():
    assert parse_network(" 198.18.0.5/24 ") == ipaddress.ip_network("198.18.0.0/24")
    assert parse_network(ipaddress.ip_address("2001:db8::1")) == ipaddress.ip_network("2001:db8::1/128")
    assert parse_network(ipaddress.ip_network("10.0.0.0/8")) == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("::/0", allow_everything=True).prefixlen == 0
    for bad, frag in (
        ("0.0.0.0/0", "bad network '0.0.0.0/0': a /0 would match every address"),
        ("::/0", "a /0 would match every address"),
        ("x", "bad network 'x': not an IPv4/IPv6"),
        ("fe80::1%eth0", "zone-scoped"),
        (None, "bad network None"),
        (22, "bad network 22"),
    ):
        with pytest.raises(ValueError, match=frag.replace("/", ".").replace("(", ".")) as e:
            parse_network(bad, "network")
        assert "\n" not in str(e.value)


def test_addr_text_and_network_text_agree_on_every_form():
    assert addr_text(n("198.18.0.2")) == "198.18.0.2" and addr_text(n("2001:db8::1")) == "2001:db8::1"
    assert addr_text(b"") == "" and addr_text(b"\x01\x02") == "0x0102" and addr_text(bytearray(b"\x01")) == "0x01"
    assert network_text(ipaddress.ip_network("198.18.0.0/24")) == "198.18.0.0/24"
    assert network_text(ipaddress.ip_network("2001:db8::1/128")) == "2001:db8::1"
    assert network_text(ipaddress.ip_address("198.18.0.2")) == "198.18.0.2"
    assert network_text(bytearray(n("198.18.0.2"))) == "198.18.0.2"
    for text in ("198.18.0.2", "198.18.0.0/24", "2001:db8:1::/64", "2001:db8::1"):
        assert network_text(parse_network(text)) == normalize_network(text) == text
    from nfsentry.core import ftp, packet

    assert packet.addr_text is addr_text and ftp.addr_text is addr_text  # one implementation
