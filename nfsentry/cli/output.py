"""Listings (``blocked``, ``history``, ``ignore list``, ``replay``, ...): one renderer, three formats.

``-o human|json|tsv`` (``--json`` is ``-o json``); without ``-o``: ``human`` on a terminal, ``tsv``
when the output is piped or redirected.

* human: columns sized to the terminal (``COLUMNS`` or its width, 80 when unknown). A *key*
  column (addresses and prefixes) and a *fixed* column (times, numbers, names) are never cut;
  *text* columns (reasons, labels) give way and end with "…" when cut. If the key and fixed
  columns alone are wider than the terminal, the lines are longer than the terminal: a value is
  never shortened to fit. ``--wide``: every column, every value whole.
* tsv: a header line, then one line per row with every column of ``--wide``, every value whole;
  a tab, newline or carriage return inside a value is written ``\\t``, ``\\n``, ``\\r`` (so one
  row stays one line; json has the exact bytes).
* json: the command's stable JSON (its rows as they are, not the table's text).

Nothing is ever read as markup: values are written as plain text (no Rich markup, no emoji codes
such as ``:abcd:``), and control characters in human output are shown as escapes (``\\x1b``), so
a reason or a file name cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.cells import cell_len

FORMATS = ("human", "json", "tsv")
SEP = "  "
MIN_TEXT = 6  # a text column given way keeps at least this many cells (or its header's width)
ELLIPSIS = "…"


@dataclass(frozen=True)
class Col:
    """A column: its header, how it gives way, and whether only --wide (and tsv) shows it."""

    name: str
    kind: str = "fixed"  # "key": never cut (addresses); "fixed": never cut; "text": gives way, "…"
    wide: bool = False  # shown only with --wide and in tsv
    right: bool = False  # right-aligned (numbers)


def output_option() -> Any:
    return typer.Option(
        None, "--output", "-o", metavar="human|json|tsv", help="output format (default: human on a terminal, tsv when piped)"
    )


def json_option() -> Any:
    return typer.Option(False, "--json", help="same as -o json")


def wide_option() -> Any:
    return typer.Option(False, "--wide", "-w", help="every column, every value whole (no column gives way)")


def choose(output: str | None, as_json: bool = False) -> str:
    """The format asked for: -o, --json, or by what stdout is (terminal: human; else tsv)."""
    if output is not None and output not in FORMATS:
        typer.echo(f"nfsentry: bad -o {output!r}: use human, json or tsv", err=True)
        raise typer.Exit(2)
    if as_json:
        if output not in (None, "json"):
            typer.echo(f"nfsentry: --json and -o {output} disagree: give one", err=True)
            raise typer.Exit(2)
        return "json"
    if output:
        return output
    return "human" if sys.stdout.isatty() else "tsv"


def terminal_width() -> int:
    return max(20, shutil.get_terminal_size((80, 24)).columns)


def visible(value: Any) -> str:
    """A value as plain text for a terminal: control characters shown as escapes."""
    s = "-" if value is None else str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else (c.encode("unicode_escape").decode("ascii") if c != "\t" else "\\t") for c in s)


def tsv_field(value: Any) -> str:
    s = "-" if value is None else str(value)
    if not any(c in s for c in "\t\n\r"):
        return s
    return s.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, ending with "…" when shortened."""
    if cell_len(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + ELLIPSIS


def layout(cols: Sequence[Col], cells: list[list[str]], width: int, wide: bool = False) -> list[int]:
    """Each column's width: natural (its widest cell or header); when the line is wider than
    ``width``, text columns give way, the rightmost first (the reason before the labels), each
    down to MIN_TEXT (or its header), and nothing else does."""
    widths = [max([cell_len(c.name), *(cell_len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    if wide:
        return widths
    excess = sum(widths) + len(SEP) * (len(cols) - 1) - width
    for i in reversed(range(len(cols))):
        if excess <= 0:
            break
        if cols[i].kind != "text":
            continue
        floor = min(widths[i], max(cell_len(cols[i].name), MIN_TEXT))
        give = min(excess, widths[i] - floor)
        widths[i] -= give
        excess -= give
    return widths


def human_lines(cols: Sequence[Col], rows: list[list[Any]], wide: bool = False, width: int | None = None) -> list[str]:
    shown = [i for i, c in enumerate(cols) if wide or not c.wide]
    use = [cols[i] for i in shown]
    cells = [[visible(r[i]) for i in shown] for r in rows]
    widths = layout(use, cells, width or terminal_width(), wide)

    def line(values: list[str]) -> str:
        parts = []
        for c, v, w in zip(use, values, widths, strict=True):
            v = cut(v, w) if c.kind == "text" else v
            pad = " " * max(0, w - cell_len(v))
            parts.append(pad + v if c.right else v + pad)
        return SEP.join(parts).rstrip()

    return [line([c.name for c in use])] + [line(r) for r in cells]


def tsv_lines(cols: Sequence[Col], rows: list[list[Any]]) -> list[str]:
    return ["\t".join(c.name for c in cols)] + ["\t".join(tsv_field(v) for v in r) for r in rows]


def emit(
    fmt: str,
    cols: Sequence[Col],
    items: list[Any],
    row: Callable[[Any], list[Any]],
    *,
    wide: bool = False,
    nothing: str = "",
    title: str | None = None,
    as_json: Callable[[list[Any]], Any] | None = None,
) -> None:
    """Print ``items`` (each a row through ``row``) in ``fmt``. ``nothing``: what human output
    says for an empty listing (tsv prints its header alone, json ``[]``)."""
    if fmt == "json":
        typer.echo(json.dumps(as_json(items) if as_json else items, sort_keys=True, default=str))
        return
    rows = [row(it) for it in items]
    if fmt == "tsv":
        typer.echo("\n".join(tsv_lines(cols, rows)))
        return
    if not rows:
        typer.echo(nothing)
        return
    if title:
        typer.echo(visible(title))
    typer.echo("\n".join(human_lines(cols, rows, wide)))
