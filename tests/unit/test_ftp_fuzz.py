"""Property tests: no input makes the tracker raise, state stays bounded, splits never matter."""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsentry.core.ftp import Bounce, Expectation, ExpectationTable, FtpTracker, Malformed, Oversized, PasvMismatch

C4 = socket.inet_pton(socket.AF_INET, "192.0.2.10")
S4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
C6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::10")
S6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::1")
EVENT_TYPES = (Expectation, Bounce, PasvMismatch, Malformed, Oversized)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines of the grammar (valid and broken announcements, other commands), with CRLF or LF.
_num = st.one_of(st.sampled_from([192, 0, 2, 1, 10, 195, 80]), st.integers(0, 255), st.integers(256, 2000)).map(lambda n: str(n).encode())
_valid = st.sampled_from(
    [
        b"PORT 192,0,2,10,195,80",
        b"EPRT |1|192.0.2.10|50000|",
        b"EPRT |2|2001:db8:1::10|50000|",
        b"PORT 198,51,100,66,0,22",
        b"227 Entering Passive Mode (192,0,2,1,195,80).",
        b"227 Entering Passive Mode (10,0,0,1,195,80).",
        b"229 Entering Extended Passive Mode (|||50000|)",
    ]
)
_port = st.one_of(st.integers(1, 65535), st.sampled_from([0, 65536, 70000, 999999])).map(lambda n: str(n).encode())
_delim = st.sampled_from([b"|", b"!", b"#", b"$", b"~", b"%"])
_client_line = st.one_of(
    _valid,
    st.lists(_num, min_size=4, max_size=7).map(lambda v: b"PORT " + b",".join(v)),
    st.builds(
        lambda d, a, p: b"EPRT " + d + b"1" + d + a + d + p + d,
        _delim,
        st.sampled_from([b"192.0.2.10", b"198.51.100.66", b"192.0.2.300"]),
        _port,
    ),
    st.sampled_from([b"USER anonymous", b"PASS x", b"TYPE I", b"RETR f", b"NOOP", b"PASV", b"EPSV"]),
)
_server_line = st.one_of(
    _valid,
    st.lists(_num, min_size=6, max_size=6).map(lambda v: b"227 Entering Passive Mode (" + b",".join(v) + b")."),
    st.builds(lambda d, p: b"229 Entering Extended Passive Mode (" + d * 3 + p + d + b")", _delim, _port),
    st.sampled_from([b"220 welcome", b"230 ok", b"150 opening", b"226 done"]),
)


def _line_stream(line_strategy):
    return st.lists(st.tuples(line_strategy, st.sampled_from([b"\r\n", b"\n"])), min_size=1, max_size=8).map(
        lambda ls: b"".join(a + b for a, b in ls)
    )


# Fragments that steer random lines towards the parsers' corners.
_atoms = st.sampled_from(
    [
        b"PORT ",
        b"port ",
        b"EPRT ",
        b"eprt ",
        b"227 ",
        b"227-",
        b"229 ",
        b"(",
        b")",
        b"|",
        b"!",
        b",",
        b".",
        b":",
        b"::",
        b"|1|",
        b"|2|",
        b"|||",
        b"192",
        b"0",
        b"10",
        b"255",
        b"256",
        b"300",
        b"1000",
        b"65535",
        b"65536",
        b"70000",
        b"2001:db8:1::10",
        b"192.0.2.10",
        b"192,0,2,10,",
        b"192,0,2,1,",
        b"195,80",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b"\x00",
        b"\xff",
        b"\xc3\xa9",
        b"%",
        b"x" * 40,
    ]
)
_noise = st.binary(max_size=64)
_random_chunk = st.lists(st.one_of(_atoms, _noise), max_size=12).map(b"".join)
# A slice of a stream of grammar lines, so that whole and split announcements (valid, bounces,
# mismatches, malformed) reach the tracker among the noise.
_grammar_slice = st.tuples(st.one_of(_line_stream(_client_line), _line_stream(_server_line)), st.integers(0, 400), st.integers(0, 400)).map(
    lambda t: t[0][min(t[1], t[2]) : max(t[1], t[2])] if t[1] != t[2] else t[0]
)
_chunk = st.one_of(_random_chunk, _grammar_slice)


@st.composite
def _packets(draw):
    """(flow index, from_client, payload, seq mode) over a few flows of both families."""
    n = draw(st.integers(1, 25))
    seq_mode = st.sampled_from([None, "next", "next", "next", "retransmit", "gap", "random"])
    return [(draw(st.integers(0, 5)), draw(st.booleans()), draw(_chunk), draw(seq_mode)) for _ in range(n)]


def _endpoints(i):
    c, s = (C4, S4) if i % 2 == 0 else (C6, S6)
    return c, s, 40000 + i


