"""Issue 16 row 13: `history --source PREFIX` matches every address and network inside the prefix;
`history --source ADDR` stays an exact match."""

from __future__ import annotations

from nfsentry.sinks.store import Store


def det(ts: float, src: str, network: str | None = None, port: int = 22) -> dict:
    return {
        "ts": ts,
        "event": "detection",
        "src": src,
        "network": network or src,
        "proto": "tcp",
        "port": port,
        "label": "SYN",
        "action": "block",
    }


def fill(s: Store) -> None:
    rows = [
        det(1, "198.18.50.7"),
        det(2, "198.18.51.7"),
        det(3, "198.18.50.200"),
        det(4, "2001:db8:0:1::5", "2001:db8:0:1::/64"),
        det(5, "2001:db8:0:2::5", "2001:db8:0:2::/64"),
        det(6, "198.18.50.9", "198.18.50.8/29"),
        det(7, "198.18.5.1"),
        det(8, "198.18.0.0/16"),
    ]
    for r in rows:
        s.add_history(r)
    s.add_history({"ts": 9, "event": "unblock", "src": "198.18.50.0/28", "network": "198.18.50.0/28"})


def ts(rows):
    return [r["ts"] for r in rows]


def test_a_prefix_matches_every_address_and_network_inside_it(tmp_path):
    s = Store(tmp_path / "db")
    fill(s)
    assert ts(s.history(source="198.18.50.0/24")) == [1, 3, 6, 9]
    assert ts(s.history(source="198.18.50.0/23")) == [1, 2, 3, 6, 9]
    assert ts(s.history(source="198.18.48.0/20")) == [1, 2, 3, 6, 9]  # not octet-aligned
    assert ts(s.history(source="198.18.0.0/16")) == [1, 2, 3, 6, 7, 8, 9]
    assert ts(s.history(source="128.0.0.0/1")) == [1, 2, 3, 6, 7, 8, 9]  # no whole octet: family prefilter
    assert ts(s.history(source="2001:db8::/48")) == [4, 5]
    assert ts(s.history(source="2001:db8:0:1::/64")) == [4]
    assert ts(s.history(source="198.18.60.0/24")) == []


def test_a_prefix_honours_since_and_limit_keeping_the_newest(tmp_path):
    s = Store(tmp_path / "db")
    fill(s)
    assert ts(s.history(source="198.18.50.0/24", limit=2)) == [6, 9]
    assert ts(s.history(source="198.18.50.0/24", since=2.5)) == [3, 6, 9]


def test_an_address_stays_an_exact_match(tmp_path):
    s = Store(tmp_path / "db")
    fill(s)
    assert ts(s.history(source="198.18.50.7")) == [1]
    assert ts(s.history(source="198.18.50.9")) == [6]  # its src, although its network is a /29
    assert ts(s.history(source="2001:db8:0:1::/64")) == [4]
    assert ts(s.history(source="198.18.5.1")) == [7]


def test_many_rows_inside_a_prefix_are_filtered_quickly(tmp_path):
    import time

    s = Store(tmp_path / "db")
    s.db.execute("BEGIN")
    for i in range(20000):
        s.add_history(det(i, f"198.18.{50 + i % 4}.{i % 250}"))
    s.db.execute("COMMIT")
    t0 = time.monotonic()
    rows = s.history(source="198.18.50.0/24", limit=100000)
    took = time.monotonic() - t0
    assert len(rows) == 5000 and all(r["src"].startswith("198.18.50.") for r in rows)
    print(f"20000 rows, prefix filter: {took:.3f}s")
