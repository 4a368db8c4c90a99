"""Issue 16 rows 8, 11, 16 at the CLI, against a stand-in daemon (a real control socket).

Row 11: a configuration file with a typo must not lock the admin out of the running daemon.
Row 8: `rules unload` is refused while the daemon runs.
Row 16: a built-in ruleset name and a path are never confused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nfsentry.cli import app as A
from nfsentry.daemon.control import ControlServer

runner = CliRunner()
BUILTIN = next(d for d in A.RULE_DIRS if (d / "nfsentry.nft").is_file())
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the control socket accepts root only")


def bad_config(tmp_path: Path, sock: str, typo: str = 'block_duration = "soon"') -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n\n[response]\n{typo}\n')
    return p


@pytest.fixture
def fake_daemon(tmp_path):
    sock = str(tmp_path / "run" / "control.sock")
    seen: list[dict] = []

    def handler(req):
        seen.append(req)
        if req["cmd"] == "status":
            return {"ok": True, "pid": 4242, "version": "x", "backend": "compat", "counters": {}, "engine": {}}
        if req["cmd"] == "block":
            return {"ok": True, "blocked": req["network"], "status": "blocked", "expires": None, "by": req["network"]}
        if req["cmd"] == "unblock":
            return {"ok": True, "unblocked": req.get("networks", []), "covered": {}, "not_blocked": []}
        return {"ok": False, "error": "unknown"}

    srv = ControlServer(sock, handler)
    srv.start()
    try:
        yield sock, seen
    finally:
        srv.close()


def warning_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfsentry: warning: "), res.stderr
    return lines[0]


# -- row 11 ----------------------------------------------------------------------------------------
def test_control_socket_is_read_best_effort(tmp_path):
    p = bad_config(tmp_path, "/x/run/c.sock")
    assert A.control_socket_of(str(p)) == "/x/run/c.sock"  # valid TOML, invalid value
    p.write_text('[logging]\nlevel = "debug\n[daemon]\ncontrol_socket = \'/y/c.sock\'\n[nft]\ncontrol_socket = "/z"\n')
    assert A.control_socket_of(str(p)) == "/y/c.sock"  # a TOML syntax error elsewhere
    p.write_text('[nft]\ncontrol_socket = "/z"\n[daemon]\nqueue_maxlen = [\n')
    assert A.control_socket_of(str(p)) is None  # only in another section: unknown
    assert A.control_socket_of(str(tmp_path / "none.toml")) is None


@root_only
@pytest.mark.parametrize("typo", ['block_duration = "soon"', 'block_duration = "1h', "blok_duration = 5"])
def test_status_reaches_the_running_daemon_through_a_file_that_does_not_load(tmp_path, fake_daemon, typo):
    sock, seen = fake_daemon
    cfg = bad_config(tmp_path, sock, typo)
    res = runner.invoke(A.app, ["status", "-c", str(cfg)])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "is running (pid 4242" in res.stdout
    line = warning_line(res)
    assert str(cfg) in line and "does not load" in line
    assert [r["cmd"] for r in seen] == ["status"]


@root_only
def test_block_and_unblock_reach_the_running_daemon_and_leave_the_duration_to_it(tmp_path, fake_daemon):
    sock, seen = fake_daemon
    cfg = bad_config(tmp_path, sock)
    res = runner.invoke(A.app, ["unblock", "198.18.9.9", "-c", str(cfg)])
    assert res.exit_code == 0 and "unblocked 1: 198.18.9.9" in res.stdout, (res.stdout, res.stderr)
    assert "block_duration" in warning_line(res)
    res = runner.invoke(A.app, ["block", "198.18.9.9", "-c", str(cfg)])
    assert res.exit_code == 0 and "blocked 198.18.9.9 until unblocked" in res.stdout, (res.stdout, res.stderr)
    assert "duration" not in seen[-1]  # the daemon's own default applies, not a guess
    res = runner.invoke(A.app, ["block", "198.18.9.9", "--for", "2h", "-c", str(cfg)])
    assert res.exit_code == 0 and seen[-1]["duration"] == 7200.0


@root_only
def test_without_a_daemon_a_file_that_does_not_load_is_the_one_line_error(tmp_path):
    cfg = bad_config(tmp_path, str(tmp_path / "nobody" / "c.sock"))
    for args in (["status"], ["block", "198.18.9.9"], ["unblock", "198.18.9.9"], ["rules", "unload"]):
        res = runner.invoke(A.app, [*args, "-c", str(cfg)])
        assert res.exit_code == 2, (args, res.stdout, res.stderr)
        err = res.stderr.strip()
        assert err.count("\n") == 0 and err.startswith("nfsentry: ") and "block_duration" in err, (args, err)


# -- row 8 -----------------------------------------------------------------------------------------
@root_only
def test_rules_unload_is_refused_while_the_daemon_runs(tmp_path, fake_daemon):
    sock, seen = fake_daemon
    cfg = tmp_path / "ok.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    res = runner.invoke(A.app, ["rules", "unload", "-c", str(cfg)])
    assert res.exit_code == 1, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.count("\n") == 0 and "is running (pid 4242)" in err and "--force" in err
    assert [r["cmd"] for r in seen] == ["status"]


# -- row 16 ----------------------------------------------------------------------------------------
def test_a_builtin_name_is_never_taken_for_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nfsentry").mkdir()
    (tmp_path / "gateway").write_text("not a ruleset")
    assert A.rules_file("nfsentry") == BUILTIN / "nfsentry.nft"
    assert A.rules_file("gateway") == BUILTIN / "gateway.nft"
    own = tmp_path / "own.nft"
    own.write_text("table inet x {}\n")
    assert A.rules_file("own.nft") == Path("own.nft")
    assert A.rules_file(str(own)) == own
    assert A.rules_file("./gateway") == Path("gateway")  # a slash: a path


@pytest.mark.parametrize(
    "name, fragment", [("./nfsentry", "is a directory"), ("nowhere", "unknown rule file"), ("/dev/null", "not a regular file")]
)
def test_a_path_must_be_a_regular_file(tmp_path, monkeypatch, capsys, name, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nfsentry").mkdir()
    with pytest.raises(A.typer.Exit) as e:
        A.rules_file(name)
    assert e.value.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err and "built-in name: gateway, nfsentry, observe" in err
