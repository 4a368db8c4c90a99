"""The ledger (one owner of block state) and its rule, with an in-memory kernel and a real
SQLite database. The real-kernel version of these checks is in tests/e2e."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from nfsentry.ledger.ledger import Ledger
from nfsentry.ledger.rule import kernel_timeout, merge, plan_restore
from nfsentry.sinks.store import Store


class Kernel:
    """The blocked sets, in memory: network -> end (None = permanent), on a shared clock."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.sets: dict[str, float | None] = {}

    def _live(self) -> dict[str, float | None]:
        now = self.clock()
        self.sets = {n: e for n, e in self.sets.items() if e is None or e > now}
        return self.sets

    def block(self, network, timeout_s=0) -> bool:
        self._live()[str(network)] = None if not timeout_s else self.clock() + timeout_s
        return True

    def bulk_block(self, items, replace=()) -> int:
        self.transactions = getattr(self, "transactions", 0) + 1
        for net, t in items:
            self.block(net, t)
        return len(items)

    def unblock(self, network) -> bool:
        return self._live().pop(str(network), False) is not False

    def withdraw(self, networks) -> None:
        for n in networks:
            self._live().pop(str(n), None)

    def unblock_all(self) -> int:
        n = len(self._live())
        self.sets.clear()
        return n

    def list_blocked(self) -> list[dict]:
        now = self.clock()
        return [
            {"network": n, "timeout": 0 if e is None else 1, "expires_in": None if e is None else e - now, "set": "x"}
            for n, e in self._live().items()
        ]

    def find_blocks(self, network) -> list[dict]:
        net = ipaddress.ip_network(network)
        return [
            b
            for b in self.list_blocked()
            if ipaddress.ip_network(b["network"]).version == net.version and net.subnet_of(ipaddress.ip_network(b["network"]))
        ]

    def blocks_inside(self, network) -> list[dict]:
        net = ipaddress.ip_network(network)
        return [
            b
            for b in self.list_blocked()
            if ipaddress.ip_network(b["network"]).version == net.version and ipaddress.ip_network(b["network"]).subnet_of(net)
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path):
    clock = Clock()
    store = Store(tmp_path / "db")
    yield Ledger(Kernel(clock), store, clock=clock), clock, store
    store.close()


def test_kernel_timeout_is_never_permanent_by_rounding():
    assert kernel_timeout(0) == 0 and kernel_timeout(0.5) == 1 and kernel_timeout(1.2) == 2 and kernel_timeout(60) == 60
    with pytest.raises(ValueError):
        kernel_timeout(-1)


def test_merge_never_shortens():
    assert merge(None, 60) == "keep" and merge(None, 0) == "keep"  # permanent is the longest
    assert merge(7200, 3600) == "keep" and merge(3600, 3600) == "keep"
    assert merge(10, 3600) == "extend" and merge(10, 0) == "extend"


def test_plan_restore_puts_back_adopts_and_drops_ended():
    plan = plan_restore(
        kernel={"198.18.0.1": 50.0, "198.18.0.9": None},
        db={"198.18.0.1": 1050.0, "198.18.0.2": 1100.5, "198.18.0.3": 900.0, "198.18.0.4": None},
        now=1000.0,
    )
    assert sorted(plan.put_back) == [("198.18.0.2", 101), ("198.18.0.4", 0)]
    assert plan.adopt == [("198.18.0.9", None)] and plan.ended == ["198.18.0.3"]


def test_block_keeps_the_longer_block_and_its_reason(ledger):
    lg, clock, store = ledger
    r = lg.block("198.18.0.7", 7200, "abuse report")
    assert r.status == "blocked" and r.expires == clock.now + 7200
    again = lg.block("198.18.0.7", 3600)
    assert again.status == "kept" and again.expires == clock.now + 7200
    longer = lg.block("198.18.0.7", 10800)
    assert longer.status == "extended"
    row = store.blocks(clock.now)[0]
    assert row["reason"] == "abuse report" and row["expires"] == clock.now + 10800


