"""nfsentry.nft.elements: set choice, element and command texts, listing parsers (pure)."""
from __future__ import annotations

import ipaddress

import pytest

from nfsentry.nft import elements as E

def test_plan_nets_keeps_the_broadest_and_replaces_covered():
    N = ipaddress.ip_network
    adds, deletes = E.plan_nets({N("198.18.0.0/24"): 10, N("198.18.0.128/25"): 5, N("198.19.0.0/16"): 0},
                                   [N("198.19.1.0/24"), N("10.0.0.0/8")])
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
        {"network": "198.18.7.0/24", "timeout": 1.5, "expires_in": 0.9, "set": "blocked4net"}]
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
