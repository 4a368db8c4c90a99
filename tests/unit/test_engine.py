"""engine: the decision order, every trigger policy and its exact reacting hit, escalation, IPv6
keying, ignore lists, eviction, forget/expire/restore, malformed packets."""

from __future__ import annotations

import ipaddress
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPOption_LSRR, IPOption_RR, IPv6, raw

from nfsentry.core.addrs import PrefixSet
from nfsentry.core.classify import FLAG_STRINGS, classify
from nfsentry.core.engine import Action, Decision, Engine, EngineConfig
from nfsentry.core.packet import decode

V4 = "198.18.0.2"
DST4 = "198.18.0.1"
DST6 = "2001:db8::1"

COUNT, ALERT, BLOCK, DROP, IGNORE, PASS = (Action.COUNT, Action.ALERT, Action.BLOCK, Action.DROP, Action.IGNORE, Action.PASS)


def syn(src=V4, dport=22, flags="S", sport=40000, **tcp_kw):
    ip = IPv6(src=src, dst=DST6) if ":" in src else IP(src=src, dst=DST4)
    return decode(raw(ip / TCP(sport=sport, dport=dport, flags=flags, **tcp_kw)))


def udp(src=V4, dport=161):
    ip = IPv6(src=src, dst=DST6) if ":" in src else IP(src=src, dst=DST4)
    return decode(raw(ip / UDP(sport=5000, dport=dport)))


def fast_syn(i: int, dport: int = 22):
    """A distinct IPv4 source per i, built with struct (fast for the eviction tests)."""
    src = (0x0A000000 + i).to_bytes(4, "big")
    return decode(
        struct.pack(
            "!BBHHHBBH4s4sHHIIBBHHH", 0x45, 0, 40, 0, 0, 64, 6, 0, src, bytes([198, 18, 0, 1]), 40000, dport, 0, 0, 0x50, 0x02, 1024, 0, 0
        )
    )


def cfg(**kw) -> EngineConfig:
    return EngineConfig(**kw)


def actions(engine, packets, t0=100.0, step=1.0):
    return [engine.process(p, t0 + i * step).action for i, p in enumerate(packets)]


# --- defaults and the decision order -----------------------------------------------------------------


def test_default_first_syn_blocks_then_drops():
    e = Engine()
    d = e.process(syn(), 100.0)
    assert isinstance(d, Decision)
    assert d.action == BLOCK and d.reacted
    assert (d.key, d.prefixlen, d.network, d.family) == (ipaddress.ip_address(V4).packed, 32, V4, 4)
    assert (d.label, d.flags, d.labels, d.ports, d.hits) == ("SYN", "S", ("SYN",), (22,), 1)
    assert (d.duration, d.offences, d.proto_name, d.dport, d.sport) == (3600.0, 1, "tcp", 22, 40000)
    assert d.reason.startswith("scan_trigger 0 reached: SYN to tcp/22")
    assert "hits 1" in d.reason and "ports tcp/22" in d.reason and "offence 1, block 1h" in d.reason
    again = e.process(syn(dport=23), 101.0)
    assert again.action == DROP and again.reason == "already blocked"
    assert e.is_blocked(V4, 101.0)
    assert e.stats["block"] == 1 and e.stats["drop"] == 1 and e.stats["packets"] == 2


def test_default_engine_config():
    c = EngineConfig()
    assert (c.scan_trigger, c.window_ports, c.window_seconds) == (0, 0, 60.0)
    assert c.instant_labels == frozenset({"NULL", "XMAS", "FULL-XMAS", "UNKNOWN", "MALFORMED"})
    assert c.respond == {"tcp": "block", "udp": "block"}
    assert (c.block_duration, c.block_max_duration, c.escalation_factor) == (3600.0, 604800.0, 2.0)
    assert (c.ipv6_prefix, c.max_ports_per_source) == (64, 64)
    assert c.max_sources >= 10_000 and c.max_offenders >= 10_000 and c.backscatter_guard
    with pytest.raises(ValueError):
        EngineConfig(respond={"tcp": "nuke"})
    with pytest.raises(ValueError):
        EngineConfig(window_seconds=0)
    assert EngineConfig(instant_labels=["NULL"]).instant_labels == frozenset({"NULL"})


