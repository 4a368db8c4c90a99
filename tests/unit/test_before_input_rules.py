"""Issue 17 part 2, the rules side (no kernel, no root): what the kernel drops before the input hook
reaches the daemon through NFLOG. Source-routed IPv4 (LSRR/SSRR) to monitored ports from a
prerouting chain of the inet table (rule 8); IPv4 with a bad header from a netdev ingress chain
per set of interfaces (rule 9); the configuration keys and the spec that drive them."""

from __future__ import annotations

import re

import pytest
from test_nft_render import chain

from nfsentry.config import schema as C
from nfsentry.config.derive import ruleset_spec
from nfsentry.config.schema import ConfigError
from nfsentry.nft import RulesetSpec, render
from nfsentry.nft.elements import parse_ingress_devices
from nfsentry.nft.errors import SpecError
from nfsentry.nft.render import NETDEV_MAX, REPORT_LIMIT, format_ingress, ingress_devices, model

SOURCE_ROUTED = [
    "meta nfproto ipv6 accept",
    "ip hdrlength 5 accept",
    "ip saddr @ignore4 accept",
    "tcp dport @tcp_ports ip option lsrr exists jump to_daemon",
    "tcp dport @tcp_ports ip option ssrr exists jump to_daemon",
    "udp dport @udp_ports ip option lsrr exists jump to_daemon",
    "udp dport @udp_ports ip option ssrr exists jump to_daemon",
]


@pytest.mark.parametrize("backend", ["native", "compat"])
@pytest.mark.parametrize("variant", ["host", "gateway", "observe"])
def test_source_routed_packets_to_monitored_ports_go_to_the_daemon_from_prerouting(variant, backend):
    text = render(RulesetSpec(variant=variant, protect=["198.18.1.0/24"]), backend)
    assert chain(text, "source_routed") == SOURCE_ROUTED  # only LSRR/SSRR: RR and TS reach input
    # after the blocked sources (raw - 10), before conntrack (-200) and defragmentation is done
    assert "chain source_routed {\n\t\ttype filter hook prerouting priority raw - 5; policy accept;" in text
    assert text.index("chain prerouting {") < text.index("chain source_routed {") < text.index("chain input {")
    drop = "" if variant == "observe" else " drop"
    over = "return" if variant == "observe" else "drop"  # observe: the excess is not logged either
    assert chain(text, "to_daemon") == [f"limit rate over {REPORT_LIMIT} counter {over}", f"counter log group 20038{drop}"]
    # the queue rules are untouched: such packets never reach them on a default host
    assert "ip option" not in " ".join(chain(text, "input"))


def test_the_nflog_group_is_the_specs_and_the_switch_removes_everything():
    text = render(RulesetSpec(nflog_group=77), "native")
    assert chain(text, "to_daemon")[-1] == "counter log group 77 drop"
    assert "NFLOG group 77" in text and "log group 77 drop" in text.split("# The daemon also loads")[1]
    off = render(RulesetSpec(before_input=False), "native")
    assert "source_routed" not in off and "to_daemon" not in off and "netdev" not in off and "log group" not in off
    assert [c.name for c in model(RulesetSpec(before_input=False), "native").chains] == ["prerouting", "input", "output", "ftp_control"]


def test_the_shipped_file_documents_the_netdev_table_it_does_not_load():
    text = render(RulesetSpec(), "native")
    assert re.findall(r"^table .*$", text, re.M) == ["table inet nfsentry", "table inet nfsentry {"]
    tail = text.split("# The daemon also loads table netdev nfsentry", 1)[1]
    assert all(line.startswith("#") for line in tail.splitlines()[1:])
    assert '#   \t\ttype filter hook ingress devices = { "eth0" } priority -500; policy accept;' in tail
    assert "#   8 source-routed IPv4 -> daemon (prerouting)" in text


