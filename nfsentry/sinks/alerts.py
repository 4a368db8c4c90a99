"""Alerts: one event dict (docs/DESIGN.md) -> syslog line, JSON line, stderr, PortSentry files.

Runs in the daemon's worker thread, never on the packet path. The syslog line format is stable
and greppable (``key=value``); ``[logging] format`` switches it to PortSentry 1.x or 2.0 style so
logcheck/fail2ban rules written for PortSentry keep matching.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path
from typing import Any

from nfsentry.core.units import format_duration
from nfsentry.sinks import files

log = logging.getLogger("nfsentry")

_FACILITIES = logging.handlers.SysLogHandler.facility_names


def _q(text: Any) -> str:
    s = str(text)
    return '"' + s.replace('"', "'") + '"' if (" " in s or not s) else s


def nfsentry_line(ev: dict[str, Any]) -> str:
    """The native syslog line for an event: '<event> key=value ...'."""
    kind = ev["event"]
    if kind == "detection":
        parts = [
            f"scan detected: src={ev['src']}",
            f"proto={ev.get('proto')}",
            f"port={ev.get('port')}",
            f"label={ev.get('label')}",
            f"flags={ev.get('flags') or '-'}",
            f"hits={ev.get('hits', 1)}",
            f"action={ev.get('action')}",
        ]
        if ev.get("ip_options"):
            parts.append(f"ipopts={','.join(ev['ip_options'])}")
        if ev.get("malformed"):
            parts.append(f"malformed={_q(ev['malformed'])}")
        if ev.get("host"):
            parts.append(f"host={ev['host']}")
        parts.append(f"reason={_q(ev.get('reason', ''))}")
        return " ".join(parts)
    if kind == "block":
        dur = ev.get("duration") or 0
        return " ".join(
            [
                f"blocked: network={ev['network']}",
                f"src={ev.get('src') or ev['network']}",
                f"duration={format_duration(dur) if dur else 'forever'}",
                f"offences={ev.get('offences', 1)}",
                f"labels={','.join(ev.get('labels') or []) or '-'}",
                f"ports={','.join(map(str, ev.get('ports') or [])) or '-'}",
                f"action={ev.get('action', 'block')}",
                f"reason={_q(ev.get('reason', ''))}",
            ]
        )
    if kind in ("unblock", "expire"):
        return f"{kind}: network={ev['network']} reason={_q(ev.get('reason', ''))}"
    return f"{kind}: " + " ".join(f"{k}={_q(v)}" for k, v in ev.items() if k not in ("event", "ts"))


class Alerter:
    """Sends events where the configuration says. Each sink fails on its own, logged, never raising."""

    def __init__(self, cfg, foreground: bool = False) -> None:
        self.cfg = cfg
        lg = cfg["logging"]
        self.style = lg["format"]
        self.lock = threading.Lock()
        self.json_path = lg["json_file"] or None
        self.history_path = lg["history_file"] or None
        self.history_style = lg["history_format"]
        self.blocked_path = lg["blocked_file"] or None
        self.errors = 0
        log.setLevel(getattr(logging, lg["level"].upper()))
        log.propagate = False
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        if foreground:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(asctime)s nfsentry: %(message)s"))
            log.addHandler(h)
        self.syslog_problem = None
        logging.raiseExceptions = False  # a dead syslog must never print tracebacks or stop the daemon
        if lg["syslog"] and not Path(lg["syslog_address"]).is_socket():
            self.syslog_problem = f"syslog at {lg['syslog_address']} unavailable (no such socket); alerts go to the other sinks"
        elif lg["syslog"]:
            try:
                h = logging.handlers.SysLogHandler(address=lg["syslog_address"], facility=_FACILITIES[lg["syslog_facility"]])
                h.setFormatter(logging.Formatter(f"{lg['syslog_ident']}[{os.getpid()}]: %(message)s"))
                log.addHandler(h)
            except OSError as e:
                self.syslog_problem = f"syslog at {lg['syslog_address']} unavailable ({e.strerror or e}); alerts go to the other sinks"
        for p in (self.json_path, self.history_path, self.blocked_path):
            if p:
                Path(p).parent.mkdir(parents=True, exist_ok=True, mode=0o750)

    def close(self) -> None:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()

    def lines(self, ev: dict[str, Any]) -> list[str]:
        if self.style == "nfsentry":
            return [nfsentry_line(ev)]
        from nfsentry.sinks import psformat

        return psformat.syslog_lines(ev, self.style, table=self.cfg["nft"]["table"])

    def emit(self, ev: dict[str, Any]) -> None:
        try:
            lines = self.lines(ev)
        except Exception as e:  # a formatter bug must not lose the event
            lines = [nfsentry_line(ev) + f" (format error: {e})"]
        level = logging.WARNING if ev["event"] in ("detection", "block") else logging.INFO
        for line in lines:
            if line:
                log.log(level, line)
        if self.json_path:
            self._append(self.json_path, json.dumps(ev, sort_keys=True, default=str) + "\n")
        if self.history_path and ev["event"] in ("detection", "block"):
            from nfsentry.sinks import psformat

            text = psformat.history_line(ev, self.history_style)
            if text:
                self._append(self.history_path, text + "\n")
        if self.blocked_path and ev["event"] == "block":
            from nfsentry.sinks import psformat

            text = psformat.blocked_line(ev)
            if text:
                self._append(self.blocked_path, text + "\n")

    def _append(self, path: str, text: str) -> None:
        try:
            with self.lock:
                files.append(path, text, 0o640)
        except OSError as e:
            self.errors += 1
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.error("cannot write %s: %s (errors so far: %d)", path, e.strerror or e, self.errors)
