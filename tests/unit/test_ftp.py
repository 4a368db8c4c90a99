"""FTP control-channel tracker: parsing, reassembly, bounce/mismatch refusal, bounded state."""

from __future__ import annotations

import itertools
import socket

import pytest

from nfsentry.core.ftp import (
    Bounce,
    Expectation,
    FtpTracker,
    Malformed,
    Oversized,
    ParseError,
    PasvMismatch,
    addr_text,
    parse_227,
    parse_229,
    parse_eprt,
    parse_port,
    safe_text,
)

C4 = socket.inet_pton(socket.AF_INET, "192.0.2.10")  # client
S4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")  # server
X4 = socket.inet_pton(socket.AF_INET, "198.51.100.66")  # third party
C6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::10")
S6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::1")
X6 = socket.inet_pton(socket.AF_INET6, "2001:db8:99::66")
CPORT = 40000


def cli(t, payload, now=100.0, c=C4, s=S4, cport=CPORT, seq=None):
    return t.feed(c, s, cport, 21, payload, now, seq=seq)


def srv(t, payload, now=100.0, c=C4, s=S4, cport=CPORT, seq=None):
    return t.feed(s, c, 21, cport, payload, now, seq=seq)


def exps(events):
    return [e for e in events if isinstance(e, Expectation)]


def only(events, cls):
    assert len(events) == 1 and isinstance(events[0], cls), events
    return events[0]


# --- valid announcements ------------------------------------------------------------------------


def test_port_v4_active_expectation():
    t = FtpTracker(expect_timeout=30)
    e = only(cli(t, b"PORT 192,0,2,10,195,80\r\n", now=100.0), Expectation)
    assert (e.family, e.peer, e.addr, e.port) == (4, S4, C4, 195 * 256 + 80)
    assert e.expires == 130.0 and e.mode == "active" and e.command == "PORT"
    assert e.key == (S4, C4, 50000)
    assert e.ctl == (C4, S4, CPORT, 21)
    assert e.set_name == "ftp_expect4"
    assert e.element == "192.0.2.1 . 192.0.2.10 . 50000"
    assert e.nft_element(now=100.5) == "192.0.2.1 . 192.0.2.10 . 50000 timeout 30s"
    assert e.timeout(now=200.0) == 1  # never 0 / negative in an nft command
    assert e.as_dict()["peer"] == "192.0.2.1" and e.as_dict()["mode"] == "active"
    assert "192.0.2.1 may connect to 192.0.2.10 port 50000" in e.describe()


@pytest.mark.parametrize(
    "line",
    [
        b"port 192,0,2,10,195,80",
        b"Port 192,0,2,10,195,80",
        b"PORT  192, 0, 2, 10, 195, 80 ",
        b"PORT\t192,0,2,10,195,80",
        b"PORT 192,000,2,010,195,080",
        b"  PORT 192,0,2,10,195,80",
    ],
)
def test_port_variants(line):
    e = only(cli(FtpTracker(), line + b"\r\n"), Expectation)
    assert (e.addr, e.port) == (C4, 50000)


@pytest.mark.parametrize("d", list(b"|!#$%&*+-/:;=?@^_~xA"))
def test_eprt_v4_any_delimiter(d):
    d = bytes([d])
    line = b"EPRT " + d + b"1" + d + b"192.0.2.10" + d + b"50000" + d + b"\r\n"
    e = only(cli(FtpTracker(), line), Expectation)
    assert (e.family, e.peer, e.addr, e.port, e.command) == (4, S4, C4, 50000, "EPRT")


@pytest.mark.parametrize("text", [b"2001:db8:1::10", b"2001:DB8:1:0:0:0:0:10", b"2001:0db8:0001::0010"])
def test_eprt_v6(text):
    t = FtpTracker()
    e = only(cli(t, b"eprt |2|" + text + b"|6446|\n", c=C6, s=S6), Expectation)
    assert (e.family, e.peer, e.addr, e.port, e.mode) == (6, S6, C6, 6446, "active")
    assert e.set_name == "ftp_expect6"
    assert e.element == "2001:db8:1::1 . 2001:db8:1::10 . 6446"


