"""Reliability and security of the daemon's pure parts, without a kernel.

* the never-block list: own addresses, default gateways (fake ``ip -j`` output), resolvers from
  ``[ignore] resolv_conf``, the SSH session, refreshed while running;
* the verdict loop: any internal error on one packet still gives that packet a verdict (accept),
  counts it and logs at most one line per 10 s;
* the safety valves against spoofed floods (``max_blocks_per_minute``, ``max_blocked``): counters,
  one warning per 10 s, bounded alerts;
* storage faults: a locked, deleted, overwritten or corrupt database; the kernel set stays
  authoritative and is re-imported;
* hostile configuration and block targets, external commands never through a shell.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time

import pytest
from scapy.all import IP, TCP, UDP, IPv6, raw

from nfsentry.config import schema as C
from nfsentry.config.derive import ruleset_spec
from nfsentry.core.addrs import PrefixSet
from nfsentry.daemon import daemon as D
from nfsentry.daemon import verdict as V
from nfsentry.ledger import neverblock as NB
from nfsentry.sinks.actions import substitute
from nfsentry.sinks.store import Store

VICTIM4, VICTIM6 = "198.18.0.1", "2001:db8::1"


# == fakes ==========================================================================================
class FakePkt:
    """A NetfilterQueue packet: payload in, exactly one verdict out."""

    def __init__(self, payload: bytes, fail_payload: bool = False, fail_verdict: bool = False) -> None:
        self.payload, self.fail_payload, self.fail_verdict = payload, fail_payload, fail_verdict
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        if self.fail_payload:
            raise OSError("payload unavailable")
        return self.payload

    def accept(self) -> None:
        self._verdict("accept")

    def drop(self) -> None:
        self._verdict("drop")

    def _verdict(self, v: str) -> None:
        self.verdicts.append(v)
        if self.fail_verdict and len(self.verdicts) == 1:
            raise OSError("netlink: verdict not sent")


class FakeNft:
    """The kernel's blocked sets, in memory."""

    def __init__(self, blocked: dict[str, int] | None = None) -> None:
        self.sets: dict[str, int] = dict(blocked or {})
        self.ignored: list[str] = []

    def block(self, net: str, timeout: int = 0) -> bool:
        self.sets[net] = timeout
        return True

    def unblock(self, net: str) -> bool:
        return self.sets.pop(net, None) is not None

    def withdraw(self, nets) -> None:
        for net in nets:
            self.sets.pop(net, None)

    def bulk_block(self, items) -> int:
        for net, timeout in items:
            self.sets[net] = timeout
        return len(items)

    def unblock_all(self) -> int:
        n = len(self.sets)
        self.sets.clear()
        return n

    def list_blocked(self) -> list[dict]:
        return [{"network": n, "timeout": t, "expires_in": t or None, "set": "blocked4"} for n, t in self.sets.items()]

    def find_blocks(self, net: str) -> list[dict]:
        return [b for b in self.list_blocked() if b["network"] == net]

    def blocks_inside(self, net: str) -> list[dict]:
        return self.find_blocks(net)

    def blocked_count(self) -> int:
        return len(self.sets)

    def add_ignore(self, net: str) -> bool:
        self.ignored.append(net)
        return True


def make_cfg(tmp_path, **sections) -> C.Config:
    raw_cfg = {
        "storage": {"state_dir": str(tmp_path / "state")},
        "logging": {"json_file": "", "syslog": False},
        "daemon": {"control_socket": str(tmp_path / "run" / "c.sock")},
        "ignore": {"own_addresses": False, "gateways": False, "resolvers": False},
    }
    for sec, vals in sections.items():
        raw_cfg.setdefault(sec, {}).update(vals)
    return C.validate(raw_cfg)


def make_daemon(tmp_path, store: bool = False, **sections) -> D.Daemon:
    cfg = make_cfg(tmp_path, **sections)
    d = D.Daemon(cfg, foreground=False)
    d.build_core()
    d.use_nft(FakeNft())
    if store:
        d.worker.store = Store(cfg.db_path)
    return d


def drain(d: D.Daemon) -> list[tuple[str, object, dict]]:
    out = []
    while not d.events.empty():
        out.append(d.events.get_nowait())
    return out


