"""Issue 19, "output that never lies by truncation": every listing at 80 columns, wide and piped.

Each listing is rendered with long IPv6 prefixes and addresses (one of them `2001:db8:5151:abcd::/64`,
whose `:abcd:` Rich once read as an emoji code) and reasons, labels and file names holding `[bold]`
and `:smile:`; every value must come out exactly as stored: addresses always whole, other values
whole or cut with a visible "…", never read as markup, never turned into an emoji."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nfsentry.cli import app as A
from nfsentry.cli import output as O
from nfsentry.daemon.control import ControlServer
from nfsentry.sinks.store import Store

runner = CliRunner()
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the control socket accepts root only")

NETS = [
    "2001:db8:5151:abcd::/64",
    "2001:db8:51::/64",
    "2001:db8:5151:abcd:ef01:2345:6789:abcd",  # the longest an IPv6 address text gets here (38)
    "198.51.100.0/24",
    "203.0.113.77",
]
REASONS = [
    "[bold]manual[/bold] :smile: abuse report #1234, forwarded by the upstream provider's NOC",
    ":abcd: [red]x[/red]",
    "[link=http://x]y[/link] :thumbs_up: \\[escaped]",
    "plain",
    ":smile:",
]
LABELS = [["SYN", "MAIMON"], [], ["FULL-XMAS"], ["[bold]"], [":smile:"]]
EMOJI = ("😄", "🔡", "👍")


def blocks() -> list[dict]:
    return [
        {
            "network": net,
            "family": 6 if ":" in net else 4,
            "reason": reason,
            "labels": labels,
            "ports": [22, 23],
            "first_seen": 1_700_000_000.0,
            "blocked_at": 1_700_000_100.0,
            "expires": None,
            "expires_in": None if i == 1 else 3599 + i,
            "offences": i + 1,
            "origin": ("manual", "kernel", "detection", "auto", "fleet")[i],
            "packets": (12345678, None, 0, 7, 42)[i],  # None: a set without element counters
        }
        for i, (net, reason, labels) in enumerate(zip(NETS, REASONS, LABELS, strict=True))
    ]


def cfg_file(tmp_path: Path, extra: str = "") -> str:
    p = tmp_path / "c.toml"
    p.write_text(
        f'[storage]\nstate_dir = "{tmp_path}/state"\n[daemon]\ncontrol_socket = "{tmp_path}/run/c.sock"\n'
        f'[logging]\njson_file = ""\nsyslog = false\n{extra}'
    )
    return str(p)


def invoke(args, columns=80, **kw):
    res = runner.invoke(A.app, args, env={"COLUMNS": str(columns)}, **kw)
    assert res.exit_code == 0, (args, res.exit_code, res.stdout, res.stderr)
    return res.stdout


def cells(line: str) -> list[str]:
    """A human line's cells (columns are two spaces apart; no value here holds two spaces)."""
    return [c.strip() for c in line.split("  ") if c.strip()]


def whole_or_marked(shown: str, stored: str) -> bool:
    return shown == stored or (shown.endswith("…") and stored.startswith(shown[:-1]) and len(shown) >= 2)


def check_no_markup(text: str) -> None:
    assert not any(e in text for e in EMOJI), text
    assert "\x1b[" not in text  # no colour codes either


def check_human(text: str, rows: list[list[str]], key: int, width: int | None = 80) -> None:
    """Every key value whole in its own cell, every other value whole or cut with "…"; lines fit
    ``width`` (when given) whenever the key is no longer than a /64 prefix."""
    check_no_markup(text)
    lines = [ln for ln in text.splitlines() if ln]
    body = lines[-len(rows) :]
    for line, stored in zip(body, rows, strict=True):
        got = cells(line)
        assert got[key] == stored[key], (line, stored)
        for shown, value in zip(got, stored, strict=False):
            assert whole_or_marked(shown, value), (shown, value, line)
    if width is not None and max(len(r[key]) for r in rows) <= 24:  # a /64 prefix: it fits
        assert all(len(ln) <= width for ln in lines), [len(ln) for ln in lines]


def check_tsv(text: str, header: list[str], rows: list[list[str]]) -> None:
    check_no_markup(text)
    lines = text.splitlines()
    assert lines[0].split("\t") == header
    assert [ln.split("\t") for ln in lines[1:]] == rows