@pytest.mark.parametrize(
    "line",
    [
        b"227 Entering Passive Mode (192,0,2,1,195,80).",
        b"227 Entering Passive Mode (192,0,2,1,195,80)",
        b"227 Entering Passive Mode 192,0,2,1,195,80",
        b"227 =192,0,2,1,195,80",
        b"227 ok (192, 0, 2, 1, 195, 80)",
        b"227-Entering Passive Mode (192,0,2,1,195,80)",
    ],
)
def test_227_with_and_without_parentheses(line):
    e = only(srv(FtpTracker(), line + b"\r\n"), Expectation)
    assert (e.family, e.peer, e.addr, e.port) == (4, C4, S4, 50000)
    assert e.mode == "passive" and e.command == "227"
    assert e.ctl == (C4, S4, CPORT, 21)  # same control connection id as the client's side


@pytest.mark.parametrize(
    "line",
    [
        b"229 Entering Extended Passive Mode (|||6446|)",
        b"229 Entering Extended Passive Mode (!!!6446!)",
        b"229 Entering Extended Passive Mode (###6446#).",
        b"229 ok (%%%6446%)",
        b"229 ok (~~~6446~)",
        b"229 ok (|||06446|)",
        b"229 Entering Extended Passive Mode |||6446|",
        b"229-Entering Extended Passive Mode (|||6446|)",
    ],
)
@pytest.mark.parametrize("fam", [4, 6])
def test_229_any_delimiter(line, fam):
    c, s = (C4, S4) if fam == 4 else (C6, S6)
    e = only(srv(FtpTracker(), line + b"\r\n", c=c, s=s), Expectation)
    assert (e.family, e.peer, e.addr, e.port, e.mode, e.command) == (fam, c, s, 6446, "passive", "229")


# --- reassembly ---------------------------------------------------------------------------------

SPLIT_CASES = [
    ("cli", b"PORT 192,0,2,10,195,80\r\n", 4, 50000),
    ("cli", b"EPRT |2|2001:db8:1::10|6446|\n", 6, 6446),
    ("srv", b"227 Entering Passive Mode (192,0,2,1,195,80).\r\n", 4, 50000),
    ("srv", b"229 Entering Extended Passive Mode (|||6446|)\n", 6, 6446),
]


def _feed_pieces(t, side, fam, pieces, now=100.0):
    c, s = (C4, S4) if fam == 4 else (C6, S6)
    f = cli if side == "cli" else srv
    out = []
    for p in pieces:
        out += f(t, p, now=now, c=c, s=s)
    return out


def _pieces(data, cuts):
    bounds = (0, *cuts, len(data))
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("side,data,fam,port", SPLIT_CASES)
@pytest.mark.parametrize("n", [2, 3])
def test_split_at_every_point(side, data, fam, port, n):
    for cuts in itertools.combinations(range(1, len(data)), n - 1):
        t = FtpTracker()
        events = _feed_pieces(t, side, fam, _pieces(data, cuts))
        assert len(events) == 1 and isinstance(events[0], Expectation), (cuts, events)
        assert events[0].port == port and events[0].family == fam
        assert len(t) == 0 and t.buffered() == 0


@pytest.mark.parametrize("n", [4, 5])
def test_port_split_into_4_and_5_packets_at_every_point(n):
    data = b"PORT 192,0,2,10,195,80\r\n"
    for cuts in itertools.combinations(range(1, len(data)), n - 1):
        t = FtpTracker()
        events = _feed_pieces(t, "cli", 4, _pieces(data, cuts))
        assert [(e.addr, e.port) for e in exps(events)] == [(C4, 50000)], cuts
        assert len(events) == 1


