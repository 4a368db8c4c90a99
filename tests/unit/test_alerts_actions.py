"""Alert sinks (syslog over a real datagram socket, JSON lines, stderr) and external actions."""

from __future__ import annotations

import json
import socket

import pytest
from event_util import detection_event

from nfsentry.config import schema as C
from nfsentry.sinks import actions
from nfsentry.sinks.alerts import Alerter, nfsentry_line

DET = detection_event()
BLK = {**DET, "event": "block", "expires": 1763773600.5}


def test_native_lines_are_stable_and_greppable():
    line = nfsentry_line(DET)
    assert line.startswith("scan detected: src=198.18.0.2 proto=tcp port=22 label=XMAS flags=FPU hits=1 action=block")
    assert "ipopts=RR" in line
    assert nfsentry_line(BLK).startswith(
        "blocked: network=198.18.0.2 src=198.18.0.2 duration=1h offences=1 labels=XMAS ports=22 action=block"
    )
    assert (
        nfsentry_line({"ts": 1, "event": "unblock", "network": "2001:db8::/64", "reason": "admin"})
        == "unblock: network=2001:db8::/64 reason=admin"
    )
    assert "duration=forever" in nfsentry_line({**BLK, "duration": 0})


def test_alerter_writes_syslog_json_and_stderr(tmp_path, capsys):
    sock_path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(2)
    jpath = tmp_path / "logs" / "events.jsonl"
    cfg = C.validate({"logging": {"journald": False, "syslog_address": sock_path, "json_file": str(jpath), "syslog_facility": "local3"}})
    a = Alerter(cfg, foreground=True)
    try:
        a.emit(DET)
        a.emit(BLK)
        msgs = [rx.recv(4096).decode(), rx.recv(4096).decode()]
    finally:
        a.close()
        rx.close()
    # <PRI>: local3 (19) * 8 + warning (4) = 156
    assert msgs[0].startswith("<156>nfsentry[") and "scan detected: src=198.18.0.2" in msgs[0]
    assert "blocked: network=198.18.0.2" in msgs[1]
    lines = [json.loads(l) for l in jpath.read_text().splitlines()]
    assert [l["event"] for l in lines] == ["detection", "block"] and lines[0]["label"] == "XMAS"
    assert "scan detected: src=198.18.0.2" in capsys.readouterr().err


def test_missing_syslog_is_reported_not_fatal(tmp_path):
    cfg = C.validate({"logging": {"journald": False, "syslog_address": str(tmp_path / "nope"), "json_file": str(tmp_path / "e.jsonl")}})
    a = Alerter(cfg)
    assert "unavailable" in a.syslog_problem
    a.emit(DET)
    a.close()
    assert (tmp_path / "e.jsonl").read_text().count("\n") == 1


def test_command_substitution_is_an_argument_list(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {out}\n')
    script.chmod(0o755)
    rc, _ = actions.run_command([str(script), "$TARGET$", "port=$PORT$", "$MODE$"], "2001:db8::2", 22, "SYN")
    assert rc == 0
    assert out.read_text().splitlines() == ["2001:db8::2", "port=22", "SYN"]


@pytest.mark.parametrize(
    "target, port, mode", [("198.18.0.2; rm -rf /", 22, "SYN"), ("198.18.0.2", 70000, "SYN"), ("198.18.0.2", 22, "$(id)")]
)
def test_command_refuses_anything_but_validated_values(target, port, mode):
    with pytest.raises(ValueError):
        actions.substitute(["/bin/true", "$TARGET$", "$PORT$", "$MODE$"], target, port, mode)


def test_hosts_deny_lines(tmp_path):
    p = tmp_path / "hosts.deny"
    actions.append_hosts_deny(str(p), "198.18.0.2")
    actions.append_hosts_deny(str(p), "198.18.0.2")
    actions.append_hosts_deny(str(p), "2001:db8:1::/64")
    actions.append_hosts_deny(str(p), "198.18.4.0/24")
    assert p.read_text().splitlines() == ["ALL: 198.18.0.2", "ALL: [2001:db8:1::]/64", "ALL: 198.18.4.0/255.255.255.0"]