def test_ignore_comes_first_and_records_nothing():
    e = Engine(ignore=PrefixSet(["198.18.0.0/24", "2001:db8:99::/48", "192.0.2.1"]))
    e.mark_blocked(V4, 0)
    for p in (syn(), syn(flags=""), udp(), syn("2001:db8:99:1::5"), syn("192.0.2.1")):
        d = e.process(p, 100.0)
        assert d.action == IGNORE and d.reason == "source in the ignore list"
    assert e.process(syn("192.0.2.2"), 100.0).action == BLOCK
    assert e.process(syn("2001:db8:98::1"), 100.0).action == BLOCK
    assert e.stats["ignore"] == 5 and e.stats["tracked"] == 0


def test_ignore_set_can_be_replaced():
    e = Engine(cfg(scan_trigger=5))
    assert e.process(syn(), 1.0).action == COUNT
    e.ignore = PrefixSet([V4])
    assert e.process(syn(), 2.0).action == IGNORE


class FakeExpectations:
    def __init__(self, *keys):
        self.keys = set(keys)
        self.pending = self.keys  # the engine calls match() only while this is truthy
        self.calls = []

    def match(self, src, dst, dport, now, sport=None):
        self.calls.append((src, dst, dport, now, sport))
        key = (src, dst, dport)
        if key in self.keys:
            self.keys.discard(key)
            return True
        return False


def test_ftp_expectation_passes_once_and_only_for_tcp():
    src, dst = ipaddress.ip_address(V4).packed, ipaddress.ip_address(DST4).packed
    exp = FakeExpectations((src, dst, 2121), (src, dst, 161))
    e = Engine(expectations=exp)
    d = e.process(syn(dport=2121), 100.0)
    assert d.action == PASS and d.reason == "expected FTP data connection"
    assert exp.calls[-1] == (src, dst, 2121, 100.0, 40000)
    assert e.process(udp(dport=161), 101.0).action == BLOCK  # UDP never matches an FTP expectation
    assert e.process(syn(dport=2121), 102.0).action == DROP  # consumed, and the source is now blocked
    assert e.stats["pass"] == 1


def test_expectations_none_is_fine():
    assert Engine(expectations=None).process(syn(), 1.0).action == BLOCK


# --- scan_trigger ----------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", [0, 1, 2, 3, 5, 10])
def test_scan_trigger_reacts_on_hit_n_plus_one(trigger):
    e = Engine(cfg(scan_trigger=trigger))
    got = actions(e, [syn(dport=100 + i) for i in range(trigger + 1)])
    assert got == [COUNT] * trigger + [BLOCK]
    assert e.stats["block"] == 1


def _portsentry_12_reacting_hit(trigger: int, maxstate: int = 50) -> int:
    """PortSentry 1.2's CheckStateEngine, transcribed: a 50-entry ring of hosts shared by all."""
    ring = [""] * maxstate
    count = 0
    for hit in range(1, 200):
        got_one, detect = 1, True
        if trigger > 0:
            for entry in ring:
                if entry == "h":
                    got_one += 1
                    if got_one >= trigger:
                        detect = True
                        break
                else:
                    detect = False
            if count >= maxstate:
                count = 0
            ring[count] = "h"
            count += 1
            if got_one >= trigger:
                detect = True
        if trigger > maxstate:
            detect = True
        if detect:
            return hit
    raise AssertionError("never reacted")


@pytest.mark.parametrize("ps_trigger", [0, 1, 2, 3, 7, 50])
def test_imported_portsentry_trigger_reacts_on_the_same_hit(ps_trigger):
    """PortSentry reacts on hit max(N, 1); the importer writes scan_trigger max(N - 1, 0)."""
    expected = _portsentry_12_reacting_hit(ps_trigger)
    assert expected == max(ps_trigger, 1)
    e = Engine(cfg(scan_trigger=max(ps_trigger - 1, 0)))
    got = actions(e, [syn(dport=1 + i) for i in range(expected)], step=0.1)
    assert got.index(BLOCK) + 1 == expected


def test_scan_trigger_count_resets_after_a_reaction_in_log_mode():
    e = Engine(cfg(scan_trigger=2, respond={"tcp": "log"}))
    got = actions(e, [syn(dport=1 + i) for i in range(7)])
    assert got == [COUNT, COUNT, ALERT, COUNT, COUNT, ALERT, COUNT]
    assert not e.is_blocked(V4, 200.0) and e.offences(V4) == 0