def test_pipelined_lines_mixed_crlf_lf():
    t = FtpTracker()
    payload = b"USER anonymous\r\nPASS x\nTYPE I\r\nPORT 192,0,2,10,195,80\nRETR a\r\nEPRT |1|192.0.2.10|50001|\r\nNOOP\n"
    events = cli(t, payload)
    assert [(e.command, e.port) for e in events] == [("PORT", 50000), ("EPRT", 50001)]
    assert t.stats["lines"] == 7 and len(t) == 0


def test_pipelined_server_replies():
    t = FtpTracker()
    events = srv(
        t,
        b"200 Type set to I\r\n227 Entering Passive Mode (192,0,2,1,4,1)\r\n"
        b"150 ok\r\n226 done\r\n229 Entering Extended Passive Mode (|||6446|)\r\n",
    )
    assert [(e.command, e.port) for e in events] == [("227", 1025), ("229", 6446)]


def test_directions_are_reassembled_separately():
    t = FtpTracker()
    assert cli(t, b"PORT 192,0,2,") == []
    assert srv(t, b"227 Entering Passive Mode (192,0,") == []
    assert cli(t, b"PORT 192,0,2,", cport=40001) == []  # another control connection
    assert len(t) == 3
    assert [e.command for e in srv(t, b"2,1,195,80)\r\n")] == ["227"]
    assert [e.port for e in cli(t, b"10,195,81\r\n")] == [50001]
    assert [e.ctl[2] for e in cli(t, b"10,195,82\r\n", cport=40001)] == [40001]
    assert len(t) == 0


def test_line_ending_in_cr_split_before_lf():
    t = FtpTracker()
    assert cli(t, b"PORT 192,0,2,10,195,80\r") == []
    assert only(cli(t, b"\n"), Expectation).port == 50000


# --- refusals and reports -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,cmd",
    [
        (b"PORT 198,51,100,66,0,22", "PORT"),
        (b"EPRT |1|198.51.100.66|22|", "EPRT"),
        (b"PORT 0,0,0,0,0,22", "PORT"),
        (b"PORT 192,0,2,1,0,22", "PORT"),
    ],
)  # the server itself
def test_bounce_port_refused_and_reported(line, cmd):
    t = FtpTracker()
    b = only(cli(t, line + b"\r\n"), Bounce)
    assert b.command == cmd and b.port == 22
    assert b.real == C4 and b.src == C4 and b.dst == S4 and b.announced != C4
    assert (b.sport, b.dport, b.family, b.ts) == (CPORT, 21, 4, 100.0)
    assert "bounce" in b.describe() and addr_text(b.announced) in b.describe()
    d = b.as_dict()
    assert d["event"] == "ftp_bounce" and d["real"] == "192.0.2.10"
    assert d["announced"] == addr_text(b.announced)
    assert t.stats["bounces"] == 1 and t.stats["expectations"] == 0


def test_bounce_across_families():
    t = FtpTracker()
    b = only(cli(t, b"EPRT |2|2001:db8:99::66|2121|\r\n"), Bounce)  # v6 address, v4 control
    assert b.announced == X6 and b.real == C4
    b = only(cli(t, b"PORT 192,0,2,10,8,72\r\n", c=C6, s=S6), Bounce)  # v4 address, v6 control
    assert b.announced == C4 and b.real == C6 and b.family == 6
    b = only(cli(t, b"EPRT |2|2001:db8:99::66|2121|\r\n", c=C6, s=S6), Bounce)
    assert b.announced == X6


@pytest.mark.parametrize("announced", [b"198,51,100,66", b"0,0,0,0", b"10,0,0,5"])
def test_227_other_address_reported_and_control_address_used(announced):
    t = FtpTracker()
    events = srv(t, b"227 Entering Passive Mode (" + announced + b",195,80)\r\n")
    assert len(events) == 2
    m, e = events
    assert isinstance(m, PasvMismatch) and m.accepted and m.real == S4 and m.port == 50000
    assert m.announced == bytes(int(x) for x in announced.split(b","))
    assert isinstance(e, Expectation)
    assert (e.peer, e.addr, e.port) == (C4, S4, 50000)  # never the announced address
    assert m.as_dict()["event"] == "ftp_pasv_mismatch" and "control address" in m.describe()


