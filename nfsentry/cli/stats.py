"""`nfsentry stats`: a picture of the history database (registered on the app by cli/app.py).

Scans (detections) and blocks per hour over the last 24 hours and per day over the last 7 days
(local time), the top sources, ports and labels, all counted over ``--since`` .. now (default:
the last 7 days). ``-o json`` gives the same numbers; ``-o tsv`` one line per figure.

Human output is drawn with Rich, but no value from the database is ever read as markup or emoji
codes: every value goes into a :class:`rich.text.Text` as plain text (through
:func:`nfsentry.cli.output.visible`), and the console has markup, emoji and highlighting off.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from nfsentry.cli.output import terminal_width, tsv_field, visible

SPARK = "▁▂▃▄▅▆▇█"
HOUR = 3600.0
TOP = 10


def clock() -> float:
    """Now (a function, so a test can fix it)."""
    return time.time()


def hour_start(ts: float) -> float:
    """The start of the local hour holding ``ts``."""
    return dt.datetime.fromtimestamp(ts).replace(minute=0, second=0, microsecond=0).timestamp()


def day_starts(now: float, days: int = 7) -> list[float]:
    """Local midnights of the last ``days`` days, oldest first (today's last); DST-safe."""
    today = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return [(today - dt.timedelta(days=k)).replace(hour=0).timestamp() for k in range(days - 1, -1, -1)]


def compute(store: Any, now: float, since: float | None = None, top: int = TOP) -> dict[str, Any]:
    """Every figure of `stats`, from ``store`` (nfsentry.sinks.store.Store, or None: no database
    yet, all zero). A row counts when ``since`` <= ts < ``now``; ``since`` defaults to the start
    of the first of the 7 days."""
    days = day_starts(now)
    since = days[0] if since is None else since
    hours = [hour_start(now) - (23 - i) * HOUR for i in range(24)]

    def clip(start: float, end: float) -> tuple[float, float]:
        return max(start, since), min(end, now)

    ranges = [clip(h, h + HOUR) for h in hours] + [clip(d, e) for d, e in zip(days, days[1:] + [now])] + [(since, now)]
    counts = {"detection": [0] * len(ranges), "block": [0] * len(ranges)}
    tops: dict[str, list] = {"src": [], "port": [], "label": []}
    if store is not None:
        counts = {event: store.count_events(event, ranges) for event in counts}
        if since < now:
            tops = {by: store.top_detections(by, since, now, top) for by in tops}
    det, blk = counts["detection"], counts["block"]
    return {
        "since": since,
        "until": now,
        "detections": det[-1],
        "blocks": blk[-1],
        "per_hour": [{"start": h, "detections": det[i], "blocks": blk[i]} for i, h in enumerate(hours)],
        "per_day": [
            {"date": dt.date.fromtimestamp(d).isoformat(), "start": d, "detections": det[24 + i], "blocks": blk[24 + i]}
            for i, d in enumerate(days)
        ],
        "top_sources": [{"source": src, "detections": n} for src, n in tops["src"]],
        "top_ports": [{"proto": proto, "port": port, "detections": n} for proto, port, n in tops["port"]],
        "top_labels": [{"label": label, "detections": n} for label, n in tops["label"]],
    }


# == rendering ======================================================================================
def sparkline(values: list[int]) -> str:
    """One cell per value: "·" for none, else one of eight heights scaled to the largest."""
    top = max(values, default=0)
    if not top:
        return "·" * len(values)
    return "".join("·" if not v else SPARK[min(7, max(0, -(-v * 8 // top) - 1))] for v in values)


def bar(n: int, most: int, width: int) -> str:
    """``n`` as a bar of at most ``width`` cells (at least one for n > 0)."""
    if not n or not most or width <= 0:
        return ""
    return "█" * max(1, round(n * width / most))


def port_text(proto: Any, port: Any) -> str:
    return f"{proto or '-'}/{port if port is not None else '-'}"


def human(st: dict[str, Any], width: int | None = None) -> list[Text]:
    """The picture, one Text per line, at most ``width`` cells wide (the terminal's) unless a
    value (an address) is longer: a value is never cut."""
    width = width or terminal_width()
    lines: list[Text] = []

    def line(*parts: tuple[str, str] | str) -> None:
        t = Text(no_wrap=True, overflow="ignore")
        for p in parts:
            if isinstance(p, tuple):
                t.append(visible(p[0]), style=p[1])
            else:
                t.append(visible(p))
        lines.append(t)

    since = dt.datetime.fromtimestamp(st["since"]).strftime("%Y-%m-%d %H:%M")
    line(("detections ", "bold"), f"{st['detections']:,}", ("   blocks ", "bold"), f"{st['blocks']:,}", f"   since {since}")
    hours = st["per_hour"]
    first = dt.datetime.fromtimestamp(hours[0]["start"]).strftime("%H:%M")
    last = dt.datetime.fromtimestamp(hours[-1]["start"]).strftime("%H:%M")
    line()
    line(("per hour, last 24 h", "bold"), f" ({first} .. {last}, this hour last)")
    for key in ("detections", "blocks"):
        vals = [h[key] for h in hours]
        line(f"  {key:<11} ", (sparkline(vals), "cyan" if key == "detections" else "red"), f"  max {max(vals):,}/h, total {sum(vals):,}")
    days = st["per_day"]
    line()
    line(("per day, last 7 days", "bold"))
    num_w = max(len("detections"), *(len(f"{d['detections']:,}") for d in days))
    blk_w = max(len("blocks"), *(len(f"{d['blocks']:,}") for d in days))
    label_w = len("  Mon 11-30  ")
    bar_w = max(4, width - label_w - num_w - blk_w - 4)
    most = max((d["detections"] for d in days), default=0)
    line(" " * label_w, " " * bar_w, f"  {'detections':>{num_w}}", f"  {'blocks':>{blk_w}}")
    for d in days:
        day = dt.datetime.fromtimestamp(d["start"]).strftime("%a %m-%d")
        b = bar(d["detections"], most, bar_w)
        line(f"  {day}  ", (b, "cyan"), " " * (bar_w - len(b)), f"  {d['detections']:>{num_w},}", f"  {d['blocks']:>{blk_w},}")
    for title, rows, key in (
        ("top sources", st["top_sources"], lambda r: str(r["source"] or "-")),
        ("top ports", st["top_ports"], lambda r: port_text(r["proto"], r["port"])),
        ("top labels", st["top_labels"], lambda r: str(r["label"] or "-")),
    ):
        line()
        line((title, "bold"), " (detections)")
        if not rows:
            line("  none")
            continue
        keys = [visible(key(r)) for r in rows]
        key_w = max(cell_len(k) for k in keys)
        n_w = max(len(f"{r['detections']:,}") for r in rows)
        bar_w = max(4, width - 2 - key_w - 2 - 2 - n_w)
        most = rows[0]["detections"]
        for k, r in zip(keys, rows):
            b = bar(r["detections"], most, bar_w)
            t = Text("  ", no_wrap=True, overflow="ignore")
            t.append(k + " " * (key_w - cell_len(k)) + "  ")
            t.append(b, style="green")
            t.append(" " * (bar_w - len(b)) + f"  {r['detections']:>{n_w},}")
            lines.append(t)
    return lines


def tsv(st: dict[str, Any]) -> list[str]:
    """One line per figure: section, key, detections, blocks ("-": not counted there)."""
    out = ["section\tkey\tdetections\tblocks", f"total\t{fmt_when(st['since'])}\t{st['detections']}\t{st['blocks']}"]
    out += [f"hour\t{fmt_when(h['start'])}\t{h['detections']}\t{h['blocks']}" for h in st["per_hour"]]
    out += [f"day\t{d['date']}\t{d['detections']}\t{d['blocks']}" for d in st["per_day"]]
    out += [f"source\t{tsv_field(r['source'])}\t{r['detections']}\t-" for r in st["top_sources"]]
    out += [f"port\t{tsv_field(port_text(r['proto'], r['port']))}\t{r['detections']}\t-" for r in st["top_ports"]]
    out += [f"label\t{tsv_field(r['label'])}\t{r['detections']}\t-" for r in st["top_labels"]]
    return out


def fmt_when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def console(width: int | None = None, file: Any = None) -> Console:
    """A Rich console that never reads markup, emoji codes or "interesting" values in text."""
    return Console(file=file, width=width or terminal_width(), markup=False, emoji=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    from nfsentry.cli.app import EXIT_RUNTIME, ConfigOpt, fail, open_history, parse_when
    from nfsentry.cli.output import json_option, output_option

    @app.command()
    def stats(
        since: str | None = typer.Option(
            None, "--since", "-S", metavar="TIME", help="count from this time (default: the last 7 days): 1h ago, yesterday, 2026-11-22 ..."
        ),
        top: int = typer.Option(TOP, "--top", metavar="N", help="how many sources, ports and labels to list"),
        config: str | None = ConfigOpt,
        output: str | None = output_option(),
        as_json: bool = json_option(),
    ):
        """Scans and blocks per hour (24 h) and per day (7 days), top sources, ports and labels."""
        from nfsentry.cli.output import choose
        from nfsentry.sinks.store import StoreError

        fmt = choose(output, as_json) if (output or as_json) else "human"  # a picture, not a table
        if top < 1:
            fail("--top must be at least 1")
        now = clock()
        start = parse_when(since, "--since", now)
        s = open_history(config)
        try:
            st = compute(s, now, start, top)
        except StoreError as e:
            fail(str(e), EXIT_RUNTIME)
        finally:
            if s is not None:
                s.close()
        if fmt == "json":
            typer.echo(json.dumps(st, sort_keys=True))
        elif fmt == "tsv":
            typer.echo("\n".join(tsv(st)))
        else:
            c = console()
            for t in human(st, c.width):
                c.print(t)
