"""nfsentry.core.units: ports and port ranges, durations, the trojan port lists."""

from __future__ import annotations

import pytest

from nfsentry.core import units as U


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("45s", 45),
        ("15m", 900),
        ("1h30m", 5400),
        ("7d", 604800),
        (0, 0),
        (90, 90),
        ("250ms", 0.25),
        ("1w", 604800),
        ("90s", 90),
        ("0.5s", 0.5),
        ("1h", 3600),
        (" 2m 30s ", 150),
        ("1.5", 1.5),
        (2.5, 2.5),
    ],
)
def test_durations(text, seconds):
    assert U.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "x", "1x", "h", "1h x", "-5s", True, None, [], -1, float("nan"), float("inf"), "11000d"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="bad block_duration"):
        U.parse_duration(bad, "block_duration")


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0"),
        (45, "45s"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (604800, "7d"),
        (90061, "1d1h1m1s"),
        (0.25, "0.25s"),
        (0.5, "0.5s"),
        (1.4, "1s"),
    ],
)
def test_format_duration(seconds, text):
    assert U.format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 3600, 5400, 86399, 86400, 604800, 1234567])
def test_format_duration_round_trips(seconds):
    assert U.parse_duration(U.format_duration(seconds)) == seconds


def test_range_arithmetic():
    assert U.parse_ports([1, 2, "3-5", "10-20", 15]) == [(1, 5), (10, 20)]
    assert U.subtract_ranges([(1, 1023)], [(22, 22), (80, 80)]) == [(1, 21), (23, 79), (81, 1023)]
    assert U.ranges_text([(1, 21), (23, 23)]) == "1-21,23"
    assert U.count_ports([(1, 1023), (31337, 31337)]) == 1024


def test_parse_ports_shapes():
    assert U.parse_ports("1-1023,8080") == [(1, 1023), (8080, 8080)]
    assert U.parse_ports(" 22 , 23-25,") == [(22, 25)]
    assert U.parse_ports([(1, 1023), (1024, 1024), 8080]) == [(1, 1024), (8080, 8080)]
    assert U.parse_ports(["65535", " 1 - 2 "]) == [(1, 2), (65535, 65535)]
    assert U.parse_ports([]) == [] and U.parse_ports("") == []


@pytest.mark.parametrize(
    "bad, msg",
    [
        ([0], "outside 1-65535"),
        (["65536"], "outside 1-65535"),
        (["10-5"], "start after end"),
        ([True], "bad port"),
        (["a"], "bad port or range"),
        (["1-2-3"], "bad port or range"),
        ([1.5], "bad port or range"),
        ([(1, 2, 3)], "bad port or range"),
        (22, "must be a list"),
    ],
)
def test_bad_ports(bad, msg):
    with pytest.raises(ValueError, match=msg):
        U.parse_ports(bad)


def test_merge_subtract_and_sets():
    assert U.merge_ranges([(5, 9), (1, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]
    assert U.ports_to_ranges({22, 23, 24, 80}) == [(22, 24), (80, 80)]
    assert U.ports_to_ranges([]) == []
    assert U.subtract_ranges([(1, 100)], [(50, 60), (1, 10), (55, 70)]) == [(11, 49), (71, 100)]
    assert U.subtract_ranges([(1, 10)], [(1, 10)]) == []
    assert U.ranges_text([]) == "(none)"
    assert U.in_ranges(22, [(1, 1023)]) and not U.in_ranges(1024, [(1, 1023)])


def test_trojan_lists_are_portsentry_high_ports():
    assert 31337 in U.TROJAN_TCP and 31337 in U.TROJAN_UDP
    assert all(p > 1023 for p in U.TROJAN_TCP + U.TROJAN_UDP)
    assert list(U.TROJAN_TCP) == sorted(set(U.TROJAN_TCP)) and list(U.TROJAN_UDP) == sorted(set(U.TROJAN_UDP))