def test_227_other_address_refused_by_policy():
    t = FtpTracker(pasv_mismatch="refuse")
    m = only(srv(t, b"227 Entering Passive Mode (198,51,100,66,195,80)\r\n"), PasvMismatch)
    assert not m.accepted and "refused" in m.describe()
    assert only(srv(t, b"227 Entering Passive Mode (192,0,2,1,195,80)\r\n"), Expectation)


def test_227_on_ipv6_control_uses_the_v6_server_address():
    t = FtpTracker()
    m, e = srv(t, b"227 Entering Passive Mode (192,0,2,1,195,80)\r\n", c=C6, s=S6)
    assert isinstance(m, PasvMismatch) and m.announced == S4
    assert (e.family, e.peer, e.addr, e.port) == (6, C6, S6, 50000)


MALFORMED_CLIENT = [
    b"PORT 300,0,2,10,195,80",  # number > 255
    b"PORT 192,0,2,10,256,80",
    b"PORT 192,0,2,10,195,1000",  # 4 digits
    b"PORT 192,0,2,10,0,0",  # port 0
    b"PORT 192,0,2,10,195",  # missing field
    b"PORT 192,0,2,10,195,80,1",  # extra field
    b"PORT 192,0,2,10,,80",
    b"PORT 192,0,2,10,195,80x",
    b"PORT 192.0.2.10.195.80",
    b"PORT -1,0,2,10,195,80",
    b"PORT a,b,c,d,e,f",
    b"PORT",
    b"PORT ",
    b"PORT 192,0,2,10,195,\xff",
    b"PORT \xc3\xa9,0,2,10,195,80",
    b"PORT \xd9\xa1,0,2,10,195,80",  # Arabic-Indic digit one: not an ASCII digit
    b"EPRT |1|192.0.2.10|70000|",  # port > 65535
    b"EPRT |1|192.0.2.10|0|",
    b"EPRT |1|192.0.2.10||",
    b"EPRT |1|192.0.2.10|123456|",
    b"EPRT |1|192.0.2.300|50000|",
    b"EPRT |1|192.0.2|50000|",
    b"EPRT |1|192.0.2.010|50000|",  # leading zero: octal to inet_aton servers
    b"EPRT |1|0xc0.0.2.10|50000|",
    b"EPRT |2|2001:db8::g|50000|",
    b"EPRT |2|2001:db8:1::10%eth0|50000|",
    b"EPRT |2|192.0.2.10|50000|",
    b"EPRT |3|192.0.2.10|50000|",
    b"EPRT |1|192.0.2.10|50000",
    b"EPRT |1|192.0.2.10|50000|x",
    b"EPRT 1|192.0.2.10|50000|",
    b"EPRT",
    b"EPRT \x01 1\x01192.0.2.10\x0150000\x01",
    b"EPRT |1|\xff\xfe|50000|",
]


@pytest.mark.parametrize("line", MALFORMED_CLIENT)
def test_malformed_client_lines(line):
    t = FtpTracker()
    m = only(cli(t, line + b"\r\n"), Malformed)
    assert m.command == line[:4].decode() and m.reason
    assert m.src == C4 and m.line.startswith(line[:4])
    text = m.describe()
    assert text.isascii() and text.isprintable()
    assert t.stats["malformed"] == 1