def test_scan_trigger_counts_repeated_ports_and_both_protocols():
    e = Engine(cfg(scan_trigger=2))
    assert actions(e, [syn(dport=22), udp(dport=22), syn(dport=22)]) == [COUNT, COUNT, BLOCK]


def test_negative_scan_trigger_is_off():
    e = Engine(cfg(scan_trigger=-1))
    assert set(actions(e, [syn(dport=1 + i) for i in range(200)], step=0.01)) == {COUNT}


# --- sliding window ---------------------------------------------------------------------------------


def test_window_reacts_at_k_distinct_ports_within_t():
    e = Engine(cfg(scan_trigger=-1, window_ports=3, window_seconds=10.0))
    assert e.process(syn(dport=1), 0.0).action == COUNT
    assert e.process(syn(dport=1), 1.0).action == COUNT  # same port: not distinct
    assert e.process(syn(dport=2), 2.0).action == COUNT
    d = e.process(syn(dport=3), 3.0)
    assert d.action == BLOCK
    assert d.reason.startswith("window 3 ports in 10s reached")
    assert d.ports == (1, 2, 3) and d.hits == 4


def test_window_tcp_and_udp_ports_are_distinct():
    e = Engine(cfg(scan_trigger=-1, window_ports=2, window_seconds=10.0))
    assert e.process(syn(dport=53), 0.0).action == COUNT
    d = e.process(udp(dport=53), 1.0)
    assert d.action == BLOCK and "ports tcp/53,udp/53" in d.reason and d.ports == (53,)


def test_window_slides_ports_out():
    e = Engine(cfg(scan_trigger=-1, window_ports=3, window_seconds=10.0))
    assert e.process(syn(dport=1), 0.0).action == COUNT
    assert e.process(syn(dport=2), 6.0).action == COUNT
    assert e.process(syn(dport=3), 12.0).action == COUNT  # port 1 left the window (12 - 0 > 10)
    assert e.process(syn(dport=4), 13.0).action == BLOCK  # ports 2, 3, 4 within 10 s


def test_quiet_source_is_forgotten_after_the_window():
    e = Engine(cfg(scan_trigger=2, window_seconds=60.0))
    assert e.process(syn(dport=1), 0.0).action == COUNT
    assert e.process(syn(dport=2), 30.0).action == COUNT
    d = e.process(syn(dport=3), 95.0)  # quiet for 65 s: a new source
    assert d.action == COUNT and d.hits == 1
    assert e.process(syn(dport=4), 100.0).action == COUNT
    assert e.process(syn(dport=5), 101.0).action == BLOCK


def test_window_ports_above_the_per_source_cap_still_reachable():
    e = Engine(cfg(scan_trigger=-1, window_ports=10, max_ports_per_source=4))
    got = actions(e, [syn(dport=1 + i) for i in range(10)], step=0.1)
    assert got == [COUNT] * 9 + [BLOCK]


def test_ports_per_source_bounded():
    e = Engine(cfg(scan_trigger=99, max_ports_per_source=4))
    for i in range(50):
        e.process(syn(dport=1 + i), 1.0 + i * 0.01)
    assert e.source(V4)["ports"] == ["tcp/47", "tcp/48", "tcp/49", "tcp/50"]
    assert e.source(V4)["hits"] == 50


# --- instant labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,label", [("", "NULL"), ("FPU", "XMAS"), ("FSRPAU", "FULL-XMAS"), ("SF", "UNKNOWN")])
def test_instant_labels_react_on_the_first_packet(flags, label):
    e = Engine(cfg(scan_trigger=100))
    d = e.process(syn(flags=flags), 1.0)
    assert d.action == BLOCK and d.label == label
    assert d.reason.startswith(f"instant {d.label_text}")
    if label == "UNKNOWN":
        assert d.label_text == "UNKNOWN(FS)" and "UNKNOWN(FS) to tcp/22" in d.reason


@pytest.mark.parametrize("flags", ["S", "F", "A", "FA"])
def test_probe_labels_are_not_instant_by_default(flags):
    e = Engine(cfg(scan_trigger=1))
    assert e.process(syn(flags=flags), 1.0).action == COUNT
    assert e.process(syn(flags=flags, dport=23), 2.0).action == BLOCK


