"""core.valves: narrowing, rate limit and cap, alone and as the engine consults them."""

from __future__ import annotations

import ipaddress

from scapy.all import TCP, IPv6, raw

from nfsentry.core.engine import Action, Engine, EngineConfig
from nfsentry.core.valves import DUPLICATE, DUPLICATE_WINDOW, Admit, Refused, Valves

NEVER = ["2001:db8:1::1/128"]  # e.g. this host's own address inside the scanners' /64


def key64(addr: str) -> bytes:
    return ipaddress.ip_network(f"{addr}/64", strict=False).network_address.packed


def src(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def test_a_prefix_covering_a_never_block_address_is_narrowed_to_the_source():
    v = Valves(never_block=NEVER)
    a = v.judge(key64("2001:db8:1::5"), 64, src("2001:db8:1::5"), 100.0)
    assert a == Admit(src("2001:db8:1::5"), 128, True)
    other = v.judge(key64("2001:db8:2::5"), 64, src("2001:db8:2::5"), 100.0)
    assert other == Admit(key64("2001:db8:2::5"), 64, False)
    v4 = Valves(never_block=["198.18.0.1/32"]).judge(src("198.18.0.9"), 32, src("198.18.0.9"), 0.0)
    assert v4 == Admit(src("198.18.0.9"), 32, False)


def test_the_same_narrowed_address_moments_later_is_a_duplicate_until_the_window_ends():
    v = Valves(never_block=NEVER)
    k, s = key64("2001:db8:1::5"), src("2001:db8:1::5")
    assert v.judge(k, 64, s, 100.0).narrowed
    assert v.judge(k, 64, s, 100.0 + DUPLICATE_WINDOW - 0.5) is DUPLICATE
    assert v.judge(k, 64, s, 100.0 + DUPLICATE_WINDOW + 0.5).narrowed
    v.forget_narrowed()
    assert v.judge(k, 64, s, 101.0 + DUPLICATE_WINDOW).narrowed


def test_rate_limit_refuses_past_the_limit_and_the_window_slides():
    v = Valves(max_per_minute=2)
    k = src("198.18.0.9")
    assert isinstance(v.judge(k, 32, k, 0.0), Admit) and isinstance(v.judge(k, 32, k, 1.0), Admit)
    r = v.judge(k, 32, k, 2.0)
    assert isinstance(r, Refused) and r.counter == "blocks_rate_limited" and "2/min" in r.why
    assert isinstance(v.judge(k, 32, k, 60.5), Admit)  # the block at 0.0 left the window


def test_cap_refuses_when_the_kernel_holds_max_blocked_entries():
    count = [4]
    v = Valves(max_blocked=5, blocked_count=lambda: count[0])
    k = src("198.18.0.9")
    assert isinstance(v.judge(k, 32, k, 0.0), Admit)
    count[0] = 5
    r = v.judge(k, 32, k, 0.0)
    assert isinstance(r, Refused) and r.counter == "blocks_capped"


def syn6(s: str, dport: int) -> bytes:
    return raw(IPv6(src=s, dst="2001:db8:ff::1") / TCP(sport=40000, dport=dport, flags="S"))


def test_engine_narrowed_addresses_escalate_each_on_their_own():
    """Issue 16 row 14: addresses of one /64 narrowed to single-address blocks never share the
    /64's offence count (before: 1 h, 2 h, 4 h ... across different hosts)."""
    e = Engine(EngineConfig(scan_trigger=0, ipv6_prefix=64, block_duration=3600, escalation_factor=2.0))
    e.valves = Valves(never_block=NEVER)
    durations = []
    for i, host in enumerate(("2001:db8:1::5", "2001:db8:1::6", "2001:db8:1::7")):
        d = e.process_raw(syn6(host, 7), 1000.0 + 100 * i)
        assert d.action == Action.BLOCK and d.network == host and d.valve.narrowed
        durations.append(d.duration)
    assert durations == [3600, 3600, 3600]
    again = e.process_raw(syn6("2001:db8:1::5", 8), 2000.0)  # the first address, after its duplicate window
    assert again.action == Action.BLOCK and again.offences == 2 and again.duration == 7200


def test_engine_records_nothing_for_a_refused_block():
    e = Engine(EngineConfig(scan_trigger=0))
    e.valves = Valves(max_per_minute=1)
    first = e.process_raw(raw_syn4("198.18.0.2"), 0.0)
    second = e.process_raw(raw_syn4("198.18.0.3"), 1.0)
    assert first.action == Action.BLOCK and first.valve is None
    assert second.action == Action.ALERT and isinstance(second.valve, Refused)
    assert e.offences("198.18.0.3") == 0 and not e.is_blocked("198.18.0.3", 1.0)
    assert e.is_blocked("198.18.0.2", 1.0)


def raw_syn4(s: str) -> bytes:
    from scapy.all import IP

    return raw(IP(src=s, dst="198.18.255.1") / TCP(sport=40000, dport=7, flags="S"))
