"""`nfsentry stats` (issue 19): the figures from a crafted history database, exactly, and the picture
at 80 columns with values that must never be read as markup."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nfsentry.cli import app as A
from nfsentry.cli import stats as S
from nfsentry.sinks.store import Store

runner = CliRunner()
NOW = dt.datetime(2026, 11, 30, 14, 30, 0).timestamp()  # local time, a Monday
V6 = "2001:db8:5151:abcd:ef01:2345:6789:abcd"  # `:abcd:` once became an emoji; the longest text here
ODD_LABEL = "[bold]UDP:smile:"
DAY0 = dt.datetime(2026, 11, 24).timestamp()  # the first of the 7 days


def row(ts, event="detection", src="198.18.0.2", proto="tcp", port=22, label="SYN"):
    return {"ts": ts, "event": event, "src": src, "network": src, "proto": proto, "port": port, "label": label, "action": "block"}


def fill(path: Path) -> None:
    s = Store(path)
    rows = (
        [row(NOW - 600)] * 3  # this hour, 14:20
        + [row(NOW - 7200, src=V6, proto="udp", port=53, label=ODD_LABEL)] * 2  # 12:30
        + [row(NOW - 7199, event="block", label=None, port=None, proto=None)]  # a block at 12:30
        + [row(NOW - 30 * 3600, src="198.18.0.3", port=80, label="FIN")]  # 11-29 08:30: a day, not an hour
        + [row(DAY0, src="198.18.0.4", port=25)]  # the first second of the 7 days: in
        + [row(DAY0 - 1, src="198.18.0.5", port=25)]  # the second before: out
        + [row(NOW - 8 * 86400, src="198.18.0.9", port=23)] * 4  # 8 days ago: out
        + [row(NOW - 60, event="unblock"), row(NOW - 60, event="expire")]  # never counted
        + [row(NOW + 60, src="198.18.0.8")]  # after now: out
    )
    for r in rows:
        s.add_history(r)
    s.close()


@pytest.fixture
def store(tmp_path):
    fill(tmp_path / "s.db")
    s = Store(tmp_path / "s.db", readonly=True)
    yield s
    s.close()


def test_figures_of_the_last_7_days_exactly(store):
    st = S.compute(store, NOW)
    assert st["since"] == DAY0 and st["until"] == NOW
    assert (st["detections"], st["blocks"]) == (7, 1)
    hours = st["per_hour"]
    assert len(hours) == 24 and hours[-1]["start"] == dt.datetime(2026, 11, 30, 14).timestamp()
    assert hours[0]["start"] == dt.datetime(2026, 11, 29, 15).timestamp()
    assert [h["detections"] for h in hours] == [0] * 21 + [2, 0, 3]
    assert [h["blocks"] for h in hours] == [0] * 21 + [1, 0, 0]
    days = st["per_day"]
    assert [d["date"] for d in days] == [f"2026-11-{n}" for n in range(24, 31)]
    assert [d["detections"] for d in days] == [1, 0, 0, 0, 0, 1, 5]
    assert [d["blocks"] for d in days] == [0, 0, 0, 0, 0, 0, 1]
    assert st["top_sources"] == [
        {"source": "198.18.0.2", "detections": 3},
        {"source": V6, "detections": 2},
        {"source": "198.18.0.3", "detections": 1},
        {"source": "198.18.0.4", "detections": 1},
    ]
    assert st["top_ports"] == [
        {"proto": "tcp", "port": 22, "detections": 3},
        {"proto": "udp", "port": 53, "detections": 2},
        {"proto": "tcp", "port": 25, "detections": 1},
        {"proto": "tcp", "port": 80, "detections": 1},
    ]
    assert st["top_labels"] == [{"label": "SYN", "detections": 4}, {"label": ODD_LABEL, "detections": 2}, {"label": "FIN", "detections": 1}]


def test_since_widens_and_narrows_every_figure(store):
    wide = S.compute(store, NOW, since=NOW - 10 * 86400)
    assert (wide["detections"], wide["blocks"]) == (12, 1)  # the 8-day-old rows and the second before the 7 days
    assert wide["top_sources"][0] == {"source": "198.18.0.9", "detections": 4}
    assert [d["detections"] for d in wide["per_day"]] == [1, 0, 0, 0, 0, 1, 5]  # the days stay the last 7
    narrow = S.compute(store, NOW, since=NOW - 3 * 3600)  # 11:30 on
    assert (narrow["detections"], narrow["blocks"]) == (5, 1)
    assert [h["detections"] for h in narrow["per_hour"]] == [0] * 21 + [2, 0, 3]
    assert [d["detections"] for d in narrow["per_day"]] == [0] * 6 + [5]
    assert [r["source"] for r in narrow["top_sources"]] == ["198.18.0.2", V6]
    assert S.compute(store, NOW, since=NOW - 60)["detections"] == 0
    assert S.compute(store, NOW, top=1)["top_labels"] == [{"label": "SYN", "detections": 4}]


def test_no_database_is_all_zero():
    st = S.compute(None, NOW)
    assert st["detections"] == st["blocks"] == 0 and st["top_sources"] == []
    assert all(h["detections"] == 0 for h in st["per_hour"]) and len(st["per_day"]) == 7


def test_sparkline_and_bars():
    assert S.sparkline([0, 1, 4, 8]) == "·▁▄█"
    assert S.sparkline([0, 0]) == "··"
    assert S.sparkline([1, 1000]) == "▁█"  # a small non-zero value still shows
    assert S.bar(1, 1000, 10) == "█" and S.bar(0, 10, 10) == "" and S.bar(10, 10, 10) == "█" * 10


def cfg(tmp_path: Path) -> str:
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\nstate_dir = "{tmp_path}/state"\ndatabase = "{tmp_path}/h.db"\n')
    return str(p)


def invoke(args, columns=80):
    res = runner.invoke(A.app, args, env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, (args, res.stdout, res.stderr)
    return res.stdout


@pytest.fixture
def cli(tmp_path, monkeypatch):
    fill(tmp_path / "h.db")
    monkeypatch.setattr(S, "clock", lambda: NOW)
    return cfg(tmp_path)


def test_json_and_tsv_carry_the_same_numbers(cli, store):
    st = json.loads(invoke(["stats", "-c", cli, "-o", "json"]))
    assert st == json.loads(json.dumps(S.compute(store, NOW)))
    assert json.loads(invoke(["stats", "-c", cli, "--json"])) == st
    assert json.loads(invoke(["stats", "-c", cli, "--json", "--since", "10d"]))["detections"] == 12  # journalctl-style
    assert json.loads(invoke(["stats", "-c", cli, "--json", "--since", "2026-11-30 11:30"]))["detections"] == 5
    lines = invoke(["stats", "-c", cli, "-o", "tsv"]).splitlines()
    assert lines[0] == "section\tkey\tdetections\tblocks"
    assert lines[1] == "total\t2026-11-24 00:00:00\t7\t1"
    assert "hour\t2026-11-30 12:00:00\t2\t1" in lines and "day\t2026-11-30\t5\t1" in lines
    assert f"source\t{V6}\t2\t-" in lines and f"label\t{ODD_LABEL}\t2\t-" in lines and "port\tudp/53\t2\t-" in lines
    assert len([ln for ln in lines if ln.startswith("hour\t")]) == 24


def test_picture_at_80_columns_keeps_values_whole_and_never_reads_markup(cli):
    text = invoke(["stats", "-c", cli])  # human unless asked (a picture, not a listing)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80, [ln for ln in lines if len(ln) > 80]
    assert "\x1b[" not in text and "😄" not in text and "🔡" not in text
    assert lines[0] == "detections 7   blocks 1   since 2026-11-24 00:00"
    assert any(ln.split()[:1] == [V6] and ln.split()[-1] == "2" for ln in lines)  # whole, with its count
    assert any(ln.split()[:1] == [ODD_LABEL] and ln.split()[-1] == "2" for ln in lines)  # markup shown as it is
    assert "  detections  " + "·" * 21 + "▆·█" in text  # 2 and 3 of at most 3 per hour
    mon = next(ln for ln in lines if ln.strip().startswith("Mon 11-30"))
    assert mon.split()[-2:] == ["5", "1"] and "█" in mon


def test_bad_since_and_top_are_refused(cli):
    res = runner.invoke(A.app, ["stats", "-c", cli, "--since", "soonish"])
    assert res.exit_code == 2 and res.stderr.startswith("nfsentry: bad --since 'soonish'")
    res = runner.invoke(A.app, ["stats", "-c", cli, "--top", "0"])
    assert res.exit_code == 2 and "--top" in res.stderr