def test_instant_labels_configurable_and_off():
    assert Engine(cfg(scan_trigger=5, instant_labels={"FIN"})).process(syn(flags="F"), 1.0).action == BLOCK
    assert Engine(cfg(scan_trigger=5, instant_labels={"FIN"})).process(syn(flags=""), 1.0).action == COUNT
    off = Engine(cfg(scan_trigger=5, instant_labels=()))
    assert [off.process(syn(flags=f), 1.0).action for f in ("", "FPU", "FSRPAU", "SF")] == [COUNT] * 4
    assert Engine(cfg(scan_trigger=5, instant_labels={"UDP"})).process(udp(), 1.0).action == BLOCK


def test_ip_options_are_reported_but_keep_the_flag_label():
    p = decode(
        raw(
            IP(src=V4, dst=DST4, options=[IPOption_RR(routers=["192.0.2.1"]), IPOption_LSRR(routers=["192.0.2.2"])])
            / TCP(dport=22, flags="S")
        )
    )
    e = Engine(cfg(scan_trigger=1))
    d = e.process(p, 1.0)
    assert d.action == COUNT and d.label == "SYN" and d.ip_options == ("RR", "LSRR")
    d = e.process(p, 2.0)
    assert d.action == BLOCK and "ip options RR,LSRR" in d.reason and d.label == "SYN"
    # IPOPTS as an instant label makes the options themselves react
    d = Engine(cfg(scan_trigger=9, instant_labels={"IPOPTS"})).process(p, 1.0)
    assert d.action == BLOCK and d.reason.startswith("instant IP options")


# --- response modes ----------------------------------------------------------------------------------


def test_response_modes_per_protocol():
    e = Engine(cfg(respond={"tcp": "log", "udp": "command"}))
    d = e.process(syn(), 1.0)
    assert d.action == ALERT and d.duration == 0.0 and d.offences == 0 and "block" not in d.reason
    assert e.process(syn(), 2.0).action == ALERT  # not blocked: alerts again
    assert e.process(udp(), 3.0).action == BLOCK  # "command" is a block decision
    assert e.process(syn(), 4.0).action == DROP
    e2 = Engine(cfg(respond={"udp": "log"}))
    assert e2.process(udp(), 1.0).action == ALERT and e2.process(syn(), 2.0).action == BLOCK


# --- escalation -------------------------------------------------------------------------------------


def test_escalation_doubles_up_to_the_cap_and_is_remembered_across_blocks():
    e = Engine(cfg(block_duration=3600, block_max_duration=20000, escalation_factor=2.0))
    now = 0.0
    durations = []
    for _ in range(5):
        d = e.process(syn(), now)
        assert d.action == BLOCK
        durations.append((d.offences, d.duration))
        assert e.process(syn(), now + d.duration - 1).action == DROP
        now += d.duration + 1  # the block ends
    assert durations == [(1, 3600.0), (2, 7200.0), (3, 14400.0), (4, 20000.0), (5, 20000.0)]
    assert e.stats["expired_blocks"] == 4


def test_escalation_edges():
    e = Engine(cfg(block_duration=60, block_max_duration=0, escalation_factor=3.0))
    assert [e.duration_for(n) for n in (1, 2, 3)] == [60.0, 180.0, 540.0]
    assert e.duration_for(5000) == 0.0  # overflow: forever
    assert Engine(cfg(block_duration=60, escalation_factor=1.0)).duration_for(40) == 60.0
    assert Engine(cfg(block_duration=3600)).duration_for(10_000) == 604800.0
    forever = Engine(cfg(block_duration=0))
    d = forever.process(syn(), 1.0)
    assert d.action == BLOCK and d.duration == 0.0 and "block until unblocked" in d.reason
    assert forever.process(syn(), 1e12).action == DROP
    assert forever.blocked() == [(V4, None)]


def test_offenders_bounded():
    e = Engine(cfg(max_offenders=3))
    for i in range(5):
        e.process(fast_syn(i), 1.0)
    assert e.stats["offenders"] == 3 and e.stats["offenders_evicted"] == 2
    assert e.offences("10.0.0.0") == 0 and e.offences("10.0.0.4") == 1


# --- IPv6 keying -------------------------------------------------------------------------------------


