"""The kernel-side block of a first probe (issue 17 part 1), without a kernel: the queueing rule
may have put the source into the blocked set already; the daemon confirms it (its own block) or
withdraws it when its engine does not block that packet's source. The fake kernel of
test_reliability_unit plays the rule: each test adds what the rule would add before the packet
reaches the verdict loop. The real rule is tested end to end in tests/e2e/test_kernel_block.py (hence this file's other name)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.all import IP, TCP, UDP, raw
from test_reliability_unit import VICTIM4, FakePkt, drain, make_daemon, syn

from nfsentry.config import schema as C
from nfsentry.config.derive import kernel_block, ruleset_spec
from nfsentry.nft.render import render


def kernel_adds(d, src: str) -> str:
    """What the rendered rule 6a adds for a probe from ``src`` (the test's stand-in for the kernel)."""
    a = ipaddress.ip_address(src)
    if a.version == 4:
        net = src
    else:
        near = [n for n in d.never_block if ":" in n and ipaddress.ip_network(n).prefixlen > 64]
        p64 = ipaddress.ip_network(f"{src}/64", strict=False)
        net = src if any(ipaddress.ip_network(n).subnet_of(p64) for n in near) else str(p64)
    d.nft.sets[net] = 3600
    return net


def test_default_policy_blocks_first_probes_in_the_kernel_and_the_ruleset_says_so():
    cfg = C.validate({})
    kb = kernel_block(cfg)
    assert kb is not None and kb.udp and len(kb.tcp_flags) == 244 and kb.timeout == 3600 and kb.size == 100000
    text = render(ruleset_spec(cfg, []), "compat")
    assert "limit name kernel_block counter name kernel_blocks add @blocked4 { ip saddr timeout 3600s }" in text
    assert "add @blocked6_64 { ip6 saddr & ffff:ffff:ffff:ffff:: timeout 3600s }" in text
    # the kernel-side block comes before the queueing rule, which every such packet still reaches
    assert text.index("add @blocked4") < text.index("counter name queued_tcp")


@pytest.mark.parametrize(
    "raw_cfg",
    [
        {"response": {"kernel_block": False}},
        {"response": {"dry_run": True}},
        {"monitor": {"mode": "observe"}},
        {"response": {"tcp": "log", "udp": "command", "command": ["/bin/true"]}},
        {"detection": {"scan_trigger": 3, "instant_labels": []}},
    ],
)
def test_no_kernel_side_block_where_the_policy_does_not_block_on_the_first_hit(raw_cfg):
    cfg = C.validate(raw_cfg)
    assert kernel_block(cfg) is None
    text = render(ruleset_spec(cfg, []), "compat")
    assert "add @blocked" not in text and "limit kernel_block" not in text and "size 100000" not in text


def test_instant_labels_alone_block_only_their_flags_in_the_kernel():
    cfg = C.validate({"detection": {"scan_trigger": 3, "instant_labels": ["NULL", "XMAS"]}, "response": {"udp": "log"}})
    kb = kernel_block(cfg)
    assert kb is not None and not kb.udp
    # no flags at all; FIN+PSH+URG with or without ECE/CWR (an ECE/CWR-only packet is UNKNOWN)
    assert set(kb.tcp_flags) == {0x00, 0x29, 0x69, 0xA9, 0xE9}
    text = render(ruleset_spec(cfg, []), "native")
    assert "tcp flags { 0x00, 0x29, 0x69, 0xa9, 0xe9 }" in text and "udp dport @udp_ports limit" not in text


def test_confirmed_first_probe_stays_and_is_recorded(tmp_path):
    d = make_daemon(tmp_path)
    kernel_adds(d, "198.19.0.7")
    p = FakePkt(syn("198.19.0.7"))
    d.verdicts.on_packet(p)
    d.service()
    assert p.verdicts == ["drop"]
    assert d.nft.sets == {"198.19.0.7": 3600} and d.counters["blocks"] == 1
    assert d.counters["kernel_blocks_withdrawn"] == 0
    assert [k for k, _, _ in drain(d)].count("block") == 1


def test_blocks_a_valve_refuses_are_withdrawn_and_the_admitted_ones_stay(tmp_path):
    d = make_daemon(tmp_path, response={"max_blocks_per_minute": 5})
    for i in range(50):
        src = f"198.19.1.{i}"
        kernel_adds(d, src)
        d.verdicts.on_packet(FakePkt(syn(src)))
    d.service()
    assert sorted(d.nft.sets) == sorted(f"198.19.1.{i}" for i in range(5))
    assert d.counters["kernel_blocks_withdrawn"] == 45 and d.counters["blocks_rate_limited"] == 45


def test_a_narrowed_ipv6_block_keeps_the_address_and_withdraws_its_network(tmp_path):
    """Next to a never-block address the kernel (its near set) adds the address alone: kept. If the
    kernel's near set was stale it added the /64: withdrawn, the address blocked alone."""
    d = make_daemon(tmp_path, ignore={"addresses": ["2001:db8:5::1"]})
    assert kernel_adds(d, "2001:db8:5::2") == "2001:db8:5::2"
    d.nft.sets["2001:db8:5::/64"] = 3600  # a stale near set: the kernel added the network too
    d.verdicts.on_packet(FakePkt(syn("2001:db8:5::2")))
    d.service()
    assert d.nft.sets == {"2001:db8:5::2": 3600}
    assert d.counters["blocks_narrowed"] == 1 and d.counters["kernel_blocks_withdrawn"] == 1


def test_a_source_the_engine_ignores_is_withdrawn(tmp_path):
    """An address ignored at run time (`nfsentry ignore`) that the kernel's ignore set does not
    hold yet: the engine says IGNORE (a lean result), the kernel's entry goes."""
    d = make_daemon(tmp_path)
    d.set_never_block(["198.19.2.0/24"])
    kernel_adds(d, "198.19.2.9")
    p = FakePkt(syn("198.19.2.9"))
    d.verdicts.on_packet(p)
    d.service()
    assert p.verdicts == ["accept"] and d.nft.sets == {} and d.counters["kernel_blocks_withdrawn"] == 1


def test_reply_shaped_and_udp_from_ignored_sources_are_not_blocks(tmp_path):
    """A SYN+ACK (backscatter) is never added by the rule (its flags are left out); a UDP probe
    from an ignored source is, and goes again."""
    d = make_daemon(tmp_path)
    assert 0x12 not in d.verdicts.kb.tcp_flags
    p = FakePkt(raw(IP(src="198.19.3.1", dst=VICTIM4) / TCP(sport=80, dport=7, flags="SA")))
    d.verdicts.on_packet(p)
    d.set_never_block(["198.19.3.2"])
    kernel_adds(d, "198.19.3.2")
    d.verdicts.on_packet(FakePkt(raw(IP(src="198.19.3.2", dst=VICTIM4) / UDP(sport=5000, dport=7))))
    d.service()
    assert p.verdicts == ["accept"] and d.nft.sets == {}
    assert d.counters["kernel_blocks_withdrawn"] == 1  # the UDP one; the SYN+ACK was never a candidate


def test_a_block_asked_for_while_a_withdrawal_waits_is_kept(tmp_path):
    """The withdrawal runs first among the main thread's duties, and skips what the engine blocks:
    an admin's block of the same address made afterwards stays."""
    d = make_daemon(tmp_path, response={"max_blocks_per_minute": 1})
    kernel_adds(d, "198.19.4.1")
    d.verdicts.on_packet(FakePkt(syn("198.19.4.1")))  # admitted
    kernel_adds(d, "198.19.4.2")
    d.verdicts.on_packet(FakePkt(syn("198.19.4.2")))  # refused: withdrawal pending
    assert "198.19.4.2" in d.verdicts.withdrawals
    d.engine.mark_blocked("198.19.4.2", 0.0)  # blocked meanwhile (as an admin's block does)
    d.service()
    assert sorted(d.nft.sets) == ["198.19.4.1", "198.19.4.2"] and d.counters["kernel_blocks_withdrawn"] == 0


def test_the_kernel_never_blocks_faster_than_the_daemons_valve_admits():
    from nfsentry.config.derive import kernel_rate

    assert kernel_rate("100/second", 0) == "100/second"
    assert kernel_rate("100/second", 20) == "20/minute"
    assert kernel_rate("10/minute", 20) == "10/minute"
    assert kernel_block(C.validate({"response": {"max_blocks_per_minute": 30}})).rate == "30/minute"
