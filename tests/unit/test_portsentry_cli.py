"""`nfsentry import-portsentry` through typer's CliRunner: stdout, --write FILE, problems on stderr, exit 2."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nfsentry.cli import portsentry as cli_portsentry
from nfsentry.config import portsentry as P
from nfsentry.config import schema as C

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "portsentry"


@pytest.fixture
def app():
    a = typer.Typer()

    @a.callback()
    def main():  # a group, so the command keeps its name as in the real CLI
        pass

    cli_portsentry.register(a)
    return a


@pytest.fixture
def conf(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "DEFAULTS_FILE", str(tmp_path / "no-default-file"))
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(FIX / "portsentry.ignore", etc / "portsentry.ignore")
    p = tmp_path / "portsentry.conf"
    p.write_text((FIX / "debian-1.2.conf").read_text().replace("/etc/portsentry/", f"{etc}/"))
    return p


def run(app, *args):
    return CliRunner().invoke(app, ["import-portsentry", *map(str, args)])


def test_writes_toml_to_stdout(app, conf):
    r = run(app, conf)
    assert r.exit_code == 0, r.stderr
    cfg = C.validate(tomllib.loads(r.stdout))
    assert cfg["logging"]["format"] == "portsentry1" and cfg["response"]["tcp"] == "log"
    assert r.stdout.startswith("# nfsentry configuration imported from PortSentry")
    assert r.stderr == ""


def test_defaults_option_and_output_file(app, conf, tmp_path):
    d = tmp_path / "default"
    d.write_text((FIX / "debian-default-advanced").read_text())
    out = tmp_path / "nfsentry.toml"
    r = run(app, conf, "--defaults", d, "--write", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and f"wrote {out}" in r.stderr
    cfg = C.load(out)
    assert cfg.tcp_ports == [(1, 112), (114, 138), (140, 1023)]
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    # the default defaults file is used when it exists, --no-defaults reads none
    r = run(app, conf, "--no-defaults", "--write", out)
    assert r.exit_code == 0 and C.load(out).tcp_ports != [(1, 112), (114, 138), (140, 1023)]


def test_problems_go_to_stderr_with_line_numbers(app, tmp_path, conf):
    bad = tmp_path / "bad.conf"
    bad.write_text(conf.read_text() + 'BLOCK_FILE="/x"\n  SCAN_TRIGGER="3"\n')
    r = run(app, bad)
    assert r.exit_code == 0
    n = len(conf.read_text().splitlines())
    assert r.stderr.splitlines() == [
        f"nfsentry: warning: {bad}:{n + 1}: unknown key BLOCK_FILE (did you mean BLOCKED_FILE?): PortSentry 1.2 ignores it, 2.0 refuses to start",
        f"nfsentry: warning: {bad}:{n + 2}: SCAN_TRIGGER is indented: PortSentry reads keys only at the start of a line "
        "(1.2 ignores this line, 2.0 refuses the file); not imported",
    ]
    assert "# 2 problem(s) found while reading:" in r.stdout
    assert run(app, bad, "-q").stderr == ""


def test_unreadable_file_exits_2_with_one_line(app, tmp_path):
    r = run(app, tmp_path / "nope.conf")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"nfsentry: cannot read PortSentry configuration {tmp_path}/nope.conf: No such file or directory\n"
    d = tmp_path / "dir.conf"
    d.mkdir()
    r = run(app, d)
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "Is a directory" in r.stderr


def test_bad_options_exit_2(app, conf, tmp_path):
    r = run(app, conf, "--portsentry-version", "3")
    assert r.exit_code == 2 and r.stderr.splitlines() == ["nfsentry: --portsentry-version must be 1 or 2, not '3'"]
    r = run(app, conf, "--defaults", tmp_path / "missing-default")
    assert r.exit_code == 2 and "cannot read PortSentry defaults file" in r.stderr
    r = run(app, conf, "--defaults", conf, "--no-defaults")
    assert r.exit_code == 2
    r = run(app, conf, "--write", tmp_path / "no-such-dir" / "x.toml")
    assert r.exit_code == 2 and r.stderr.startswith("nfsentry: cannot write ")


def test_version_option_overrides_the_guess(app, conf):
    r = run(app, conf, "--portsentry-version", "2")
    assert r.exit_code == 0
    assert 'format = "portsentry2"' in r.stdout and "1-1024" not in r.stdout


def test_registered_in_the_main_cli():
    from nfsentry.cli.app import app as main_app

    names = {c.name or c.callback.__name__ for c in main_app.registered_commands}
    assert "import-portsentry" in names


def test_the_help_texts_paths_are_the_importers_own():
    """cli/portsentry.py repeats two paths for its help text (no import of the importer at start-up)."""
    assert (cli_portsentry.DEFAULT_CONF, cli_portsentry.DEFAULTS_FILE) == (P.DEFAULT_CONF, P.DEFAULTS_FILE)
