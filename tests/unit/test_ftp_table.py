"""ExpectationTable: narrow, consumed-once, expiring, bounded; end-to-end with the tracker."""

from __future__ import annotations

import socket
import time

import pytest

from nfsentry.core.ftp import Expectation, ExpectationTable, FtpTracker

C4 = socket.inet_pton(socket.AF_INET, "192.0.2.10")
S4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
X4 = socket.inet_pton(socket.AF_INET, "198.51.100.66")
C6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::10")
S6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::1")
X6 = socket.inet_pton(socket.AF_INET6, "2001:db8:99::66")


def exp(peer=S4, addr=C4, port=50000, expires=160.0, mode="active", ctl=None):
    return Expectation(4 if len(peer) == 4 else 6, peer, addr, port, expires, mode, "PORT", ctl)


def test_match_consumes_once():
    t = ExpectationTable()
    t.add(exp())
    assert len(t) == 1 and (S4, C4, 50000) in t
    assert t.match(S4, C4, 50000, now=101.0)
    assert not t.match(S4, C4, 50000, now=101.0)
    assert len(t) == 0 and t.stats["matched"] == 1


def test_narrow_match():
    t = ExpectationTable()
    t.add(exp())
    assert not t.match(X4, C4, 50000, 101.0)  # a third host probing the announced port
    assert not t.match(S4, C4, 50001, 101.0)  # the peer, another port
    assert not t.match(S4, X4, 50000, 101.0)  # the peer, another destination
    assert not t.match(C4, S4, 50000, 101.0)  # reversed direction
    assert not t.match(S4, C4, 20, 101.0)
    assert len(t) == 1  # misses consume nothing
    assert t.match(S4, C4, 50000, 101.0)


def test_source_port_20_scan_without_expectation_is_not_benign():
    t = ExpectationTable()
    assert not t.match(X4, C4, 22, 0.0, sport=20)
    t.add(exp())
    for port in (21, 22, 23, 80, 443, 49999, 50001):
        assert not t.match(S4, C4, port, 101.0, sport=20)  # even from the legit FTP server
        assert not t.match(X4, C4, port, 101.0, sport=20)


def test_expiry():
    t = ExpectationTable()
    t.add(exp(expires=160.0))
    assert not t.match(S4, C4, 50000, now=160.0)
    assert len(t) == 0 and t.stats["expired"] == 1
    t.add(exp(port=1, expires=10.0))
    t.add(exp(port=2, expires=20.0))
    t.add(exp(port=3, expires=30.0))
    assert t.expire(5.0) == 0
    assert t.expire(20.0) == 2 and len(t) == 1
    assert [e.port for e in t] == [3]


def test_sport_binding_tolerates_syn_retransmission_only():
    t = ExpectationTable()
    t.add(exp())
    assert t.match(S4, C4, 50000, 101.0, sport=20)
    assert t.match(S4, C4, 50000, 102.0, sport=20)  # retransmitted SYN, same connection
    assert not t.match(S4, C4, 50000, 102.0, sport=21)  # a second connection: no
    assert not t.match(S4, C4, 50000, 102.0)
    assert not t.match(S4, C4, 50000, 160.0, sport=20)  # not beyond expiry
    assert len(t) == 0


def test_bounded_oldest_evicted():
    t = ExpectationTable(max_entries=3)
    for p in range(1, 4):
        assert t.add(exp(port=p)) == []
    removed = t.add(exp(port=4))
    assert [e.port for e in removed] == [1]
    assert len(t) == 3 and t.stats["evicted"] == 1
    assert not t.match(S4, C4, 1, 101.0)
    assert all(t.match(S4, C4, p, 101.0) for p in (2, 3, 4))