MALFORMED_SERVER = [
    b"227 Entering Passive Mode (192,0,2,1,300,80)",
    b"227 Entering Passive Mode (192,0,2,1,0,0)",
    b"227 Entering Passive Mode (1000,0,2,1,195,80)",
    b"227 Entering Passive Mode (192,0,2,1,195)",
    b"227 Entering Passive Mode",
    b"227",
    b"229 Entering Extended Passive Mode (|||70000|)",
    b"229 Entering Extended Passive Mode (|||0|)",
    b"229 Entering Extended Passive Mode (|||)",
    b"229 Entering Extended Passive Mode (||6446|)",
    b"229 Entering Extended Passive Mode (111644461)",
    b"229 Entering Extended Passive Mode",
    b"229 (|||\xff\xfe|)",
]


@pytest.mark.parametrize("line", MALFORMED_SERVER)
def test_malformed_server_lines(line):
    t = FtpTracker()
    m = only(srv(t, line + b"\r\n"), Malformed)
    assert m.command == line[:3].decode() and m.src == S4


@pytest.mark.parametrize(
    "side,line",
    [
        ("cli", b"PORTS 192,0,2,10,195,80"),
        ("cli", b"SITE PORT 192,0,2,10,195,80"),
        ("cli", b"227 Entering Passive Mode (192,0,2,1,195,80)"),  # a reply from the client side
        ("cli", b"EPSV"),
        ("cli", b"PASV"),
        ("cli", b""),
        ("cli", b"\xff\xf4\xff\xf2ABOR"),
        ("srv", b"PORT 192,0,2,10,195,80"),  # a command from the server side
        ("srv", b"2270 (192,0,2,1,195,80)"),
        ("srv", b"22 7 (192,0,2,1,195,80)"),
        ("srv", b"220 (192,0,2,1,195,80) welcome"),
        ("srv", b"150 (|||6446|)"),
        ("srv", b"227x(192,0,2,1,195,80)"),
    ],
)
def test_other_lines_are_ignored(side, line):
    t = FtpTracker()
    assert (cli if side == "cli" else srv)(t, line + b"\r\n") == []


def test_non_control_packets_and_bad_addresses_ignored():
    t = FtpTracker()
    line = b"PORT 192,0,2,10,195,80\r\n"
    assert t.feed(C4, S4, CPORT, 2121, line, 0.0) == []  # not port 21
    assert t.feed(C4, S4, CPORT, 21, b"", 0.0) == []
    assert t.feed(C4, S6, CPORT, 21, line, 0.0) == []  # mixed families
    assert t.feed(b"\x01\x02", S4, CPORT, 21, line, 0.0) == []
    assert t.feed(b"", b"", CPORT, 21, line, 0.0) == []
    assert t.stats["packets"] == 0 and len(t) == 0
    t2 = FtpTracker(control_ports=(2121,))
    assert only(t2.feed(C4, S4, CPORT, 2121, line, 0.0), Expectation).port == 50000
    assert t2.feed(C4, S4, CPORT, 21, line, 0.0) == []


def test_bytes_like_inputs_accepted():
    t = FtpTracker()
    e = only(t.feed(bytearray(C4), memoryview(S4), CPORT, 21, memoryview(b"PORT 192,0,2,10,195,80\r\n"), 0.0), Expectation)
    assert type(e.peer) is bytes and type(e.addr) is bytes and e.addr == C4


def test_port_21_on_both_sides_is_taken_as_client_to_server():
    t = FtpTracker()
    assert t.feed(S4, C4, 21, 21, b"227 Entering Passive Mode (192,0,2,1,195,80)\r\n", 0.0) == []
    assert only(t.feed(C4, S4, 21, 21, b"PORT 192,0,2,10,195,80\r\n", 0.0), Expectation)


# --- bounded buffers and flows ------------------------------------------------------------------


