"""nfsentry.core.events: the event records, from decisions, manual blocks and FTP reports."""

from __future__ import annotations

import struct

import pytest

from nfsentry.core.engine import Action, Engine, EngineConfig
from nfsentry.core.events import EventPolicy, decision_event, latency_summary
from nfsentry.core.packet import decode
from nfsentry.ledger.ledger import block_event


def _decision(respond="block"):
    eng = Engine(EngineConfig(respond={"tcp": respond, "udp": respond}), compiled=False)
    syn = struct.pack(
        "!BBHHHBBH4s4sHHIIBBHH",
        0x45,
        0,
        40,
        0,
        0,
        64,
        6,
        0,
        bytes([198, 18, 0, 9]),
        bytes([198, 18, 0, 1]),
        40000,
        22,
        0,
        0,
        0x50,
        0x02,
        1024,
        0,
    )
    return eng.process(decode(syn + bytes(2)), 100.0)


@pytest.mark.parametrize(
    "policy, respond, action",
    [
        (EventPolicy(), "block", "block"),
        (EventPolicy(modes={"tcp": "command", "udp": "block"}), "block", "command"),
        (EventPolicy(modes={"tcp": "log", "udp": "block"}), "block", "alert"),
        (EventPolicy(), "log", "alert"),
        (EventPolicy(dry_run=True), "block", "dry-run"),
        (EventPolicy(observe=True), "block", "log"),
    ],
)
def test_decision_event_action(policy, respond, action):
    d = _decision(respond)
    assert d.action == (Action.ALERT if respond == "log" else Action.BLOCK)
    ev = decision_event(d, "detection", policy)
    assert ev["action"] == action and ev["blocked"] == (action == "block") and ev["triggered"]
    assert ev["src"] == "198.18.0.9" and ev["network"] == "198.18.0.9" and ev["proto"] == "tcp" and ev["port"] == 22
    assert ev["expires"] is None and ev["family"] == 4 and ev["label"] == "SYN"


def test_block_event_expires():
    d = _decision()
    ev = decision_event(d, "block", EventPolicy())
    assert ev["event"] == "block" and ev["expires"] == 100.0 + d.duration and d.duration == 3600


def test_manual_block_event():
    ev = block_event("2001:db8::/64", 60, "by hand", "manual", 1000.0)
    assert ev == {
        "ts": 1000.0,
        "event": "block",
        "network": "2001:db8::/64",
        "src": "2001:db8::/64",
        "family": 6,
        "reason": "by hand",
        "duration": 60,
        "expires": 1060.0,
        "offences": 1,
        "action": "manual",
        "origin": "manual",
        "labels": [],
        "ports": [],
        "blocked": True,
    }
    assert block_event("198.18.0.2", 0, "x", "manual", 5.0)["expires"] is None
    assert block_event("198.18.0.2", 0.5, "x", "manual", 5.0)["expires"] == 6.0  # never 0 by rounding
    assert block_event("198.18.0.2", 0, "x", "manual", 5.0)["family"] == 4


def test_latency_summary():
    assert latency_summary([]) == {"n": 0}
    assert latency_summary([0.003, 0.001, 0.002]) == {"n": 3, "median": 2.0, "max": 3.0}