# -- blocked ---------------------------------------------------------------------------------------
@pytest.fixture
def listed(monkeypatch):
    monkeypatch.setattr(A, "current_blocks", lambda cfg, family: blocks())


def blocked_values(wide: bool = False) -> list[list[str]]:
    out = []
    for b in blocks():
        packets = "-" if b["packets"] is None else str(b["packets"])
        row = [b["network"], A.fmt_left(b["expires_in"]), packets, b["origin"], ",".join(b["labels"]) or "-", b["reason"]]
        if wide:
            row += [str(b["offences"]), "22,23", A.fmt_ts(b["first_seen"]), A.fmt_ts(b["blocked_at"])]
        out.append(row)
    return out


def test_blocked_at_80_columns_never_cuts_an_address_nor_reads_markup(tmp_path, listed):
    c = cfg_file(tmp_path)
    text = invoke(["blocked", "-c", c, "-o", "human"])
    assert text.splitlines()[0] == "5 blocked"
    assert cells(text.splitlines()[1]) == ["address/prefix", "expires in", "packets", "origin", "labels", "reason"]  # no header cut
    check_human(text, blocked_values(), key=0)
    for net in NETS:  # each address exactly once, as a whole word
        assert text.split().count(net) == 1, net
    assert "2001:db8:51::/6 " not in text and "2001:db8:5151🔡" not in text


def test_blocked_wide_and_piped_show_every_value_whole(tmp_path, listed):
    c = cfg_file(tmp_path)
    wide = invoke(["blocked", "-c", c, "-o", "human", "--wide"])
    check_no_markup(wide)
    for row in blocked_values(wide=True):
        line = next(ln for ln in wide.splitlines() if ln.startswith(row[0] + " "))
        assert all(v in line for v in row), (row, line)
    header = ["address/prefix", "expires in", "packets", "origin", "labels", "reason", "offences", "ports", "first seen", "blocked at"]
    check_tsv(invoke(["blocked", "-c", c]), header, blocked_values(wide=True))  # piped: tsv by default
    check_tsv(invoke(["blocked", "-c", c, "-o", "tsv"]), header, blocked_values(wide=True))
    assert json.loads(invoke(["blocked", "-c", c, "-o", "json"])) == blocks() == json.loads(invoke(["list", "-c", c, "--json"]))


def test_blocked_at_80_columns_fits_80_with_prefixes_up_to_a_64(tmp_path, monkeypatch):
    short = [b for b in blocks() if len(b["network"]) <= 24]
    monkeypatch.setattr(A, "current_blocks", lambda cfg, family: short)
    text = invoke(["blocked", "-c", cfg_file(tmp_path), "-o", "human"])
    assert max(len(ln) for ln in text.splitlines()) <= 80
    values = [v for v in blocked_values() if len(v[0]) <= 24]
    check_human(text, values, key=0)
    assert "SYN,MAIMON" in text  # the labels keep their room: the reason gives way first


@pytest.mark.parametrize("columns", [40, 80, 100, 200])
def test_blocked_at_any_width_keeps_addresses_whole(tmp_path, listed, columns):
    text = invoke(["blocked", "-c", cfg_file(tmp_path), "-o", "human"], columns=columns)
    check_human(text, blocked_values(), key=0, width=columns if columns >= 80 else None)
    if columns >= 200:  # room for everything: nothing cut
        assert "…" not in text and all(r in text for r in REASONS)


# -- history ---------------------------------------------------------------------------------------
def fill_history(tmp_path: Path) -> list[dict]:
    s = Store(tmp_path / "state" / "nfsentry.db")
    evs = []
    for i, (net, reason, labels) in enumerate(zip(NETS, REASONS, LABELS, strict=True)):
        ev = {
            "ts": float(int(time.time()) - 3600 + i),
            "event": ("detection", "block", "unblock", "block", "expire")[i],
            "src": net.split("/")[0],
            "network": net,
            "proto": "tcp",
            "port": 22 + i,
            "label": (labels or ["-"])[0],
            "action": "block",
            "reason": reason,
        }
        s.add_history(ev)
        evs.append(ev)
    s.close()
    return evs


