"""Issue 19, "commands people expect": reload, ignore list/add/del, block -f, filters, help.

Through typer's CliRunner, with a stand-in daemon on a real control socket where the daemon
matters, and an in-memory kernel (tests/unit/test_ledger.py's) where the CLI works alone: nothing
here touches this host's nftables. The real kernel and daemon: tests/e2e/test_cli_commands_e2e.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest
from test_ledger import Clock, Kernel
from typer.testing import CliRunner

from nfsentry import __version__
from nfsentry.cli import app as A
from nfsentry.config import schema as C
from nfsentry.core.addrs import block_target_checker
from nfsentry.daemon.control import ControlServer
from nfsentry.ledger.ledger import Ledger
from nfsentry.sinks.store import Store

runner = CliRunner()
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the control socket accepts root only")


def cfg_file(tmp_path: Path, extra: str = "", ignore: Path | None = None) -> str:
    ignore = ignore or tmp_path / "ignore"
    ignore.touch()
    p = tmp_path / "c.toml"
    p.write_text(
        f'[storage]\nstate_dir = "{tmp_path}/state"\n[daemon]\ncontrol_socket = "{tmp_path}/run/c.sock"\n'
        f'[logging]\njson_file = ""\nsyslog = false\n'
        f'[ignore]\nfiles = ["{ignore}"]\nown_addresses = false\ngateways = false\nresolvers = false\n{extra}'
    )
    return str(p)


def one_line_error(res, code=2, fragment=""):
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("nfsentry: "), err
    assert fragment in err, err
    return err


@pytest.fixture
def daemon(tmp_path):
    """A stand-in daemon: ``replies[cmd]`` is its answer (a dict, or a function of the request)."""
    sock = str(tmp_path / "run" / "c.sock")
    seen: list[dict] = []
    replies: dict = {}

    def handler(req):
        seen.append(req)
        r = replies.get(req["cmd"], {"ok": False, "error": f"unknown command {req['cmd']!r}"})
        return r(req) if callable(r) else r

    srv = ControlServer(sock, handler)
    srv.start()
    try:
        yield replies, seen
    finally:
        srv.close()


class FakeNft(Kernel):
    """The in-memory kernel, standing in for nfsentry.nft.Nft (no ruleset loaded for ignore)."""

    def __init__(self) -> None:
        super().__init__(Clock())
        self.ignored: list[str] = []

    def loaded(self) -> bool:
        return False


@pytest.fixture
def local(monkeypatch, tmp_path):
    """No daemon: the CLI's ledger on an in-memory kernel and a real database."""
    nft = FakeNft()
    stores: list[Store] = []

    class N:
        NftError = RuntimeError

    def open_ledger(cfg, readonly=False):
        s = Store(cfg.db_path)
        stores.append(s)
        return N, Ledger(nft, s, clock=nft.clock)

    monkeypatch.setattr(A, "open_ledger", open_ledger)
    monkeypatch.setattr(A, "get_nft", lambda cfg: (N, nft))
    monkeypatch.setattr("nfsentry.ledger.neverblock.ssh_client", lambda: None)
    return nft


# == reload =========================================================================================
@root_only
def test_reload_asks_the_daemon_and_reports_its_refusal(tmp_path, daemon):
    replies, seen = daemon
    c = cfg_file(tmp_path)
    replies["reload"] = {"ok": True, "message": "reloaded", "config": "/etc/nfsentry/nfsentry.toml"}
    res = runner.invoke(A.app, ["reload", "-c", c])
    assert res.exit_code == 0 and seen[-1]["cmd"] == "reload"
    assert res.stdout == "reloaded the running daemon's configuration from /etc/nfsentry/nfsentry.toml\n"
    replies["reload"] = {
        "ok": False,
        "error": "reload refused, the running configuration stays: [nft] table changed, which needs a restart",
    }
    one_line_error(runner.invoke(A.app, ["reload", "-c", c]), 1, "reload refused, the running configuration stays")