def test_two_addresses_in_one_slash64_are_one_source():
    e = Engine(cfg(scan_trigger=1))
    a = e.process(syn("2001:db8:1::1", dport=1), 1.0)
    assert a.action == COUNT and a.network == "2001:db8:1::/64" and a.prefixlen == 64
    b = e.process(syn("2001:db8:1::ffff:2", dport=2), 2.0)
    assert b.action == BLOCK and b.network == "2001:db8:1::/64" and b.hits == 2
    assert e.process(syn("2001:db8:1:0:aaaa::9", dport=3), 3.0).action == DROP
    assert e.process(syn("2001:db8:1:1::1", dport=3), 3.0).action == COUNT  # the next /64


@pytest.mark.parametrize(
    "prefix,other,same",
    [(48, "2001:db8:1:ffff::1", True), (56, "2001:db8:1:ff::1", True), (56, "2001:db8:1:100::1", False), (128, "2001:db8:1::2", False)],
)
def test_configurable_ipv6_prefix(prefix, other, same):
    e = Engine(cfg(ipv6_prefix=prefix))
    d = e.process(syn("2001:db8:1::1"), 1.0)
    assert d.prefixlen == prefix
    assert d.network == (f"2001:db8:1::/{prefix}" if prefix < 128 else "2001:db8:1::1")
    assert (e.process(syn(other), 2.0).action == DROP) is same


# --- bounded memory ----------------------------------------------------------------------------------


def test_eviction_under_the_cap_is_lru_and_counted():
    e = Engine(cfg(scan_trigger=5, max_sources=100, window_seconds=1000.0))
    for i in range(100):
        e.process(fast_syn(i), float(i))
    e.process(fast_syn(0), 100.0)  # source 0 is now the most recently seen
    for i in range(100, 150):
        e.process(fast_syn(i), float(i + 1))
    s = e.stats
    assert s["tracked"] == 100 and s["evicted"] == 50
    assert e.source("10.0.0.0")["hits"] == 2  # survived
    assert e.source("10.0.0.1") is None  # least recently seen: evicted
    assert e.source("10.0.0.50") is None and e.source("10.0.0.51") is not None


def test_eviction_spares_sources_seen_again_over_one_off_floods():
    """CLOCK: a source hit again since the hand last passed survives a flood of one-off sources."""
    e = Engine(cfg(scan_trigger=50, max_sources=50, window_seconds=1e6))
    scanners = [fast_syn(1_000_000 + i) for i in range(10)]
    t = 0.0
    for round_ in range(30):
        for p in scanners:
            e.process(p, t)
            t += 1
        for i in range(40):  # 40 one-off spoofed sources per round
            e.process(fast_syn(round_ * 100 + i), t)
            t += 1
    assert e.stats["tracked"] == 50 and e.stats["evicted"] > 1000
    for p in scanners:
        assert e.source(ipaddress.ip_address(p.src).compressed)["hits"] == 30


def test_clock_queue_stays_bounded_when_reactions_remove_sources():
    e = Engine(cfg(scan_trigger=1, max_sources=1000))
    for i in range(20_000):  # every source counted once, then blocked
        e.process(fast_syn(i), 1.0)
        e.process(fast_syn(i, dport=23), 1.5)
    assert e.stats["tracked"] == 0 and e.stats["block"] == 20_000
    assert len(e._clock) <= 2 * len(e._states) + 64


def test_blocked_map_is_bounded_too():
    e = Engine(cfg(max_sources=10))
    for i in range(25):
        assert e.process(fast_syn(i), 1.0).action == BLOCK
    assert e.stats["blocked"] == 10 and e.stats["blocked_evicted"] == 15
    assert e.process(fast_syn(24), 2.0).action == DROP
    assert e.process(fast_syn(0), 2.0).action == BLOCK  # forgotten block: detected again, offence 2
    assert e.offences("10.0.0.0") == 2  # offences outlive the forgotten block


# --- forget / restore / expire -------------------------------------------------------------------------


def test_forget_unblocks_without_stale_counts():
    e = Engine(cfg(scan_trigger=2))
    actions(e, [syn(dport=1), syn(dport=2), syn(dport=3)])
    assert e.is_blocked(V4, 103.0) and e.offences(V4) == 1
    assert e.forget(V4) == 1
    assert not e.is_blocked(V4, 103.0) and e.offences(V4) == 0
    d = e.process(syn(dport=4), 104.0)
    assert d.action == COUNT and d.hits == 1
    # also with counts but no block
    e.process(syn(dport=5), 105.0)
    assert e.forget(V4) == 1
    assert e.process(syn(dport=6), 106.0).hits == 1
    assert e.forget("203.0.113.1") == 0


