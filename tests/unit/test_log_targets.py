"""Where log lines and alerts go (journald with structured fields, else syslog, else stderr), the
journald field mapping, and the alerter's files opened again on reload (logrotate).

journald is faked here: its socket path is a socket the test binds, and systemd.journal.send is
replaced by a recorder (libsystemd writes to a fixed path). The real wire format, from a real
daemon, is checked by tests/e2e/test_service_notify.py with a fake journald in a mount namespace."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from event_util import detection_event

from nfsentry.config import schema as C
from nfsentry.sinks import alerts as A

DET = detection_event(labels=["XMAS", "FIN"], ports=[21, 22])


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def __call__(self, message, **fields):
        self.calls.append({"MESSAGE": message, **{k: str(v) for k, v in fields.items()}})


def dgram(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.3)
    return s


def received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(65536).decode())
        except TimeoutError:
            return out


@pytest.fixture
def journal(tmp_path, monkeypatch):
    """journald is there: its socket exists (a socket of the test's) and sends are recorded."""
    sock = dgram(tmp_path / "journal.sock")
    rec = Recorder()
    monkeypatch.setattr(A, "JOURNAL_SOCKET", str(tmp_path / "journal.sock"))
    monkeypatch.setattr(A, "journal_send", rec)
    yield rec
    sock.close()


@pytest.fixture
def syslog(tmp_path):
    s = dgram(tmp_path / "log.sock")
    yield s
    s.close()


def alerter(tmp_path, **logging):
    cfg = C.validate({"logging": {"syslog_address": str(tmp_path / "log.sock"), "json_file": "", **logging}})
    return A.Alerter(cfg)


def test_journal_fields_name_every_value_of_the_event():
    f = A.journal_fields(DET)
    assert f["NFSENTRY_EVENT"] == "detection"
    assert f["NFSENTRY_SRC"] == "198.18.0.2" and f["NFSENTRY_DST"] == "198.18.0.1"
    assert f["NFSENTRY_LABEL"] == "XMAS" and f["NFSENTRY_ACTION"] == "block" and f["NFSENTRY_PROTO"] == "tcp"
    assert f["NFSENTRY_PORT"] == "22" and f["NFSENTRY_PORTS"] == "21,22" and f["NFSENTRY_LABELS"] == "XMAS,FIN"
    assert f["NFSENTRY_IP_OPTIONS"] == "RR" and f["NFSENTRY_REASON"] == "instant label XMAS"
    assert f["NFSENTRY_BLOCKED"] == "1" and f["NFSENTRY_IGNORED"] == "0" and f["NFSENTRY_DURATION"] == "3600"
    # no value, no field; the event's time is the entry's own
    assert not {"NFSENTRY_TS", "NFSENTRY_MALFORMED", "NFSENTRY_HOST"} & set(f)
    # every key is a valid journal field name; nested values (FTP reports) as JSON
    odd = A.journal_fields({"event": "ftp_bounce", "bad key": 1, "_private": 2, "detail": {"b": 1, "a": "x"}})
    assert odd == {"NFSENTRY_EVENT": "ftp_bounce", "NFSENTRY_DETAIL": '{"a": "x", "b": 1}'}


def test_journald_when_it_is_there_with_the_fields_and_not_syslog_too(tmp_path, journal, syslog):
    a = alerter(tmp_path, syslog_facility="local3", syslog_ident="portsentry")
    try:
        assert a.target == "journald" and a.syslog_problem is None
        a.emit(DET)
        a.emit({"ts": 1.0, "event": "unblock", "network": "2001:db8::/64", "src": "2001:db8::/64", "reason": "admin"})
        A.log.info("a daemon line")
    finally:
        a.close()
    det, unblock, line = journal.calls
    assert det["MESSAGE"].startswith("scan detected: src=198.18.0.2 proto=tcp port=22 label=XMAS")
    assert (det["PRIORITY"], det["SYSLOG_IDENTIFIER"], det["SYSLOG_FACILITY"]) == ("4", "portsentry", "19")
    assert det["NFSENTRY_SRC"] == "198.18.0.2" and det["NFSENTRY_LABEL"] == "XMAS" and det["NFSENTRY_ACTION"] == "block"
    assert det["CODE_FUNC"] == "emit"  # given, so systemd.journal.send does not walk the stack
    assert unblock["PRIORITY"] == "6" and unblock["NFSENTRY_NETWORK"] == "2001:db8::/64" and unblock["NFSENTRY_EVENT"] == "unblock"
    assert line["MESSAGE"] == "a daemon line" and not any(k.startswith("NFSENTRY_") for k in line)
    assert received(syslog) == []  # journald forwards to syslog itself: nothing twice


def test_portsentry_formats_go_to_journald_with_the_same_fields(tmp_path, journal):
    a = alerter(tmp_path, format="portsentry1")
    try:
        a.emit({**DET, "label": "SYN", "flags": "S"})
    finally:
        a.close()
    assert journal.calls[0]["MESSAGE"].startswith("attackalert: TCP SYN/Normal scan from host: 198.18.0.2")
    assert journal.calls[0]["NFSENTRY_LABEL"] == "SYN"


def test_syslog_when_journald_is_not_there_or_not_wanted(tmp_path, monkeypatch, syslog, journal):
    a = alerter(tmp_path, journald=False)  # journald there, but not wanted
    try:
        assert a.target == "syslog"
        a.emit(DET)
    finally:
        a.close()
    assert journal.calls == [] and "scan detected: src=198.18.0.2" in received(syslog)[0]
    monkeypatch.setattr(A, "JOURNAL_SOCKET", str(tmp_path / "no-journal"))  # not there
    a = alerter(tmp_path)
    try:
        assert a.target == "syslog" and a.syslog_problem is None
        a.emit(DET)
    finally:
        a.close()
    assert "label=XMAS" in received(syslog)[0]
    monkeypatch.setattr(A, "JOURNAL_SOCKET", str(tmp_path / "journal.sock"))
    monkeypatch.setattr(A, "journal_send", None)  # python3-systemd not installed
    a = alerter(tmp_path)
    a.close()
    assert a.target == "syslog"


def test_neither_journald_nor_syslog_detections_go_to_stderr(tmp_path, monkeypatch, capfd):
    """A container: no /dev/log, no journal socket. Not in the foreground, yet nothing vanishes."""
    monkeypatch.setattr(A, "JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    a = alerter(tmp_path)  # syslog_address: nothing there
    try:
        assert a.target == "stderr"
        assert "journald unavailable" in a.syslog_problem and "syslog at" in a.syslog_problem
        assert "go to stderr" in a.syslog_problem
        a.emit(DET)
    finally:
        a.close()
    err = capfd.readouterr().err
    assert "scan detected: src=198.18.0.2 proto=tcp port=22 label=XMAS" in err
    monkeypatch.setattr(A, "journal_send", None)
    a = alerter(tmp_path)
    a.close()
    assert a.target == "stderr" and "python3-systemd" in a.syslog_problem


def test_both_turned_off_means_stderr_without_a_complaint(tmp_path, monkeypatch, capfd, journal):
    a = alerter(tmp_path, journald=False, syslog=False)
    try:
        assert a.target == "stderr" and a.syslog_problem is None
        a.emit(DET)
    finally:
        a.close()
    assert journal.calls == [] and "scan detected: src=198.18.0.2" in capfd.readouterr().err


def test_the_events_file_is_kept_open_and_opened_again_on_reopen(tmp_path):
    """logrotate renames the file, then `nfsentry reload` (or SIGHUP) reopens: the lines before
    the reopen land in the renamed file, the ones after in a new file at the configured path."""
    path = tmp_path / "log" / "events.jsonl"
    cfg = C.validate({"logging": {"syslog": False, "journald": False, "json_file": str(path)}})
    a = A.Alerter(cfg)
    try:
        a.emit({**DET, "src": "198.18.0.10"})
        os.rename(path, tmp_path / "log" / "events.jsonl.1")
        a.emit({**DET, "src": "198.18.0.11"})  # still the open file: renamed, nothing lost
        assert not path.exists()
        a.reopen()
        a.emit({**DET, "src": "198.18.0.12"})
    finally:
        a.close()
    old = [json.loads(x)["src"] for x in (tmp_path / "log" / "events.jsonl.1").read_text().splitlines()]
    new = [json.loads(x)["src"] for x in path.read_text().splitlines()]
    assert old == ["198.18.0.10", "198.18.0.11"] and new == ["198.18.0.12"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o137 == 0  # 0640 at most
    assert a._fds == {}  # closed


def test_a_failed_write_is_reported_and_the_file_opened_again(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    cfg = C.validate({"logging": {"syslog": False, "journald": False, "json_file": str(path)}})
    a = A.Alerter(cfg)
    real = A.files.write
    fail = [True]

    def write(fd, text):
        if fail[0]:
            raise OSError(28, "No space left on device")
        real(fd, text)

    monkeypatch.setattr(A.files, "write", write)
    try:
        a.emit(DET)
        assert a.errors == 1 and a._fds == {}
        fail[0] = False
        a.emit({**DET, "src": "198.18.0.99"})
    finally:
        a.close()
    assert [json.loads(x)["src"] for x in path.read_text().splitlines()] == ["198.18.0.99"]


def test_a_reload_keeps_the_log_lines_flowing(tmp_path, monkeypatch, syslog):
    """The worker builds the new alerter, then closes the old one: the old one's close() must not
    take the new one's handlers away (after a reload, nothing was logged any more)."""
    monkeypatch.setattr(A, "JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    old = alerter(tmp_path)
    new = alerter(tmp_path)
    old.close()
    try:
        A.log.warning("after the reload")
        new.emit(DET)
    finally:
        new.close()
    got = received(syslog)
    assert any("after the reload" in m for m in got) and any("scan detected: src=198.18.0.2" in m for m in got), got
    assert A.log.handlers == []  # closed: nothing of either left
