"""Fleet (issue 18), pure parts: the decision stream -> what each network wants (PullState), the
safety policy (FleetGuard), and the ledger's fleet part against a kernel stand-in that refuses
what nft refuses (overlapping prefixes in an interval set, deleting a missing element)."""

from __future__ import annotations

import ipaddress

import pytest

from nfsentry.fleet.lapi import alert_for
from nfsentry.fleet.pull import PullState, go_duration, machine_of
from nfsentry.ledger.fleet import FleetGuard, FleetLedger, Pulled


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def dec(i, value, duration="1h", scope="Ip", origin="cscli", type_="ban"):
    return {"id": i, "value": value, "duration": duration, "scope": scope, "origin": origin, "type": type_, "scenario": "s"}


def test_go_durations_as_the_lapi_writes_them():
    assert go_duration("3h59m59.5s") == pytest.approx(4 * 3600 - 0.5)
    assert go_duration("-1.320646ms") == pytest.approx(-0.001320646)
    assert go_duration("90s") == 90 and go_duration("0s") == 0 and go_duration("250ms") == 0.25
    for bad in ("", "1x", "h", "1h 2m", "abc"):
        with pytest.raises(ValueError):
            go_duration(bad)
    assert machine_of("nfsentry/host1") == "host1" and machine_of("cscli") is None and machine_of("nfsentry/") is None


def test_stream_new_longer_deleted_and_startup_resync():
    clk = Clock()
    st = PullState("me", clock=clk)
    got = st.feed({"new": [dec(1, "198.18.0.9", "1h"), dec(2, "198.18.7.0/24", "2h", "Range")], "deleted": None}, startup=True)
    assert set(got) == {"198.18.0.9", "198.18.7.0/24"}
    assert got["198.18.0.9"].expires == pytest.approx(clk.t + 3600) and got["198.18.7.0/24"].scope == "Range"
    # a longer decision for the same address: its end moves; a shorter one changes nothing
    got = st.feed({"new": [dec(3, "198.18.0.9", "5h", origin="nfsentry/host2")]})
    assert got["198.18.0.9"].expires == pytest.approx(clk.t + 5 * 3600) and got["198.18.0.9"].machine == "host2"
    assert st.feed({"new": [dec(4, "198.18.0.9", "10m")]}) == {}
    # the LAPI (1.4.6) reports a value deleted once no live decision is left for it (with any one
    # of their ids): every decision for it goes, and it is wanted no more
    got = st.feed({"deleted": [dec(4, "198.18.0.9", "-1ms")]})
    assert got == {"198.18.0.9": None} and "198.18.0.9" not in st.by_net
    # the same deletion again (the stream repeats them for a while): nothing
    assert st.feed({"deleted": [dec(4, "198.18.0.9", "-1ms")]}) == {}
    # a new decision and a (repeated) deletion of the same value in one answer: the new one stays
    got = st.feed({"new": [dec(5, "198.18.0.9", "30m")], "deleted": [dec(4, "198.18.0.9", "-1ms")]})
    assert got["198.18.0.9"].decision_id == 5
    # the longest deleted while a shorter one remains: the stream says nothing; the full resync,
    # which lists the one left, shortens it
    st.feed({"new": [dec(6, "198.18.0.9", "5h")]})
    got = st.feed({"new": [dec(5, "198.18.0.9", "30m"), dec(2, "198.18.7.0/24", "2h", "Range")]}, startup=True)
    assert got["198.18.0.9"].expires == pytest.approx(clk.t + 1800) and "198.18.7.0/24" not in got
    # a full resync: what it does not list is gone
    got = st.feed({"new": [dec(9, "198.18.0.10")]}, startup=True)
    assert got["198.18.7.0/24"] is None and got["198.18.0.10"].decision_id == 9


def test_own_pushes_lifted_other_types_and_bad_values_are_skipped():
    st = PullState("host1", lifted=[7], clock=Clock())
    got = st.feed(
        {
            "new": [
                dec(1, "198.18.0.1", origin="nfsentry/host1"),  # this host's own push coming back
                dec(7, "198.18.0.7"),  # lifted here by `unblock --local`
                dec(2, "198.18.0.2", type_="captcha"),
                dec(3, "FR", scope="Country"),
                dec(4, "not-an-address"),
                dec(5, "198.18.0.5", duration="-3s"),  # already over
                dec(6, "2001:db8:1::/64", scope="Range", origin="nfsentry/host2"),
            ]
        },
        startup=True,
    )
    assert list(got) == ["2001:db8:1::/64"] and got["2001:db8:1::/64"].machine == "host2"
    assert st.skipped == {"own": 1, "lifted": 1, "type": 1, "scope": 1, "value": 1}
    assert st.lift("2001:db8:1::/64") == [6] and 6 in st.lifted and st.want("2001:db8:1::/64") is None