def test_refresh_same_key_moves_to_end():
    t = ExpectationTable(max_entries=2)
    t.add(exp(port=1, expires=100.0))
    t.add(exp(port=2))
    assert t.add(exp(port=1, expires=200.0)) == []  # refresh, not a new entry
    assert len(t) == 2
    t.add(exp(port=3))  # evicts 2, the oldest now
    assert not t.match(S4, C4, 2, 101.0)
    assert t.match(S4, C4, 1, 150.0)


def test_one_pending_expectation_per_control_connection():
    t = ExpectationTable()
    ctl = (C4, S4, 40000, 21)
    t.add(exp(port=1, ctl=ctl))
    removed = t.add(exp(port=2, ctl=ctl))
    assert [e.port for e in removed] == [1] and t.stats["superseded"] == 1
    t.add(exp(port=3, ctl=(C4, S4, 40001, 21)))  # another control connection
    assert len(t) == 2
    assert not t.match(S4, C4, 1, 101.0)
    assert t.match(S4, C4, 2, 101.0) and t.match(S4, C4, 3, 101.0)


def test_discard_clear_iter_bool():
    t = ExpectationTable()
    assert not t
    e = exp()
    t.add(e)
    assert t and list(t) == [e]
    assert t.discard(e) and not t.discard(e)
    t.add(e)
    t.clear()
    assert len(t) == 0 and not t.match(S4, C4, 50000, 101.0)
    with pytest.raises(ValueError):
        ExpectationTable(max_entries=0)


def test_empty_table_fast_path():
    t = ExpectationTable()
    n = 200_000
    t0 = time.process_time()  # CPU time: other processes on a busy machine do not count
    for _ in range(n):
        t.match(X4, C4, 22, 0.0)
    per_call = (time.process_time() - t0) / n
    assert per_call < 2e-6, per_call  # ~0.1 us on a laptop; generous for CI


# --- tracker -> table, as the daemon wires them ---------------------------------------------------


@pytest.mark.parametrize("fam", [4, 6])
def test_active_mode_end_to_end(fam):
    c, s, x = (C4, S4, X4) if fam == 4 else (C6, S6, X6)
    tr, tab = FtpTracker(expect_timeout=30), ExpectationTable()
    line = b"PORT 192,0,2,10,195,80\r\n" if fam == 4 else b"EPRT |2|2001:db8:1::10|50000|\r\n"
    for e in tr.feed(c, s, 40000, 21, line, now=0.0):
        tab.add(e)
    assert not tab.match(x, c, 50000, 1.0, sport=20)  # third host on the announced port
    assert not tab.match(s, c, 50001, 1.0, sport=20)  # server, wrong port
    assert tab.match(s, c, 50000, 1.0, sport=20)  # the server's data connection
    assert not tab.match(s, c, 50000, 1.0, sport=20000)  # not twice


@pytest.mark.parametrize("fam", [4, 6])
def test_passive_mode_end_to_end(fam):
    c, s, x = (C4, S4, X4) if fam == 4 else (C6, S6, X6)
    tr, tab = FtpTracker(expect_timeout=30), ExpectationTable()
    line = b"227 Entering Passive Mode (192,0,2,1,195,80).\r\n" if fam == 4 else b"229 Entering Extended Passive Mode (|||50000|)\r\n"
    for e in tr.feed(s, c, 21, 40000, line, now=0.0):
        tab.add(e)
    assert not tab.match(x, s, 50000, 1.0)
    assert not tab.match(c, s, 50000, 31.0)  # too late
    tab.add(tr.feed(s, c, 21, 40000, line, now=40.0)[0])
    assert tab.match(c, s, 50000, 41.0)
    assert not tab.match(c, s, 50000, 41.0)


def test_bounce_creates_nothing_in_the_table():
    tr, tab = FtpTracker(), ExpectationTable()
    for e in tr.feed(C4, S4, 40000, 21, b"PORT 198,51,100,66,0,22\r\n", now=0.0):
        if isinstance(e, Expectation):
            tab.add(e)
    assert len(tab) == 0
    assert not tab.match(S4, X4, 22, 1.0, sport=20)