def test_reload_without_a_daemon_is_a_clear_error(tmp_path):
    err = one_line_error(runner.invoke(A.app, ["reload", "-c", cfg_file(tmp_path)]), 3, "is not running")
    assert str(tmp_path / "run" / "c.sock") in err


# == ignore ==========================================================================================
def test_ignore_add_list_del_without_a_daemon(tmp_path, local):
    c = cfg_file(tmp_path)
    ign = tmp_path / "ignore"
    ign.write_text("# mine\n198.51.100.7 office # keep\n")
    res = runner.invoke(A.app, ["ignore", "add", "2001:db8:5151:abcd::9/64", "-c", c])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"ignored 2001:db8:5151:abcd::/64: added to {ign}; nfsentry ignores it when it starts")
    assert ign.read_text() == "# mine\n198.51.100.7 office # keep\n2001:db8:5151:abcd::/64\n"
    assert [str(n) for n in C.load(c).ignore] == ["198.51.100.7/32", "2001:db8:5151:abcd::/64"]  # the file the config reads
    res = runner.invoke(A.app, ["ignore", "add", "2001:db8:5151:abcd::1", "-c", c])  # inside: nothing written
    assert "already in the ignore list, inside 2001:db8:5151:abcd::/64" in res.stdout and ign.read_text().count("\n") == 3
    rows = json.loads(runner.invoke(A.app, ["ignore", "list", "-c", c, "--json"]).stdout)
    assert rows == [
        {"network": "198.51.100.7", "source": f"{ign}:2", "note": "office # keep"},
        {"network": "2001:db8:5151:abcd::/64", "source": f"{ign}:3", "note": ""},
    ]
    res = runner.invoke(A.app, ["ignore", "del", "198.51.100.7", "-c", c])
    assert res.exit_code == 0 and f"no longer ignored: 198.51.100.7 (removed {ign}:2)" in res.stdout
    assert ign.read_text() == "# mine\n2001:db8:5151:abcd::/64\n"  # comments and other lines stay


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["add", "300.1.1.1"], "bad address or prefix"),
        (["add", "0.0.0.0/0"], "a /0 would match every address"),
        (["del", "not-an-ip"], "bad address or prefix"),
        (["del", "198.51.100.8"], "198.51.100.8 is not in the ignore list"),
        (["del", "198.51.100.7"], "is in [ignore] addresses of"),
        (["del", "2001:db8:5151:abcd::1"], "lies inside 2001:db8:5151:abcd::/64"),
    ],
)
def test_ignore_refuses_bad_input_with_one_line_exit_2(tmp_path, local, args, fragment):
    (tmp_path / "ignore").write_text("2001:db8:5151:abcd::/64\n")
    c = cfg_file(tmp_path, 'addresses = ["198.51.100.7"]\n')
    before = (tmp_path / "ignore").read_text()
    one_line_error(runner.invoke(A.app, ["ignore", *args, "-c", c]), 2, fragment)
    assert (tmp_path / "ignore").read_text() == before


def test_ignore_add_needs_an_ignore_file(tmp_path, local):
    c = tmp_path / "c.toml"
    c.write_text(f'[storage]\nstate_dir = "{tmp_path}/state"\n[daemon]\ncontrol_socket = "{tmp_path}/c.sock"\n[ignore]\nfiles = []\n')
    one_line_error(runner.invoke(A.app, ["ignore", "add", "198.51.100.7", "-c", str(c)]), 2, "no ignore file: list one in [ignore] files")


@root_only
def test_ignore_add_and_del_reach_the_running_daemon(tmp_path, daemon, local):
    replies, seen = daemon
    replies["ignore"] = lambda req: {"ok": True, "ignored": req["network"]}
    replies["unignore"] = lambda req: {"ok": True, "unignored": req["network"], "still": False}
    c = cfg_file(tmp_path)
    res = runner.invoke(A.app, ["ignore", "add", "198.51.100.0/24", "-c", c])
    assert res.exit_code == 0 and "the running daemon ignores it now" in res.stdout
    assert seen[-1] == {"cmd": "ignore", "network": "198.51.100.0/24"}
    res = runner.invoke(A.app, ["ignore", "del", "198.51.100.0/24", "-c", c])
    assert res.exit_code == 0 and "the running daemon no longer ignores it" in res.stdout
    assert seen[-1] == {"cmd": "unignore", "network": "198.51.100.0/24"} and (tmp_path / "ignore").read_text() == ""