def test_block_many_is_one_transaction_under_the_same_rule(ledger):
    """Bulk block (issue 19): one kernel transaction and one database transaction; a block in
    force is never shortened (rule 7), a network listed twice counts once with its longer time,
    a broader block as long covers what lies inside it, and every block made is recorded."""
    lg, clock, store = ledger
    lg.block("198.18.0.7", 7200, "abuse report")
    lg.block("198.18.100.0/24", 0, "permanent prefix")
    lg.block("198.18.0.8", 60, "short")
    lg.nft.transactions = 0
    res = lg.block_many(
        [
            ("198.18.0.7", 3600, "bulk"),  # kept: 2h in force
            ("198.18.100.9", 600, None),  # kept: inside a permanent /24
            ("198.18.0.8", 3600, None),  # extended, keeps its reason
            ("198.18.0.9", 60, "first"),
            ("198.18.0.9", 0, "second, longer"),  # the longer (permanent) wins
            ("198.18.0.10", 30, None),
            ("2001:db8:5151:abcd::5/64", 30, "a /64"),
        ]
    )
    got = {r.network: (r.status, r.by) for r in res}
    assert got == {
        "198.18.0.7": ("kept", "198.18.0.7"),
        "198.18.100.9": ("kept", "198.18.100.0/24"),
        "198.18.0.8": ("extended", "198.18.0.8"),
        "198.18.0.9": ("blocked", "198.18.0.9"),
        "198.18.0.10": ("blocked", "198.18.0.10"),
        "2001:db8:5151:abcd::/64": ("blocked", "2001:db8:5151:abcd::/64"),
    }
    assert lg.nft.transactions == 1
    kernel = {b["network"]: b["expires_in"] for b in lg.nft.list_blocked()}
    assert kernel["198.18.0.7"] == 7200 and kernel["198.18.0.8"] == 3600 and kernel["198.18.0.9"] is None
    assert "198.18.100.9" not in kernel
    rows = {b["network"]: b for b in store.blocks(clock.now)}
    assert rows["198.18.0.8"]["reason"] == "short" and rows["198.18.0.9"]["reason"] == "second, longer"
    assert rows["198.18.0.10"]["reason"] == "manual block" and rows["198.18.0.7"]["reason"] == "abuse report"
    made = [h["network"] for h in store.history() if h["event"] == "block"][3:]
    assert made == ["198.18.0.8", "198.18.0.9", "198.18.0.10", "2001:db8:5151:abcd::/64"]
    with pytest.raises(ValueError):  # a negative duration: refused before anything changes
        lg.block_many([("198.18.0.11", 60, None), ("198.18.0.12", -1, None)])
    assert "198.18.0.11" not in {b["network"] for b in lg.nft.list_blocked()}


def test_unblock_not_blocked_covered_and_inside(ledger):
    lg, clock, store = ledger
    lg.block("2001:db8:52::/64", 300)
    lg.block("198.18.100.0/24", 300)
    assert lg.block("198.18.100.7", 300).status == "kept"  # the /24 drops it as long: nothing to add
    assert lg.block("198.18.100.7", 600).status == "blocked"
    res = lg.unblock(["198.18.99.9"])
    assert res.not_blocked == ["198.18.99.9"] and not res.removed
    res = lg.unblock(["2001:db8:52::5"])
    assert res.covered == {"2001:db8:52::5": ["2001:db8:52::/64"]} and not res.removed
    res = lg.unblock(["2001:db8:52::5"], covering=True)
    assert res.removed == ["2001:db8:52::/64"]
    res = lg.unblock(["198.18.0.0/16"])
    assert sorted(res.removed) == ["198.18.100.0/24", "198.18.100.7"]
    assert store.blocks(clock.now) == [] and lg.nft.list_blocked() == []
    events = [(h["event"], h["network"]) for h in store.history()]
    assert ("unblock", "198.18.99.9") not in events  # no history row for what was not blocked


