"""One detection event as the engine reports it (core.events), for the alert and log-format tests:
``detection_event(**overrides)`` is an instant XMAS block of 198.18.0.2 on tcp/22."""

from __future__ import annotations

from typing import Any

DETECTION: dict[str, Any] = {
    "ts": 1763770000.5,
    "event": "detection",
    "src": "198.18.0.2",
    "network": "198.18.0.2",
    "family": 4,
    "proto": "tcp",
    "port": 22,
    "sport": 40000,
    "dst": "198.18.0.1",
    "label": "XMAS",
    "flags": "FPU",
    "labels": ["XMAS"],
    "ports": [22],
    "hits": 1,
    "action": "block",
    "reason": "instant label XMAS",
    "duration": 3600,
    "offences": 1,
    "ip_options": ["RR"],
    "malformed": None,
    "host": None,
    "ignored": False,
    "triggered": True,
    "blocked": True,
}


def detection_event(**overrides: Any) -> dict[str, Any]:
    return {**DETECTION, **overrides}
