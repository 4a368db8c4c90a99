"""The nft renderer and the pure helpers of nfsentry.nft / nfsentry.inuse (no kernel, no root)."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from nfsentry import inuse, nft
from nfsentry.nft import RulesetSpec, compat_rules, default_spec, render

REPO = Path(__file__).resolve().parents[2]


def chain(text: str, name: str) -> list[str]:
    """The rule lines of one chain (comments dropped, multi-line sets joined)."""
    m = re.search(rf"\n\tchain {name} {{\n(.*?)\n\t}}\n", text, re.S)
    assert m, f"no chain {name}"
    rules, cur = [], ""
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("type filter hook"):
            continue
        cur = f"{cur} {line}" if cur else line
        if cur.count("{") == cur.count("}"):
            rules.append(cur)
            cur = ""
    return rules


def index_of(rules: list[str], needle: str) -> int:
    return next(i for i, r in enumerate(rules) if needle in r)


# == the shipped files are the renderer's output ==================================================
@pytest.mark.parametrize("variant,name", sorted(nft.SHIPPED.items()))
def test_shipped_rules_equal_the_renderer(variant, name):
    path = REPO / "rules" / name
    assert path.read_text() == render(default_spec(variant), "native"), \
        f"{path} is stale: run `make rules` (python -m nfsentry.nft --write-shipped rules)"


def test_write_shipped_writes_exactly_the_three_files(tmp_path):
    paths = nft.write_shipped(tmp_path)
    assert sorted(p.name for p in paths) == ["gateway.nft", "nfsentry.nft", "observe.nft"]
    for p in paths:
        assert p.read_text() == (REPO / "rules" / p.name).read_text()


def test_cli_render_matches(capsys):
    assert nft.main(["render", "--variant", "gateway", "--backend", "compat"]) == 0
    assert capsys.readouterr().out == render(default_spec("gateway"), "compat")


def test_default_ports_match_the_configuration_defaults():
    config = pytest.importorskip("nfsentry.config")
    assert tuple(config.TROJAN_TCP) == nft.TROJAN_TCP and tuple(config.TROJAN_UDP) == nft.TROJAN_UDP
    cfg = config.defaults()
    spec = RulesetSpec().normalized()
    assert spec.tcp_ports == cfg.tcp_ports and spec.udp_ports == cfg.udp_ports


# == structure and order ============================================================================
@pytest.mark.parametrize("backend", ["native", "compat"])
@pytest.mark.parametrize("variant", ["host", "gateway", "observe"])
def test_ruleset_structure(variant, backend):
    text = render(RulesetSpec(variant=variant), backend)
    # One table, replaced by `nft -f`, and nothing outside it.
    assert re.findall(r"^table .*$", text, re.M) == ["table inet nfsentry", "table inet nfsentry {"]
    assert "\ndelete table inet nfsentry\n" in text
    assert not re.search(r"^(flush ruleset|add|insert|delete (?!table inet nfsentry$))", text, re.M)
    # nft 1.0.6: a rule must not share its line with a closing brace.
    for line in text.splitlines():
        s = line.strip()
        assert not (s.endswith("}") and s not in ("}",) and not s.startswith("}") and "{" not in s), line
    for name in ("blocked4", "blocked4net", "blocked6", "blocked6_64", "blocked6net", "ignore4", "ignore6",
                 "tcp_ports", "udp_ports", "ftp_expect4", "ftp_expect6"):
        assert f"\tset {name} {{\n" in text
    assert ("set protect4" in text) == (variant == "gateway")
    for counter in nft.COUNTERS:
        assert f"\tcounter {counter} {{\n" in text
    # 1. blocked sources at raw priority - 10, dropped unless observing.
    assert "type filter hook prerouting priority raw - 10; policy accept;" in text
    pre = chain(text, "prerouting")
    assert len(pre) == 5 and all("@blocked" in r for r in pre)
    assert all(r.endswith(" drop") for r in pre) == (variant != "observe")
    assert not any(r.endswith(" drop") for r in pre) == (variant == "observe")
    assert "ip6 saddr & ffff:ffff:ffff:ffff:: @blocked6_64" in " ".join(pre)
    # Input: FTP control (7) before established (2) < ignore (3) < socket (4) < FTP data (5) < queue (6).
    inp = chain(text, "input")
    order = [index_of(inp, s) for s in ('iif "lo" accept', "tcp dport 21 jump ftp_control", "ct state established,related accept",
                                        "fib daddr type != local accept", "@ignore4", "socket transparent 0 accept",
                                        "@ftp_expect4", "tcp dport @tcp_ports", "udp dport @udp_ports")]
    assert order == sorted(order)
    assert all("ct state new,invalid,untracked" in r for r in inp if "@tcp_ports" in r or "@udp_ports" in r)
    if variant == "gateway":
        fwd = chain(text, "forward")
        order = [index_of(fwd, s) for s in ("tcp dport 21 jump ftp_control", "ct state established,related accept",
                                            "ip daddr != @protect4 accept", "ip6 daddr != @protect6 accept", "@ignore4",
                                            "@ftp_expect4", "tcp dport @tcp_ports")]
        assert order == sorted(order)
        assert not any("socket" in r for r in fwd)
    else:
        assert "chain forward" not in text
    out = chain(text, "output")
    assert out == ['oif "lo" accept', "tcp sport 21 jump ftp_control", "tcp dport 21 jump ftp_control"]
    ftpc = chain(text, "ftp_control")
    assert len(ftpc) == 3 and all("counter name queued_ftp" in r for r in ftpc)


def test_native_and_compat_statements():
    native = render(RulesetSpec(), "native")
    compat = render(RulesetSpec(queue=7, ftp_queue=9), "compat")
    assert "queue flags bypass to 0" in native and "queue flags bypass to 1" in native
    assert "meta mark set" not in native.split("table inet nfsentry {")[1]
    body = compat.split("table inet nfsentry {")[1]
    assert "queue " not in body.replace("queue 7", "").replace("queue 9", "").replace("queued_", "")
    assert "meta mark set meta mark & 0x0000fffc | 0x4e460001 accept" in body
    assert "meta mark set meta mark & 0x0000fffc | 0x4e460002 accept" in body
    # The header lists the iptables-nft rules the compat backend needs.
    assert "#   iptables-nft -I INPUT 1 -m mark --mark 0x4e460001/0xffff0003 -m comment --comment nfsentry " \
           "-j NFQUEUE --queue-num 7 --queue-bypass" in compat
    assert "--queue-num 9" in compat


def test_compat_rules_per_variant():
    host = compat_rules(RulesetSpec())
    assert {(b, c) for b, c, _ in host} == {(b, c) for b in ("iptables-nft", "ip6tables-nft") for c in ("INPUT", "OUTPUT")}
    assert len(host) == 6
    assert len(compat_rules(RulesetSpec(variant="gateway"))) == 10
    assert len(compat_rules(RulesetSpec(ftp=False))) == 2
    args = host[0][2]
    assert args[args.index("--comment") + 1] == "nfsentry"
    assert compat_rules(RulesetSpec(table="other"))[0][2][7] == "nfsentry:other"
    assert all("--queue-bypass" in a for _, _, a in host)


@pytest.mark.parametrize("inuse,socket_rule", [("auto", True), ("socket", True), ("poll", False), ("off", False)])
def test_inuse_methods(inuse, socket_rule):
    text = render(RulesetSpec(inuse=inuse), "native")
    assert ("socket transparent 0 accept" in chain(text, "input")) == socket_rule


def test_ftp_off_renders_no_ftp_chains():
    text = render(RulesetSpec(ftp=False), "native")
    assert "ftp_control" not in text and "chain output" not in text
    assert "@ftp_expect4" in text  # expectations still exempt data connections


def test_ftp_payload_thresholds():
    text = render(RulesetSpec(), "native")
    ftpc = chain(text, "ftp_control")
    v4 = next(r for r in ftpc if "ip length" in r)
    v6 = next(r for r in ftpc if "ip6 length" in r)
    # 20-byte IPv4 header + 20-byte TCP header: payload from 41 bytes; 60-byte TCP header: 81.
    assert "0x50-0x5f . 41-65535" in v4 and "0xf0-0xff . 81-65535" in v4
    assert "0x80-0x8f . 53-65535" in v4  # timestamps (32-byte TCP header): a pure ACK is 52 bytes
    assert "0x50-0x5f . 21-65535" in v6 and "0xf0-0xff . 61-65535" in v6
    assert v4.count(" . ") == v6.count(" . ") == 11 + 1


def test_ports_and_networks_are_normalized():
    spec = RulesetSpec(tcp_ports=[(1, 10), (5, 20), 22, "23-25", (21, 21)], udp_ports=[53],
                       ignore=["198.18.0.4", "198.18.0.0/30", "2001:db8::4", "2001:db8::/126", "198.18.0.7/32"])
    text = render(spec, "native")
    assert "1-25" in text.split("set tcp_ports {")[1].split("}")[0]
    ign4 = text.split("set ignore4 {")[1].split("\t}")[0]
    assert "198.18.0.0/30, 198.18.0.4/32, 198.18.0.7/32" in ign4
    ign6 = text.split("set ignore6 {")[1].split("\t}")[0]
    assert "2001:db8::/126, 2001:db8::4/128" in ign6
    empty = render(RulesetSpec(tcp_ports=[]), "native")
    assert "elements" not in empty.split("set tcp_ports {")[1].split("\t}")[0]


def test_ipv6_prefix_sets():
    t56 = render(RulesetSpec(ipv6_prefix=56), "native")
    assert "set blocked6_56 {" in t56 and "ip6 saddr & ffff:ffff:ffff:ff00:: @blocked6_56" in t56
    t128 = render(RulesetSpec(ipv6_prefix=128), "native")
    assert "blocked6_" not in t128 and len(chain(t128, "prerouting")) == 4


@pytest.mark.parametrize("kw,msg", [
    ({"variant": "router"}, "variant"), ({"inuse": "maybe"}, "inuse"), ({"backend": "fast"}, "backend"),
    ({"queue": 1, "ftp_queue": 1}, "differ"), ({"queue": 70000}, "queue"), ({"queue": True}, "queue"),
    ({"tcp_ports": [0]}, "tcp_ports"), ({"tcp_ports": ["5-2"]}, "tcp_ports"), ({"udp_ports": [70000]}, "udp_ports"),
    ({"tcp_ports": ["http"]}, "tcp_ports"), ({"ignore": ["not-an-ip"]}, "ignore"), ({"protect": ["1.2.3.4/33"]}, "protect"),
    ({"mark": 0x4E460001}, "mark"), ({"mark": 0x10}, "mark"), ({"mark_mask": 0xFFFF0000}, "mark_mask"),
    ({"table": "bad-name"}, "table"), ({"ipv6_prefix": 0}, "ipv6_prefix")])
def test_spec_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RulesetSpec(**kw).normalized()
    with pytest.raises(ValueError):
        render(RulesetSpec(**kw), "native")


def test_render_needs_an_explicit_backend():
    with pytest.raises(ValueError, match="native or compat"):
        render(RulesetSpec(), "auto")


def test_custom_table_and_queues():
    text = render(RulesetSpec(table="scan_guard", queue=3, ftp_queue=4), "native")
    assert "table inet scan_guard {" in text and "nfsentry {" not in text
    assert "queue flags bypass to 3" in text and "queue flags bypass to 4" in text


# == pure helpers ===================================================================================
def test_plan_nets_keeps_the_broadest_and_replaces_covered():
    N = ipaddress.ip_network
    adds, deletes = nft._plan_nets({N("198.18.0.0/24"): 10, N("198.18.0.128/25"): 5, N("198.19.0.0/16"): 0},
                                   [N("198.19.1.0/24"), N("10.0.0.0/8")])
    assert adds == {N("198.18.0.0/24"): 10, N("198.19.0.0/16"): 0}
    assert deletes == [N("198.19.1.0/24")]
    adds, deletes = nft._plan_nets({N("10.1.0.0/16"): 1}, [N("10.0.0.0/8")])
    assert adds == {} and deletes == []
    adds, deletes = nft._plan_nets({N("10.0.0.0/8"): 1}, [N("10.0.0.0/8")])
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
    got = nft._parse_set_text("blocked4net", SET_TEXT)
    assert got == [
        {"network": "198.18.0.0/24", "timeout": 3600, "expires_in": 3590, "set": "blocked4net"},
        {"network": "198.18.5.1", "timeout": 0, "expires_in": None, "set": "blocked4net"},
        {"network": "198.18.5.2", "timeout": 0, "expires_in": None, "set": "blocked4net"},
        {"network": "198.18.7.0/24", "timeout": 1.5, "expires_in": 0.9, "set": "blocked4net"}]
    six = nft._parse_set_text("blocked6_64", "set blocked6_64 {\n elements = { 2001:db8:5:: timeout 30s expires 29s, 2001:db8:6:: }\n}")
    assert [b["network"] for b in six] == ["2001:db8:5::/64", "2001:db8:6::/64"]
    assert nft._parse_set_text("blocked4", "set blocked4 {\n type ipv4_addr\n}") == []


def test_timeout_text():
    assert nft._timeout_text(0) == "" and nft._timeout_text(None) == ""
    assert nft._timeout_text(3600) == " timeout 3600s"
    assert nft._timeout_text(1.5) == " timeout 1500ms"
    with pytest.raises(ValueError):
        nft._timeout_text(-1)


def test_parse_network():
    assert nft.network_text(nft.parse_network("198.18.0.5/24")) == "198.18.0.0/24"
    assert nft.network_text(nft.parse_network(" 2001:db8::1 ")) == "2001:db8::1"
    for bad in ("0.0.0.0/0", "::/0", "198.18.0.256", "host"):
        with pytest.raises(ValueError):
            nft.parse_network(bad)


def test_nft_error_carries_nft_text():
    err = "Error: Could not process rule: No such file or directory\nadd element inet x y { 1.2.3.4 }\n  ^^^^\n"
    e = nft.NftError("blocking 1.2.3.4", err, "add element ...")
    assert str(e) == "blocking 1.2.3.4: Error: Could not process rule: No such file or directory"
    assert e.error.startswith("Error:") and e.command == "add element ..."


def test_classify_picks_the_set_by_family_and_prefix():
    if nft._nftables is None:
        pytest.skip("python3-nftables missing")
    n = nft.Nft()
    n._v6p = 64  # as after a load with the default ipv6_prefix (no kernel needed)
    assert n.classify("198.18.0.2")[:2] == ("blocked4", "198.18.0.2")
    assert n.classify("198.18.0.2/32")[:2] == ("blocked4", "198.18.0.2")
    assert n.classify("198.18.0.9/24")[:2] == ("blocked4net", "198.18.0.0/24")
    assert n.classify("2001:DB8::0002")[:2] == ("blocked6", "2001:db8::2")
    assert n.classify("2001:db8:1::5/64")[:2] == ("blocked6_64", "2001:db8:1::")
    assert n.classify("2001:db8:1::/48")[:2] == ("blocked6net", "2001:db8:1::/48")
    with pytest.raises(ValueError):
        n.classify("198.18.0.0/0")


# == inuse.py ========================================================================================
PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 010012C6:0016 020012C6:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
PROC_UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
  2: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0 0
"""