def test_the_netdev_table_hooks_every_interface_but_lo_and_sends_bad_headers():
    text = format_ingress(RulesetSpec(), ["eth1", "lo", "br-1a.2", "eth0", "eth0"])
    assert text.count("\ntable netdev nfsentry {\n") == 1 and text.rstrip().endswith("}")
    assert 'type filter hook ingress devices = { "br-1a.2", "eth0", "eth1" } priority -500; policy accept;' in text
    # version not 4 or header length < 5 words == the first byte outside 0x45-0x4f; frames to us only
    assert chain(text, "ingress") == ["meta protocol ip meta pkttype host @nh,0,8 != 0x45-0x4f jump to_daemon"]
    assert chain(text, "to_daemon") == [f"limit rate over {REPORT_LIMIT} counter drop", "counter log group 20038 drop"]
    observe = format_ingress(RulesetSpec(variant="observe", nflog_group=9), ["eth0"])
    assert chain(observe, "to_daemon") == [f"limit rate over {REPORT_LIMIT} counter return", "counter log group 9"]


def test_names_nft_cannot_quote_are_left_out_and_many_interfaces_take_more_chains():
    assert ingress_devices(["lo", 'a"b', "x,y", "sixteen_chars_xx", "veth1", "a}"]) == ["veth1"]
    names = [f"veth{i}" for i in range(NETDEV_MAX * 2 + 3)]
    text = format_ingress(RulesetSpec(), names)
    hooked = [parse_ingress_devices(m) for m in re.findall(r"type filter hook ingress devices = \{[^}]*\}", text)]
    assert [len(h) for h in hooked] == [NETDEV_MAX, NETDEV_MAX, 3]
    assert set().union(*hooked) == set(names)
    assert re.findall(r"chain (ingress\w*) \{", text) == ["ingress", "ingress_2", "ingress_3"]
    empty = format_ingress(RulesetSpec(), ["lo"])
    assert "hook ingress" not in empty and "chain to_daemon" in empty


def test_parse_ingress_devices_reads_both_shapes_nft_prints():
    listing = """
	chain ingress {
		type filter hook ingress devices = { br-1a.2, eth0, "odd" } priority -500; policy accept;
	}
	chain ingress_2 {
		type filter hook ingress device "eth9" priority -500; policy accept;
	}
	chain to_daemon {
	}
"""
    assert parse_ingress_devices(listing) == {"br-1a.2", "eth0", "odd", "eth9"}
    assert parse_ingress_devices("table netdev nfsentry {\n}") == set()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"nflog_group": 0}, "differ from queue"),
        ({"nflog_group": 1}, "differ from queue"),
        ({"nflog_group": 70000}, "NFLOG group number"),
        ({"nflog_group": -1}, "NFLOG group number"),
        ({"nflog_group": True}, "NFLOG group number"),
        ({"nflog_group": "5"}, "NFLOG group number"),
    ],
)
def test_the_spec_refuses_a_bad_nflog_group(kw, match):
    with pytest.raises(SpecError, match=match):
        RulesetSpec(**kw).normalized()
    assert RulesetSpec(nflog_group=65535).normalized().nflog_group == 65535


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"nft": {"nflog_group": 0}}, "[nft] nflog_group: must differ from queue and ftp_queue"),
        ({"nft": {"nflog_group": 5, "ftp_queue": 5}}, "[nft] nflog_group: must differ"),
        ({"nft": {"nflog_group": 65536}}, "[nft] nflog_group: 65536 outside 0-65535"),
        ({"nft": {"nflog_group": "x"}}, "[nft] nflog_group: expected an integer"),
        ({"monitor": {"before_input": 1}}, "[monitor] before_input: expected true/false"),
    ],
)
def test_config_validates_the_keys(raw, fragment):
    with pytest.raises(ConfigError) as exc:
        C.validate(raw)
    assert fragment in str(exc.value)


def test_config_defaults_and_derived_spec():
    cfg = C.defaults()
    assert cfg["monitor"]["before_input"] is True and cfg["nft"]["nflog_group"] == 20038
    spec = ruleset_spec(C.validate({"monitor": {"before_input": False}, "nft": {"nflog_group": 4242}}), [])
    assert spec.before_input is False and spec.nflog_group == 4242
    assert ruleset_spec(cfg, []).before_input is True