def test_forget_resets_offences_for_the_next_block():
    e = Engine()
    assert e.process(syn(), 1.0).offences == 1
    e.forget(V4)
    d = e.process(syn(), 2.0)
    assert d.offences == 1 and d.duration == 3600.0


def test_forget_ipv6_by_address_prefix_and_wide_networks():
    e = Engine()
    e.process(syn("2001:db8:1::1"), 1.0)
    assert e.forget("2001:db8:1::77") == 1  # any address inside the /64
    e.process(syn("2001:db8:1::1"), 2.0)
    assert e.forget("2001:db8:1::/64") == 1
    for i in range(3):
        e.process(fast_syn(i), 3.0)
    e.process(syn("2001:db8:2::1"), 3.0)
    e.process(syn("2001:db8:3::1"), 3.0)
    assert e.forget("10.0.0.0/8") == 3
    assert e.forget("2001:db8::/32") == 2
    assert e.stats["blocked"] == 0 and e.stats["offenders"] == 0


def test_mark_blocked_and_restore_offender():
    e = Engine()
    assert e.mark_blocked(V4, 500.0)  # (network, until): the daemon's shape
    assert e.process(syn(), 499.0).action == DROP
    d = e.process(syn(), 500.0)
    assert d.action == BLOCK and e.stats["expired_blocks"] == 1
    e2 = Engine()
    assert e2.mark_blocked(ipaddress.ip_address("2001:db8:5::").packed, 64, None)  # (key, prefixlen, until)
    assert e2.process(syn("2001:db8:5::9"), 1e12).action == DROP
    assert e2.mark_blocked("2001:db8:6::/64", until=0)
    assert e2.blocked()[-1] == ("2001:db8:6::/64", None)
    assert not e2.mark_blocked("10.0.0.0/8", 0.0)  # wider than a key: the kernel's business
    e3 = Engine()
    assert e3.restore_offender(V4, 3)
    d = e3.process(syn(), 1.0)
    assert d.offences == 4 and d.duration == 3600.0 * 8
    assert not e3.restore_offender("10.0.0.0/8", 2)


def test_expire_sweeps_quiet_sources_and_ended_blocks():
    e = Engine(cfg(scan_trigger=5, window_seconds=60.0, block_duration=100))
    for i in range(10):
        e.process(fast_syn(i), float(i))
    e.mark_blocked("192.0.2.1", 50.0)
    e.mark_blocked("192.0.2.2", 500.0)
    assert e.expire(30.0) == 0
    assert e.expire(65.5) == 6 + 1  # sources seen at 0..5 and the block ending at 50
    assert e.stats["tracked"] == 4 and e.stats["blocked"] == 1
    assert e.stats["expired_sources"] == 6
    assert e.expire(1000.0) == 4 + 1
    assert e.stats["tracked"] == 0 and e.stats["blocked"] == 0


def test_expire_never_removes_a_block_that_was_renewed():
    e = Engine(cfg(block_duration=100))
    assert e.process(syn(), 0.0).duration == 100.0  # until 100
    d = e.process(syn(), 150.0)  # the packet path sees it ended: re-block
    assert d.action == BLOCK and d.duration == 200.0  # until 350
    assert e.expire(200.0) == 0 and e.is_blocked(V4, 200.0)
    assert e.expire(351.0) == 1 and not e.is_blocked(V4, 351.0)
    e.process(syn(), 400.0)
    e.forget(V4)
    assert e.expire(10_000.0) == 0  # forgotten: its heap entry is stale


def test_block_heap_stays_bounded():
    e = Engine(cfg(block_duration=10, max_sources=20))
    for i in range(5000):
        e.process(fast_syn(i % 50), float(i))  # blocks churn through a 20-entry table
    assert e.stats["blocked"] <= 20
    assert len(e._block_heap) <= 2 * e.stats["blocked"] + 64


def test_configure_keeps_state():
    e = Engine(cfg(scan_trigger=5))
    e.process(syn(dport=1), 1.0)
    e.reconfigure(cfg(scan_trigger=1))
    assert e.process(syn(dport=2), 2.0).action == BLOCK


# --- malformed and backscatter ----------------------------------------------------------------------------


