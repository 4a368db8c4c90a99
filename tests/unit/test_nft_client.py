"""nfsentry.nft.client without a kernel: the complete-listing loop (Session._set_items) on scripted
dumps, and the session's lazy IPv6-prefix lookup."""

from __future__ import annotations

import pytest

from nfsentry.nft import NftInconsistent
from nfsentry.nft import client as C


class Scripted(C.Nft):
    """An Nft whose `list set` dumps and `list sets` answers are scripted (no bindings needed)."""

    def __init__(self, dumps=(), sets=None):  # no super().__init__(): it would open libnftables
        self.table = "nfsentry"
        self.listing_retries_exhausted = 0
        self._v6p = None
        self.dumps = list(dumps)
        self.sets = sets
        self.calls = 0
        self.sets_calls = 0

    def _set_items_once(self, name):
        self.calls += 1
        return self.dumps.pop(0)

    def _sets(self):
        self.sets_calls += 1
        return self.sets


BIG = [f"198.18.0.{i}" for i in range(1, C.ONE_MESSAGE + 5)]


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]

    def monotonic():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(C.time, "monotonic", monotonic)


def test_a_small_set_is_one_dump(clock):
    n = Scripted([["198.18.0.1", "198.18.0.2"]])
    assert n._set_items("blocked4") == ["198.18.0.1", "198.18.0.2"] and n.calls == 1


def test_a_big_set_needs_two_agreeing_dumps(clock):
    n = Scripted([BIG, BIG])
    assert n._set_items("blocked4") == BIG and n.calls == 2


def test_a_repeated_element_is_dumped_again(clock):
    n = Scripted([["198.18.0.1", "198.18.0.1"], ["198.18.0.1", "198.18.0.2"]])
    assert n._set_items("blocked4") == ["198.18.0.1", "198.18.0.2"] and n.calls == 2


def test_a_lost_element_is_dumped_again_unless_it_may_have_timed_out(clock):
    n = Scripted([BIG, BIG[1:], BIG[1:]])  # lost BIG[0] (no timeout): not complete
    assert n._set_items("blocked4") == BIG[1:] and n.calls == 3
    timed = [f"{a} timeout 5s expires 1s" for a in BIG]
    n = Scripted([timed, timed[1:]])  # 1 s left, 1 s between the dumps: may have expired
    assert n._set_items("blocked4") == timed[1:] and n.calls == 2
    timed = [f"{a} timeout 50s expires 40s" for a in BIG]
    n = Scripted([timed, timed[1:], timed[1:]])  # 40 s left: it cannot have expired
    assert n._set_items("blocked4") == timed[1:] and n.calls == 3


def test_a_set_that_never_settles_raises(clock):
    n = Scripted([BIG + BIG[:1]] * C.LIST_ATTEMPTS)
    with pytest.raises(NftInconsistent, match="changed while it was being listed"):
        n._set_items("blocked4")
    assert n.calls == C.LIST_ATTEMPTS and n.listing_retries_exhausted == 1


def test_the_ipv6_prefix_is_asked_of_the_kernel_only_for_an_ipv6_prefix():
    n = Scripted(sets={"blocked4": (), "blocked6_56": ()})
    assert n._set_for("198.18.0.0/24")[0] == "blocked4net"
    assert n._set_for("2001:db8::1")[0] == "blocked6"
    assert n.sets_calls == 0
    assert n._set_for("2001:db8:1::/56")[:2] == ("blocked6_56", "2001:db8:1::")
    assert n.sets_calls == 1 and n._v6p == 56
    assert n._set_for("2001:db8:1::/48")[0] == "blocked6net" and n.sets_calls == 1
    absent = Scripted(sets=None)  # no table: nothing cached, the interval set
    assert absent._set_for("2001:db8:1::/56")[0] == "blocked6net" and absent._v6p is None


def test_a_listing_slower_than_the_last_one_may_miss_what_expired_during_it(monkeypatch):
    """The time an element may have expired in is counted to the end of the second listing: a fast
    listing reads an element 2.4 s before it expires, a slow one (busy machine) reaches it only
    after; that is no inconsistency. A long-lived element missing still is."""
    clock = [100.0]
    monkeypatch.setattr(C.time, "monotonic", lambda: clock[0])
    stable = [f"198.18.0.{i} timeout 3600s expires 3500s" for i in range(1, 41)]
    listings = [
        (0.2, stable + ["198.18.1.1 timeout 10s expires 2400ms"]),  # (duration, what it read)
        (3.0, stable),
    ]  # 1.1 expired meanwhile
    calls = []

    def once(name):
        duration, items = listings[min(len(calls), len(listings) - 1)]
        calls.append(name)
        clock[0] += duration
        return items

    n = Scripted()
    n._set_items_once = once
    assert n._set_items("blocked4") == stable and len(calls) == 2
    # control: the same slow listing losing an element with an hour left is not taken: a third is
    calls.clear()
    listings[1:] = [(3.0, stable[1:]), (0.2, stable)]
    assert n._set_items("blocked4") == stable and len(calls) == 3
