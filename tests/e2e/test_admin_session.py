"""Issue 16, "block state an admin can trust": the admin's session, row by row, against the real
kernel in namespaces; each row with the daemon running and once more with no daemon where the row
applies. Every row checks exit codes and messages, `nfsentry blocked --json`, the kernel's sets
(`nft -j list table` in the victim namespace) and `history`.

Rows: 1 unblock of what is not blocked; 2 an address inside a broader block; 3 a prefix lifts
every block inside it; 4 a fractional duration is a real (1 s) kernel timeout, never permanent;
5 a block is never shortened nor loses its reason; 6 `unblock --all` is final (a restart restores
nothing); 8 `rules unload` under a running daemon; 11 a configuration file that does not load
must not lock the admin out of the running daemon; 12 IPv4-mapped addresses and addresses that
are never a scanner's source; 13 `history --source PREFIX`; 16 a built-in ruleset name next to a
folder of that name.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from daemon_util import NFSENTRY, Nfsentry

pytestmark = pytest.mark.e2e
OPEN_PORT = 8080


@pytest.fixture(params=["daemon", "no-daemon"])
def admin(request, lab, tmp_path):
    """The victim's nfsentry: the daemon running, or only the rules loaded (the CLI alone)."""
    lab["victim"].tcp_service(OPEN_PORT)
    d = Nfsentry(lab["victim"], tmp_path / "nfs")
    if request.param == "daemon":
        d.start()
    else:
        d.cli("rules", "load")
    d.mode = request.param  # type: ignore[attr-defined]
    yield d
    d.close()


# -- observation ---------------------------------------------------------------------------------
def kernel(d: Nfsentry) -> dict[str, int | None]:
    """Every entry of the table's blocked sets: network -> its timeout in seconds (None: permanent)."""
    out = json.loads(d.host.nft(["-j", "list", "table", "inet", "nfsentry"]).stdout)
    entries: dict[str, int | None] = {}
    for obj in out["nftables"]:
        s = obj.get("set")
        if not s or not s["name"].startswith("blocked"):
            continue
        suffix = f"/{s['name'].split('_')[1]}" if "_" in s["name"] else ""
        for e in s.get("elem", []):
            timeout = None
            if isinstance(e, dict) and "elem" in e:
                timeout, e = e["elem"].get("timeout"), e["elem"]["val"]
            if isinstance(e, dict) and "prefix" in e:
                e = f"{e['prefix']['addr']}/{e['prefix']['len']}"
            assert isinstance(e, str), s  # (a range would be a set the ledger never makes)
            entries[e + suffix] = timeout
    return entries


def listed(d: Nfsentry) -> dict[str, dict]:
    return {b["network"]: b for b in d.blocked()}


SENTINEL = "198.18.99.99"  # settle()'s own block: left out of every listing below


def history(d: Nfsentry, *args: str) -> list[dict]:
    rows = json.loads(d.cli("history", "--json", "--limit", "1000", *args).stdout)
    return [h for h in rows if h.get("network") != SENTINEL]


def settle(d: Nfsentry) -> None:
    """With the daemon, database writes run later on its worker thread, in order: a block and an
    unblock made now and seen in the history mean every earlier write is done. (The CLI alone
    writes before it returns.)"""
    if d.mode != "daemon":
        return

    def count(kind: str) -> int:
        rows = json.loads(d.cli("history", "--json", "--limit", "1000", "--source", SENTINEL).stdout)
        return sum(h["event"] == kind for h in rows)

    for kind in ("block", "unblock"):
        n = count(kind)
        d.cli(kind, SENTINEL, *(["--for", "1h"] if kind == "block" else []))
        wait_for(f"the daemon records the {kind} of {SENTINEL}", lambda: count(kind) > n)


def events(d: Nfsentry, kind: str) -> list[str]:
    return [h["network"] for h in history(d) if h["event"] == kind]