def syn(src: str, dport: int = 7, dst: str | None = None) -> bytes:
    if ":" in src:
        return raw(IPv6(src=src, dst=dst or VICTIM6) / TCP(sport=40000, dport=dport, flags="S"))
    return raw(IP(src=src, dst=dst or VICTIM4) / TCP(sport=40000, dport=dport, flags="S"))


# == never-block list ===============================================================================
IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}, {"family": "inet6", "local": "::1"}]},
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "198.18.0.1", "prefixlen": 24},
            {"family": "inet6", "local": "2001:db8::1", "prefixlen": 64},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
        ],
    },
]
IP_ROUTE4 = [{"dst": "default", "gateway": "198.18.0.254", "dev": "eth0"}]
IP_ROUTE6 = [
    {"dst": "default", "gateway": "2001:db8::fffe", "dev": "eth0"},
    {"dst": "default", "gateway": "fe80::1", "dev": "eth1"},
]  # link-local: not matchable by nft


def fake_ip(monkeypatch, addrs=IP_ADDR, route4=IP_ROUTE4, route6=IP_ROUTE6):
    calls = []

    def _ip_json(args):
        calls.append(args)
        if args[:2] == ["addr", "show"]:
            return addrs
        if args[:1] == ["-4"]:
            return route4
        if args[:1] == ["-6"]:
            return route6
        return []

    monkeypatch.setattr(NB, "_ip_json", _ip_json)
    return calls


def test_never_block_list_has_own_addresses_gateways_resolvers_ignore_list_and_ssh_session(tmp_path, monkeypatch):
    fake_ip(monkeypatch)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# test\nsearch example\nnameserver 198.18.0.53\nnameserver 2001:db8::53%eth0\nnameserver bogus\n")
    monkeypatch.setenv("SSH_CONNECTION", "198.18.0.22 50522 198.18.0.1 22")
    cfg = make_cfg(
        tmp_path,
        ignore={"own_addresses": True, "gateways": True, "resolvers": True, "resolv_conf": str(resolv), "addresses": ["198.18.9.0/24"]},
    )
    nets = NB.never_block_networks(cfg)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "198.18.0.1/32",
        "2001:db8::1/128",  # own (loopback and eth0)
        "198.18.0.254/32",
        "2001:db8::fffe/128",  # default gateways
        "198.18.0.53/32",
        "2001:db8::53/128",  # resolvers (zone dropped)
        "198.18.9.0/24",
        "198.18.0.22/32",
    ):  # ignore list, SSH session
        assert n in nets, n
    assert not any(n.startswith("fe80") for n in nets)
    ps = PrefixSet(nets)
    for a in ("198.18.0.1", "198.18.0.254", "198.18.0.53", "198.18.0.22", "198.18.9.77"):
        assert ps.contains(socket.inet_pton(socket.AF_INET, a)), a
    assert not ps.contains(socket.inet_pton(socket.AF_INET, "198.18.0.2"))


def test_each_fact_can_be_turned_off_and_a_missing_resolv_conf_is_no_error(tmp_path, monkeypatch):
    fake_ip(monkeypatch)
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_CLIENT", raising=False)
    cfg = make_cfg(tmp_path, ignore={"own_addresses": False, "gateways": True, "resolvers": True, "resolv_conf": str(tmp_path / "missing")})
    assert NB.never_block_networks(cfg) == ["198.18.0.254/32", "2001:db8::fffe/128"]


def test_spoofed_syns_from_protected_addresses_are_ignored_by_the_engine(tmp_path, monkeypatch):
    fake_ip(monkeypatch)
    monkeypatch.setenv("SSH_CLIENT", "2001:db8::22 50522 22")
    d = make_daemon(tmp_path, ignore={"own_addresses": True, "gateways": True})
    for src in ("198.18.0.1", "2001:db8::1", "198.18.0.254", "2001:db8::fffe", "2001:db8::22", "127.0.0.1"):
        p = FakePkt(syn(src))
        d.verdicts.on_packet(p)
        assert p.verdicts == ["accept"], src
    assert d.nft.sets == {} and d.counters["blocks"] == 0
    p = FakePkt(syn("198.18.0.2"))  # not protected: blocked (a spoofed one would be too)
    d.verdicts.on_packet(p)
    assert p.verdicts == ["drop"] and list(d.nft.sets) == ["198.18.0.2"]