def test_proc_net_parsing(tmp_path):
    assert inuse.parse_proc_net(PROC_TCP, True) == {22, 631}
    assert inuse.parse_proc_net(PROC_TCP, False) == {22, 631}
    assert inuse.parse_proc_net(PROC_UDP, False) == {53}
    (tmp_path / "tcp").write_text(PROC_TCP)
    (tmp_path / "udp6").write_text(PROC_UDP)  # tcp6 and udp missing: no IPv6 / vanished
    assert inuse.listening_ports(tmp_path) == ({22, 631}, {53})


def test_listening_ports_here_returns_sets():
    tcp, udp = inuse.listening_ports()
    assert isinstance(tcp, set) and isinstance(udp, set)


# (imported here, not in the header, to keep this change local) no hypothesis deadline: timing is
# not the point, and a busy machine can stall one cheap example past the default 200 ms
from hypothesis import settings  # noqa: E402


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 300)), max_size=8), st.sets(st.integers(1, 2400), max_size=30))
def test_subtract_ports_is_set_difference(pairs, holes):
    ranges = nft._ports([(lo, min(65535, lo + w)) for lo, w in pairs], "tcp_ports")
    got = inuse.subtract_ports(ranges, holes)
    expect = {p for lo, hi in ranges for p in range(lo, hi + 1)} - holes
    assert {p for lo, hi in got for p in range(lo, hi + 1)} == expect
    assert all(lo <= hi for lo, hi in got) and got == sorted(got)
    assert inuse.ports_to_ranges(expect) == nft._ports(got, "x") if got else not expect