def run(d: Nfsentry, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    res = d.cli(*args, check=False)
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    return res


def unblocked(res: subprocess.CompletedProcess) -> set[str]:
    """The networks of "unblocked N: a, b, ..." (N checked)."""
    m = re.fullmatch(r"unblocked (\d+): (.*)", res.stdout.strip())
    assert m, res.stdout
    nets = set(m.group(2).split(", "))
    assert len(nets) == int(m.group(1)), res.stdout
    return nets


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text, text
    return text


def wait_for(what, condition, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


# -- rows ----------------------------------------------------------------------------------------
def test_row1_unblocking_what_is_not_blocked_says_so_and_records_nothing(admin):
    d = admin
    d.cli("block", "198.18.0.3", "--for", "1h")  # something else is blocked
    settle(d)
    before = history(d)
    for target in ("198.18.0.2", "2001:db8:9::9", "198.18.70.0/24"):
        res = run(d, "unblock", target, code=1)
        assert one_line(res.stderr) == f"{target} is not blocked" and res.stdout == ""
    settle(d)
    assert history(d) == before  # no unblock row for something that was not blocked
    assert set(kernel(d)) == {"198.18.0.3"} and set(listed(d)) == {"198.18.0.3"}


@pytest.mark.parametrize("prefix, inside", [("198.18.50.0/24", "198.18.50.7"), ("2001:db8:5::/64", "2001:db8:5::7")])
def test_row2_an_address_inside_a_broader_block_names_it_and_lifts_it_only_with_covering(admin, prefix, inside):
    d = admin
    d.cli("block", prefix, "--for", "1h", "--reason", "whole range")
    res = run(d, "unblock", inside, code=1)
    err = one_line(res.stderr)
    assert err.startswith(f"{inside} is inside {prefix}, which stays blocked") and "--covering" in err, err
    settle(d)
    assert list(kernel(d)) == [prefix] and list(listed(d)) == [prefix]
    assert listed(d)[prefix]["reason"] == "whole range"
    assert events(d, "unblock") == []
    res = run(d, "unblock", inside, "--covering")
    assert res.stdout.strip() == f"unblocked 1: {prefix}"
    assert kernel(d) == {} and listed(d) == {}
    settle(d)
    assert events(d, "unblock") == [prefix]


def test_row3_a_prefix_lifts_every_block_inside_it_and_lists_them(admin):
    d = admin
    inside = ["198.18.50.7", "198.18.50.9", "198.18.50.64/26"]
    for net in [*inside, "198.18.51.1", "2001:db8:7::1", "2001:db8:7::2", "2001:db8:8::1"]:
        d.cli("block", net, "--for", "1h")
    res = run(d, "unblock", "198.18.50.0/24")
    assert unblocked(res) == set(inside)
    res = run(d, "unblock", "2001:db8:7::/48")
    assert unblocked(res) == {"2001:db8:7::1", "2001:db8:7::2"}
    assert set(kernel(d)) == {"198.18.51.1", "2001:db8:8::1"} == set(listed(d))
    settle(d)
    assert sorted(events(d, "unblock")) == sorted([*inside, "2001:db8:7::1", "2001:db8:7::2"])


def test_row4_a_fractional_duration_is_a_one_second_kernel_timeout_never_permanent(admin, lab):
    d, attacker, victim = admin, lab["attacker"], lab["victim"]
    res = run(d, "block", attacker.ip4, "--for", "0.5s")
    assert res.stdout.startswith(f"blocked {attacker.ip4} for 1s ")
    seen = kernel(d)
    # the element may already have expired on a busy machine; while it exists its timeout is 1 s
    assert seen in ({attacker.ip4: 1}, {}), seen
    settle(d)
    row = [h for h in history(d) if h["event"] == "block"][-1]
    assert row["network"] == attacker.ip4 and row["duration"] == 1.0 and row["expires"] is not None
    wait_for("the 1 s block leaves the kernel", lambda: attacker.ip4 not in kernel(d))
    assert attacker.ip4 not in listed(d)
    assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
    if d.mode == "daemon":  # nor does the daemon put it back from the database
        time.sleep(1.0)
        assert attacker.ip4 not in kernel(d)


def test_row5_a_block_is_never_shortened_nor_loses_its_reason(admin, lab):
    d, attacker = admin, lab["attacker"]
    src = attacker.ip4
    d.cli("block", src, "--for", "1h", "--reason", "scanner")
    settle(d)
    res = run(d, "block", src, "--for", "10m", "--reason", "other")
    kept = r" is already blocked for (59m\d*s?|1h) \(until .*\): kept \(blocks are never shortened\)"
    assert re.fullmatch(re.escape(src) + kept, res.stdout.strip()), res.stdout
    assert 3000 < kernel(d)[src] <= 3600
    b = listed(d)[src]
    assert b["reason"] == "scanner" and 3000 < b["expires_in"] <= 3600
    res = run(d, "block", src, "--for", "2h")  # longer: extended, and the reason stays
    assert res.stdout.startswith(f"extended {src} for 2h ")
    settle(d)
    assert 6600 < kernel(d)[src] <= 7200 and listed(d)[src]["reason"] == "scanner"
    res = run(d, "block", src, "--for", "0")  # permanent is the longest
    assert res.stdout.startswith(f"extended {src} until unblocked") and kernel(d)[src] is None
    res = run(d, "block", src, "--for", "7d")
    settle(d)
    assert "kept" in res.stdout and kernel(d)[src] is None and listed(d)[src]["reason"] == "scanner"
    # an address inside a broader permanent block: kept, the covering block named
    d.cli("block", "198.18.50.0/24", "--for", "0")
    res = run(d, "block", "198.18.50.7", "--for", "1h")
    assert res.stdout.startswith("198.18.50.7 is already blocked by 198.18.50.0/24 until unblocked: kept")
    assert "198.18.50.7" not in kernel(d)
    settle(d)
    assert events(d, "block").count(src) == 3  # blocked, extended twice; the kept ones recorded nothing


def test_row6_unblock_all_is_final_a_restart_restores_nothing(admin, lab):
    d, attacker, victim = admin, lab["attacker"], lab["victim"]
    nets = [attacker.ip4, attacker.ip6, "198.18.50.0/24", "2001:db8:5::/64"]
    for net in nets:
        d.cli("block", net, "--for", "1h")
    settle(d)
    assert len(kernel(d)) == 4
    # the kernel loses two entries behind nfsentry's back (nft by hand); the database still has them
    victim.nft(["delete", "element", "inet", "nfsentry", "blocked4", "{", attacker.ip4, "}"])
    victim.nft(["delete", "element", "inet", "nfsentry", "blocked6", "{", attacker.ip6, "}"])
    res = run(d, "unblock", "--all")  # through the daemon, or with none running
    assert unblocked(res) <= set(nets) and kernel(d) == {} and listed(d) == {}
    d.stop()  # (no-op without a daemon)
    assert_restart_restores_nothing(d)  # every block, the ones the kernel had lost too
    assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
    assert attacker.connect(victim.ip6, OPEN_PORT) == "connected"
    # blocks the daemon made, cleared while it is down: a start restores nothing either
    for net in nets:
        d.cli("block", net, "--for", "1h")
    settle(d)
    d.stop()
    assert len(kernel(d)) == 4  # the daemon keeps its blocks when it stops
    res = run(d, "unblock", "--all")
    assert unblocked(res) == set(nets) and kernel(d) == {}
    assert_restart_restores_nothing(d)
    settle(d)
    assert events(d, "unblock").count("198.18.50.0/24") == 2


def assert_restart_restores_nothing(d: Nfsentry) -> None:
    d.start()
    restored = [line for line in d.stderr_lines if "blocks restored" in line]
    assert restored and re.search(r"\b0 blocks restored", restored[-1]), restored
    assert kernel(d) == {} and listed(d) == {}
    d.mode = "daemon"  # type: ignore[attr-defined]  # settle() must wait for it from now on


def test_row12_mapped_addresses_block_the_ipv4_and_non_sources_are_refused(admin, lab):
    d, attacker = admin, lab["attacker"]
    res = run(d, "block", f"::ffff:{attacker.ip4}", "--for", "1h")
    assert res.stdout.startswith(f"blocked {attacker.ip4} for 1h ")
    assert list(kernel(d)) == [attacker.ip4] and list(listed(d)) == [attacker.ip4]
    settle(d)
    before = history(d)
    for bad in ("224.0.0.1", "ff02::1", "169.254.7.7", "fe80::7", "127.0.0.1", "::1", "0.0.0.0", "::"):
        res = run(d, "block", bad, code=2)
        err = one_line(res.stderr)
        assert err.startswith("nfsentry: refusing to block") and "never a scanner's source" in err, err
    settle(d)
    assert list(kernel(d)) == [attacker.ip4] and history(d) == before
    res = run(d, "unblock", f"::ffff:{attacker.ip4}")
    assert res.stdout.strip() == f"unblocked 1: {attacker.ip4}" and kernel(d) == {}


def test_row13_history_source_prefix_matches_every_address_inside(admin, lab):
    d, attacker, victim = admin, lab["attacker"], lab["victim"]
    for net in ("198.18.50.7", "198.18.50.9", "198.18.51.1", "2001:db8:5::7"):
        d.cli("block", net, "--for", "1h")
    d.cli("unblock", "198.18.50.9")
    settle(d)
    got = [(h["event"], h["network"]) for h in history(d, "--source", "198.18.50.0/24")]
    assert got == [("block", "198.18.50.7"), ("block", "198.18.50.9"), ("unblock", "198.18.50.9")]
    assert [h["network"] for h in history(d, "--source", "198.18.50.7")] == ["198.18.50.7"]  # exact stays exact
    assert [h["network"] for h in history(d, "--source", "2001:db8:5::/48")] == ["2001:db8:5::7"]
    assert history(d, "--source", "198.18.60.0/24") == []
    text = d.cli("history", "--source", "198.18.50.0/23").stdout
    assert "198.18.50.7" in text and "198.18.51.1" in text and "2001:db8" not in text
    if d.mode == "daemon":  # a detection's source address inside the prefix
        d.cli("unblock", "--all")
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4, timeout=60)
        wait_for(
            "the detection reaches the database", lambda: any(h["event"] == "detection" for h in history(d, "--source", "198.18.0.0/24"))
        )
        rows = history(d, "--source", "198.18.0.0/24")
        assert {h["src"] for h in rows if h["event"] == "detection"} == {attacker.ip4}


def break_config(d: Nfsentry, broken: str) -> str:
    good = d.config.read_text()
    d.config.write_text(good + broken)
    return good


@pytest.mark.parametrize("broken", ['\n[response]\nblock_duration = "soon"\n', '\n[response]\nblock_duration = "1h\n'])
def test_row11_a_config_that_does_not_load_does_not_lock_the_admin_out(lab, tmp_path, broken):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        d.cli("block", attacker.ip4, "--for", "1h")
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
        good = break_config(d, broken)  # the admin's typo, after the daemon started
        res = run(d, "status")
        assert "is running" in res.stdout
        warn = one_line(res.stderr)
        assert warn.startswith("nfsentry: warning: ") and "does not load" in warn and str(d.config) in warn, warn
        assert json.loads(run(d, "status", "--json").stdout)["running"] is True
        res = run(d, "unblock", attacker.ip4)  # the admin unblocks themself
        assert res.stdout.strip() == f"unblocked 1: {attacker.ip4}" and "warning" in res.stderr
        assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
        assert kernel(d) == {}
        res = run(d, "block", "198.18.50.7")  # no --for: the daemon's own default duration
        assert res.stdout.startswith("blocked 198.18.50.7 for ")
        assert 3000 < kernel(d)["198.18.50.7"] <= 3600
        d.stop()
        for args in (["status"], ["unblock", "198.18.50.7"], ["block", "198.18.50.8"]):  # local work: exit 2
            res = run(d, *args, code=2)
            err = one_line(res.stderr)
            assert err.startswith(f"nfsentry: {d.config}: ") and "warning" not in err, err
        d.config.write_text(good)
    finally:
        d.close()


def test_row8_rules_unload_is_refused_while_the_daemon_runs(lab, tmp_path):
    victim = lab["victim"]
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        res = run(d, "rules", "unload", code=1)
        err = one_line(res.stderr)
        assert "daemon is running" in err and "--force" in err, err
        assert "nfsentry" in victim.nft("list tables").stdout
        res = run(d, "rules", "unload", "--force")
        assert "removed table inet nfsentry" in res.stdout
        assert "nfsentry" not in victim.nft("list tables").stdout
        # through the daemon: it says it is not protecting (exit 1), and does not put the table back
        st = run(d, "status", "--json", code=1)
        assert json.loads(st.stdout)["state"] == "degraded"
        time.sleep(3)  # the daemon checks its table every second: it must leave it unloaded
        assert "nfsentry" not in victim.nft("list tables").stdout
        run(d, "rules", "load")
        deadline = time.monotonic() + 60
        while json.loads(d.cli("status", "--json", check=False).stdout or "{}").get("state") != "running":
            assert time.monotonic() < deadline, "the daemon did not resume after rules load"
            time.sleep(0.2)
    finally:
        d.close()
    d.cli("rules", "load")
    run(d, "rules", "unload")  # no daemon: unloads
    assert "nfsentry" not in victim.nft("list tables").stdout


def test_row16_a_builtin_ruleset_name_next_to_a_folder_of_that_name(lab, tmp_path):
    victim = lab["victim"]
    d = Nfsentry(victim, tmp_path / "nfs")
    work = tmp_path / "work"
    (work / "nfsentry").mkdir(parents=True)  # the admin stands in a directory holding a folder "nfsentry"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return victim.run([NFSENTRY, *args, "--config", str(d.config)], check=False, cwd=str(work))

    res = cli("rules", "check", "-f", "nfsentry")
    assert "flex scanner" not in res.stderr
    if res.returncode == 0:
        assert one_line(res.stdout).endswith("rules/nfsentry.nft: ok")
    else:  # a kernel without nft_queue (the compat backend) refuses the shipped file's queue statements
        assert res.returncode == 1 and "checking " in res.stderr and "rules/nfsentry.nft" in res.stderr, res.stderr
        assert "No such file or directory" in res.stderr, res.stderr
    res = cli("rules", "check", "-f", "./nfsentry")
    assert res.returncode == 2 and "is a directory" in one_line(res.stderr)
    (work / "mine.nft").write_text("table inet mine {\n}\n")
    res = cli("rules", "check", "-f", "mine.nft")
    assert res.returncode == 0 and one_line(res.stdout) == "mine.nft: ok", res.stderr
    d.close()
