"""nfsentry.nft.elements: set choice, element and command texts, listing parsers (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfsentry.nft import elements as E


def test_plan_nets_keeps_the_broadest_and_replaces_covered():
    N = ipaddress.ip_network
    adds, deletes = E.plan_nets(
        {N("198.18.0.0/24"): 10, N("198.18.0.128/25"): 5, N("198.19.0.0/16"): 0}, [N("198.19.1.0/24"), N("10.0.0.0/8")]
    )
    assert adds == {N("198.18.0.0/24"): 10, N("198.19.0.0/16"): 0}
    assert deletes == [N("198.19.1.0/24")]
    adds, deletes = E.plan_nets({N("10.1.0.0/16"): 1}, [N("10.0.0.0/8")])
    assert adds == {} and deletes == []
    adds, deletes = E.plan_nets({N("10.0.0.0/8"): 1}, [N("10.0.0.0/8")])
    assert adds == {} and deletes == []


SET_TEXT = """table inet nfsentry {
\tset blocked4net {
\t\ttype ipv4_addr
\t\tflags interval,timeout
\t\telements = { 198.18.0.0/24 timeout 3600s expires 3590s, 198.18.5.1-198.18.5.2,
\t\t\t     198.18.7.0/24 timeout 1500ms expires 900ms }
\t}
}
"""


def test_parse_set_text():
    got = E.parse_set_text("blocked4net", SET_TEXT)
    assert got == [
        {"network": "198.18.0.0/24", "timeout": 3600, "expires_in": 3590, "set": "blocked4net"},
        {"network": "198.18.5.1", "timeout": 0, "expires_in": None, "set": "blocked4net"},
        {"network": "198.18.5.2", "timeout": 0, "expires_in": None, "set": "blocked4net"},
        {"network": "198.18.7.0/24", "timeout": 1.5, "expires_in": 0.9, "set": "blocked4net"},
    ]
    six = E.parse_set_text("blocked6_64", "set blocked6_64 {\n elements = { 2001:db8:5:: timeout 30s expires 29s, 2001:db8:6:: }\n}")
    assert [b["network"] for b in six] == ["2001:db8:5::/64", "2001:db8:6::/64"]
    assert E.parse_set_text("blocked4", "set blocked4 {\n type ipv4_addr\n}") == []


def test_timeout_text():
    assert E.timeout_text(0) == "" and E.timeout_text(None) == ""
    assert E.timeout_text(3600) == " timeout 3600s"
    assert E.timeout_text(1.5) == " timeout 1500ms"
    with pytest.raises(ValueError):
        E.timeout_text(-1)


def test_parse_network():
    assert E.network_text(E.parse_network("198.18.0.5/24")) == "198.18.0.0/24"
    assert E.network_text(E.parse_network(" 2001:db8::1 ")) == "2001:db8::1"
    for bad in ("0.0.0.0/0", "::/0", "198.18.0.256", "host"):
        with pytest.raises(ValueError):
            E.parse_network(bad)


def test_set_for_picks_the_set_by_family_and_prefix():
    # v6_prefix=64: as after a load with the default ipv6_prefix
    assert E.set_for("198.18.0.2", 64)[:2] == ("blocked4", "198.18.0.2")
    assert E.set_for("198.18.0.2/32", 64)[:2] == ("blocked4", "198.18.0.2")
    assert E.set_for("198.18.0.9/24", 64)[:2] == ("blocked4net", "198.18.0.0/24")
    assert E.set_for("2001:DB8::0002", 64)[:2] == ("blocked6", "2001:db8::2")
    assert E.set_for("2001:db8:1::5/64", 64)[:2] == ("blocked6_64", "2001:db8:1::")
    assert E.set_for("2001:db8:1::/48", 64)[:2] == ("blocked6net", "2001:db8:1::/48")
    with pytest.raises(ValueError):
        E.set_for("198.18.0.0/0", 64)


def test_the_session_picks_the_set_with_its_ipv6_prefix():
    from nfsentry.nft import client

    if client._nftables is None:
        pytest.skip("python3-nftables missing")
    n = client.Nft()
    n._v6p = 64  # as after a load with the default ipv6_prefix (no kernel needed)
    assert n._set_for("198.18.0.2")[:2] == ("blocked4", "198.18.0.2")
    assert n._set_for("2001:db8:1::5/64")[:2] == ("blocked6_64", "2001:db8:1::")
    assert n._set_for("2001:db8:1::/48")[:2] == ("blocked6net", "2001:db8:1::/48")
    with pytest.raises(ValueError):
        n._set_for("198.18.0.0/0")


# == set choice =====================================================================================
def test_set_for_without_a_known_ipv6_prefix_uses_the_interval_set():
    assert E.set_for("2001:db8:1::/64", None) == ("blocked6net", "2001:db8:1::/64", ipaddress.ip_network("2001:db8:1::/64"))
    assert E.set_for("2001:db8:1::/56", 56)[:2] == ("blocked6_56", "2001:db8:1::")
    assert E.set_for("2001:db8::7/128", None)[:2] == ("blocked6", "2001:db8::7")


def test_set_for_single_addresses_take_the_fast_path():
    assert E.set_for(" 198.18.0.2 ", 64) == ("blocked4", "198.18.0.2", None)
    assert E.set_for(ipaddress.ip_address("2001:db8::2"), 64) == ("blocked6", "2001:db8::2", None)
    # not an address for inet_pton (leading zeros) but one for ipaddress: the slow path decides
    with pytest.raises(ValueError):
        E.set_for("198.18.0.256", 64)
    with pytest.raises(ValueError):
        E.set_for("not-an-address", 64)
    assert E.set_for("198.18.0.5/24", None)[2] == ipaddress.ip_network("198.18.0.0/24")


def test_v6_prefix_of_reads_the_prefix_set():
    assert E.v6_prefix_of(["blocked4", "blocked6", "blocked6_56", "blocked6net"]) == 56
    assert E.v6_prefix_of(["blocked4", "blocked6", "blocked6net"]) == 128
    assert E.v6_prefix_of([]) == 128


# == element texts and commands ======================================================================
def test_timeout_text_rounds_to_whole_milliseconds_of_at_least_one():
    assert E.timeout_text(0.0001) == " timeout 1ms"
    assert E.timeout_text(2.0) == " timeout 2s"


def test_port_elems():
    assert E.port_elems([(22, 22), (1, 1023)]) == ["22", "1-1023"]
    assert E.port_elems([]) == []


def test_block_commands_replace_the_timeout():
    assert E.block_commands("t", "blocked4", "198.18.0.2", 60) == (
        "add element inet t blocked4 { 198.18.0.2 }\n"
        "delete element inet t blocked4 { 198.18.0.2 }\n"
        "add element inet t blocked4 { 198.18.0.2 timeout 60s }"
    )
    assert E.block_commands("t", "blocked6", "2001:db8::2", 0).endswith("add element inet t blocked6 { 2001:db8::2 }")


def test_delete_replace_and_flush_commands():
    N = ipaddress.ip_network
    assert E.delete_command("t", "blocked4", ["198.18.0.2"]) == "delete element inet t blocked4 { 198.18.0.2 }"
    halves = [N("198.18.0.0/25"), N("198.18.0.128/25")]
    assert E.replace_commands("t", "blocked4net", halves, "198.18.0.0/24 timeout 5s") == (
        "delete element inet t blocked4net { 198.18.0.0/25, 198.18.0.128/25 }\nadd element inet t blocked4net { 198.18.0.0/24 timeout 5s }"
    )
    assert E.replace_commands("t", "ignore4", [], "10.0.0.0/8") == "add element inet t ignore4 { 10.0.0.0/8 }"
    assert E.flush_commands("t", ["blocked4", "blocked6"]) == "flush set inet t blocked4\nflush set inet t blocked6"
    assert E.flush_commands("t", []) == ""


def test_plan_nets_handles_both_families_apart():
    N = ipaddress.ip_network
    adds, deletes = E.plan_nets({N("2001:db8::/32"): 0, N("10.0.0.0/8"): 5}, [N("2001:db8:1::/48"), N("10.1.0.0/16")])
    assert adds == {N("10.0.0.0/8"): 5, N("2001:db8::/32"): 0}
    assert deletes == [N("2001:db8:1::/48"), N("10.1.0.0/16")]
    assert E.plan_nets({}, [N("10.0.0.0/8")]) == ({}, [])


def test_block_items_normalizes_every_form():
    assert E.block_items(
        [
            "198.18.0.2",
            ("198.18.0.3", 60),
            ["198.18.0.4"],
            {"network": "198.18.0.5", "timeout": 30},
            {"network": "198.18.0.6", "timeout": 30, "expires_in": 12},
            {"network": "198.18.0.7", "expires_in": None, "timeout": 0},
        ]
    ) == [("198.18.0.2", 0), ("198.18.0.3", 60), ("198.18.0.4", 0), ("198.18.0.5", 30), ("198.18.0.6", 12), ("198.18.0.7", 0)]
    assert E.block_items([]) == []
    assert E.block_items(iter(["198.18.0.2"])) == [("198.18.0.2", 0)]


def test_bulk_commands_group_by_set_and_merge_prefixes():
    N = ipaddress.ip_network
    items = [
        ("198.18.0.2", 0),
        ("198.18.0.3", 60),
        ("2001:db8::2", 1.5),
        ("2001:db8:1::/64", 30),
        ("198.19.0.0/16", 0),
        ("198.19.1.0/24", 5),
        ("198.20.0.0/24", 0),
        ("2001:db8:2::/48", 0),
    ]
    text = E.bulk_commands("t", items, {"blocked4net": [N("198.20.0.0/25"), N("10.0.0.0/8")]}, 64)
    assert text.splitlines() == [
        "delete element inet t blocked4net { 198.20.0.0/25 }",
        "add element inet t blocked4 { 198.18.0.2, 198.18.0.3 timeout 60s }",
        "add element inet t blocked6 { 2001:db8::2 timeout 1500ms }",
        "add element inet t blocked6_64 { 2001:db8:1:: timeout 30s }",
        "add element inet t blocked4net { 198.19.0.0/16, 198.20.0.0/24 }",
        "add element inet t blocked6net { 2001:db8:2::/48 }",
    ]


def test_bulk_commands_the_last_timeout_of_a_repeated_address_wins():
    assert E.bulk_commands("t", [("198.18.0.2", 5), ("198.18.0.2", 9)], {}, 64) == "add element inet t blocked4 { 198.18.0.2 timeout 9s }"


def test_bulk_commands_nothing_new():
    N = ipaddress.ip_network
    assert E.bulk_commands("t", [("10.1.0.0/16", 5)], {"blocked4net": [N("10.0.0.0/8")]}, 64) == ""
    assert E.bulk_commands("t", [], {}, 64) == ""


def test_ftp_element():
    a, b, setname, elem = E.ftp_element("198.18.0.2", "198.18.0.1", "40000")
    assert (str(a), str(b), setname) == ("198.18.0.2", "198.18.0.1", "ftp_expect4")
    assert elem == "198.18.0.2 . 198.18.0.1 . 40000"
    assert E.ftp_element("2001:db8::2", "2001:db8::1", 21)[2:] == ("ftp_expect6", "2001:db8::2 . 2001:db8::1 . 21")
    for bad in (
        ("198.18.0.2", "2001:db8::1", 21),
        ("198.18.0.2", "198.18.0.1", 0),
        ("198.18.0.2", "198.18.0.1", 65536),
        ("x", "198.18.0.1", 21),
    ):
        with pytest.raises(ValueError):
            E.ftp_element(*bad)


def test_expect_ftp_commands():
    assert (
        E.expect_ftp_commands("t", "198.18.0.2", "198.18.0.1", 40000, 0.2)
        == "add element inet t ftp_expect4 { 198.18.0.2 . 198.18.0.1 . 40000 timeout 1s }"
    )
    text = E.expect_ftp_commands(
        "t", "2001:db8::2", "2001:db8::1", 40001, 30, remove=[("2001:db8::2", "2001:db8::1", 40000), ("198.18.0.2", "198.18.0.1", 5)]
    )
    assert text.splitlines() == [
        "add element inet t ftp_expect6 { 2001:db8::2 . 2001:db8::1 . 40000 timeout 1s }",
        "delete element inet t ftp_expect6 { 2001:db8::2 . 2001:db8::1 . 40000 }",
        "add element inet t ftp_expect4 { 198.18.0.2 . 198.18.0.1 . 5 timeout 1s }",
        "delete element inet t ftp_expect4 { 198.18.0.2 . 198.18.0.1 . 5 }",
        "add element inet t ftp_expect6 { 2001:db8::2 . 2001:db8::1 . 40001 timeout 30s }",
    ]
    with pytest.raises(ValueError):
        E.expect_ftp_commands("t", "198.18.0.2", "198.18.0.1", 40000, 5, remove=[("198.18.0.2", "::1", 1)])


def test_port_set_commands():
    assert E.port_set_commands("t", ([(1, 21), (23, 1023)], [])).splitlines() == [
        "flush set inet t tcp_ports",
        "add element inet t tcp_ports { 1-21, 23-1023 }",
        "flush set inet t udp_ports",
    ]


# == listings ========================================================================================
def test_set_item_texts():
    assert E.set_item_texts(SET_TEXT) == [
        "198.18.0.0/24 timeout 3600s expires 3590s",
        "198.18.5.1-198.18.5.2",
        "198.18.7.0/24 timeout 1500ms expires 900ms",
    ]
    assert E.set_item_texts("set blocked4 {\n type ipv4_addr\n}") == []
    assert E.set_item_texts("elements = { }") == []


def test_element_key_and_expiry():
    assert E.element_key("198.18.0.2 timeout 60s expires 59s") == "198.18.0.2 timeout 60s"
    assert E.element_key("198.18.0.2") == "198.18.0.2"
    assert E.element_expires("198.18.0.2 timeout 60s expires 59s") == 59
    assert E.element_expires("198.18.0.2 timeout 1s expires 250ms") == 0.25
    assert E.element_expires("198.18.0.2") is None


def test_parse_set_items_hash_sets_skip_ipaddress():
    got = E.parse_set_items("blocked6", ["2001:db8::2 timeout 60s expires 59s", "2001:db8::3", " ", "garbage!"])
    assert got == [
        {"network": "2001:db8::2", "timeout": 60, "expires_in": 59, "set": "blocked6"},
        {"network": "2001:db8::3", "timeout": 0, "expires_in": None, "set": "blocked6"},
    ]
    # a timeout that has just run out: expires 0, still a timed entry
    assert E.parse_set_items("blocked4", ["198.18.0.2 timeout 1s"])[0]["expires_in"] == 0


def test_parse_set_items_concatenated_ftp_elements():
    got = E.parse_set_items("ftp_expect4", ["198.18.0.2 . 198.18.0.1 . 40000 timeout 5s expires 4s"])
    assert got == [{"network": "198.18.0.2", "timeout": 5, "expires_in": 4, "set": "ftp_expect4"}]


def test_elem_networks():
    N = ipaddress.ip_network
    assert E.elem_networks("blocked4net", {"prefix": {"addr": "198.18.0.0", "len": 24}}) == [N("198.18.0.0/24")]
    assert E.elem_networks("blocked4net", {"range": ["198.18.0.1", "198.18.0.2"]}) == [N("198.18.0.1/32"), N("198.18.0.2/32")]
    assert E.elem_networks("blocked6_56", "2001:db8:1::") == [N("2001:db8:1::/56")]
    assert E.elem_networks("blocked4", "198.18.0.2") == [N("198.18.0.2/32")]


def test_served_commands_add_the_listening_monitored_ports():
    mon = ([(1, 1023)], [(1, 1023), (31337, 31337)])
    assert E.served_commands("t", {22, 80, 8080}, {53, 31337, 40000}, mon) == (
        "\nadd element inet t served_tcp { 22, 80 }\nadd element inet t served_udp { 53, 31337 }"
    )
    assert E.served_commands("t", {8080}, set(), mon) == ""


def test_parse_sets():
    items = [
        {"metainfo": {}},
        {
            "set": {
                "name": "blocked4",
                "type": "ipv4_addr",
                "flags": ["dynamic", "timeout"],
                "size": 1000,
                "stmt": [{"counter": {"packets": 0, "bytes": 0}}],
            }
        },
        {"set": {"name": "blocked4net", "type": "ipv4_addr", "flags": ["timeout", "interval"]}},
        {"set": {"name": "ftp_expect4", "type": ["ipv4_addr", "ipv4_addr", "inet_service"], "flags": ["timeout"]}},
        {"set": {"name": "tcp_ports", "type": "inet_service"}},
        {"set": {"name": "served_tcp", "type": "inet_service", "flags": ["dynamic", "timeout"], "timeout": 600, "size": 65536}},
    ]
    assert E.parse_sets(items) == {
        "blocked4": ("ipv4_addr", ("counter", "timeout"), 0, 1000),  # its elements count packets
        "blocked4net": ("ipv4_addr", ("interval", "timeout"), 0, 0),  # a set of an older table: no counter
        "ftp_expect4": ("ipv4_addr . ipv4_addr . inet_service", ("timeout",), 0, 0),
        "tcp_ports": ("inet_service", (), 0, 0),
        "served_tcp": ("inet_service", ("timeout",), 600, 65536),
    }
    # ...comparable with what the renderer would load (dynamic or not in the listing).
    from nfsentry.nft.render import model
    from nfsentry.nft.spec import KernelBlock, RulesetSpec

    m = model(RulesetSpec(recent_service_grace=600, kernel_block=KernelBlock(tcp_flags=(2,), size=1000)), "native")
    assert all(m.set(n).signature == E.parse_sets(items)[n] for n in ("blocked4", "ftp_expect4", "served_tcp"))
    assert E.parse_sets([]) == {}


def test_parse_chains():
    items = [
        {"metainfo": {}},
        {"chain": {"family": "inet", "table": "nfsentry", "name": "input"}},
        {"chain": {"family": "inet", "table": "other", "name": "input"}},
        {"chain": {"family": "ip", "table": "nfsentry", "name": "prerouting"}},
    ]
    assert E.parse_chains(items, "nfsentry") == ["input", "prerouting"]
    assert E.parse_chains(items, "nfsentry", "inet") == ["input"]
    assert E.parse_chains(items, "missing") == []


def test_parse_rules():
    items = [
        {"table": {}},
        {"rule": {"chain": "input", "expr": [{"accept": None}]}},
        {"rule": {"chain": "input", "expr": [{"drop": None}]}},
        {"rule": {"chain": "output"}},
    ]
    assert E.parse_rules(items) == {"input": ['[{"accept": null}]', '[{"drop": null}]'], "output": ["[]"]}


def test_parse_counters():
    names = ["blocked_pkts4", "blocked_pkts6", "queued_tcp", "queued_udp", "queued_ftp"]
    items = [
        {"metainfo": {}},
        {"counter": {"name": "queued_tcp", "packets": 3}},
        {"counter": {"name": "queued_udp", "packets": 4}},
        {"counter": {"name": "blocked_pkts6", "packets": 2}},
        {"counter": {"name": "queued_ftp"}},
    ]
    assert E.parse_counters(items, names) == {
        "blocked_pkts4": 0,
        "blocked_pkts6": 2,
        "queued_tcp": 3,
        "queued_udp": 4,
        "queued_ftp": 0,
        "queued": 7,
        "blocked_pkts": 2,
        "fleet_pkts": 0,
    }


@pytest.mark.parametrize(
    "chains,rules,inuse,want",
    [
        (
            ["prerouting", "input"],
            {"prerouting": ['[{"drop": null}]'], "input": ['[{"queue": {}}]', '"socket"']},
            None,
            {"backend": "native", "inuse": "socket", "variant": "host"},
        ),
        (
            ["prerouting", "input"],
            {"prerouting": ['[{"counter": {}}]'], "input": ['[{"mangle": {}}]']},
            "poll",
            {"backend": "compat", "inuse": "poll", "variant": "observe"},
        ),
        (
            ["prerouting", "input", "forward"],
            {"input": ['[{"mangle": {}}]']},
            "off",
            {"backend": "compat", "inuse": "off", "variant": "gateway"},
        ),
        (
            ["prerouting"],
            {"prerouting": ['[{"drop": null}]']},
            "socket",
            {"backend": None, "inuse": "poll-or-off", "variant": "blocks-only"},
        ),
        (["prerouting", "input"], {}, None, {"backend": None, "inuse": "poll-or-off", "variant": "observe"}),
    ],
)
def test_ruleset_facts(chains, rules, inuse, want):
    assert E.ruleset_facts(chains, rules, inuse) == want


def test_bulk_commands_replace_the_timeout_of_entries_in_force():
    """Bulk block extending entries already in the kernel: add (a no-op when present), delete and
    add again with the new timeout, for hash and interval sets, in the one transaction."""
    N = ipaddress.ip_network
    items = [("198.18.0.2", 3600), ("198.18.0.3", 60), ("198.19.0.0/24", 0), ("2001:db8:1::/64", 30)]
    replace = ["198.18.0.2", "198.19.0.0/24"]
    text = E.bulk_commands("t", items, {"blocked4net": [N("198.19.0.0/24")]}, 64, replace)
    assert text.splitlines() == [
        "add element inet t blocked4 { 198.18.0.2 }",
        "delete element inet t blocked4 { 198.18.0.2 }",
        "add element inet t blocked4net { 198.19.0.0/24 }",
        "delete element inet t blocked4net { 198.19.0.0/24 }",
        "add element inet t blocked4 { 198.18.0.2 timeout 3600s, 198.18.0.3 timeout 60s }",
        "add element inet t blocked4net { 198.19.0.0/24 }",
        "add element inet t blocked6_64 { 2001:db8:1:: timeout 30s }",
    ]


def _plan_nets_pairwise(new: dict, existing: list) -> tuple[dict, list]:
    """plan_nets as first written (every pair tested): the reference for the indexed version."""
    adds: dict = {}
    for net in sorted(new, key=lambda n: (n.version, n.prefixlen)):
        if any(net.version == o.version and net.subnet_of(o) for o in (*adds, *existing)):
            continue
        adds[net] = new[net]
    deletes = [o for o in existing if any(o.version == n.version and o != n and o.subnet_of(n) for n in adds)]
    return {n: t for n, t in adds.items() if n not in existing}, deletes


_nets = st.one_of(
    st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**16 - 1).map(lambda i: ipaddress.IPv4Address(0xC6120000 | i)),
        st.integers(16, 32),
    ),
    st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 15).map(lambda i: ipaddress.IPv6Address(0x20010DB8 << 96 | i << 80)),
        st.integers(40, 64),
    ),
)


@given(st.dictionaries(_nets, st.integers(0, 9), max_size=12), st.lists(_nets, max_size=8, unique=True))
def test_plan_nets_indexed_agrees_with_pairwise(new, existing):
    # (the entries of an interval set never overlap)
    existing = [n for n in existing if not any(n != o and n.version == o.version and n.overlaps(o) for o in existing)]
    assert E.plan_nets(new, existing) == _plan_nets_pairwise(new, existing)


def test_parse_set_items_reads_the_per_element_counter_wherever_nft_prints_it():
    items = [
        "198.18.0.2 timeout 3600s expires 3500s counter packets 17 bytes 1020",
        "198.18.0.3 counter packets 0 bytes 0 timeout 60s expires 59s",  # statements before the times
        "198.18.0.4 counter packets 5 bytes 300",  # permanent
        "198.18.0.5 timeout 60s expires 59s",  # a set of an older table: not counted
    ]
    got = E.parse_set_items("blocked4", items)
    assert got == [
        {"network": "198.18.0.2", "timeout": 3600, "expires_in": 3500, "set": "blocked4", "packets": 17},
        {"network": "198.18.0.3", "timeout": 60, "expires_in": 59, "set": "blocked4", "packets": 0},
        {"network": "198.18.0.4", "timeout": 0, "expires_in": None, "set": "blocked4", "packets": 5},
        {"network": "198.18.0.5", "timeout": 60, "expires_in": 59, "set": "blocked4"},
    ]
    nets = E.parse_set_items("blocked4net", ["198.18.7.0/24 timeout 60s expires 10s counter packets 3 bytes 180"])
    assert nets == [{"network": "198.18.7.0/24", "timeout": 60, "expires_in": 10, "set": "blocked4net", "packets": 3}]
    six = E.parse_set_items("blocked6_64", ["2001:db8:5:: counter packets 9 bytes 9 timeout 30s expires 29s"])
    assert six[0]["network"] == "2001:db8:5::/64" and six[0]["packets"] == 9
    # a listing's identity of an element ignores its time left and its counter (both move between listings)
    assert E.element_key(items[0]) == E.element_key("198.18.0.2 timeout 3600s expires 3400s counter packets 99 bytes 5940")
    assert E.element_key(items[0]) == "198.18.0.2 timeout 3600s"