def test_refresh_picks_up_a_new_own_address_and_keeps_runtime_ignores(tmp_path, monkeypatch):
    addrs = [dict(IP_ADDR[1], addr_info=list(IP_ADDR[1]["addr_info"]))]
    fake_ip(monkeypatch, addrs=addrs)
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_CLIENT", raising=False)
    d = make_daemon(tmp_path, ignore={"own_addresses": True})
    d.commands.add_ignore("198.18.7.0/24")  # `unblock --ignore` while running
    addrs[0]["addr_info"].append({"family": "inet", "local": "198.18.0.77"})
    addrs[0]["addr_info"].append({"family": "inet6", "local": "2001:db8::77"})
    d.worker.refresh_never_block()
    while not d.duties.empty():  # the worker hands the new list to the main thread (the engine's only thread)
        d.duties.get_nowait()()
    d.verdicts.pending = False
    assert {"198.18.0.77/32", "2001:db8::77/128"} <= set(d.nft.ignored)
    assert "198.18.7.0/24" in d.never_block and d.counters["never_block_refreshes"] == 1
    for src in ("198.18.0.77", "2001:db8::77", "198.18.7.9"):
        p = FakePkt(syn(src))
        d.verdicts.on_packet(p)
        assert p.verdicts == ["accept"], src
    assert d.nft.sets == {}


def test_refresh_interval_and_resolv_conf_are_validated():
    assert C.validate({"ignore": {"refresh_interval": "2s"}}).durations["refresh_interval"] == 2
    for bad, frag in (
        ({"refresh_interval": "0"}, "refresh_interval"),
        ({"refresh_interval": "1y"}, "refresh_interval"),
        ({"resolv_conf": "resolv.conf"}, "absolute path"),
    ):
        with pytest.raises(C.ConfigError, match=frag):
            C.validate({"ignore": bad})


# == the verdict loop survives anything ===============================================================
def test_an_internal_error_on_a_packet_gives_accept_a_counter_and_a_rate_limited_log_line(tmp_path):
    d = make_daemon(tmp_path)

    class Broken:
        def process_raw(self, raw, now):
            raise RuntimeError("engine bug")

    d.verdicts.engine = Broken()
    pkts = [FakePkt(syn(f"198.18.3.{i}")) for i in range(200)]
    for p in pkts:
        d.verdicts.on_packet(p)
    assert all(p.verdicts == ["accept"] for p in pkts)
    assert d.counters["errors"] == 200 and d.counters["queued"] == 200
    warnings = [o["message"] for k, o, _ in drain(d) if k == "warning"]
    assert len(warnings) == 1 and "internal error in packet: RuntimeError: engine bug" in warnings[0]


@pytest.mark.parametrize("case", ["payload", "verdict", "decode", "nft"])
def test_failures_around_the_engine_still_give_exactly_one_verdict(tmp_path, case):
    d = make_daemon(tmp_path)
    p = FakePkt(syn("198.18.0.2"), fail_payload=case == "payload", fail_verdict=case == "verdict")
    if case == "decode":
        d.engine.process_raw = lambda raw, now: (_ for _ in ()).throw(MemoryError("decoder"))
    if case == "nft":

        def boom(*a, **k):
            raise OSError("netlink: no buffer space")

        d.nft.block = boom
    d.verdicts.on_packet(p)
    if case == "verdict":
        assert p.verdicts == ["drop", "accept"]  # the verdict that failed to go out is replaced by accept
    elif case == "nft":
        assert p.verdicts == ["drop"]  # the verdict came first; the kernel set write failed after
    else:
        assert p.verdicts == ["accept"]
    assert d.counters["errors"] == 1


def test_garbage_packets_never_raise_out_of_the_verdict_loop(tmp_path):
    import random

    d = make_daemon(tmp_path)
    rnd = random.Random(8)
    base = [syn("198.18.0.2"), syn("2001:db8:5::2"), raw(IP(src="198.18.0.9", dst=VICTIM4) / UDP(dport=53))]
    for i in range(3000):
        b = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 6)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        b = bytes(b[: rnd.randint(0, len(b))])
        p = FakePkt(b)
        d.verdicts.on_packet(p)
        assert len(p.verdicts) == 1, b.hex()
    assert d.counters["errors"] == 0