def test_oversized_line_without_newline_dropped_and_reported_once():
    t = FtpTracker(max_line=512)
    assert cli(t, b"PORT 192,0,2,10,") == []
    o = only(cli(t, b"9" * 600), Oversized)
    assert o.length == 16 + 600 and o.limit == 512 and o.src == C4
    assert t.buffered() == 0
    # the rest of the huge line is skipped without buffering or further reports
    for _ in range(50):
        assert cli(t, b"A" * 1000) == []
        assert t.buffered() == 0
    # the tail after the newline is not taken for a new line start of the oversized one
    assert cli(t, b"A,1,2\r\nPORT 192,0,2,10,195,80\r\n")[0].port == 50000
    assert len(t) == 0 and t.stats["oversized"] == 1
    assert "oversized" in o.describe() and o.as_dict()["length"] == 616


def test_tail_of_an_oversized_line_is_not_a_new_line():
    # "<junk beyond max_line>PORT ..." must not smuggle a command in at the cut point
    t = FtpTracker(max_line=100)
    assert isinstance(only(cli(t, b"NOOP " + b"x" * 95 + b"P"), Oversized), Oversized)
    assert cli(t, b"ORT 192,0,2,10,195,80\r\n") == []
    assert cli(t, b"x" * 101 + b"PORT 192,0,2,10,195,80\r\n")[1:] == []
    assert only(cli(t, b"PORT 192,0,2,10,195,80\r\n"), Expectation)


def test_oversized_complete_line_not_parsed():
    t = FtpTracker(max_line=64)
    events = cli(t, b"PORT 192,0,2,10,195,80" + b" " * 100 + b"\r\nPORT 192,0,2,10,195,81\r\n")
    assert isinstance(events[0], Oversized) and events[1].port == 50001 and len(events) == 2


def test_oversized_line_in_one_huge_packet():
    t = FtpTracker(max_line=128)
    o = only(cli(t, b"\xff" * 65000), Oversized)
    assert o.length == 65000 and t.buffered() == 0


def test_line_at_the_limit_is_kept():
    t = FtpTracker(max_line=64)
    line = b"PORT 192,0,2,10,195,80" + b" " * (64 - 22)
    assert len(line) == 64
    assert cli(t, line) == [] and t.buffered() == 64
    assert only(cli(t, b"\n"), Expectation)


def test_flows_lru_bounded():
    t = FtpTracker(max_flows=3)
    for i in range(10):
        assert cli(t, b"PORT 192,0,2,10,", cport=40000 + i) == []
        assert len(t) <= 3
    assert len(t) == 3 and t.stats["flows_evicted"] == 7
    # an evicted flow starts afresh: its continuation is not a command
    assert cli(t, b"195,80\r\n", cport=40000) == []
    # the most recent ones survive
    assert only(cli(t, b"195,80\r\n", cport=40009), Expectation).ctl[2] == 40009


def test_lru_refreshes_on_use():
    t = FtpTracker(max_flows=2)
    cli(t, b"PORT 192,0,2,", cport=1)
    cli(t, b"PORT 192,0,2,", cport=2)
    cli(t, b"10,", cport=1)  # flow 1 used again: flow 2 is now the oldest
    cli(t, b"PORT 192,0,2,", cport=3)  # evicts flow 2
    assert only(cli(t, b"195,80\n", cport=1), Expectation)
    assert cli(t, b"10,195,80\n", cport=2) == []


def test_flows_expire():
    t = FtpTracker(flow_timeout=300)
    cli(t, b"PORT 192,0,2,10,", now=0.0)
    cli(t, b"PORT 192,0,2,10,", now=0.0, cport=1)
    assert t.expire(200.0) == 0 and len(t) == 2
    assert t.expire(301.0) == 2 and len(t) == 0
    # lazily too: a stale partial line is not joined with a later packet
    cli(t, b"PORT 192,0,2,10,", now=1000.0)
    assert cli(t, b"195,80\r\n", now=1400.0) == []
    cli(t, b"PORT 192,0,2,10,", now=2000.0)
    cli(t, b"X", now=2400.0, cport=7)  # another flow's packet sweeps the stale one
    assert len(t) == 1


