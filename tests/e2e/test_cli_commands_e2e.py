"""Issue 19's commands against the real kernel in namespaces: `block -f` of 10,000 entries in one
transaction (with the daemon and without), `ignore add/del` applied to a running daemon's ignore
sets at once, and `reload`. The CLI's parsing and messages are in tests/unit/test_cli_commands.py."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest
from daemon_util import NFSENTRY, Nfsentry, kernel_blocks

pytestmark = pytest.mark.e2e
N = 10_000


def bulk_list() -> tuple[str, dict[str, int | None]]:
    """10,000 lines: 9,000 IPv4 addresses, 500 IPv4 /24s, 500 IPv6 /64s, with and without a
    duration and a reason, comments and blank lines between; -> (text, network -> kernel timeout)."""
    lines, want = ["# a blocklist of 10,000 entries", ""], {}
    for i in range(9000):
        net = f"11.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        if i % 3 == 0:
            lines.append(f"{net} 2h feed [bold] :smile: #{i}")
            want[net] = 7200
        else:
            lines.append(net)
            want[net] = 3600
    for i in range(500):
        net = f"12.{i // 256}.{i % 256}.0/24"
        lines.append(f"{net} 0 until unblocked")
        want[net] = None
    for i in range(500):
        net = str(ipaddress.ip_network(f"2001:db8:5151:{i:x}::/64"))
        lines.append(f"{net}\t30m\tv6 feed")
        want[net] = 1800
        if i % 100 == 0:
            lines.append("# a comment between")
    return "\n".join(lines) + "\n", want


def timed(d: Nfsentry, *args: str, stdin: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = d.host.run([NFSENTRY, *args, "--config", str(d.config)], check=False, timeout=120, input=stdin)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("mode", ["daemon", "no-daemon"])
def test_block_file_of_10000_entries_in_one_transaction(lab, tmp_path, mode):
    d = Nfsentry(lab["victim"], tmp_path / "nfs", overrides={"response": {"block_duration": "1h"}})
    if mode == "daemon":
        d.start()
    else:
        d.cli("rules", "load")
    try:
        d.cli("block", "11.0.0.3", "--for", "1d", "--reason", "already, longer")  # kept: never shortened
        text, want = bulk_list()
        f = tmp_path / "list.txt"
        f.write_text(text)
        # a bad line anywhere: one line naming it, nothing blocked
        bad = tmp_path / "bad.txt"
        bad.write_text(text + "11.9.9.300 1h\n")
        res, _ = timed(d, "block", "-f", str(bad))
        assert res.returncode == 2 and res.stderr.strip() == (
            f"nfsentry: {bad}:{len(text.splitlines()) + 1}: bad address or prefix '11.9.9.300': "
            "not an IPv4/IPv6 address or CIDR (nothing blocked)"
        ), res.stderr
        assert set(kernel_blocks(d.host)) == {"11.0.0.3"}
        res, took = timed(d, "block", "-f", str(f))
        assert res.returncode == 0, res.stderr
        print(f"\nblock -f of {N} entries ({mode}): {took:.2f} s")
        assert res.stdout.strip().endswith(f"{N} networks: {N - 1} blocked, 0 extended, 1 kept (already blocked as long or longer)")
        kernel = kernel_blocks(d.host)
        assert len(kernel) == N and set(kernel) == set(want)
        assert 86000 < (kernel["11.0.0.3"] or 0) <= 86400  # the longer block stayed
        assert (
            kernel["12.0.5.0/24"] is None
            and 7000 < (kernel["11.0.0.6"] or 0) <= 7200
            and 1700 < (kernel["2001:db8:5151:1f3::/64"] or 0) <= 1800
        )
        rows = {r["network"]: r for r in d.blocked()}
        deadline = time.monotonic() + 60  # the daemon's worker writes the database after the kernel
        while sum(1 for r in rows.values() if r["reason"]) < N and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = {r["network"]: r for r in d.blocked()}
        assert rows["11.0.0.6"]["reason"] == "feed [bold] :smile: #6" and rows["11.0.0.7"]["reason"] == "manual block"
        assert rows["11.0.0.3"]["reason"] == "already, longer" and rows["12.1.2.0/24"]["origin"] == "manual"
        assert took <= 20  # (the number is printed above: the target is 2 s, on a busy 2-core machine this is a bound)
        # standard input, the same list again: the timed blocks start again (extended), the permanent
        # ones and the longer one stay (kept), nothing is added
        res, took = timed(d, "block", "-f", "-", stdin=text)
        print(f"block -f - of the same {N} entries again ({mode}): {took:.2f} s")
        assert res.returncode == 0 and f"{N} networks: 0 blocked, {N - 501} extended, 501 kept" in res.stdout, res.stdout + res.stderr
        kernel = kernel_blocks(d.host)
        assert len(kernel) == N and 86000 < (kernel["11.0.0.3"] or 0) <= 86400 and 7100 < (kernel["11.0.0.6"] or 0) <= 7200
    finally:
        d.close()


def test_ignore_add_del_and_reload_with_the_daemon(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        ign = tmp_path / "nfs" / "ignore"

        def ignore_set() -> str:
            return victim.nft(["list", "set", "inet", "nfsentry", "ignore4"]).stdout

        res = d.cli("ignore", "add", attacker.ip4)
        assert "the running daemon ignores it now" in res.stdout and attacker.ip4 in ign.read_text()
        assert attacker.ip4 in ignore_set()
        assert attacker.ip4 in d.status()["never_block_list"]
        assert f"{attacker.ip4}\t{ign}:1" in d.cli("ignore", "list").stdout
        assert attacker.ip4 in d.cli("status").stdout  # the never-block list itself
        res = d.cli("ignore", "del", attacker.ip4)
        assert "the running daemon no longer ignores it" in res.stdout and ign.read_text() == ""
        assert attacker.ip4 not in ignore_set() and attacker.ip4 not in d.status()["never_block_list"]
        # the daemon blocks it again
        attacker.nmap("-sS -Pn --max-retries 0 -p 1-30", victim.ip4)
        d.wait_event("block", attacker.ip4, timeout=60)
        assert "last detection:    20" in d.cli("status").stdout
        res = d.cli("reload")
        assert res.returncode == 0 and "reloaded" in res.stdout
        d.config.write_text(d.config.read_text() + '\n[nft]\ntable = "other"\n')
        res = d.cli("reload", check=False)
        assert res.returncode == 1 and "needs a restart" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    finally:
        d.close()
    res = d.cli("reload", check=False)
    assert res.returncode == 3 and "is not running" in res.stderr
    assert json.loads(d.cli("status", "--json", check=False).stdout) == {"running": False}
