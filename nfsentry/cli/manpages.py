"""Man pages and shell completion files, generated from the sources `--help` and the shipped
configuration come from: nfsentry(8) from the typer app (every command, argument and option with
the help text `--help` prints), nfsentry.toml(5) from examples/nfsentry.toml (every key, its
default and its comment), and the bash and zsh completion scripts typer itself would install.

    python -m nfsentry.cli.manpages OUTDIR [--example examples/nfsentry.toml]

writes OUTDIR/nfsentry.8, OUTDIR/nfsentry.toml.5, OUTDIR/completion/nfsentry (bash) and
OUTDIR/completion/_nfsentry (zsh). `make man` runs it; the Debian package build does too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROG = "nfsentry"
COMPLETE_VAR = "_NFSENTRY_COMPLETE"  # what typer derives from the program name "nfsentry"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nfsentry.toml"


# == roff ==========================================================================================
def esc(text: str) -> str:
    """Plain text -> roff: backslashes and hyphens escaped, no line may start a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + l) if l.startswith((".", "'")) else l for l in text.split("\n"))


def para(text: str) -> str:
    """A help text's paragraphs (blank-line separated, as click reads docstrings) as roff."""
    parts = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n.PP\n".join(esc(p) for p in parts)


def bold_opts(opts: str) -> str:
    """'-c, --config FILE' -> bold option names, italic metavar."""
    out = []
    for piece in re.split(r"(,\s*)", opts):
        if piece.startswith("-"):
            name, _, meta = piece.partition(" ")
            out.append(f"\\fB{esc(name)}\\fR" + (f" \\fI{esc(meta)}\\fR" if meta else ""))
        elif piece.strip() and not piece.startswith(","):
            out.append(f"\\fI{esc(piece)}\\fR")
        else:
            out.append(esc(piece))
    return "".join(out)


def date() -> str:
    """The page date: SOURCE_DATE_EPOCH when set (reproducible package builds), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%d")


# == the command tree (what --help prints) ===========================================================
def walk(cmd: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """(command, context) for ``cmd`` and every sub-command, in the order --help lists them."""
    yield cmd, ctx
    for name in getattr(cmd, "commands", {}) or {}:
        sub = cmd.commands[name]
        if sub.hidden:
            continue
        yield from walk(sub, sub.make_context(name, [], parent=ctx, resilient_parsing=True))


def command_tree() -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(path, usage, help, [(option or argument, its help)]) of every command, root first."""
    import typer.main

    from nfsentry.cli.app import app

    root = typer.main.get_command(app)
    out = []
    for cmd, ctx in walk(root, root.make_context(PROG, [], resilient_parsing=True)):
        usage = cmd.get_usage(ctx).removeprefix("Usage:").strip()
        records = [r for p in cmd.get_params(ctx) if (r := p.get_help_record(ctx))]
        out.append((ctx.command_path, usage, cmd.help or "", records))
    return out


def page_8(version: str) -> str:
    from nfsentry.cli import app as A
    from nfsentry.config import schema as C

    tree = command_tree()
    root = tree[0]
    L = [
        f'.TH NFSENTRY 8 "{date()}" "nfsentry {esc(version)}" "System Administration"',
        ".SH NAME",
        "nfsentry \\- port\\-scan detection and in\\-kernel blocking for nftables",
        ".SH SYNOPSIS",
        f'.B {PROG}\n.RI [ OPTIONS ] " COMMAND " [ ARGS ]...',
        ".SH DESCRIPTION",
        para(root[2]),
        ".PP",
        esc(
            "nftables rules divert only suspicious packets (new packets to monitored ports nothing listens on) "
            "into NFQUEUE; the daemon (nfsentry run) classifies each one, keeps per-source state and puts offenders "
            "into an nft set that drops them before conntrack, with timeouts, persisted across restarts. "
            "Every other command lists, blocks, unblocks and explains, with the daemon running or not."
        ),
        ".SH OPTIONS",
    ]
    for opts, text in root[3]:
        L += [".TP", bold_opts(opts), para(text)]
    L.append(".SH COMMANDS")
    for path, usage, text, records in tree[1:]:
        L += [f'.SS "{esc(path)}"', f".B {esc(usage)}", ".PP" if text else "", para(text) if text else ""]
        for opts, htext in records:
            L += [".TP", bold_opts(opts), para(htext)]
    L += [
        ".SH EXIT STATUS",
        ".TP\n.B 0\nsuccess",
        f".TP\n.B {A.EXIT_RUNTIME}\n" + esc("runtime failure: the kernel refused, the daemon failed or refused a reload"),
        f".TP\n.B {A.EXIT_USAGE}\n" + esc("bad input: address, prefix, duration, file, configuration (the kernel is left untouched)"),
        f".TP\n.B {A.EXIT_NOT_RUNNING}\n" + esc("the daemon is not running (status, reload)"),
        f".TP\n.B {A.EXIT_NOPERM}\n" + esc("not root / no CAP_NET_ADMIN (sysexits EX_NOPERM)"),
        ".SH SIGNALS",
        ".TP\n.B SIGTERM\\fR, \\fBSIGINT\n"
        + esc("stop cleanly; the blocked sets stay in the kernel unless [response] keep_blocks_on_exit = false"),
        ".TP\n.B SIGHUP\n"
        + esc("reload the configuration and ignore files atomically and reopen the JSON events file (as nfsentry reload)"),
        ".SH FILES",
    ]
    d = C.DEFAULTS
    for path, what in [
        (C.DEFAULT_PATH, "the configuration, see nfsentry.toml(5)"),
        (C.DEFAULT_IGNORE_FILE, "the ignore list (nfsentry ignore add|del), one address or prefix per line"),
        (f"{d['storage']['state_dir']}/nfsentry.db", "SQLite database: current blocks, offenders, history"),
        (d["logging"]["json_file"], "JSON lines, one object per event"),
        (d["daemon"]["control_socket"], "the running daemon's control socket"),
    ]:
        L += [".TP", f".I {esc(path)}", esc(what)]
    L += [
        ".SH SEE ALSO",
        ".BR nfsentry.toml (5),",
        ".BR nft (8),",
        ".BR iptables (8),",
        ".BR logrotate (8),",
        ".BR portsentry (8)",
        ".PP",
        esc("/usr/share/doc/nfsentry/README.md"),
    ]
    return "\n".join(l for l in L if l != "") + "\n"


