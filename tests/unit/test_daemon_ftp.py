"""The daemon's FTP path (queue 1) without a kernel: raw packets in, tracker events, nft calls and
worker events out. The e2e side is tests/e2e/test_ftp_e2e.py."""

from __future__ import annotations

import socket
import struct

import pytest

from nfsentry.config import schema as C
from nfsentry.core.events import ftp_report_event
from nfsentry.daemon import daemon as D
from nfsentry.daemon import ftpqueue as F

CLIENT, SERVER, THIRD = "192.0.2.10", "192.0.2.1", "198.51.100.66"
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:1::1"


def tcp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes, seq: int, options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, doff << 4, 0x18, 502, 0, 0) + options
    if ":" in src:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp) + len(payload), 6, 64)
        return ip + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + tcp + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return ip + tcp + payload


class FakePacket:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.verdicts = raw, []

    def get_payload(self) -> bytes:
        return self.raw

    def accept(self) -> None:
        self.verdicts.append("accept")


class FakeNft:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = [], fail

    def expect_ftp(self, peer, server, port, timeout, remove=()):
        self.calls.append((peer, server, port, timeout, list(remove)))
        if self.fail:
            raise RuntimeError("nft said no")


@pytest.fixture
def daemon(monkeypatch):
    monkeypatch.setattr(D, "never_block_networks", lambda cfg: [])
    d = D.Daemon(C.defaults())
    d.build_core()
    d.nft = FakeNft()
    return d


def queued(d: D.Daemon, kind: str) -> list:
    out = []
    while not d.events.empty():
        k, obj, extra = d.events.get_nowait()
        if k == kind:
            out.append((obj, extra))
    return out


def send(d, src, dst, sport, dport, payload, seq, **kw) -> FakePacket:
    p = FakePacket(tcp_packet(src, dst, sport, dport, payload, seq, **kw))
    d.ftpq.on_packet(p)
    assert p.verdicts == ["accept"]
    return p


def test_port_split_and_retransmitted_becomes_one_expectation_in_the_kernel(daemon):
    d = daemon
    # "PORT 192,0,2,10,156,65" split in two, the first segment retransmitted (with TCP options, so
    # the sequence number is read from behind them).
    line = b"PORT 192,0,2,10,156,65\r\n"
    opts = b"\x01\x01\x08\x0a" + b"\x00" * 8
    send(d, CLIENT, SERVER, 40000, 21, line[:9], 1000, options=opts)
    send(d, CLIENT, SERVER, 40000, 21, line[:9], 1000, options=opts)
    send(d, CLIENT, SERVER, 40000, 21, line[9:], 1009)
    assert d.nft.calls == [(SERVER, CLIENT, 156 * 256 + 65, 60, [])]
    assert d.ftpq.ftp.stats["retransmits"] == 1 and d.ftpq.ftp.stats["malformed"] == 0
    # the engine's table knows it too (a data SYN racing the kernel element is queued and passes)
    assert d.ftpq.expectations.match(socket.inet_aton(SERVER), socket.inet_aton(CLIENT), 40001, F.time.time(), 20)
    assert d.counters["ftp_expectations"] == 1 and d.counters["errors"] == 0


def test_a_superseding_expectation_withdraws_the_previous_one_in_the_same_call(daemon):
    d = daemon
    first = b"229 Entering Extended Passive Mode (|||40001|)\r\n"
    send(d, SERVER6, CLIENT6, 21, 40000, first, 5000)
    send(d, SERVER6, CLIENT6, 21, 40000, b"229 Entering Extended Passive Mode (|||40002|)\r\n", 5000 + len(first))
    assert [c[:3] for c in d.nft.calls] == [(CLIENT6, SERVER6, 40001), (CLIENT6, SERVER6, 40002)]
    assert d.nft.calls[0][4] == [] and d.nft.calls[1][4] == [(CLIENT6, SERVER6, 40001)]
    assert len(d.ftpq.expectations) == 1


def test_nft_failure_is_an_internal_error_not_a_crash_and_the_engine_still_knows(daemon):
    d = daemon
    d.nft = FakeNft(fail=True)
    send(d, SERVER, CLIENT, 21, 40000, b"227 Entering Passive Mode (192,0,2,1,156,65)\r\n", 1)
    assert d.counters["errors"] == 1 and len(d.ftpq.expectations) == 1


def test_reports_become_events_with_describe_and_are_rate_limited(daemon, monkeypatch):
    d = daemon
    send(d, CLIENT, SERVER, 40000, 21, b"PORT 198,51,100,66,156,65\r\n", 1)
    [(rep, extra)] = queued(d, "ftp")
    ev = ftp_report_event(rep, extra["suppressed"])
    assert ev["event"] == "ftp_bounce" and ev["src"] == CLIENT and ev["announced"] == THIRD
    assert ev["reason"] == rep.describe() and "suppressed_before" not in ev
    assert d.nft.calls == [] and len(d.ftpq.expectations) == 0
    # A flood: FTP_REPORTS_PER_WINDOW per window reach the worker, the rest are counted.
    clock = [F.time.monotonic() + 1e6]  # a fresh window
    monkeypatch.setattr(F.time, "monotonic", lambda: clock[0])
    lines = b"".join(b"PORT 999,1,1,1,1,%d\x1b\r\n" % i for i in range(50))
    send(d, CLIENT, SERVER, 40001, 21, lines, 1)
    got = queued(d, "ftp")
    assert len(got) == F.FTP_REPORTS_PER_WINDOW
    assert d.counters["ftp_reports_suppressed"] == 50 - F.FTP_REPORTS_PER_WINDOW
    clock[0] += F.FTP_REPORT_WINDOW
    send(d, CLIENT, SERVER, 40001, 21, b"PORT 999,1,1,1,1,1\r\n", 1 + len(lines))
    [(rep, extra)] = queued(d, "ftp")
    ev = ftp_report_event(rep, extra["suppressed"])
    assert ev["event"] == "ftp_malformed" and ev["suppressed_before"] == 50 - F.FTP_REPORTS_PER_WINDOW
    assert "\x1b" not in str(got[0][0].describe())


def test_the_worker_turns_a_report_into_an_event_for_the_alerter_and_history(daemon):
    d = daemon
    seen = []

    class Alerter:
        def emit(self, ev):
            seen.append(ev)

    d.worker.alerter = Alerter()
    d.worker.store_write = lambda op, ev: seen.append(op)
    send(d, CLIENT, SERVER, 40000, 21, b"EPRT |1|198.51.100.66|40000|\r\n", 1)
    for kind, obj, extra in [d.events.get_nowait()]:
        d.worker.handle_event(kind, obj, extra)
    assert seen[0] == "history" and seen[1]["event"] == "ftp_bounce"
    assert seen[1]["reason"].startswith("ftp bounce refused: client 192.0.2.10 sent EPRT")


def test_non_control_or_empty_segments_cost_nothing(daemon):
    d = daemon
    send(d, CLIENT, SERVER, 40000, 21, b"", 1)
    p = FakePacket(b"\x45garbage")
    d.ftpq.on_packet(p)
    assert p.verdicts == ["accept"] and d.ftpq.ftp.stats["packets"] == 0 and d.counters["errors"] == 0