# == safety valves ====================================================================================
def test_block_rate_limit_counts_warns_once_and_bounds_alerts(tmp_path):
    d = make_daemon(tmp_path, response={"max_blocks_per_minute": 5})
    for i in range(500):
        d.verdicts.on_packet(FakePkt(syn(f"198.19.{i // 256}.{i % 256}")))
    assert len(d.nft.sets) == 5 and d.counters["blocks"] == 5
    assert d.counters["blocks_rate_limited"] == 495 and d.counters["detections"] == 500
    evs = drain(d)
    warnings = [o["message"] for k, o, _ in evs if k == "warning"]
    assert len(warnings) == 1 and "block rate limit (5/min) reached" in warnings[0]
    refused = [x for k, o, x in evs if k == "detection" and x.get("action") == "alert (rate-limited)"]
    assert len(refused) == 60 and d.counters["alerts_suppressed"] == 435
    reports = [e for e in evs if e[0] != "ledger"]
    assert len(reports) < 5 * 2 + 60 + 2  # bounded whatever the flood size
    # the kernel-side blocks refused are withdrawn in batches: one transaction and one database
    # write per batch, not per packet
    d.service()
    withdrawn = [x for k, x, _ in drain(d) + evs if k == "ledger" and x[0] == "withdraw"]
    assert sum(len(x[1]["networks"]) for x in withdrawn) == 495 and len(withdrawn) <= 495 // V.WITHDRAW_BATCH + 1
    # refused sources are forgotten, not remembered as blocked
    assert d.engine.stats["blocked"] == 5


def test_rate_limit_window_slides(tmp_path, monkeypatch):
    d = make_daemon(tmp_path, response={"max_blocks_per_minute": 2})
    now = [1000.0]
    monkeypatch.setattr(V.time, "time", lambda: now[0])
    for i in range(4):
        d.verdicts.on_packet(FakePkt(syn(f"198.19.0.{i}")))
    assert len(d.nft.sets) == 2
    now[0] += 61
    d.verdicts.on_packet(FakePkt(syn("198.19.1.1")))
    assert len(d.nft.sets) == 3


def test_blocked_set_cap_counts_and_warns(tmp_path):
    d = make_daemon(tmp_path, response={"max_blocked": 3})
    for i in range(40):
        d.verdicts.on_packet(FakePkt(syn(f"198.19.0.{i}")))
    assert len(d.nft.sets) == 3 and d.counters["blocks_capped"] == 37
    warnings = [o["message"] for k, o, _ in drain(d) if k == "warning"]
    assert len(warnings) == 1 and "blocked-set cap (3) reached" in warnings[0]


# == storage faults ===================================================================================
def block_event(net: str) -> dict:
    return {
        "ts": time.time(),
        "event": "block",
        "network": net,
        "src": net,
        "reason": "test",
        "labels": ["SYN"],
        "ports": [7],
        "expires": None,
        "offences": 1,
    }