@settings(deadline=None)
@given(st.lists(st.one_of(st.integers(1, 65535), st.tuples(st.integers(1, 65535), st.integers(0, 500))), max_size=12))
def test_rendered_port_set_is_the_union(items):
    norm = [(i, i) if isinstance(i, int) else (i[0], min(65535, i[0] + i[1])) for i in items]
    spec = RulesetSpec(tcp_ports=norm).normalized()
    want = {p for lo, hi in norm for p in range(lo, hi + 1)}
    assert {p for lo, hi in spec.tcp_ports for p in range(lo, hi + 1)} == want
    # disjoint, non-adjacent, sorted: what an nft interval set without auto-merge accepts
    assert all(a[1] + 1 < b[0] for a, b in zip(spec.tcp_ports, spec.tcp_ports[1:]))


def test_a_listing_slower_than_the_last_one_may_miss_what_expired_during_it(monkeypatch):
    """The time an element may have expired in is counted to the end of the second listing: a fast
    listing reads an element 2.4 s before it expires, a slow one (busy machine) reaches it only
    after; that is no inconsistency. A long-lived element missing still is."""
    clock = [100.0]
    monkeypatch.setattr(nft.time, "monotonic", lambda: clock[0])
    stable = [f"198.18.0.{i} timeout 3600s expires 3500s" for i in range(1, 41)]
    listings = [(0.2, stable + ["198.18.1.1 timeout 10s expires 2400ms"]),   # (duration, what it read)
                (3.0, stable)]                                                  # 1.1 expired meanwhile
    calls = []

    def once(name):
        duration, items = listings[min(len(calls), len(listings) - 1)]
        calls.append(name)
        clock[0] += duration
        return items

    n = nft.Nft.__new__(nft.Nft)
    n.listing_retries_exhausted = 0
    n._set_items_once = once
    assert n._set_items("blocked4") == stable and len(calls) == 2
    # control: the same slow listing losing an element with an hour left is not taken: a third is
    calls.clear()
    listings[1:] = [(3.0, stable[1:]), (0.2, stable)]
    assert n._set_items("blocked4") == stable and len(calls) == 3