# == the configuration file (examples/nfsentry.toml) ===================================================
SECTION = re.compile(r"^\s*\[{1,2}\s*([A-Za-z0-9_.-]+)\s*\]{1,2}\s*(#.*)?$")
KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def toml_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_text(x)}" for k, x in v.items()) + " }"
    return str(v)


def config_entries(text: str) -> tuple[str, list[tuple[str, list[tuple[list[tuple[str, str]], str]], str]]]:
    """(the file's leading comment, [(section, [([(key, default)...], comment)], trailing note)])
    in file order. A comment describes the keys that follow it up to a blank line or the next
    comment (``tcp_ports`` and ``udp_ports`` share theirs)."""
    data = tomllib.loads(text)
    intro: list[str] = []
    sections: list[tuple[str, list[tuple[list[tuple[str, str]], str]], str]] = []
    comment: list[str] = []
    section = None
    group_open = False  # the last line was a key: a key right below joins its group
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            comment.append(s.lstrip("#").strip())
            group_open = False
            continue
        if not s:
            if section is None and comment:
                intro += comment + [""]
                comment = []
            group_open = False
            continue
        m = SECTION.match(line)
        if m:
            if section is None:
                intro += comment
            elif comment:
                sections[-1] = (sections[-1][0], sections[-1][1], " ".join(comment))
            comment, section, group_open = [], m.group(1), False
            sections.append((section, [], ""))
            continue
        m = KEY.match(line)
        if m and section is not None:
            value: Any = data
            for part in [*section.split("."), m.group(1)]:
                value = value.get(part) if isinstance(value, dict) else None
            entry = (m.group(1), toml_text(value))
            groups = sections[-1][1]
            if group_open and not comment and groups:
                groups[-1][0].append(entry)
            else:
                groups.append(([entry], " ".join(comment)))
            comment, group_open = [], True
    if comment and sections:
        sections[-1] = (sections[-1][0], sections[-1][1], " ".join(comment))
    return "\n".join(intro).strip(), sections


def page_5(version: str, example: Path) -> str:
    intro, sections = config_entries(example.read_text())
    L = [
        f'.TH NFSENTRY.TOML 5 "{date()}" "nfsentry {esc(version)}" "File Formats"',
        ".SH NAME",
        "nfsentry.toml \\- nfsentry configuration file",
        ".SH SYNOPSIS",
        ".I /etc/nfsentry/nfsentry.toml",
        ".SH DESCRIPTION",
        esc(
            "nfsentry(8) reads TOML from /etc/nfsentry/nfsentry.toml (--config FILE for another). Every key is "
            "optional: a missing key has the default shown below, and nfsentry runs with no file at all. Every key "
            "is validated on load; an unknown key, a bad port range, CIDR or duration stops start-up with one line "
            "naming the key and exit status 2, with nothing loaded into the kernel. "
            "nfsentry config check FILE validates a file without loading it."
        ),
        ".PP",
        para(intro),
    ]
    for section, keys, note in sections:
        L.append(f'.SH "[{esc(section)}]"')
        for entries, comment in keys:
            tags = [f"\\fB{esc(key)}\\fR = {esc(default)}" for key, default in entries]
            L += [".TP", tags[0], *[f".TQ\n{t}" for t in tags[1:]], para(comment) if comment else esc("(no description)")]
        if note:
            L += [".PP", para(note)]
    L += [
        ".SH EXAMPLE",
        ".nf",
        esc('[response]\nblock_duration = "2h"\n\n[ignore]\naddresses = ["198.51.100.0/24", "2001:db8:aaaa::/48"]'),
        ".fi",
        ".SH FILES",
        ".TP\n.I /etc/nfsentry/nfsentry.toml\nthe configuration",
        ".TP\n.I /usr/share/doc/nfsentry/examples/nfsentry.toml\n" + esc("every key with its default, commented"),
        ".SH SEE ALSO",
        ".BR nfsentry (8)",
    ]
    return "\n".join(L) + "\n"


# == completion =======================================================================================
def completion(shell: str) -> str:
    """The completion script typer's --install-completion writes for ``shell`` (bash or zsh)."""
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell)


def write_all(outdir: Path, example: Path = EXAMPLE) -> list[Path]:
    from nfsentry import __version__

    comp = outdir / "completion"
    comp.mkdir(parents=True, exist_ok=True)
    files = {
        outdir / "nfsentry.8": page_8(__version__),
        outdir / "nfsentry.toml.5": page_5(__version__, example),
        comp / "nfsentry": completion("bash"),
        comp / "_nfsentry": completion("zsh"),
    }
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nfsentry.cli.manpages", description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--example", type=Path, default=EXAMPLE, help="the commented configuration (default: examples/nfsentry.toml)")
    args = ap.parse_args(argv)
    if not args.example.is_file():
        print(f"nfsentry: {args.example}: no such file (pass --example)", file=sys.stderr)
        return 2
    for path in write_all(args.outdir, args.example):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