def test_malformed_packets_are_instant_by_default():
    bad = decode(raw(IP(src=V4, dst=DST4) / TCP(dport=22, dataofs=3)))
    e = Engine(cfg(scan_trigger=9))
    d = e.process(bad, 1.0)
    assert d.action == BLOCK and d.label == "MALFORMED" and d.malformed == "tcp data offset 3 < 5"
    assert "malformed: tcp data offset 3 < 5" in d.reason and d.network == V4
    quiet = Engine(cfg(scan_trigger=9, instant_labels={"NULL"}))
    assert quiet.process(bad, 1.0).action == COUNT


def test_undecodable_packets_are_counted_without_a_source():
    e = Engine()
    for data in (b"", b"\x45\x00", b"\x99" * 40):
        d = e.process(decode(data), 1.0)
        assert d.action == COUNT and d.key == b"" and d.label == "MALFORMED" and d.network == ""
    assert e.stats["undecodable"] == 3 and e.stats["tracked"] == 0


@pytest.mark.parametrize("flags", ["R", "RA", "SA", "SAE"])
def test_backscatter_guard(flags):
    e = Engine()
    for i in range(5):
        d = e.process(syn(flags=flags, dport=1 + i), 1.0 + i)
        assert d.action == COUNT and d.label == "UNKNOWN"
    assert e.process(syn(dport=9), 10.0).action == BLOCK  # a real probe still reacts
    assert Engine(cfg(backscatter_guard=False)).process(syn(flags=flags), 1.0).action == BLOCK


# --- reasons, hints, stats ----------------------------------------------------------------------------


def test_reaction_carries_labels_ports_hits_and_hint():
    e = Engine(cfg(scan_trigger=3))
    e.process(syn(dport=21, window=1024, options=[("MSS", 1460)]), 1.0)
    e.process(syn(dport=22, flags="F"), 2.0)
    e.process(udp(dport=161), 3.0)
    d = e.process(syn(dport=23, window=1024, options=[("MSS", 1460)]), 4.0)
    assert d.action == BLOCK
    assert d.labels == ("SYN", "FIN", "UDP") and d.ports == (21, 22, 161, 23) and d.hits == 4
    assert d.hint == "nmap"
    assert "labels SYN,FIN,UDP" in d.reason and "ports tcp/21,tcp/22,udp/161,tcp/23" in d.reason
    assert "hits 4" in d.reason


def test_engine_labels_agree_with_classify():
    e = Engine(cfg(scan_trigger=-1, instant_labels=()))
    samples = [syn(flags=f) for f in ("S", "F", "", "FPU", "FSRPAU", "A", "FA", "SR", "SEC", "EC", "R")]
    samples += [
        udp(),
        decode(raw(IP(src=V4, dst=DST4) / TCP(dport=22, dataofs=3))),
        decode(raw(IP(src=V4, dst=DST4, frag=3, proto=6) / (b"x" * 16))),
        decode(raw(IP(src=V4, dst=DST4, proto=47) / (b"x" * 16))),
    ]
    for p in samples:
        d = e.process(p, 1.0)
        assert d.label == classify(p) and d.flags == (FLAG_STRINGS[p.flags] if p.proto == 6 else "")


def test_cheap_decisions_carry_packet_fields():
    e = Engine(cfg(scan_trigger=5))
    d = e.process(syn("2001:db8:7::3", dport=80, sport=1234, flags="F"), 7.0)
    assert (d.action, d.ts, d.proto, d.sport, d.dport, d.label, d.flags, d.hits) == (COUNT, 7.0, 6, 1234, 80, "FIN", "F", 1)
    assert d.labels == () and d.ports == () and d.reason == "counted" and d.hint == ""
    assert d.src == ipaddress.ip_address("2001:db8:7::3").packed and d.family == 6


def test_source_status():
    e = Engine(cfg(scan_trigger=5))
    e.process(syn(dport=1), 1.0)
    e.process(udp(dport=2), 2.5)
    s = e.source(V4)
    assert s == {
        "network": V4,
        "hits": 2,
        "ports": ["tcp/1", "udp/2"],
        "labels": ["SYN", "UDP"],
        "protocols": ["tcp", "udp"],
        "first": 1.0,
        "last": 2.5,
    }
    assert e.source("203.0.113.1") is None