def test_a_withdrawn_kernel_side_block_leaves_the_kernel_and_no_record_brings_it_back(ledger):
    """Rule 9: the kernel added it from the packet path, a restore adopted it (rule 5), then the
    daemon's valves refused it: gone from both, so the next restore does not put it back."""
    lg, clock, store = ledger
    lg.nft.block("198.18.0.7", 3600)  # the queueing rule's own add
    lg.block("198.18.0.8", 3600)
    assert lg.restore().adopted == 1 and {b["network"] for b in store.blocks(clock.now)} == {"198.18.0.7", "198.18.0.8"}
    lg.withdraw(["198.18.0.7", "198.18.0.9"])  # one the kernel no longer holds is fine too
    assert [b["network"] for b in lg.nft.list_blocked()] == ["198.18.0.8"]
    assert [b["network"] for b in store.blocks(clock.now)] == ["198.18.0.8"]
    assert lg.restore().put_back == 0 and [b["network"] for b in lg.nft.list_blocked()] == ["198.18.0.8"]


def test_unblock_all_clears_the_database_so_a_restore_brings_nothing_back(ledger):
    lg, clock, store = ledger
    for i in range(5):
        lg.block(f"198.18.0.{i + 1}", 3600)
    lg.nft.sets.pop("198.18.0.1")  # the kernel lost one (flush) while the database still has it
    assert sorted(lg.unblock_all()) == [f"198.18.0.{i}" for i in range(2, 6)]
    assert store.blocks(clock.now) == [] and lg.restore().put_back == 0 and lg.nft.list_blocked() == []


class LedgerModel(RuleBasedStateMachine):
    """Random sequences of block, re-block, unblock (address, covering, --all), time passing,
    kernel loss (flush) and restore: after every step the kernel, the database and the model
    agree (rules 1-8 of nfsentry.ledger.rule)."""

    NETS = ["198.18.0.1", "198.18.0.2", "198.18.1.0/24", "2001:db8:5::/64", "2001:db8:5::9"]

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.store = Store(f"{self.dir.name}/db")
        self.ledger = Ledger(Kernel(self.clock), self.store, clock=self.clock)
        self.model: dict[str, float | None] = {}  # network -> end

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    def _live(self) -> dict[str, float | None]:
        now = self.clock.now
        self.model = {n: e for n, e in self.model.items() if e is None or e > now}
        return self.model

    @rule(net=st.sampled_from(NETS), duration=st.sampled_from([0, 0.5, 30, 600, 3600]))
    def block(self, net, duration):
        live = self._live()
        res = self.ledger.block(net, duration)
        end = None if duration == 0 else self.clock.now + kernel_timeout(duration)
        if net in live and (live[net] is None or (end is not None and end <= live[net])):
            assert res.status == "kept"
        elif res.status != "kept":  # (a broader block that outlasts it also keeps it)
            live[net] = end

    @rule(net=st.sampled_from(NETS), covering=st.booleans())
    def unblock(self, net, covering):
        res = self.ledger.unblock([net], covering=covering)
        for n in res.removed:
            self._live().pop(n, None)
        assert net not in self._live()

    @rule()
    def unblock_all(self):
        self.ledger.unblock_all()
        self.model.clear()

    @rule(seconds=st.sampled_from([1, 29, 31, 700]))
    def time_passes(self, seconds):
        self.clock.now += seconds

    @rule()
    def flush_then_restore(self):
        self.ledger.nft.sets.clear()
        self.ledger.restore()

    @invariant()
    def kernel_database_and_model_agree(self):
        live = self._live()
        kernel = {b["network"] for b in self.ledger.nft.list_blocked()}
        db = {b["network"] for b in self.store.blocks(self.clock.now)}
        assert kernel == set(live), (kernel, live)
        assert db == set(live), (db, live)
        listed = {e["network"] for e in self.ledger.entries()}
        assert listed == kernel


TestLedgerModel = LedgerModel.TestCase
TestLedgerModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_expired_blocks_leave_the_database_with_one_expire_row(ledger):
    lg, clock, store = ledger
    lg.block("198.18.0.5", 2)
    lg.block("198.18.0.6", 3600)
    assert lg.expire_due() == []
    clock.now += 3
    evs = lg.expire_due()
    assert [e["network"] for e in evs] == ["198.18.0.5"] and evs[0]["event"] == "expire"
    assert lg.expire_due() == []  # reported once
    assert [b["network"] for b in store.blocks(clock.now)] == ["198.18.0.6"]
    assert [h["network"] for h in store.history() if h["event"] == "expire"] == ["198.18.0.5"]