# == block -f =========================================================================================
LIST = """\
# a blocklist
198.51.100.7
198.51.100.8 2h abuse report [bold] :smile:
  2001:db8:5151:abcd::9/64   0   a /64, until unblocked

203.0.113.0/24 5 hosts probed our mail server
198.51.100.9\t30m\ttabbed reason
"""


def test_read_block_list_lines():
    got = A.read_block_list(LIST, "list.txt", block_target_checker())
    assert got == [
        ("198.51.100.7", None, None, "list.txt:2"),
        ("198.51.100.8", 7200.0, "abuse report [bold] :smile:", "list.txt:3"),
        ("2001:db8:5151:abcd::/64", 0.0, "a /64, until unblocked", "list.txt:4"),
        ("203.0.113.0/24", None, "5 hosts probed our mail server", "list.txt:6"),  # a bare number is not a duration
        ("198.51.100.9", 1800.0, "tabbed reason", "list.txt:7"),
    ]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("198.51.100.7\n198.51.100.300 1h\n", "list.txt:2: bad address or prefix '198.51.100.300'"),
        ("198.51.100.7\n\n0.0.0.0/0\n", "list.txt:3: refusing to block 0.0.0.0/0"),
        ("198.51.100.7 99999d\n", "list.txt:1: bad duration '99999d': longer than 10 years"),
        ("# only comments\n\n", "list.txt: no address in it"),
    ],
)
def test_block_file_bad_line_is_one_line_naming_it_and_nothing_is_blocked(tmp_path, local, text, fragment):
    f = tmp_path / "list.txt"
    f.write_text(text)
    c = cfg_file(tmp_path)
    err = one_line_error(runner.invoke(A.app, ["block", "-f", str(f), "-c", c]), 2, fragment.replace("list.txt", str(f)))
    assert "nothing blocked" in err and local.list_blocked() == []


def test_block_file_without_a_daemon_one_transaction_never_shorter(tmp_path, local):
    c = cfg_file(tmp_path, 'addresses = ["198.51.100.200"]\n')
    runner.invoke(A.app, ["block", "198.51.100.8", "--for", "1d", "-c", c])
    local.transactions = 0
    res = runner.invoke(A.app, ["block", "-f", "-", "--for", "10m", "--reason", "from stdin", "-c", c], input=LIST)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert res.stdout == "stdin: 5 lines, 5 networks: 4 blocked, 0 extended, 1 kept (already blocked as long or longer)\n"
    assert local.transactions == 1
    left = {b["network"]: b["expires_in"] for b in local.list_blocked()}
    assert left == {
        "198.51.100.7": 600,
        "198.51.100.8": 86400,
        "2001:db8:5151:abcd::/64": None,
        "203.0.113.0/24": 600,
        "198.51.100.9": 1800,
    }
    s = Store(Path(tmp_path) / "state" / "nfsentry.db", readonly=True)
    reasons = {b["network"]: b["reason"] for b in s.blocks(include_expired=True)}  # (the in-memory kernel keeps its own clock)
    s.close()
    assert reasons["198.51.100.7"] == "from stdin" and reasons["2001:db8:5151:abcd::/64"] == "a /64, until unblocked"
    # the never-block list: the line is named, nothing blocked
    f = tmp_path / "l2"
    f.write_text("198.51.100.50\n198.51.100.192/26 1h\n")
    one_line_error(
        runner.invoke(A.app, ["block", "-f", str(f), "-c", c]), 2, f"{f}:2: refusing to block 198.51.100.192/26: it covers 198.51.100.200"
    )
    assert "198.51.100.50" not in {b["network"] for b in local.list_blocked()}