def test_locked_database_queues_writes_and_recovers_in_order(tmp_path):
    d = make_daemon(tmp_path, store=True)
    d.worker.store.db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(d.cfg.db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    d.worker.store_write("block", block_event("198.18.0.2"))  # the block and its history row
    d.worker.store_write("history", dict(block_event("198.18.0.2"), event="detection"))
    assert d.counters["storage_errors"] == 1 and len(d.worker.pending_store) == 2  # the 2nd did not even try
    d.worker.flush_pending(force=True)
    assert len(d.worker.pending_store) == 2
    other.execute("COMMIT")
    other.close()
    d.worker.flush_pending()  # paced: not yet due
    assert len(d.worker.pending_store) == 2
    d.worker.flush_pending(force=True)
    assert d.worker.pending_store == [] and [b["network"] for b in d.worker.store.blocks()] == ["198.18.0.2"]
    assert [h["event"] for h in d.worker.store.history()] == ["block", "detection"]  # in order


def test_database_deleted_while_running_is_recreated_with_the_kernel_set(tmp_path):
    d = make_daemon(tmp_path, store=True)
    d.nft.sets = {"198.18.0.2": 0, "2001:db8:1::/64": 3600}
    d.worker.store_write("block", block_event("198.18.0.2"))
    for suffix in ("", "-wal", "-shm"):
        p = f"{d.cfg.db_path}{suffix}"
        if os.path.exists(p):
            os.unlink(p)
    d.worker.store_write("block", block_event("198.18.0.3"))
    assert d.cfg.db_path.exists() and d.worker.pending_store == []
    assert {b["network"] for b in Store(d.cfg.db_path).blocks()} == {"198.18.0.2", "2001:db8:1::/64", "198.18.0.3"}
    assert os.stat(d.cfg.db_path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_database_overwritten_while_running_is_moved_aside_and_rebuilt(tmp_path, how):
    d = make_daemon(tmp_path, store=True)
    d.nft.sets = {"198.18.0.2": 0}
    d.worker.store_write("block", block_event("198.18.0.2"))
    with open(d.cfg.db_path, "r+b") as f:
        if how == "truncated":
            f.truncate(0)
        else:
            f.write(os.urandom(8192))
    d.worker.store_write("history", block_event("198.18.0.2"))
    aside = [p for p in os.listdir(d.cfg.db_path.parent) if ".corrupt-" in p and not p.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    s = Store(d.cfg.db_path)
    assert [b["network"] for b in s.blocks()] == ["198.18.0.2"] and len(s.history()) == 1


def test_corrupt_database_reported_by_sqlite_is_moved_aside(tmp_path):
    d = make_daemon(tmp_path, store=True)
    d.nft.sets = {"198.18.0.9": 0}

    def corrupt(*a, **k):
        from nfsentry.sinks.store import StoreCorrupt

        raise StoreCorrupt("db: database is corrupt (database disk image is malformed)")

    real = d.worker.store.add_history
    d.worker.store.add_history = corrupt
    d.worker.store_write("history", block_event("198.18.0.9"))
    assert d.worker.store.add_history != corrupt  # a new Store
    assert d.worker.pending_store == [] and [b["network"] for b in d.worker.store.blocks()] == ["198.18.0.9"]
    assert real is not None


def test_disk_full_is_a_storage_fault_not_a_crash(tmp_path):
    d = make_daemon(tmp_path, store=True)

    def full(*a, **k):
        from nfsentry.sinks.store import StoreError

        raise StoreError("db: database or disk is full")

    d.worker.store.add_block = full
    d.worker.store_write("block", block_event("198.18.0.2"))
    assert d.counters["storage_errors"] == 1 and len(d.worker.pending_store) == 1


def test_store_open_failures_are_one_line_store_errors(tmp_path):
    from nfsentry.sinks.store import StoreError

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(StoreError, match="Not a directory"):
        Store(f / "sub" / "db")


def test_prepare_refuses_unwritable_paths_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "require_root", lambda: None)
    f = tmp_path / "afile"
    f.write_text("x")
    for sections, frag in (
        ({"storage": {"state_dir": str(f / "state")}}, "state_dir"),
        ({"logging": {"json_file": str(f / "events.jsonl")}}, "json_file"),
        ({"storage": {"database": str(f / "db" / "x.db")}}, "database"),
        ({"response": {"hosts_deny": str(tmp_path / "missing" / "hosts.deny")}}, "hosts_deny"),
    ):
        d = D.Daemon(make_cfg(tmp_path, **sections))
        with pytest.raises(D.StartupError, match=frag) as e:
            d.prepare()
        assert e.value.exit_code == 2 and "\n" not in str(e.value)


# == hostile configuration ============================================================================
@pytest.mark.parametrize(
    "raw_cfg, frag",
    [
        ({"nosuch": {}}, "unknown section"),
        ({"response": {"blok_duration": "1h"}}, "unknown key"),
        ({"detection": {"scan_trigger": "3"}}, "expected an integer"),
        ({"detection": {"scan_trigger": True}}, "expected an integer"),
        ({"response": {"dry_run": "yes"}}, "expected true/false"),
        ({"monitor": {"tcp_ports": ["1-70000"]}}, "outside 1-65535"),
        ({"monitor": {"tcp_ports": ["0-65535"]}}, "outside 1-65535"),
        ({"monitor": {"udp_ports": [-1]}}, "outside 1-65535"),
        ({"monitor": {"tcp_ports": "1-1023"}}, "expected a list"),
        ({"monitor": {"tcp_ports": ["1-1023; reboot"]}}, "bad port"),
        ({"ignore": {"addresses": ["0.0.0.0/0"]}}, "every address"),
        ({"ignore": {"addresses": ["::/0"]}}, "every address"),
        ({"ignore": {"addresses": ["198.18.0.1 && reboot"]}}, "not an IPv4/IPv6"),
        ({"ignore": {"files": ["/nonexistent/nfsentry-ignore"]}}, "cannot read"),
        ({"response": {"command": "/bin/sh -c 'echo $TARGET$'"}}, "never run through a shell"),
        ({"response": {"command": ["/bin/echo", "$TARGET$; rm -rf /"]}}, "metacharacters"),
        ({"response": {"command": ["/bin/echo", "`id`"]}}, "metacharacters"),
        ({"response": {"command": ["/bin/echo", "$(id)"]}}, "metacharacters"),
        ({"response": {"command": ["echo", "$TARGET$"]}}, "absolute path"),
        ({"response": {"max_blocks_per_minute": -1}}, "outside"),
        ({"detection": {"max_sources": 10**12}}, "outside"),
        ({"storage": {"state_dir": "relative/dir"}}, "absolute path"),
        ({"logging": {"json_file": "events.jsonl"}}, "absolute path"),
        ({"nft": {"table": "x; flush ruleset"}}, "bad table name"),
        ({"nft": {"fail_open": "no"}}, "expected true/false"),
    ],
)
def test_hostile_configuration_is_refused_with_one_line(raw_cfg, frag):
    with pytest.raises(C.ConfigError, match=frag) as e:
        C.validate(raw_cfg)
    assert "\n" not in str(e.value)


def test_command_arguments_are_validated_values_only():
    argv = substitute(["/usr/local/sbin/x", "$TARGET$", "--port=$PORT$", "$MODE$"], "198.18.0.2", 22, "SYN")
    assert argv == ["/usr/local/sbin/x", "198.18.0.2", "--port=22", "SYN"]
    for target, port, mode in (("198.18.0.2; reboot", 22, "SYN"), ("198.18.0.2", 70000, "SYN"), ("198.18.0.2", 22, "SYN;id")):
        with pytest.raises(ValueError):
            substitute(["/bin/true", "$TARGET$"], target, port, mode)


def test_fail_open_renders_bypass_and_fail_closed_does_not():
    from nfsentry import nft as N

    for fail_open in (True, False):
        cfg = C.validate({"nft": {"fail_open": fail_open}})
        spec = ruleset_spec(cfg, [])
        native = N.render(spec, "native")
        rules = [l.strip() for l in native.splitlines() if not l.strip().startswith(("#", "counter "))]
        scan_rules = [l for l in rules if "name queued_tcp" in l or "name queued_udp" in l]
        ftp_rules = [l for l in rules if "name queued_ftp" in l]
        assert len(scan_rules) == 2 and len(ftp_rules) == 3
        assert all(l.endswith("queue flags bypass to 0" if fail_open else "queue to 0") for l in scan_rules)
        assert all(l.endswith("queue flags bypass to 1") for l in ftp_rules)
        compat = N.compat_rules(spec)
        assert all(("--queue-bypass" in args) == (fail_open or "0x4e460002" in args[3]) for _, _, args in compat)


def test_a_v6_source_next_to_a_protected_address_is_blocked_alone_not_its_prefix(tmp_path, monkeypatch):
    """Forged 2001:db8::99 shares the host's /64 (and its gateway's): blocking the /64 would cut the
    host off its own network. Only that address is blocked."""
    fake_ip(monkeypatch)
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_CLIENT", raising=False)
    d = make_daemon(tmp_path, ignore={"own_addresses": True, "gateways": True})
    p = FakePkt(syn("2001:db8::99"))
    d.verdicts.on_packet(p)
    assert p.verdicts == ["drop"] and list(d.nft.sets) == ["2001:db8::99"]
    assert d.counters["blocks_narrowed"] == 1
    ((_, dec, _),) = [e for e in drain(d) if e[0] == "block"]
    assert dec.network == "2001:db8::99"
    p = FakePkt(syn("2001:db8::99", dport=9))  # queued before the block took effect: no second block
    d.verdicts.on_packet(p)
    assert p.verdicts == ["drop"] and d.counters["blocks"] == 1
    p = FakePkt(syn("2001:db8::98"))  # its neighbour is judged on its own, and blocked alone too
    d.verdicts.on_packet(p)
    assert p.verdicts == ["drop"] and set(d.nft.sets) == {"2001:db8::99", "2001:db8::98"}
    d.verdicts.on_packet(FakePkt(syn("2001:db8:5::99")))  # a /64 holding nothing protected: the whole /64
    assert "2001:db8:5::/64" in d.nft.sets