# --- property test: any bytes, any times ----------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=80), st.floats(0, 1e6, allow_nan=False)), max_size=30), st.integers(-1, 3), st.integers(0, 4))
def test_engine_never_raises_and_stays_bounded(items, trigger, window):
    e = Engine(cfg(scan_trigger=trigger, window_ports=window, max_sources=5, max_offenders=5))
    valid = [bytes(raw(IP(src=f"10.0.0.{i}", dst=DST4) / TCP(dport=i + 1, flags="S"))) for i in range(8)]
    for i, (data, now) in enumerate(items):
        p = decode(data if i % 2 else valid[i % 8][: len(data) or None])
        d = e.process(p, now)
        assert isinstance(d.action, Action)
        assert d.label == classify(p) and d.packet is p
    e.expire(2e6)
    s = e.stats
    assert s["tracked"] <= 5 and s["blocked"] <= 5 and s["offenders"] <= 5
    assert not math.isnan(float(s["packets"]))


def test_midstream_shapes_are_unknown_but_never_instant():
    """PSH+ACK data reaching us (conntrack lost the flow) is labelled UNKNOWN(PA) but only the
    counting policies can react to it; a truly impossible combination (SYN+FIN) stays instant."""
    import struct

    from nfsentry.core.engine import Action, Engine, EngineConfig
    from nfsentry.core.packet import decode

    def tcp(src_last, flags):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([198, 18, 0, src_last]), bytes([198, 18, 0, 1]))
        return ip + struct.pack("!HHIIBBHHH", 40000, 80, 1, 1, 5 << 4, flags, 512, 0, 0)

    e = Engine(EngineConfig(scan_trigger=2))
    for flags in (0x18, 0x30, 0x38, 0x19):  # PA, AU, PAU, FPA
        d = e.process(decode(tcp(10 + flags % 50, flags)), 1.0)
        assert d.label == "UNKNOWN" and d.action == Action.COUNT, (flags, d.action)
    d = e.process(decode(tcp(99, 0x03)), 1.0)  # SYN+FIN: no stack sends it
    assert d.label == "UNKNOWN" and d.action == Action.BLOCK
    src = 7
    acts = [e.process(decode(tcp(src, 0x18)), 2.0 + i).action for i in range(3)]
    assert acts == [Action.COUNT, Action.COUNT, Action.BLOCK]  # scan_trigger 2 still counts them


# --- which packets react whatever came before (the kernel's first-probe block) ------------------------
FIRST_HIT_CONFIGS = [
    {},  # the default: scan_trigger 0
    {"scan_trigger": 2},  # instant labels only
    {"scan_trigger": 2, "instant_labels": frozenset({"UDP", "SYN"})},
    {"scan_trigger": -1, "instant_labels": frozenset()},  # nothing
    {"scan_trigger": 3, "window_ports": 1},  # one port fills the window: every hit
    {"backscatter_guard": False},
]


@pytest.mark.parametrize("kw", FIRST_HIT_CONFIGS)
def test_first_hit_reactions_are_exactly_what_the_engine_blocks_on_a_first_and_a_later_hit(kw):
    """The kernel blocks what first_hit_reactions() names from the rule that queues the packet:
    each of those must make the engine block (on a source's first hit and after earlier counted
    hits), and nothing else may block on a first hit, or the kernel and the engine disagree."""
    from nfsentry.core.engine import first_hit_reactions

    c = cfg(**kw)
    fh = first_hit_reactions(c)
    for f in range(256):
        first = decode(raw(IP(src=V4, dst=DST4) / TCP(sport=40000, dport=22, flags=f)))
        e = Engine(c)
        assert (e.process(first, 100.0).action == BLOCK) == (f in fh.tcp_flags), (kw, f)
        later = Engine(c)
        earlier = later.process(syn(flags="SA", dport=23), 100.0).action  # a reply shape: counted unless unguarded
        if f in fh.tcp_flags:  # blocked now, or dropped when the earlier hit blocked already
            assert later.process(first, 101.0).action == (DROP if earlier == BLOCK else BLOCK), (kw, f)
    e = Engine(c)
    assert (e.process(udp(), 100.0).action == BLOCK) == fh.udp
    if kw == {}:
        assert len(fh.tcp_flags) == 256 - 12 and fh.udp  # all but RST, RST+ACK, SYN+ACK (with or without ECE/CWR)
    if kw.get("scan_trigger") == -1:
        assert not fh.tcp_flags and not fh.udp
