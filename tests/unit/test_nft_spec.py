"""nfsentry.nft.spec (the ruleset specification and its validation) and nfsentry.nft.errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsentry.nft import NftError, NftInconsistent, NftUnavailable, RulesetSpec, default_spec, render
from nfsentry.nft import spec as S


def test_default_ports_match_the_configuration_defaults():
    config = pytest.importorskip("nfsentry.config.schema")
    assert tuple(config.TROJAN_TCP) == S.TROJAN_TCP and tuple(config.TROJAN_UDP) == S.TROJAN_UDP
    cfg = config.defaults()
    spec = RulesetSpec().normalized()
    assert spec.tcp_ports == cfg.tcp_ports and spec.udp_ports == cfg.udp_ports


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"variant": "router"}, "variant"),
        ({"inuse": "maybe"}, "inuse"),
        ({"backend": "fast"}, "backend"),
        ({"queue": 1, "ftp_queue": 1}, "differ"),
        ({"queue": 70000}, "queue"),
        ({"queue": True}, "queue"),
        ({"tcp_ports": [0]}, "tcp_ports"),
        ({"tcp_ports": ["5-2"]}, "tcp_ports"),
        ({"udp_ports": [70000]}, "udp_ports"),
        ({"tcp_ports": ["http"]}, "tcp_ports"),
        ({"ignore": ["not-an-ip"]}, "ignore"),
        ({"protect": ["1.2.3.4/33"]}, "protect"),
        ({"mark": 0x4E460001}, "mark"),
        ({"mark": 0x10}, "mark"),
        ({"mark_mask": 0xFFFF0000}, "mark_mask"),
        ({"table": "bad-name"}, "table"),
        ({"ipv6_prefix": 0}, "ipv6_prefix"),
        ({"recent_service_grace": -1}, "recent_service_grace"),
        ({"recent_service_grace": 86401}, "recent_service_grace"),
        ({"recent_service_grace": True}, "recent_service_grace"),
        ({"recent_service_grace": "10m"}, "recent_service_grace"),
        ({"recent_service_grace": float("nan")}, "recent_service_grace"),
    ],
)
def test_spec_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RulesetSpec(**kw).normalized()
    with pytest.raises(ValueError):
        render(RulesetSpec(**kw), "native")


@settings(deadline=None)  # timing is not the point; a busy machine can stall one cheap example
@given(st.lists(st.one_of(st.integers(1, 65535), st.tuples(st.integers(1, 65535), st.integers(0, 500))), max_size=12))
def test_rendered_port_set_is_the_union(items):
    norm = [(i, i) if isinstance(i, int) else (i[0], min(65535, i[0] + i[1])) for i in items]
    spec = RulesetSpec(tcp_ports=norm).normalized()
    want = {p for lo, hi in norm for p in range(lo, hi + 1)}
    assert {p for lo, hi in spec.tcp_ports for p in range(lo, hi + 1)} == want
    # disjoint, non-adjacent, sorted: what an nft interval set without auto-merge accepts
    assert all(a[1] + 1 < b[0] for a, b in zip(spec.tcp_ports, spec.tcp_ports[1:]))


def test_nft_error_carries_nft_text():
    err = "Error: Could not process rule: No such file or directory\nadd element inet x y { 1.2.3.4 }\n  ^^^^\n"
    e = NftError("blocking 1.2.3.4", err, "add element ...")
    assert str(e) == "blocking 1.2.3.4: Error: Could not process rule: No such file or directory"
    assert e.error.startswith("Error:") and e.command == "add element ..."


def test_nft_error_without_an_error_line_shows_the_first_line():
    assert str(NftError("loading", "netlink: busy\nmore")) == "loading: netlink: busy"
    assert str(NftError("loading")) == "loading" and NftError("loading").error == ""
    e = NftError("x", "Error: a\nError: a\nError: b")
    assert str(e) == "x: Error: a; Error: b"


def test_error_kinds():
    assert issubclass(S.SpecError, NftError) and issubclass(S.SpecError, ValueError)
    for kind in (NftInconsistent, NftUnavailable):
        assert issubclass(kind, NftError) and not issubclass(kind, ValueError)


# == the ports and networks of a spec ===============================================================
def test_ports_accepts_ints_pairs_and_range_strings_and_merges():
    assert S._ports([22, (20, 21), [80, 81], " 1000 - 1002 ", "23", (24, 24)], "x") == [(20, 24), (80, 81), (1000, 1002)]
    assert S._ports([], "x") == []
    assert S._ports([(1, 10), (3, 4)], "x") == [(1, 10)]


@pytest.mark.parametrize("bad", [True, 0, 65536, (5, 2), (1, 2, 3), "1-2-3", "http", 1.5, None])
def test_ports_refuses(bad):
    with pytest.raises(ValueError, match="tcp_ports"):
        S._ports([bad], "tcp_ports")


def test_networks_collapse_per_family():
    v4, v6 = S._networks(["198.18.0.1", " 198.18.0.0/31 ", "198.18.0.5/24", "2001:db8::/33", "2001:db8:8000::/33"], "ignore")
    assert [str(n) for n in v4] == ["198.18.0.0/24"]
    assert [str(n) for n in v6] == ["2001:db8::/32"]
    with pytest.raises(ValueError, match="ignore: bad address or prefix"):
        S._networks(["198.18.0.0/33"], "ignore")


def test_normalized_is_a_validated_copy():
    spec = RulesetSpec(
        tcp_ports=["1-3", 2],
        udp_ports=[9],
        ignore=["2001:db8::1", "198.18.0.1"],
        ftp=0,
        bypass=1,
        mark=0x1_4E460000,
        mark_mask=0x1_FFFF0003,
    )
    norm = spec.normalized()
    assert norm is not spec and spec.tcp_ports == ["1-3", 2]
    assert norm.tcp_ports == [(1, 3)] and norm.udp_ports == [(9, 9)]
    assert norm.ignore == ["198.18.0.1/32", "2001:db8::1/128"] and norm.protect == []
    assert norm.ftp is False and norm.bypass is True
    assert norm.mark == 0x4E460000 and norm.mark_mask == 0xFFFF0003
    assert norm.normalized() == norm


def test_normalized_wraps_type_errors_in_spec_error():
    with pytest.raises(S.SpecError, match="invalid ruleset specification"):
        RulesetSpec(ipv6_prefix="64").normalized()
    with pytest.raises(S.SpecError, match="invalid ruleset specification: tcp_ports: bad port or range"):
        RulesetSpec(tcp_ports=[("a", 2)]).normalized()  # not a port (core.units' message)
    with pytest.raises(S.SpecError, match="invalid ruleset specification"):
        RulesetSpec(tcp_ports=[(None, 2)]).normalized()  # TypeError of int()
    with pytest.raises(S.SpecError, match="invalid ruleset specification: backend must be"):
        RulesetSpec(backend="fast").normalized()


def test_normalized_passes_a_spec_error_on_as_is(monkeypatch):
    def refuse(items, what):
        raise S.SpecError(f"{what}: refused")

    monkeypatch.setattr(S, "_networks", refuse)
    with pytest.raises(S.SpecError, match="^ignore: refused$"):
        RulesetSpec().normalized()


@pytest.mark.parametrize(
    "kw", [{"queue": -1}, {"ftp_queue": "1"}, {"ipv6_prefix": 129}, {"table": "a" * 33}, {"table": "9abc"}, {"mark_mask": 0xFFFF0001}]
)
def test_more_invalid_specs(kw):
    with pytest.raises(S.SpecError):
        RulesetSpec(**kw).normalized()


def test_marks():
    spec = RulesetSpec(mark=0x100, mark_mask=0xF03)
    assert spec.scan_mark == 0x101 and spec.ftp_mark == 0x102
    assert spec.normalized().mark == 0x100


def test_default_spec_is_the_shipped_one():
    for variant in S.VARIANTS:
        spec = default_spec(variant)
        assert spec.variant == variant and spec.inuse == "socket"
        assert spec.normalized().tcp_ports[0] == (1, 1023)
    assert default_spec() == default_spec("host")


def test_check_backend():
    for ok in ("auto", *S.BACKENDS):
        S.check_backend(ok)
    with pytest.raises(S.SpecError, match="backend must be auto, native or compat, not 'fast'"):
        S.check_backend("fast")


def test_table_name():
    assert S.TABLE_NAME.fullmatch("nfsentry") and S.TABLE_NAME.fullmatch("_a" + "b" * 30)
    assert not S.TABLE_NAME.fullmatch("bad-name") and not S.TABLE_NAME.fullmatch("")


def test_recent_service_grace_is_whole_seconds_rounded_up():
    assert RulesetSpec().normalized().recent_service_grace == 600 == default_spec().recent_service_grace
    assert RulesetSpec(recent_service_grace=0).normalized().recent_service_grace == 0
    assert RulesetSpec(recent_service_grace=0.001).normalized().recent_service_grace == 1
    assert RulesetSpec(recent_service_grace=86400.0).normalized().recent_service_grace == 86400
    assert isinstance(RulesetSpec(recent_service_grace=12.5).normalized().recent_service_grace, int)