def history_values(evs: list[dict], wide: bool = False, short: bool = True) -> list[list[str]]:
    rows = []
    for i, e in enumerate(evs, 1):
        when = A.fmt_ts(e["ts"])
        if short and A.dt.datetime.fromtimestamp(e["ts"]).year == A.dt.datetime.now().year:
            when = A.dt.datetime.fromtimestamp(e["ts"]).strftime("%m-%d %H:%M:%S")
        row = [str(i), when, e["event"], e["network"], f"tcp/{e['port']}", e["label"]]
        rows.append([*row, "block", e["reason"]] if wide else [*row, e["reason"]])
    return rows


def test_history_at_80_columns_wide_piped_and_one_row_in_full(tmp_path):
    evs = fill_history(tmp_path)
    c = cfg_file(tmp_path)
    human = invoke(["history", "-c", c, "-o", "human"])
    assert cells(human.splitlines()[0]) == ["id", "time", "event", "source", "port", "label", "reason"]
    check_human(human, history_values(evs), key=3)
    wide = invoke(["history", "-c", c, "-o", "human", "--wide"])
    for row in history_values(evs, wide=True, short=False):
        assert any(all(v in ln for v in row) for ln in wide.splitlines()), row
    header = ["id", "time", "event", "source", "port", "label", "action", "reason"]
    check_tsv(invoke(["history", "-c", c]), header, history_values(evs, wide=True, short=False))
    rows = json.loads(invoke(["history", "-c", c, "--json"]))
    assert [r["reason"] for r in rows] == REASONS and [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    # the whole of one row: every field, the reason as stored
    full = invoke(["history", "show", "1", "-c", c, "-o", "human"])
    check_no_markup(full)
    assert f"reason   {REASONS[0]}" in full.splitlines() and "network  2001:db8:5151:abcd::/64" in full.splitlines()
    assert json.loads(invoke(["history", "show", "1", "-c", c, "--json"]))["reason"] == REASONS[0]
    assert f"reason\t{REASONS[1]}" in invoke(["history", "show", "2", "-c", c]).splitlines()
    res = runner.invoke(A.app, ["history", "show", "99", "-c", c])
    assert res.exit_code == 2 and res.stderr == "nfsentry: no history row 99\n"


# -- ignore list -----------------------------------------------------------------------------------
def test_ignore_list_shows_file_names_and_notes_as_they_are(tmp_path):
    f = tmp_path / "ign [bold]:smile:.txt"
    f.write_text("".join(f"{n} {r}\n" for n, r in zip(NETS, REASONS, strict=True)))
    c = cfg_file(tmp_path, f'[ignore]\naddresses = ["2001:db8:aaaa:bbbb::/64"]\nfiles = ["{f}"]\n')
    rows = [["2001:db8:aaaa:bbbb::/64", f"[ignore] addresses of {c}", "-"]]
    rows += [[n, f"{f}:{i}", r] for i, (n, r) in enumerate(zip(NETS, REASONS, strict=True), 1)]
    check_human(invoke(["ignore", "list", "-c", c, "-o", "human"]), rows, key=0)
    check_tsv(invoke(["ignore", "list", "-c", c]), ["network", "source", "note"], rows)
    got = json.loads(invoke(["ignore", "list", "-c", c, "--json"]))
    assert [[r["network"], r["source"], r["note"] or "-"] for r in got] == rows


# -- status and rules ------------------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path):
    """A stand-in daemon on a real control socket: ``replies[cmd]`` is its answer to ``cmd``."""
    sock = str(tmp_path / "run" / "c.sock")
    seen: list[dict] = []
    replies: dict[str, dict] = {}

    def handler(req):
        seen.append(req)
        return replies.get(req["cmd"], {"ok": False, "error": f"unknown command {req['cmd']!r}"})

    srv = ControlServer(sock, handler)
    srv.start()
    try:
        yield replies, seen
    finally:
        srv.close()


STATUS = {
    "ok": True,
    "pid": 4242,
    "version": "x",
    "uptime": 100,
    "backend": "native",
    "counters": {"queued": 5, "detections": 2},
    "engine": {},
    "never_block": 7,
    "never_block_list": [*NETS[:3], "127.0.0.0/8", "::1", "198.18.0.1", "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe"],
    "last_detection": 1_700_000_000.0,
    "blocked": 3,
    "kernel": {"blocked_pkts4": 1200, "blocked_pkts6": 34, "blocked_pkts": 1234},
}


@root_only
def test_status_lists_the_never_block_list_whole_and_the_last_detection(tmp_path, daemon):
    replies, _ = daemon
    replies["status"] = STATUS
    text = invoke(["status", "-c", cfg_file(tmp_path)])  # a report: human even when piped
    check_no_markup(text)
    assert all(len(ln) <= 80 for ln in text.splitlines()), text
    listed = text.split("never-block:       7 networks\n")[1].split("  kernel-side block")[0].split()
    assert listed == STATUS["never_block_list"]
    assert f"  last detection:    {A.fmt_ts(1_700_000_000.0)} (" in text
    assert "  currently blocked: 3   packets dropped from blocked sources: 1234\n" in text
    tsv = dict(ln.split("\t", 1) for ln in invoke(["status", "-c", cfg_file(tmp_path), "-o", "tsv"]).splitlines()[1:])
    assert tsv["never_block_list"] == " ".join(STATUS["never_block_list"]) and tsv["counters.queued"] == "5"
    assert json.loads(invoke(["status", "-c", cfg_file(tmp_path), "-o", "json"]))["never_block_list"] == STATUS["never_block_list"]


def test_a_long_never_block_list_says_how_many_more():
    nets = [f"2001:db8:{i + 1:x}::/48" for i in range(100)]
    lines = A.never_block_lines(nets)
    assert all(len(ln) <= 80 for ln in lines)
    words = " ".join(lines).split()
    assert words[:40] == nets[:40] and " ".join(lines).endswith("... and 60 more (nfsentry ignore list --all)")


def test_rules_show_writes_ignore_prefixes_whole(tmp_path):
    other = "2001:db8:5152:abcd:ef01:2345:6789:abcd"
    c = cfg_file(tmp_path, f'[ignore]\naddresses = ["{NETS[0]}", "{other}"]\n')
    text = invoke(["rules", "show", "-c", c])
    assert NETS[0] in text and other in text and not any(e in text for e in EMOJI)


# -- the renderer itself ---------------------------------------------------------------------------
def test_layout_gives_way_with_text_columns_only_rightmost_first():
    cols = [O.Col("addr", "key"), O.Col("when"), O.Col("labels", "text"), O.Col("reason", "text")]
    rows = [["2001:db8:5151:abcd::/64", "2026-11-30 21:00:00", "SYN,FIN,XMAS", "x" * 50]]
    lines = O.human_lines(cols, rows, width=80)
    assert cells(lines[1])[:3] == rows[0][:3] and lines[1].endswith("…")  # the labels kept, the reason cut
    assert max(len(ln) for ln in lines) == 80
    # too narrow for the key and fixed columns: wider lines; the reason to its floor first, then the labels
    narrow = O.human_lines(cols, rows, width=30)
    assert cells(narrow[1])[:2] == rows[0][:2] and "SYN,F…" in narrow[1]
    assert cells(O.human_lines(cols, rows, width=30, wide=True)[1]) == rows[0]


def test_values_that_could_move_the_terminal_are_escaped():
    evil = "a\x1b[2J\nb\tc\\d"
    assert O.visible(evil) == "a\\x1b[2J\\nb\\tc\\d"
    assert O.tsv_field(evil) == "a\x1b[2J\\nb\\tc\\d"  # one row stays one line; a backslash stays as it is
    assert O.tsv_lines([O.Col("a"), O.Col("b")], [["x\ty", None]]) == ["a\tb", "x\\ty\t-"]


def test_format_choice_and_disagreement(tmp_path, listed):
    c = cfg_file(tmp_path)
    for bad, msg in ((["-o", "yaml"], "bad -o 'yaml'"), (["-o", "tsv", "--json"], "disagree")):
        res = runner.invoke(A.app, ["blocked", "-c", c, *bad])
        assert res.exit_code == 2 and msg in res.stderr and res.stderr.count("\n") == 1
    assert invoke(["blocked", "-c", c, "-o", "json", "--json"]).startswith("[")
    empty = cfg_file(tmp_path)
    assert invoke(["history", "-c", empty]) == "id\ttime\tevent\tsource\tport\tlabel\taction\treason\n"  # a header alone
    assert invoke(["history", "-c", empty, "-o", "human"]) == "no history\n"
