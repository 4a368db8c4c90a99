"""Alerts: one event dict (docs/DESIGN.md) -> journald entry or syslog line, JSON line, stderr,
PortSentry files.

Runs in the daemon's worker thread, never on the packet path. The line format is stable and
greppable (``key=value``); ``[logging] format`` switches it to PortSentry 1.x or 2.0 style so
logcheck/fail2ban rules written for PortSentry keep matching.

Where the lines go (:meth:`Alerter.__init__`), first that is reachable:

1. journald (``[logging] journald``, its socket :data:`JOURNAL_SOCKET` is there and python3-systemd
   imports): the same line as ``MESSAGE``, with ``PRIORITY``, ``SYSLOG_IDENTIFIER``,
   ``SYSLOG_FACILITY`` and every field of the event as ``NFSENTRY_<KEY>`` (:func:`journal_fields`:
   ``journalctl NFSENTRY_SRC=198.18.0.2``). Not to syslog as well: journald forwards to it.
2. syslog (``[logging] syslog``) at ``syslog_address``, as before.
3. neither (a container without /dev/log or a journal, or both turned off): stderr, so detections
   never vanish.

The files (JSON lines, PortSentry history and blocked files) are kept open and opened again by
:meth:`Alerter.reopen` (SIGHUP, ``nfsentry reload``: logrotate's postrotate).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from nfsentry.core.units import format_duration
from nfsentry.sinks import files

try:  # python3-systemd (Debian); without it, syslog as before (journald reads /dev/log too)
    from systemd.journal import send as journal_send
except ImportError:  # pragma: no cover - depends on the host
    journal_send = None

log = logging.getLogger("nfsentry")

_FACILITIES = logging.handlers.SysLogHandler.facility_names
JOURNAL_SOCKET = "/run/systemd/journal/socket"  # where libsystemd's sd_journal_send writes
_FIELD_KEY = re.compile(r"[A-Z0-9][A-Z0-9_]{0,54}")  # journald: upper case, digits, '_', not first, <= 64


def journal_fields(ev: dict[str, Any]) -> dict[str, str]:
    """The event as journald fields: ``NFSENTRY_<KEY>`` for every key with a value (lists joined by
    ",", booleans 1/0); ``ts`` is the entry's own time and is left out."""
    out = {}
    for k, v in ev.items():
        if k == "ts" or v is None or v == "" or v == []:
            continue
        key = str(k).upper()
        if not _FIELD_KEY.fullmatch(key):
            continue
        if isinstance(v, bool):
            text = "1" if v else "0"
        elif isinstance(v, (list, tuple)):
            text = ",".join(map(str, v))
        elif isinstance(v, dict):
            text = json.dumps(v, sort_keys=True, default=str)
        else:
            text = str(v)
        out["NFSENTRY_" + key] = text
    return out


def _priority(levelno: int) -> int:
    """syslog priority of a logging level (journald's PRIORITY)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalHandler(logging.Handler):
    """Log records to journald (``send``: systemd.journal.send). A record logged with
    ``extra={"journal": {...}}`` carries those fields too. A failed send is dropped (journald
    restarting); ``errors`` counts them."""

    def __init__(self, send: Any, ident: str, facility: int) -> None:
        super().__init__()
        self.send = send
        self.ident = ident
        self.facility = str(facility)
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(
                record.getMessage(),
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                PRIORITY=str(_priority(record.levelno)),
                SYSLOG_IDENTIFIER=self.ident,
                SYSLOG_FACILITY=self.facility,
                **getattr(record, "journal", {}),
            )
        except Exception:
            self.errors += 1


def journald_reachable() -> bool:
    """python3-systemd imports and journald's socket is there."""
    return journal_send is not None and Path(JOURNAL_SOCKET).is_socket()


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
        handlers: list[logging.Handler] = []  # this alerter's, put in place at once (below)
        self._fds: dict[str, int] = {}  # path -> descriptor, open until reopen() or close()
        self.syslog_problem = None  # why the log lines do not go where the configuration says (one line)
        self.target = "none"  # where the log lines go: journald | syslog | stderr
        logging.raiseExceptions = False  # a dead syslog must never print tracebacks or stop the daemon
        problems = []
        if lg["journald"]:
            if journald_reachable():
                handlers.append(JournalHandler(journal_send, lg["syslog_ident"], _FACILITIES[lg["syslog_facility"]]))
                self.target = "journald"
            elif journal_send is None:
                problems.append("journald unavailable (python3-systemd not installed)")
            else:
                problems.append(f"journald unavailable (no socket {JOURNAL_SOCKET})")
        if self.target == "none" and lg["syslog"]:
            if not Path(lg["syslog_address"]).is_socket():
                problems.append(f"syslog at {lg['syslog_address']} unavailable (no such socket)")
            else:
                try:
                    h = logging.handlers.SysLogHandler(address=lg["syslog_address"], facility=_FACILITIES[lg["syslog_facility"]])
                    h.setFormatter(logging.Formatter(f"{lg['syslog_ident']}[{os.getpid()}]: %(message)s"))
                    handlers.append(h)
                    self.target = "syslog"
                except OSError as e:
                    problems.append(f"syslog at {lg['syslog_address']} unavailable ({e.strerror or e})")
        if self.target == "none":
            # nothing reachable (a container without /dev/log or a journal), or both turned off:
            # stderr rather than nowhere
            if problems:
                self.syslog_problem = "; ".join(problems) + ": log lines and alerts go to stderr"
            self.target = "stderr"
        if foreground or self.target == "stderr":
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(asctime)s nfsentry: %(message)s"))
            handlers.append(h)
        # one assignment: a reload (a new alerter while other threads log) never leaves the logger
        # without handlers; the previous alerter's close() closes its own, and only those
        self.handlers = handlers
        log.handlers = list(handlers)
        for p in (self.json_path, self.history_path, self.blocked_path):
            if p:
                Path(p).parent.mkdir(parents=True, exist_ok=True, mode=0o750)

    def close(self) -> None:
        for h in self.handlers:
            if h in log.handlers:
                log.removeHandler(h)
            h.close()
        self.reopen()

    def reopen(self) -> None:
        """Close the files appended to; the next line opens each path again (after logrotate
        renamed it, a new file at the configured path)."""
        with self.lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

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
        extra = {"journal": journal_fields(ev)} if self.target == "journald" else None
        for line in lines:
            if line:
                log.log(level, line, extra=extra)
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
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = files.open_append(path, 0o640)
                try:
                    files.write(fd, text)
                except OSError:
                    del self._fds[path]  # opened again on the next line (the disk may have room again)
                    os.close(fd)
                    raise
        except OSError as e:
            self.errors += 1
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.error("cannot write %s: %s (errors so far: %d)", path, e.strerror or e, self.errors)