def test_complete_lines_leave_no_state():
    t = FtpTracker()
    for i in range(5000):
        cli(t, b"NOOP\r\n", cport=i % 65535 + 1)
    assert len(t) == 0 and t.buffered() == 0


# --- TCP sequence numbers (optional) --------------------------------------------------------------


def test_retransmitted_partial_segment_with_seq():
    t = FtpTracker()
    assert cli(t, b"PORT 192,0,2,", seq=1000) == []
    assert cli(t, b"PORT 192,0,2,", seq=1000) == []  # retransmission: dropped
    assert cli(t, b"0,2,10,1", seq=1009) == []  # overlaps 4 old bytes
    assert only(cli(t, b"95,80\r\n", seq=1017), Expectation).port == 50000
    assert t.stats["retransmits"] == 2


def test_retransmitted_partial_segment_without_seq_is_malformed_not_an_exception():
    t = FtpTracker()
    cli(t, b"PORT 192,0,2,")
    cli(t, b"PORT 192,0,2,")
    assert isinstance(only(cli(t, b"10,195,80\r\n"), Malformed), Malformed)


def test_retransmitted_full_line_with_seq_yields_nothing_new():
    t = FtpTracker()
    assert len(cli(t, b"PORT 192,0,2,10,195,80\r\n", seq=5)) == 1
    assert cli(t, b"PORT 192,0,2,10,195,80\r\n", seq=5) == []
    assert len(cli(t, b"PORT 192,0,2,10,195,81\r\n", seq=29)) == 1


def test_sequence_gap_drops_the_current_line_only():
    t = FtpTracker()
    cli(t, b"PORT 192,0,2,", seq=100)
    events = cli(t, b"195,80\r\nPORT 192,0,2,10,195,81\r\n", seq=120)  # 7 bytes never seen
    assert [e.port for e in exps(events)] == [50001] and len(events) == 1
    assert t.stats["gaps"] == 1


def test_sequence_wraps_around():
    t = FtpTracker()
    start = 2**32 - 5
    assert cli(t, b"PORT 192,0,2,", seq=start) == []
    assert only(cli(t, b"10,195,80\r\n", seq=(start + 13) % 2**32), Expectation)


def test_sequence_jump_means_new_connection():
    t = FtpTracker()
    cli(t, b"PORT 192,0,2,", seq=10)
    assert only(cli(t, b"PORT 192,0,2,10,195,80\r\n", seq=3_000_000_000), Expectation)


# --- parsers and text helpers -------------------------------------------------------------------


def test_parsers_direct():
    assert parse_port(b"192,0,2,10,195,80") == (C4, 50000)
    assert parse_eprt(b"|2|2001:db8:1::10|6446|") == (C6, 6446)
    assert parse_227(b"Entering Passive Mode (192,0,2,1,195,80)") == (S4, 50000)
    assert parse_229(b"Entering Extended Passive Mode (|||6446|)") == 6446
    for f, arg in [(parse_port, b"1,2,3"), (parse_eprt, b"|9|x|1|"), (parse_227, b"x"), (parse_229, b"x")]:
        with pytest.raises(ParseError):
            f(arg)
    assert issubclass(ParseError, ValueError)


def test_text_helpers_are_safe():
    assert addr_text(C4) == "192.0.2.10" and addr_text(C6) == "2001:db8:1::10"
    assert addr_text(b"\x01\x02") == "0x0102"
    s = safe_text(b"PORT \r\n\x1b[31m\xff\\" + b"A" * 200)
    assert s.isascii() and s.isprintable() and s.endswith("...") and len(s) < 120
    assert "\\x0d\\x0a\\x1b" in s and "\\x5c" in s


def test_constructor_validation():
    with pytest.raises(ValueError):
        FtpTracker(pasv_mismatch="trust")
    with pytest.raises(ValueError):
        FtpTracker(max_line=0)
    with pytest.raises(ValueError):
        FtpTracker(max_flows=0)
    with pytest.raises(ValueError):
        FtpTracker(expect_timeout=0)