@root_only
def test_block_file_goes_through_the_running_daemon(tmp_path, daemon):
    replies, seen = daemon
    replies["block_many"] = lambda req: {"ok": True, "results": [[n, "blocked", None, n] for n, _, _ in req["entries"]]}
    f = tmp_path / "list.txt"
    f.write_text(LIST)
    c = cfg_file(tmp_path)
    res = runner.invoke(A.app, ["block", "-f", str(f), "-c", c])
    assert res.exit_code == 0 and "5 blocked" in res.stdout, (res.stdout, res.stderr)
    req = seen[-1]
    assert req["cmd"] == "block_many" and req["force"] is False
    assert req["entries"][:2] == [["198.51.100.7", 3600.0, None], ["198.51.100.8", 7200.0, "abuse report [bold] :smile:"]]
    assert req["names"][1] == f"{f}:3"
    replies["block_many"] = {"ok": False, "error": f"{f}:3: refusing to block 198.51.100.8: it covers 198.51.100.8", "code": 2}
    one_line_error(runner.invoke(A.app, ["block", "-f", str(f), "-c", c]), 2, f"{f}:3: refusing to block")


def test_block_needs_an_address_or_a_file(tmp_path):
    c = cfg_file(tmp_path)
    one_line_error(runner.invoke(A.app, ["block", "-c", c]), 2, "name an address or prefix to block, or -f FILE")
    one_line_error(runner.invoke(A.app, ["block", "198.51.100.7", "-f", "x", "-c", c]), 2, "not both")
    one_line_error(runner.invoke(A.app, ["block", "-f", str(tmp_path / "none"), "-c", c]), 2, "cannot read")


# == filters ===========================================================================================
def test_parse_when_takes_journalctl_times():
    now = dt.datetime(2026, 11, 30, 21, 30, 0).timestamp()
    midnight = dt.datetime(2026, 11, 30).timestamp()
    cases = {
        "now": now,
        "today": midnight,
        "yesterday": midnight - 86400,
        "tomorrow": midnight + 86400,
        "1h ago": now - 3600,
        "2 h ago": now - 7200,
        "-30m": now - 1800,
        "+1d": now + 86400,
        "2h": now - 7200,
        "18:00": dt.datetime(2026, 11, 30, 18, 0).timestamp(),
        "9:05:10": dt.datetime(2026, 11, 30, 9, 5, 10).timestamp(),
        "2026-11-22": dt.datetime(2026, 11, 22).timestamp(),
        "2026-11-22 10:00": dt.datetime(2026, 11, 22, 10, 0).timestamp(),
        "2026-11-22T10:00:05": dt.datetime(2026, 11, 22, 10, 0, 5).timestamp(),
    }
    for text, want in cases.items():
        assert A.parse_when(text, "--since", now) == want, text


def test_history_filters(tmp_path):
    c = cfg_file(tmp_path)
    s = Store(tmp_path / "state" / "nfsentry.db")
    now = dt.datetime.now().timestamp()
    for i, (ago, net, label) in enumerate(
        [
            (3 * 86400, "198.51.100.7", "SYN"),
            (7200, "198.51.100.8", "FIN"),
            (600, "2001:db8:5151:abcd::/64", "SYN"),
            (60, "203.0.113.1", "UDP"),
        ]
    ):
        s.add_history({"ts": now - ago, "event": "detection", "src": net.split("/")[0], "network": net, "label": label, "port": i})
    s.close()

    def ports(*args):
        res = runner.invoke(A.app, ["history", "-c", c, "--json", *args])
        assert res.exit_code == 0, res.stderr
        return [r["port"] for r in json.loads(res.stdout)]

    assert ports() == [0, 1, 2, 3]
    assert ports("--since", "1h ago") == [2, 3] and ports("-S", "3h ago", "--until", "5m ago") == [1, 2]
    assert ports("--until", "yesterday") == [0]
    assert ports("--label", "syn") == [0, 2] and ports("--label", "SYN", "--since", "1d ago") == [2]
    assert ports("--source", "198.51.100.0/24") == [0, 1] and ports("--source", "2001:db8:5151::/48") == [2]
    assert ports("-n", "1") == [3]
    one_line_error(runner.invoke(A.app, ["history", "-c", c, "--until", "next week"]), 2, "bad --until 'next week'")


