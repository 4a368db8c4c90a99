"""Event records: the dicts (docs/DESIGN.md) that the sinks store, log and format, built from an
engine :class:`~nfsentry.core.engine.Decision`, a manual block, an FTP tracker report.

Pure: they take the values they need (an :class:`EventPolicy`, not the configuration). The
daemon, replay and the CLI build events here; nothing else writes these dicts' shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .addrs import addr_text
from .engine import Action

__all__ = ["EventPolicy", "PROTO_NAMES", "decision_event", "ftp_report_event", "latency_summary"]

PROTO_NAMES = {6: "tcp", 17: "udp"}


def _default_modes() -> dict:
    return {"tcp": "block", "udp": "block"}


@dataclass(frozen=True)
class EventPolicy:
    """What a decision event reports as its ``action``: the response mode per protocol
    (``log | block | command``), learning mode (``dry_run``), and observe mode (``observe``:
    nothing is blocked, everything logged). Built from the configuration by
    ``Config.event_policy()``."""

    modes: dict = field(default_factory=_default_modes)
    dry_run: bool = False
    observe: bool = False

    def action_for(self, action: Action, proto: int) -> str:
        """``dry-run`` | ``log`` (observe) | ``alert`` | ``block`` | ``command``."""
        name = PROTO_NAMES.get(proto, "other")
        mode = self.modes.get(name, "block") if name in ("tcp", "udp") else "block"
        if self.dry_run:
            return "dry-run"
        if self.observe:
            return "log"
        if action == Action.ALERT or mode == "log":
            return "alert"
        return mode  # block | command


def decision_event(d, kind: str, policy: EventPolicy) -> dict[str, Any]:
    """An engine decision -> a ``detection`` or ``block`` event (``kind``)."""
    action = policy.action_for(d.action, d.proto)
    now = d.ts
    return {
        "ts": now,
        "event": kind,
        "src": addr_text(d.src),
        "network": d.network,
        "family": 6 if len(d.src) == 16 else 4,
        "proto": PROTO_NAMES.get(d.proto, "other"),
        "port": d.dport,
        "sport": d.sport,
        "dst": addr_text(d.dst) if d.dst else None,
        "label": d.label,
        "flags": d.flags,
        "labels": list(d.labels),
        "ports": list(d.ports),
        "hits": d.hits,
        "action": action,
        "reason": d.reason,
        "duration": d.duration,
        "offences": d.offences,
        "expires": (now + d.duration) if (kind == "block" and d.duration) else None,
        "ip_options": list(d.ip_options),
        "malformed": d.malformed,
        "host": None,
        "ignored": False,
        "triggered": d.action in (Action.ALERT, Action.BLOCK, Action.DROP),
        "blocked": action == "block",
    }


def ftp_report_event(rep, suppressed: int = 0) -> dict[str, Any]:
    """An FTP tracker report (core.ftp Bounce, PasvMismatch, Malformed, Oversized) -> event dict
    ("event": "ftp_bounce", ...; "reason": its escaped one-line description)."""
    ev = rep.as_dict()
    ev["reason"] = rep.describe()
    if suppressed:
        ev["suppressed_before"] = suppressed  # reports dropped by the rate limit since the last one
    return ev


def latency_summary(samples) -> dict[str, Any]:
    """Median and max of the last blocks' decision-to-kernel latency (seconds in), in milliseconds."""
    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(xs[len(xs) // 2] * 1000, 3), "max": round(xs[-1] * 1000, 3)}
