"""The man pages and completion files (nfsentry/cli/manpages.py) stay in step with their sources:
every command and option `--help` shows is in nfsentry(8), every configuration key (the built-in
defaults) is in nfsentry.toml(5) with its default and a description, the pages render without a
groff warning, and the bash completion script completes through the real program."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from nfsentry.cli import manpages as M
from nfsentry.cli.app import app
from nfsentry.config import schema as C


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    assert M.main([str(out)]) == 0
    return out


def unroff(text: str) -> str:
    return re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def sections(page: str, macro: str) -> dict[str, str]:
    """title -> body of each ``macro`` (.SH or .SS) section of a roff page, unescaped."""
    out: dict[str, str] = {}
    parts = re.split(rf"^{re.escape(macro)} (.*)$", page, flags=re.M)
    for title, body in zip(parts[1::2], parts[2::2]):
        body = re.split(r"^\.S[HS] ", body, flags=re.M)[0]
        out[unroff(title.strip('"'))] = unroff(body)
    return out


def command_paths() -> list[list[str]]:
    """Every command of the app, found through typer (not through the generator's walk)."""
    out: list[list[str]] = []

    def rec(cmd, path):
        out.append(path)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            if not sub.hidden:
                rec(sub, [*path, name])

    rec(typer.main.get_command(app), [])
    return out


def help_tokens(path: list[str]) -> tuple[set[str], set[str]]:
    """(option names, argument metavars) as `nfsentry PATH --help` prints them."""
    res = CliRunner().invoke(app, [*path, "--help"], prog_name="nfsentry", env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    opts: set[str] = set()
    args: set[str] = set()
    block = None
    for line in res.output.splitlines():
        if re.match(r"^\S.*:$", line):
            block = line[:-1]
            continue
        m = re.match(r"^  (\S.*?)(?:\s{2,}|$)", line)
        if not m or block is None:
            continue
        if block == "Options":
            opts |= set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", m.group(1)))
        elif block == "Arguments":
            args.add(m.group(1).split()[0])
    return opts, args


def test_every_command_and_option_of_help_is_in_nfsentry_8(pages):
    page = (pages / "nfsentry.8").read_text()
    cmds = sections(page, ".SS")
    top = sections(page, ".SH")
    paths = command_paths()
    assert len(paths) > 15  # run, status, blocked, block, rules show ... : the walk found the tree
    for path in paths:
        opts, args = help_tokens(path)
        body = top["OPTIONS"] if not path else cmds.get(" ".join(["nfsentry", *path]))
        assert body is not None, f"nfsentry {' '.join(path)} has no section in nfsentry(8)"
        for token in opts | args:
            assert re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", body), f"{token} of `nfsentry {' '.join(path)}` missing"
        doc = " ".join((typer.main.get_command(app).commands[path[0]].help or "").split()) if len(path) == 1 else ""
        assert " ".join(body.split()).find(doc[:60]) >= 0, f"help text of {path} missing"
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert title in top
    assert "/etc/nfsentry/nfsentry.toml" in top["FILES"] and "77" in top["EXIT STATUS"]


def test_every_config_key_is_in_nfsentry_toml_5_with_its_default(pages):
    page = (pages / "nfsentry.toml.5").read_text()
    secs = sections(page, ".SH")
    for section, values in C.DEFAULTS.items():
        body = secs.get(f"[{section}]")
        assert body is not None, f"[{section}] missing from nfsentry.toml(5)"
        for key, default in values.items():
            m = re.search(rf"^{re.escape(key)} = (.*)$", body, flags=re.M)
            assert m, f"[{section}] {key} missing from nfsentry.toml(5)"
            assert tomllib.loads(f"v = {m.group(1)}")["v"] == default, f"[{section}] {key}: default {m.group(1)} != {default!r}"
    undocumented = [
        k for _, groups, _ in M.config_entries(M.EXAMPLE.read_text())[1] for entries, text in groups if not text for k, _ in entries
    ]
    assert not undocumented, f"keys without a comment in examples/nfsentry.toml: {undocumented}"


def test_config_entries_groups_keys_sharing_a_comment():
    intro, secs = M.config_entries('# top\n\n[a]\n# one\nx = 1\ny = "s"\n\nz = [1, "2"]\n# tail\n[b.c]\nk = true\n')
    assert intro == "top"
    assert secs == [("a", [([("x", "1"), ("y", '"s"')], "one"), ([("z", '[1, "2"]')], "")], "tail"), ("b.c", [([("k", "true")], "")], "")]


def test_roff_escaping():
    assert M.esc(".start\n'quote\na-b\\c") == "\\&.start\n\\&'quote\na\\-b\\ec"
    assert M.bold_opts("-c, --config FILE") == "\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR"


@pytest.mark.skipif(not shutil.which("man"), reason="man-db not installed")
@pytest.mark.parametrize("name", ["nfsentry.8", "nfsentry.toml.5"])
def test_pages_render_without_warnings(pages, name):
    res = subprocess.run(
        ["man", "--warnings=all", "-l", "-E", "UTF-8", "-P", "cat", str(pages / name)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80"},
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert ("rules unload" if name == "nfsentry.8" else "keep_blocks_on_exit") in res.stdout


def test_bash_completion_completes_through_the_program(pages, tmp_path):
    script = (pages / "completion" / "nfsentry").read_text()
    zsh = (pages / "completion" / "_nfsentry").read_text()
    assert "_NFSENTRY_COMPLETE=complete_bash" in script and "complete -o default -F _nfsentry_completion nfsentry" in script
    assert zsh.startswith("#compdef nfsentry") and "_NFSENTRY_COMPLETE=complete_zsh" in zsh
    # the program the script calls: this interpreter running the app under the name nfsentry
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "nfsentry"
    prog.write_text(f"#!{sys.executable}\nfrom nfsentry.cli.app import main\nmain()\n")
    prog.chmod(0o755)
    res = subprocess.run(
        [
            "bash",
            "-c",
            f"source {pages / 'completion' / 'nfsentry'}; COMP_WORDS=(nfsentry rules u); COMP_CWORD=2; "
            '_nfsentry_completion nfsentry; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "unload" in res.stdout.split(), res.stdout