def test_blocked_filters(tmp_path, monkeypatch):
    rows = [
        {"network": "198.51.100.0/24", "labels": ["SYN"], "origin": "manual"},
        {"network": "198.51.100.7", "labels": ["FIN", "SYN"], "origin": "auto"},
        {"network": "2001:db8:5151:abcd::/64", "labels": ["UDP"], "origin": "kernel"},
        {"network": "203.0.113.1", "labels": [], "origin": "detection"},
    ]
    monkeypatch.setattr(A, "current_blocks", lambda cfg, family: rows)
    c = cfg_file(tmp_path)

    def nets(*args):
        res = runner.invoke(A.app, ["blocked", "-c", c, "--json", *args])
        assert res.exit_code == 0, res.stderr
        return [r["network"] for r in json.loads(res.stdout)]

    assert nets("--origin", "manual") == ["198.51.100.0/24"]
    assert nets("--origin", "detection") == ["198.51.100.7", "203.0.113.1"]  # auto is the detections' older name
    assert nets("--label", "syn") == ["198.51.100.0/24", "198.51.100.7"]
    assert nets("--source", "198.51.100.7") == ["198.51.100.0/24", "198.51.100.7"]  # and the /24 that holds it
    assert nets("--source", "198.51.0.0/16") == ["198.51.100.0/24", "198.51.100.7"]
    assert nets("--source", "2001:db8:5151:abcd::1") == ["2001:db8:5151:abcd::/64"]
    one_line_error(runner.invoke(A.app, ["blocked", "-c", c, "--origin", "cron"]), 2, "bad --origin 'cron'")


# == help =============================================================================================
def commands(group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):  # a group
            yield from commands(cmd, (*path, name))


def test_help_everywhere_with_h_no_type_metavars_and_one_meaning_per_short_flag():
    top = A.typer.main.get_command(A.app)
    shorts: dict[str, set[str]] = {}
    seen = 0
    for path, cmd in [((), top), *commands(top)]:
        res = runner.invoke(A.app, [*path, "-h"])
        assert res.exit_code == 0, (path, res.stdout, res.stderr)
        assert "Usage: " in res.stdout and not re.search(r"<\w+(\[\w+\])?>", res.stdout), (path, res.stdout)
        for p in cmd.params:
            for opt in p.opts + p.secondary_opts:
                if re.fullmatch(r"-\w", opt):
                    longs = [o for o in p.opts if o.startswith("--")]
                    shorts.setdefault(opt, set()).add(longs[0] if longs else opt)
        seen += 1
    assert seen > 20
    assert {s: ls for s, ls in shorts.items() if len(ls) > 1} == {}, shorts
    assert shorts["-f"] == {"--file"} and shorts["-o"] == {"--output"} and shorts["-c"] == {"--config"}


def test_version_option():
    res = runner.invoke(A.app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"nfsentry {__version__}\n"


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[response]\nblok_duration = 5\n", "[response] unknown key 'blok_duration' (did you mean 'block_duration'?)"),
        ("[detection]\nblock_duration = '1h'\n", "[detection] unknown key 'block_duration' (it belongs in [response])"),
        ("[respons]\ntcp = 'block'\n", "unknown section [respons] (did you mean [response]?)"),
        ("[response]\nzzz = 1\n", "[response] unknown key 'zzz'"),
    ],
)
def test_config_check_unknown_key_did_you_mean(tmp_path, toml, fragment):
    p = tmp_path / "c.toml"
    p.write_text(toml)
    err = one_line_error(runner.invoke(A.app, ["config", "check", str(p)]), 2, fragment)
    if "zzz" in toml:
        assert "did you mean" not in err