@settings(SETTINGS, max_examples=120)
@given(_packets(), st.integers(16, 200), st.integers(1, 4))
def test_random_traffic_never_raises_and_stays_bounded(packets, max_line, max_flows):
    t = FtpTracker(max_line=max_line, max_flows=max_flows)
    tab = ExpectationTable(max_entries=3)
    now = 0.0
    next_seq: dict = {}
    for i, from_client, payload, mode in packets:
        c, s, cport = _endpoints(i)
        now += 0.5
        # TCP sequence numbers as the daemon would pass them: in order, retransmitted, after a gap
        # (a lost segment), arbitrary, or none at all.
        flow = (i, from_client)
        nxt = next_seq.get(flow, 2**32 - 100 + i)
        seq = {None: None, "next": nxt, "retransmit": nxt - len(payload) // 2 - 1, "gap": nxt + 7, "random": (nxt * 2654435761) % 2**32}[
            mode
        ]
        if seq is not None:
            seq %= 2**32
            next_seq[flow] = max(nxt, seq + len(payload)) % 2**32
        if from_client:
            events = t.feed(c, s, cport, 21, payload, now, seq=seq)
        else:
            events = t.feed(s, c, 21, cport, payload, now, seq=seq)
        assert len(t) <= max_flows
        assert all(len(f.buf) <= max_line for f in t._flows.values())
        assert t.buffered() <= max_line * max_flows
        for e in events:
            assert isinstance(e, EVENT_TYPES)
            text = e.describe()
            assert text.isascii() and text.isprintable()
            e.as_dict()
            if isinstance(e, Expectation):
                # narrow: only the control connection's own endpoints, a real port
                assert 1 <= e.port <= 65535 and e.expires > now
                if e.mode == "active":
                    assert (e.peer, e.addr) == (s, c) and from_client
                else:
                    assert (e.peer, e.addr) == (c, s) and not from_client
                tab.add(e)
                assert len(tab) <= 3
                e.nft_element(now)
            elif isinstance(e, Malformed):
                assert len(e.line) <= 80
        tab.match(c, s, 50000, now, sport=20)
    t.expire(now + 1e6)
    assert len(t) == 0


@SETTINGS
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6), st.booleans())
def test_random_bytes_at_random_split_points(data, cuts, from_client):
    t = FtpTracker(max_line=256)
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        if from_client:
            events = t.feed(C4, S4, 40000, 21, data[a:b], 1.0)
        else:
            events = t.feed(S4, C4, 21, 40000, data[a:b], 1.0)
        assert all(isinstance(e, EVENT_TYPES) for e in events)
        assert t.buffered() <= 256


@SETTINGS
@given(st.data(), st.booleans())
def test_splitting_never_changes_the_events(data, from_client):
    stream = data.draw(_line_stream(_client_line if from_client else _server_line))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=5)))

    def run(pieces):
        t = FtpTracker()
        out = []
        for p in pieces:
            if from_client:
                out += t.feed(C4, S4, 40000, 21, p, 7.0)
            else:
                out += t.feed(S4, C4, 21, 40000, p, 7.0)
        assert len(t) == 0
        return out

    whole = run([stream])
    bounds = [0, *cuts, len(stream)]
    assert run([stream[a:b] for a, b in zip(bounds, bounds[1:])]) == whole
    n_lines = stream.count(b"\n")
    assert len([e for e in whole if not isinstance(e, PasvMismatch)]) <= n_lines


@SETTINGS
@given(st.data())
def test_retransmissions_with_seq_never_change_the_events(data):
    stream = data.draw(_line_stream(_client_line))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=5))))
    isn = data.draw(st.integers(0, 2**32 - 1))
    bounds = [0, *cuts, len(stream)]
    segs = [(a, stream[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]

    def run(segments):
        t = FtpTracker()
        out = []
        for off, seg in segments:
            out += t.feed(C4, S4, 40000, 21, seg, 7.0, seq=(isn + off) % 2**32)
        return out

    whole = run([(0, stream)])
    # Every segment may be sent again (in full or from its middle) right after itself or after
    # the next one, as TCP retransmits after a lost ACK or a timeout.
    noisy = []
    for k, (off, seg) in enumerate(segs):
        noisy.append((off, seg))
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(0, len(seg) - 1))
            noisy.append((off + cut, seg[cut:]))
        if k and data.draw(st.booleans()):
            noisy.append(segs[k - 1])
    assert run(noisy) == whole


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "match", "match_sport", "expire"]),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(1, 4),
            st.floats(0, 5),
        ),
        max_size=60,
    )
)
def test_table_against_a_model(ops):
    hosts = [C4, S4, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"]
    t = ExpectationTable(max_entries=4)
    model: dict = {}  # key -> [expires, bound sport]
    now = 0.0
    for op, a, b, port, dt in ops:
        now += dt
        key = (hosts[a], hosts[b], port)
        if op == "add":
            e = Expectation(4, hosts[a], hosts[b], port, now + 3.0, "active")
            removed = t.add(e)
            model.pop(key, None)
            for r in removed:
                model.pop(r.key, None)
            model[key] = [e.expires, None]
            assert len(t) <= 4 and len(model) == len(t)
        elif op in ("match", "match_sport"):
            sport = 20 if op == "match_sport" else None
            slot = model.get(key)
            if slot is None:
                want = False
            elif now >= slot[0]:
                want = False
                del model[key]
            elif slot[1] is None:
                want = True
                if sport is None:
                    del model[key]
                else:
                    slot[1] = sport
            else:
                want = sport is not None and sport == slot[1]
            assert t.match(*key, now, sport=sport) is want
        else:
            t.expire(now)
            for k in [k for k, v in model.items() if now >= v[0]]:
                del model[k]
        assert set(e.key for e in t) == set(model)
