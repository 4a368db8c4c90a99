"""nfsentry.nft.render: the ruleset model and text, the shipped files, the compat rules (no kernel,
no root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nfsentry.nft import SHIPPED, RulesetSpec, compat_rules, default_spec, render, write_shipped
from nfsentry.nft.__main__ import main
from nfsentry.nft.spec import COUNTERS, KernelBlock

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
@pytest.mark.parametrize("variant,name", sorted(SHIPPED.items()))
def test_shipped_rules_equal_the_renderer(variant, name):
    path = REPO / "rules" / name
    assert path.read_text() == render(default_spec(variant), "native"), (
        f"{path} is stale: run `make rules` (python -m nfsentry.nft --write-shipped rules)"
    )


def test_write_shipped_writes_exactly_the_three_files(tmp_path):
    paths = write_shipped(tmp_path)
    assert sorted(p.name for p in paths) == ["gateway.nft", "nfsentry.nft", "observe.nft"]
    for p in paths:
        assert p.read_text() == (REPO / "rules" / p.name).read_text()


def test_cli_render_matches(capsys):
    assert main(["render", "--variant", "gateway", "--backend", "compat"]) == 0
    assert capsys.readouterr().out == render(default_spec("gateway"), "compat")


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
        if s.startswith("#"):
            continue
        assert not (s.endswith("}") and s not in ("}",) and not s.startswith("}") and "{" not in s), line
    for name in (
        "blocked4",
        "blocked4net",
        "blocked6",
        "blocked6_64",
        "blocked6net",
        "ignore4",
        "ignore6",
        "tcp_ports",
        "udp_ports",
        "ftp_expect4",
        "ftp_expect6",
        "served_tcp",
        "served_udp",
        "fleet4",
        "fleet4net",
        "fleet6",
        "fleet6net",
    ):
        assert f"\tset {name} {{\n" in text
    assert ("set protect4" in text) == (variant == "gateway")
    for counter in COUNTERS:
        assert f"\tcounter {counter} {{\n" in text
    # 1. blocked sources at raw priority - 10, dropped unless observing.
    assert "type filter hook prerouting priority raw - 10; policy accept;" in text
    pre = chain(text, "prerouting")
    assert len(pre) == 9 and all("@blocked" in r for r in pre[:5])
    # 2. then the fleet sets (decisions pulled from a CrowdSec LAPI), with their own counters
    assert [r.split()[2] for r in pre[5:]] == ["@fleet4", "@fleet4net", "@fleet6", "@fleet6net"]
    assert all("counter name fleet_pkts" in r for r in pre[5:])
    assert all(r.endswith(" drop") for r in pre) == (variant != "observe")
    assert not any(r.endswith(" drop") for r in pre) == (variant == "observe")
    assert "ip6 saddr & ffff:ffff:ffff:ffff:: @blocked6_64" in " ".join(pre)
    # Input: FTP control (7) before established (2) < ignore (3) < socket (4) < FTP data (5) < queue (6).
    inp = chain(text, "input")
    order = [
        index_of(inp, s)
        for s in (
            'iif "lo" accept',
            "tcp dport 21 jump ftp_control",
            "ct state established,related accept",
            "fib daddr type != local accept",
            "@ignore4",
            "meta l4proto tcp socket transparent 0 update @served_tcp { tcp dport } accept",
            "meta l4proto udp socket transparent 0 update @served_udp { udp dport } accept",
            "tcp dport @served_tcp accept",
            "udp dport @served_udp accept",
            "@ftp_expect4",
            "tcp dport @tcp_ports",
            "udp dport @udp_ports",
        )
    ]
    assert order == sorted(order)
    assert all("ct state new,invalid,untracked" in r for r in inp if "@tcp_ports" in r or "@udp_ports" in r)
    if variant == "gateway":
        fwd = chain(text, "forward")
        order = [
            index_of(fwd, s)
            for s in (
                "tcp dport 21 jump ftp_control",
                "ct state established,related accept",
                "ip daddr != @protect4 accept",
                "ip6 daddr != @protect6 accept",
                "@ignore4",
                "@ftp_expect4",
                "tcp dport @tcp_ports",
            )
        ]
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
    assert (
        "#   iptables-nft -I INPUT 1 -m mark --mark 0x4e460001/0xffff0003 -m comment --comment nfsentry "
        "-j NFQUEUE --queue-num 7 --queue-bypass" in compat
    )
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
    text = render(RulesetSpec(inuse=inuse, recent_service_grace=0), "native")
    assert ("socket transparent 0 accept" in chain(text, "input")) == socket_rule
    assert "served" not in text


# == recent_service_grace: ports served recently are no trap ========================================
SERVED_RULES = [
    "meta l4proto tcp socket transparent 0 update @served_tcp { tcp dport } accept",
    "meta l4proto udp socket transparent 0 update @served_udp { udp dport } accept",
    "tcp dport @served_tcp accept",
    "udp dport @served_udp accept",
]


@pytest.mark.parametrize("backend", ["native", "compat"])
@pytest.mark.parametrize("variant", ["host", "gateway", "observe"])
def test_served_ports_are_remembered_and_exempt_before_the_queue(variant, backend):
    text = render(RulesetSpec(variant=variant, recent_service_grace=600), backend)
    for name in ("served_tcp", "served_udp"):
        body = text.split(f"\tset {name} {{\n")[1].split("\t}")[0].split()
        assert body == ["type", "inet_service", "flags", "dynamic,", "timeout", "timeout", "10m", "size", "65536"]
    inp = chain(text, "input")
    at = [inp.index(r) for r in SERVED_RULES]
    assert at == sorted(at) and at[-1] - at[0] == 3
    # The in-use rule is what fills the sets; it replaces the plain socket rule (one lookup per packet).
    assert "socket transparent 0 accept" not in inp
    # After the ignored sources (3), before the FTP data (5) and the queue rules (6).
    assert index_of(inp, "@ignore6") < at[0] and at[-1] < index_of(inp, "@ftp_expect4") < index_of(inp, "@tcp_ports")
    # The forward path (gateway) does not see the protected hosts' sockets: no grace there.
    if variant == "gateway":
        assert not any("served" in r for r in chain(text, "forward"))
    assert "A port once in use stays exempt for 10m after its socket is gone" in text


@pytest.mark.parametrize("spec_kw", [{"recent_service_grace": 0}, {"inuse": "poll"}, {"inuse": "off"}], ids=["grace-0", "poll", "off"])
def test_no_served_sets_without_the_socket_match_or_with_grace_off(spec_kw):
    text = render(RulesetSpec(**{"recent_service_grace": 600, "inuse": "socket", **spec_kw}), "native")
    assert "served" not in text.split("table inet nfsentry {")[1]
    # poll keeps the grace in the daemon's poller: the header still says it.
    assert ("stays exempt for 10m" in text) == (spec_kw.get("inuse") == "poll")


@pytest.mark.parametrize("grace,shown", [(1, "1s"), (0.2, "1s"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d")])
def test_grace_is_whole_seconds_rounded_up_in_nft_time(grace, shown):
    from nfsentry.nft.render import model

    m = model(RulesetSpec(recent_service_grace=grace), "native")
    assert m.spec.recent_service_grace == m.set("served_tcp").timeout == m.set("served_udp").timeout
    assert m.set("served_tcp").timeout >= grace
    assert f"\t\ttimeout {shown}\n" in render(RulesetSpec(recent_service_grace=grace), "native")


def test_shipped_rules_carry_the_default_grace():
    for variant in SHIPPED:
        text = render(default_spec(variant), "native")
        assert "\t\ttimeout 10m\n" in text.split("set served_tcp {")[1]


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
    spec = RulesetSpec(
        tcp_ports=[(1, 10), (5, 20), 22, "23-25", (21, 21)],
        udp_ports=[53],
        ignore=["198.18.0.4", "198.18.0.0/30", "2001:db8::4", "2001:db8::/126", "198.18.0.7/32"],
    )
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
    assert "blocked6_" not in t128 and len(chain(t128, "prerouting")) == 8


def test_render_needs_an_explicit_backend():
    with pytest.raises(ValueError, match="native or compat"):
        render(RulesetSpec(), "auto")


def test_custom_table_and_queues():
    text = render(RulesetSpec(table="scan_guard", queue=3, ftp_queue=4), "native")
    assert "table inet scan_guard {" in text and "nfsentry {" not in text
    assert "queue flags bypass to 3" in text and "queue flags bypass to 4" in text


# == the model and reloads ===========================================================================
def test_model_sets_and_signatures():
    from nfsentry.nft.render import model

    m = model(RulesetSpec(variant="gateway", protect=["fd00::/8", "192.168.0.0/16"]), "compat")
    assert m.backend == "compat" and m.spec.protect == ["192.168.0.0/16", "fd00::/8"]
    assert m.set("blocked4net").signature == ("ipv4_addr", ("counter", "interval", "timeout"), 0, 0)  # entries count packets
    assert m.set("ftp_expect6").signature == ("ipv6_addr . ipv6_addr . inet_service", ("timeout",), 0, 0)
    # `dynamic` is not compared (nft 1.0.6's JSON listing omits it); the default timeout and size are.
    assert m.set("served_tcp").signature == ("inet_service", ("timeout",), 600, 65536)
    assert m.set("protect4").elements == ["192.168.0.0/16"] and m.set("protect6").elements == ["fd00::/8"]
    assert m.set("nope") is None
    assert [c.name for c in m.chains] == ["prerouting", "source_routed", "to_daemon", "input", "forward", "output", "ftp_control"]


def test_reload_plan_keeps_unchanged_blocked_sets_and_moves_changed_ones():
    from nfsentry.nft.render import model, reload_plan

    m = model(RulesetSpec(ipv6_prefix=56, kernel_block=KernelBlock(tcp_flags=(2,), rate="5/minute")), "native")
    assert reload_plan(m, None) == ([], [])
    current = {
        "chains": ["prerouting", "input"],
        "sets": {
            "blocked4": ("ipv4_addr", ("counter", "timeout"), 0, 100000),  # unchanged: kept
            "blocked6": ("ipv6_addr", ("timeout",), 0, 100000),  # without element counters (an older table): entries move
            "blocked6_64": ("ipv6_addr", ("timeout",), 0, 0),  # gone: entries move
            "blocked4net": ("ipv4_addr", ("interval",), 0, 0),  # changed: entries move
            "ftp_expect4": ("ipv4_addr . ipv4_addr . inet_service", ("timeout",), 0, 0),  # kept
            "served_tcp": ("inet_service", ("timeout",), 600, 65536),  # kept: a reload remembers served ports
            "served_udp": ("inet_service", ("timeout",), 300, 65536),  # another grace: recreated empty
            "tcp_ports": ("inet_service", ("interval",), 0, 0),
        },
    }  # config: always rewritten
    cmds, moved = reload_plan(m, current)
    assert cmds == [
        "flush chain inet nfsentry prerouting",
        "flush chain inet nfsentry input",
        "delete chain inet nfsentry prerouting",
        "delete chain inet nfsentry input",
        "delete set inet nfsentry blocked6",
        "delete set inet nfsentry blocked6_64",
        "delete set inet nfsentry blocked4net",
        "delete set inet nfsentry served_udp",
        "delete set inet nfsentry tcp_ports",
        # the kernel-side block's limit: a declared one keeps its old rate, so it is made anew
        "add limit inet nfsentry kernel_block { rate 5/minute }",
        "delete limit inet nfsentry kernel_block",
    ]
    assert moved == ["blocked6", "blocked6_64", "blocked4net"]
    # Grace turned off: the served sets go.
    cmds, _ = reload_plan(model(RulesetSpec(recent_service_grace=0), "native"), current)
    assert "delete set inet nfsentry served_tcp" in cmds and "delete set inet nfsentry served_udp" in cmds


def test_wrap_an_empty_list_is_no_lines():
    from nfsentry.nft.render import _wrap

    assert _wrap([], "\t") == []
    assert _wrap(["a", "b"], "", 3) == ["a,", "b"]


def test_write_shipped_leaves_current_files_untouched(tmp_path):
    first = write_shipped(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    (tmp_path / "gateway.nft").write_text("stale")
    again = write_shipped(tmp_path)
    assert again == first and (tmp_path / "gateway.nft").read_text() == render(default_spec("gateway"), "native")
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first if p.name != "gateway.nft")


def test_render_without_a_spec_is_the_host_default():
    assert render() == render(default_spec("host"), "native")
    body = render(default_spec(), "native").split("delete table inet nfsentry\n\n", 1)[1]
    assert body.startswith(render(standalone=False))
    assert body[len(render(standalone=False)) :].startswith("\n# The daemon also loads table netdev nfsentry")


# == compat rule helpers =============================================================================
def test_compat_key_ignores_how_iptables_prints_a_rule():
    from nfsentry.nft.render import compat_key

    ours = compat_rules(RulesetSpec())[0]
    printed = [
        "-m",
        "mark",
        "--mark",
        "0x4E460001/0xFFFF0003",
        "-m",
        "comment",
        "--comment",
        "nfsentry",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "0",
        "--queue-bypass",
    ]
    assert compat_key(*ours) == compat_key("iptables-nft", "INPUT", printed)
    assert compat_key("iptables-nft", "INPUT", ["--mark"]) == ("iptables-nft", "INPUT", "", "", False)


def test_compat_listed_finds_only_our_tag():
    from nfsentry.nft.render import compat_listed

    listing = "\n".join(
        [
            "-P INPUT ACCEPT",
            "-A INPUT -m mark --mark 0x4e460001/0xffff0003 -m comment --comment nfsentry -j NFQUEUE --queue-num 0 --queue-bypass",
            "-A OUTPUT -m mark --mark 0x4e460002/0xffff0003 -m comment --comment nfsentry:other -j NFQUEUE --queue-num 1",
            "-A INPUT -p tcp -j ACCEPT",
            '-A FORWARD -m comment --comment "nfsentry" -j NFQUEUE --queue-num 5',
        ]
    )
    found = compat_listed("ip6tables-nft", listing, "nfsentry")
    assert [(b, c, a[a.index("--queue-num") + 1]) for b, c, a in found] == [
        ("ip6tables-nft", "INPUT", "0"),
        ("ip6tables-nft", "FORWARD", "5"),
    ]
    assert [c for _, c, _ in compat_listed("iptables-nft", listing, "nfsentry:other")] == ["OUTPUT"]
    assert compat_listed("iptables-nft", "", "nfsentry") == []


def test_filter_chains_and_cleanup_commands():
    from nfsentry.nft.render import cleanup_commands, filter_chains

    items = [
        {"metainfo": {}},
        {"chain": {"family": "ip", "table": "filter", "name": "INPUT"}},
        {"chain": {"family": "ip6", "table": "filter", "name": "OUTPUT"}},
        {"chain": {"family": "inet", "table": "filter", "name": "input"}},
        {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING"}},
    ]
    assert filter_chains(items) == {("ip", "INPUT"), ("ip6", "OUTPUT")}
    before = {("ip", "FORWARD")}
    created = {("ip", "INPUT"), ("ip6", "OUTPUT"), ("ip6", "INPUT")}
    assert cleanup_commands(created, before) == [
        "delete chain ip filter INPUT",
        "delete chain ip6 filter INPUT",
        "delete chain ip6 filter OUTPUT",
        "delete table ip6 filter",
    ]
    assert cleanup_commands(set(), set()) == []
