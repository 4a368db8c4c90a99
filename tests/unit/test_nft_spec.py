"""nfsentry.nft.spec (the ruleset specification and its validation) and nfsentry.nft.errors."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from nfsentry.nft import NftError, RulesetSpec, render
from nfsentry.nft import spec as S

def test_default_ports_match_the_configuration_defaults():
    config = pytest.importorskip("nfsentry.config.schema")
    assert tuple(config.TROJAN_TCP) == S.TROJAN_TCP and tuple(config.TROJAN_UDP) == S.TROJAN_UDP
    cfg = config.defaults()
    spec = RulesetSpec().normalized()
    assert spec.tcp_ports == cfg.tcp_ports and spec.udp_ports == cfg.udp_ports


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