def test_guard_refuses_never_block_short_prefixes_and_bad_values():
    g = FleetGuard(["198.18.1.1", "2001:db8:ff::/48", "127.0.0.0/8"], min_prefix4=24, min_prefix6=48)
    assert g.refuse("198.18.1.1") == "never_block"
    assert g.refuse("198.18.1.0/24") == "never_block"  # holds a never-block address
    assert g.refuse("2001:db8:ff:1::/64") == "never_block"  # inside a never-block network
    assert g.refuse("198.18.0.0/16") == "prefix" and g.refuse("2001:db8::/32") == "prefix"
    assert g.refuse("0.0.0.0/0") == "prefix" and g.refuse("nonsense") == "bad"
    assert g.refuse("198.18.2.0/24") is None and g.refuse("198.18.1.2") is None and g.refuse("2001:db8:1::/64") is None


class FakeFleetSets:
    """The fleet sets as the kernel keeps them: an interval set refuses overlapping elements, and
    the whole transaction fails then (nothing applied)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sets: dict[str, dict[str, float]] = {}  # network -> end
        self.transactions = 0

    def fleet_apply(self, put, remove=()):
        new = dict(self.sets)
        for net in remove:
            new.pop(net, None)
        for net, timeout, _present in put:
            new[net] = self.clock.t + timeout
        nets = [ipaddress.ip_network(n) for n in new if "/" in n]
        for a in nets:
            for b in nets:
                if a != b and a.version == b.version and a.overlaps(b):
                    raise RuntimeError(f"interval overlap {a} {b}")
        self.sets = new
        self.transactions += 1
        return len(put)

    def list_fleet(self):
        return [{"network": n, "expires_in": e - self.clock.t} for n, e in self.sets.items() if e > self.clock.t]


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def fleet_put(self, rows, remove=()):
        for n in remove:
            self.rows.pop(n, None)
        for r in rows:
            self.rows[r["network"]] = r

    def fleet_blocks(self):
        return list(self.rows.values())


def P(net, end, i=1):
    return Pulled(net, end, i, "nfsentry/h2", "h2", "s", "Range" if "/" in net else "Ip")


def test_fleet_ledger_extends_removes_refuses_caps_and_keeps_prefixes_apart():
    clk = Clock()
    nft, store = FakeFleetSets(clk), FakeStore()
    led = FleetLedger(nft, store, FleetGuard(["198.18.9.1"], max_pulled=4), clock=clk)
    t = clk.t
    res = led.apply(
        {"198.18.0.1": P("198.18.0.1", t + 60), "198.18.9.1": P("198.18.9.1", t + 60), "198.18.0.0/16": P("198.18.0.0/16", t + 60)}
    )
    assert res.put == ["198.18.0.1"] and res.refused == {"198.18.9.1": "never_block", "198.18.0.0/16": "prefix"}
    assert set(nft.sets) == {"198.18.0.1"} and set(store.rows) == {"198.18.0.1"}
    # a longer decision: the kernel's timeout is replaced (an element already there: present=True)
    res = led.apply({"198.18.0.1": P("198.18.0.1", t + 600, 2)})
    assert res.put == ["198.18.0.1"] and nft.sets["198.18.0.1"] == pytest.approx(t + 600) and store.rows["198.18.0.1"]["decision_id"] == 2
    # prefixes: a narrower one inside a broader one in force waits; the broader replaces narrower ones
    led.apply({"198.18.5.0/25": P("198.18.5.0/25", t + 900)})
    res = led.apply({"198.18.5.0/24": P("198.18.5.0/24", t + 300)})
    assert "198.18.5.0/24" in nft.sets and "198.18.5.0/25" not in nft.sets and "198.18.5.0/25" in led.waiting
    res = led.apply({"198.18.5.128/26": P("198.18.5.128/26", t + 300)})
    assert res.waiting == ["198.18.5.128/26"]
    # the broader one deleted: the narrower ones it held come in, with their own time
    led.apply({"198.18.5.0/24": None})
    assert set(nft.sets) == {"198.18.0.1", "198.18.5.0/25", "198.18.5.128/26"}
    assert nft.sets["198.18.5.0/25"] == pytest.approx(t + 900)
    # the cap: 4 entries at most; the fifth is refused, counted once
    res = led.apply({"198.18.0.2": P("198.18.0.2", t + 60)})
    assert res.put == ["198.18.0.2"]
    res = led.apply({"198.18.0.3": P("198.18.0.3", t + 60)})
    assert res.refused == {"198.18.0.3": "max_pulled"} and len(nft.sets) == 4
    assert led.counts()["refused"] == {"never_block": 1, "prefix": 1, "max_pulled": 1}
    # time passes: the entries the kernel timed out leave the books and the database
    clk.t += 120
    assert sorted(led.expire()) == ["198.18.0.2"]
    assert "198.18.0.2" not in store.rows


def test_restore_puts_back_the_database_and_drops_strays_and_never_block():
    clk = Clock()
    nft, store = FakeFleetSets(clk), FakeStore()
    t = clk.t
    store.fleet_put([{**vars(P(n, e)), "created": t} for n, e in (("198.18.0.1", t + 60), ("198.18.0.2", t - 1), ("198.18.3.3", t + 60))])
    nft.sets = {"198.18.0.1": t + 5, "198.18.4.4": t + 60}  # 0.1 with less time, 4.4 unknown to the database
    led = FleetLedger(nft, store, FleetGuard(["198.18.3.3"]), clock=clk)
    back = led.restore()
    assert nft.sets == {"198.18.0.1": pytest.approx(t + 60)}
    assert set(store.rows) == {"198.18.0.1"} and {p.network for p in back} == {"198.18.0.1", "198.18.3.3"}
    # the kernel loses the set (a flushed ruleset loaded again): put back
    nft.sets = {}
    assert led.check_kernel() == 1 and "198.18.0.1" in nft.sets


def test_alert_carries_the_decision_with_the_time_left():
    now = 1_000_000.0
    ev = {"ts": now - 10, "network": "2001:db8:1::/64", "expires": now + 3590, "label": "SYN", "ports": [22, 80], "hits": 3}
    a = alert_for(ev, "nfsentry/portscan", "host1", "web1", now)
    d = a["decisions"][0]
    assert d == {
        "duration": "3590s",
        "origin": "nfsentry/host1",
        "scenario": "nfsentry/portscan",
        "scope": "Range",
        "type": "ban",
        "value": "2001:db8:1::/64",
        "simulated": False,
    }
    assert a["source"] == {"scope": "Range", "value": "2001:db8:1::/64", "range": "2001:db8:1::/64"}
    meta = {m["key"]: m["value"] for m in a["events"][0]["meta"]}
    assert meta == {"label": "SYN", "host": "web1", "ports": "22,80"}
    assert alert_for({**ev, "expires": now - 1}, "s", "h", "w", now) is None  # ran out while waiting
    assert alert_for({**ev, "network": "198.18.0.1", "expires": None}, "s", "h", "w", now)["decisions"][0]["duration"] == "315360000s"


def test_fleet_commands_one_transaction_replace_and_remove():
    from nfsentry.nft.elements import fleet_commands, fleet_set_for

    assert fleet_set_for("198.18.0.1") == ("fleet4", "198.18.0.1")
    assert fleet_set_for("2001:db8::/64") == ("fleet6net", "2001:db8::/64")
    text = fleet_commands("nfsentry", [("198.18.0.1", 60, False), ("198.18.0.2", 600, True), ("198.18.7.0/24", 30, False)], ["2001:db8::9"])
    lines = text.splitlines()
    # a removal is added first (a no-op when present) so the delete cannot fail on a missing one
    assert lines[:2] == ["add element inet nfsentry fleet6 { 2001:db8::9 }", "delete element inet nfsentry fleet6 { 2001:db8::9 }"]
    # an element in force gets its new timeout by add, delete, add (replaces it on every kernel)
    assert lines[2:4] == ["add element inet nfsentry fleet4 { 198.18.0.2 }", "delete element inet nfsentry fleet4 { 198.18.0.2 }"]
    assert "add element inet nfsentry fleet4 { 198.18.0.1 timeout 60s, 198.18.0.2 timeout 600s }" in lines
    assert "add element inet nfsentry fleet4net { 198.18.7.0/24 timeout 30s }" in lines
