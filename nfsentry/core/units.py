"""Units: ports and port ranges, durations, PortSentry's trojan port lists. The one implementation
used by the configuration, the daemon, the CLI, replay and the sinks (nfsentry/nft/ is to follow).

* Port ranges are sorted, merged ``[(lo, hi), ...]`` lists of inclusive ranges within 1-65535.
  :func:`parse_ports` reads ``[22, "1-1023", "8080"]``, ``"1-1023,8080"`` or ``[(1, 1023)]``;
  :func:`ranges_text` writes ``"1-1023,8080"``.
* Durations are seconds (float). :func:`parse_duration` reads ``"1h30m"``, ``"90s"``, ``"0.5s"``,
  ``"250ms"``, ``"7d"``, ``"1w"``, ``3600`` and ``0``; :func:`format_duration` writes ``"1h30m"``.

Pure: standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "TROJAN_TCP",
    "TROJAN_UDP",
    "MAX_SERVICE_GRACE",
    "PORT_MIN",
    "PORT_MAX",
    "MAX_DURATION",
    "parse_duration",
    "format_duration",
    "kernel_timeout",
    "RATE",
    "parse_ports",
    "merge_ranges",
    "subtract_ranges",
    "ports_to_ranges",
    "ranges_text",
    "count_ports",
    "in_ranges",
]

# PortSentry's classic high "trojan" ports (Debian's portsentry.conf), beyond 1-1023.
TROJAN_TCP = (1080, 1524, 2000, 5742, 6667, 12345, 12346, 20034, 27665, 31337, 32771, 32772, 32773, 32774, 40421, 49724, 54320)
TROJAN_UDP = (31335, 31337, 32770, 32771, 32772, 32773, 32774, 34555, 37444, 54321)

PORT_MIN, PORT_MAX = 1, 65535
MAX_DURATION = 10 * 365 * 86400  # ten years: longer is a typo
MAX_SERVICE_GRACE = 86400  # the longest recent_service_grace: "recently served" is about restarts

Ranges = list[tuple[int, int]]

_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DUR_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMAT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_RANGE_RE = re.compile(r"\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?")


# -- durations -----------------------------------------------------------------------------------
def parse_duration(value: Any, what: str = "duration") -> float:
    """'1h30m', '45s', '0.5s', '7d', '250ms', 3600, 0 -> seconds (float). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"bad {what} {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"bad {what} {value!r}: must be >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"bad {what} {value!r}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(text):
        if m.start() != pos and text[pos : m.start()].strip():
            raise ValueError(f"bad {what} {value!r}")
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"bad {what} {value!r} (use e.g. 30s, 15m, 1h, 7d)")
    if total > MAX_DURATION:
        raise ValueError(f"bad {what} {value!r}: longer than 10 years")
    return total


def kernel_timeout(duration: float) -> int:
    """Seconds for the kernel element (0 = until unblocked). Rule 8 of ledger/rule.py: never 0 by rounding."""
    if duration < 0 or math.isnan(duration):
        raise ValueError(f"a block duration cannot be negative: {duration!r}")
    if duration == 0:
        return 0
    if math.isinf(duration):
        return 0
    return max(1, math.ceil(duration))


# An nft `limit rate` as configured ("100/second", "600/minute").
RATE = re.compile(r"[1-9][0-9]{0,6}/(second|minute)")


def format_duration(seconds: float) -> str:
    """Seconds -> ``"1h30m"`` (whole seconds, rounded); ``"0"`` for 0; ``"0.5s"`` below 0.5 s
    rounding to nothing. The inverse of :func:`parse_duration` for whole seconds."""
    if not seconds:
        return "0"
    s = int(round(seconds))
    out = []
    for unit, size in _FORMAT_UNITS:
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out) or f"{seconds:g}s"


# -- ports and port ranges -----------------------------------------------------------------------
def _one_range(item: Any) -> tuple[int, int]:
    if isinstance(item, bool):
        raise ValueError(f"bad port {item!r}")
    if isinstance(item, int):
        lo = hi = item
    elif isinstance(item, (tuple, list)) and len(item) == 2 and all(type(v) is int for v in item):
        lo, hi = item
    elif isinstance(item, str) and (m := _RANGE_RE.fullmatch(item)):
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
    else:
        raise ValueError(f"bad port or range {item!r}")
    if not (PORT_MIN <= lo <= PORT_MAX and PORT_MIN <= hi <= PORT_MAX):
        raise ValueError(f"port {item!r} outside 1-65535")
    if lo > hi:
        raise ValueError(f"bad range {item!r}: start after end")
    return lo, hi


def parse_ports(items: Any, what: str = "ports") -> Ranges:
    """``[22, "1-1023", "8080"]``, ``"1-1023,8080"`` or ``[(1, 1023), (8080, 8080)]`` -> merged,
    sorted ``[(lo, hi)]``. Raises ValueError naming the bad entry."""
    if isinstance(items, str):
        items = [t for t in items.split(",") if t.strip()]
    elif not isinstance(items, (list, tuple)):
        raise ValueError(f"{what} must be a list of ports and 'a-b' ranges")
    return merge_ranges([_one_range(item) for item in items])


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort and merge overlapping or adjacent ranges: [(5, 9), (1, 4)] -> [(1, 9)]."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def ports_to_ranges(ports: Iterable[int]) -> Ranges:
    """{22, 23, 24, 80} -> [(22, 24), (80, 80)]."""
    return merge_ranges((p, p) for p in set(ports))


def subtract_ranges(ranges: Ranges, minus: Iterable[tuple[int, int]]) -> Ranges:
    """Ranges minus ranges: [(1, 1023)] - [(22, 22)] -> [(1, 21), (23, 1023)]. Either side may be
    unsorted or overlapping."""
    minus = merge_ranges(minus)
    out = []
    for lo, hi in merge_ranges(ranges):
        cur = lo
        for mlo, mhi in minus:
            if mhi < cur or mlo > hi:
                continue
            if mlo > cur:
                out.append((cur, mlo - 1))
            cur = max(cur, mhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def ranges_text(ranges: Ranges) -> str:
    """[(1, 21), (23, 23)] -> "1-21,23" ("(none)" when empty)."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges) or "(none)"


def count_ports(ranges: Ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def in_ranges(port: int, ranges: Ranges) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)
