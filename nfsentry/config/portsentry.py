"""Import a PortSentry configuration (1.x or 2.0) as nfsentry TOML.

``import_config()`` reads ``portsentry.conf`` (and Debian's ``/etc/default/portsentry`` for
TCP_MODE/UDP_MODE) and writes the equivalent nfsentry TOML: every PortSentry key appears in it,
either carried over as a setting or as a ``#`` comment saying why not. The TOML always passes
``config.validate``; ``load_as_config()`` returns the validated ``Config`` directly (for
``nfsentry run --portsentry-config FILE``).

How PortSentry reads its file, and so how this module reads it:

* a line whose first character is ``#`` is a comment; blank lines are skipped;
* ``KEY="value"`` with the key at the very start of the line (1.2 also accepts ``KEY = "value"``);
  the value is what lies between the first two double quotes. 1.2 also stops the value at the
  first control character (a tab), and takes the rest of the line when the closing quote is
  missing (2.0 refuses the file: reported);
* an indented key is not read at all (1.2 ignores the line, 2.0 refuses the file): reported;
* a value without quotes is skipped ("Quotes missing ... Option skipped"): reported;
* an unknown key is ignored by 1.2 and refused by 2.0: reported with its line number;
* a key given twice: 1.2 uses the first, 2.0 the last: reported, and the version's rule is used.

Semantics carried over (checked against PortSentry 1.2's and 2.0's sources):

* SCAN_TRIGGER: both versions react on hit ``max(N, 1)`` (0 and 1 both react on the first hit;
  1.2's state engine starts its count at one, 2.0 compares ``count >= N``). nfsentry's
  ``scan_trigger = N`` reacts on hit N+1, so N becomes ``max(N - 1, 0)``.
* Advanced mode: 1.2 watches the ports *below* ADVANCED_PORTS_TCP, 2.0 the ports up to and
  including it; both skip ADVANCED_EXCLUDE_* and every port a local service has bound (nfsentry's
  ``[monitor] inuse`` does that in the kernel, continuously).
* BLOCK_TCP/BLOCK_UDP 0/1/2 are log only / block / external command only. PortSentry's blocks
  last until it is restarted or the rule is removed by hand: ``block_duration = 0``.

Problems never stop an import: each is returned (and written at the top of the TOML) as
``file:line: message``; only an unreadable file raises (``config.ConfigError``, one line).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfsentry.config import schema as C

DEFAULT_CONF = "/etc/portsentry/portsentry.conf"
DEFAULTS_FILE = "/etc/default/portsentry"  # Debian's TCP_MODE/UDP_MODE; used when it exists
HOSTS_DENY = "/etc/hosts.deny"  # PortSentry's compiled-in TCP wrappers file
PATH_FOR_COMMANDS = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PORT_LIST_KEYS = ("TCP_PORTS", "UDP_PORTS", "ADVANCED_EXCLUDE_TCP", "ADVANCED_EXCLUDE_UDP")
NUMBER_KEYS = ("ADVANCED_PORTS_TCP", "ADVANCED_PORTS_UDP", "SCAN_TRIGGER")
MODE_FLAG_KEYS = ("BLOCK_TCP", "BLOCK_UDP")
BOOL_KEYS = ("RESOLVE_HOST", "KILL_RUN_CMD_FIRST")
PATH_KEYS = ("IGNORE_FILE", "HISTORY_FILE", "BLOCKED_FILE")
TEXT_KEYS = ("KILL_ROUTE", "KILL_HOSTS_DENY", "KILL_RUN_CMD", "PORT_BANNER")
KNOWN_KEYS = PORT_LIST_KEYS + NUMBER_KEYS + MODE_FLAG_KEYS + BOOL_KEYS + PATH_KEYS + TEXT_KEYS

TCP_MODES = {
    "tcp": "classic: PortSentry accepted full TCP connections on TCP_PORTS",
    "stcp": "stealth: PortSentry watched raw packets to TCP_PORTS",
    "atcp": "advanced stealth: PortSentry watched every unused port below ADVANCED_PORTS_TCP",
}
UDP_MODES = {
    "udp": "classic: PortSentry bound UDP_PORTS",
    "sudp": "stealth: PortSentry watched raw packets to UDP_PORTS",
    "audp": "advanced stealth: PortSentry watched every unused port below ADVANCED_PORTS_UDP",
}
ADVANCED_DEFAULT = 1024
V1_MAXSTATE = 50  # 1.2's state engine size; a larger SCAN_TRIGGER made 1.2 react on the first hit

_KEY_LINE = re.compile(r"([A-Za-z0-9_]+)[ \t]*(=?)")
_PORT_TOKEN = re.compile(r"(\d{1,6})(?:\s*-\s*(\d{1,6}))?")

log = logging.getLogger("nfsentry")


@dataclass(frozen=True)
class Problem:
    """Something in the PortSentry files that could not be taken as it is. str() is one line."""

    line: int | None
    message: str
    source: str = "portsentry.conf"

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


@dataclass
class Entry:
    """One PortSentry key as PortSentry reads it."""

    key: str
    raw: str  # the value between the quotes, as PortSentry takes it
    line: int  # 1-based line number
    text: str  # the whole source line (for the comments of the generated TOML)
    value: Any = None  # the parsed value; None when the value is malformed (see the problems)

    def quoted(self) -> str:
        return f'{self.key}="{self.raw}"'


# == parsing portsentry.conf ========================================================================
def _atoi(text: str) -> int | None:
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else None


def _parse_ports(raw: str, key: str, line: int, source: str, problems: list[Problem]) -> list[int | str] | None:
    ports: list[int | str] = []
    bad = []
    for token in raw.split(","):
        token = token.strip()
        if not token:
            continue
        m = _PORT_TOKEN.fullmatch(token)
        lo = int(m.group(1)) if m else -1
        hi = int(m.group(2)) if m and m.group(2) else lo
        if not m or not (1 <= lo <= 65535 and 1 <= hi <= 65535) or lo > hi:
            bad.append(token)
            continue
        ports.append(lo if lo == hi else f"{lo}-{hi}")
    if not ports:
        problems.append(Problem(line, f"{key}: no usable ports in {raw!r} (ports 1-65535 or a-b ranges, comma-separated)", source))
        return None
    if bad:
        problems.append(Problem(line, f"{key}: skipped {', '.join(repr(b) for b in bad)} (not a port 1-65535 or an a-b range)", source))
    return ports


def _parse_value(key: str, raw: str, line: int, source: str, problems: list[Problem]) -> Any:
    if key in PORT_LIST_KEYS:
        return _parse_ports(raw, key, line, source, problems)
    if key in ("ADVANCED_PORTS_TCP", "ADVANCED_PORTS_UDP"):
        n = _atoi(raw)
        if n is None or not 1 <= n <= 65535 or raw.strip() != str(n):
            problems.append(
                Problem(line, f"{key}: {raw!r} is not a port number 1-65535; using PortSentry's default {ADVANCED_DEFAULT}", source)
            )
            return None
        return n
    if key == "SCAN_TRIGGER":
        n = _atoi(raw)
        if n is None or n < 0 or raw.strip() != str(n):
            problems.append(Problem(line, f"SCAN_TRIGGER: {raw!r} is not a count >= 0; using 0 (react on the first hit)", source))
            return None
        return n
    if key in MODE_FLAG_KEYS:
        if raw.strip() in ("0", "1", "2"):
            return int(raw.strip())
        problems.append(Problem(line, f"{key}: {raw!r} is not 0, 1 or 2; PortSentry 1.2 treats it as 0 (log only), 2.0 refuses it", source))
        return None
    if key in BOOL_KEYS:
        if raw.strip() in ("0", "1"):
            return raw.strip() == "1"
        n = _atoi(raw)
        problems.append(Problem(line, f"{key}: {raw!r} is not 0 or 1; read as {'1' if n else '0'} like PortSentry 1.2", source))
        return bool(n)
    if key in PATH_KEYS:
        if not raw.startswith("/"):
            problems.append(Problem(line, f"{key}: {raw!r} is not an absolute path", source))
            return None
        return raw
    return raw


def guess_version(text: str) -> str:
    """'2' for a PortSentry 2.0 configuration, else '1' (2.0 mentions itself and allows port ranges)."""
    if re.search(r"^\s*#.*portsentry\s*(v(ersion)?\s*)?2\.\d", text, re.I | re.M):
        return "2"
    for m in re.finditer(r'^(?:TCP_PORTS|UDP_PORTS)[ \t]*=[ \t]*"([^"\n]*)"', text, re.M):
        if re.search(r"\d\s*-\s*\d", m.group(1)):
            return "2"
    return "1"


def parse_conf(text: str, version: str | None = None, source: str = "portsentry.conf") -> tuple[dict[str, Entry], list[Problem]]:
    """Read portsentry.conf text the way PortSentry does -> ({KEY: Entry}, problems).

    ``version`` ('1' or '2', guessed when None) decides which of two repeated keys counts.
    """
    version = version or guess_version(text)
    problems: list[Problem] = []
    seen: dict[str, list[Entry]] = {}
    for num, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0] in " \t":
            stripped = line.lstrip()
            if stripped.startswith("#"):
                continue
            m = _KEY_LINE.match(stripped)
            what = f"{m.group(1)} is indented" if m and m.group(2) else "indented text"
            problems.append(
                Problem(
                    num,
                    f"{what}: PortSentry reads keys only at the start of a line "
                    "(1.2 ignores this line, 2.0 refuses the file); not imported",
                    source,
                )
            )
            continue
        m = _KEY_LINE.match(line)
        if not m or not m.group(2):
            problems.append(Problem(num, f'not a KEY="value" line: {line.strip()[:60]!r} (PortSentry ignores it)', source))
            continue
        key = m.group(1)
        if key not in KNOWN_KEYS:
            near = difflib.get_close_matches(key.upper(), KNOWN_KEYS, n=1, cutoff=0.75)
            hint = f" (did you mean {near[0]}?)" if near else ""
            problems.append(Problem(num, f"unknown key {key}{hint}: PortSentry 1.2 ignores it, 2.0 refuses to start", source))
            continue
        rest = line[m.end() :].lstrip(" \t")
        if not rest.startswith('"'):
            problems.append(
                Problem(
                    num, f'{key}: the value must be in double quotes, e.g. {key}="..." (PortSentry skips the option); not imported', source
                )
            )
            continue
        body = rest[1:]
        close = body.find('"')
        if close < 0:
            raw = body.rstrip()
            problems.append(
                Problem(num, f"{key}: closing quote missing; taking the rest of the line as 1.2 does (2.0 refuses the file)", source)
            )
        else:
            raw = body[:close]
        cut = next((i for i, ch in enumerate(raw) if ord(ch) < 32 or ord(ch) == 127), None)
        if cut is not None:
            problems.append(Problem(num, f"{key}: value cut at a control character (tab?) as PortSentry 1.2 does: {raw[:cut]!r}", source))
            raw = raw[:cut]
        seen.setdefault(key, []).append(Entry(key, raw, num, line))
    entries: dict[str, Entry] = {}
    for key, found in seen.items():
        chosen = found[0] if version == "1" else found[-1]
        for other in found:
            if other is not chosen:
                problems.append(
                    Problem(
                        other.line,
                        f"{key} given again (also line {chosen.line}); PortSentry "
                        f"{'1.2 uses the first' if version == '1' else '2.0 uses the last'}, "
                        f"so line {chosen.line} is imported",
                        source,
                    )
                )
        if chosen.raw == "":
            chosen.value = None  # an empty value is the same as no value for PortSentry
        else:
            chosen.value = _parse_value(key, chosen.raw, chosen.line, source, problems)
        entries[key] = chosen
    problems.sort(key=lambda p: p.line or 0)
    return entries, problems


def parse_defaults(text: str, source: str = DEFAULTS_FILE) -> tuple[dict[str, tuple[str, int]], list[Problem]]:
    """Debian's /etc/default/portsentry (a shell fragment) -> ({'TCP_MODE': (mode, line), ...}, problems)."""
    modes: dict[str, tuple[str, int]] = {}
    problems: list[Problem] = []
    for num, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.fullmatch(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)", s)
        if not m:
            problems.append(Problem(num, f"not a VAR=value line: {s[:60]!r}", source))
            continue
        name, value = m.group(1), m.group(2)
        try:
            words = shlex.split(value, comments=True)
        except ValueError as e:
            problems.append(Problem(num, f"{name}: {e}", source))
            continue
        value = words[0] if words else ""
        if name not in ("TCP_MODE", "UDP_MODE"):
            problems.append(Problem(num, f"{name} is not read by the import (only TCP_MODE and UDP_MODE are)", source))
            continue
        value = value.lower().lstrip("-")
        allowed = TCP_MODES if name == "TCP_MODE" else UDP_MODES
        if value and value not in allowed:
            default = "tcp" if name == "TCP_MODE" else "udp"
            problems.append(Problem(num, f"{name}={value!r} is not one of {', '.join(allowed)}; using {default}", source))
            value = default
        modes[name] = (value, num)
    return modes, problems


# == ignore files ===================================================================================
def read_ignore_lenient(path: str | Path, source: str | None = None) -> tuple[list[str], list[Problem]]:
    """Read an ignore file the way PortSentry does: skip lines starting with '#', take the leading
    address characters (digits, hex, '.', ':', '/') of every other line, ignore the rest of it.
    Entries PortSentry would not have matched anything with are reported and skipped.
    Raises OSError when the file cannot be read."""
    source = source or str(path)
    entries: list[str] = []
    problems: list[Problem] = []
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    for num, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"\s*([0-9A-Fa-f.:/]+)", line)
        token = m.group(1) if m else ""
        try:
            net = C.parse_network(token, "address") if token else None
        except ValueError as e:
            net = None
            reason = str(e)
        else:
            reason = "no address at the start of the line"
        if net is None:
            problems.append(Problem(num, f"{line.strip()[:60]!r} skipped: {reason}", source))
            continue
        entries.append(str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address))
    return entries, problems


# == the generated TOML =============================================================================
def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _wrap_list(key: str, values: list) -> list[str]:
    """key = [...] on one line, or over several lines when long."""
    one = f"{key} = {_toml(values)}"
    if len(one) <= 100:
        return [one]
    out, cur = [f"{key} = ["], "   "
    for v in values:
        piece = f" {_toml(v)},"
        if len(cur) + len(piece) > 100:
            out.append(cur)
            cur = "   "
        cur += piece
    out.append(cur)
    out.append("]")
    return out


@dataclass
class _Section:
    name: str
    lines: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def note(self, *texts: str) -> None:
        for t in texts:
            for part in t.split("\n"):
                self.lines.append(f"# {part}".replace("\r", "\\r").rstrip())

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.lines.extend(_wrap_list(key, value) if isinstance(value, list) else [f"{key} = {_toml(value)}"])

    def commented(self, key: str, value: Any) -> None:
        self.lines.append(f"# {key} = {_toml(value)}")

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")


def _src(e: Entry) -> str:
    return f"{e.quoted()} (line {e.line})"


def _ports_text(ports: list) -> str:
    return ",".join(str(p) for p in ports)


class _Importer:
    def __init__(
        self, entries: dict[str, Entry], problems: list[Problem], version: str, modes: dict, source: str, defaults_source: str | None
    ) -> None:
        """``modes``: TCP_MODE/UDP_MODE of the defaults file, name -> (mode, line)."""
        self.e = entries
        self.problems = problems
        self.version = version
        self.source = source
        self.defaults_source = defaults_source
        self.tcp_mode = modes.get("TCP_MODE", ("tcp", 0))[0]
        self.udp_mode = modes.get("UDP_MODE", ("udp", 0))[0]
        self.modes_given = modes
        self.sec = {name: _Section(name) for name in ("monitor", "detection", "response", "ignore", "logging")}
        self.used: set[str] = set()

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(line, message, self.source))

    def get(self, key: str) -> Entry | None:
        return self.e.get(key)

    # -- [monitor] --------------------------------------------------------------------------------
    def monitor(self) -> None:
        m = self.sec["monitor"]
        for proto, mode, modes in (("tcp", self.tcp_mode, TCP_MODES), ("udp", self.udp_mode, UDP_MODES)):
            P = proto.upper()
            if f"{P}_MODE" in self.modes_given:
                origin = f'{P}_MODE="{mode}" from {self.defaults_source}'
            elif self.defaults_source:
                origin = f'{P}_MODE="{mode}" (not set in {self.defaults_source}: Debian\'s default)'
            else:
                origin = f'{P}_MODE="{mode}" (no defaults file read: Debian\'s default)'
            if not mode:
                m.note(f"{origin}: PortSentry did not watch {P} at all.")
                m.set(f"{proto}_ports", [])
                for key in (f"{P}_PORTS", f"ADVANCED_PORTS_{P}", f"ADVANCED_EXCLUDE_{P}"):
                    self.unused(key, f"{P} was not watched ({P}_MODE is empty)")
                m.blank()
                continue
            m.note(f"{origin}: {modes[mode]}.")
            if mode in ("atcp", "audp"):
                self.advanced(m, proto)
                self.unused(f"{P}_PORTS", f"{P}_MODE is {mode}, which watches a port range instead")
            else:
                if mode in ("tcp", "udp"):
                    m.note(
                        "nfsentry never answers on monitored ports: it sees the first packet (for TCP the SYN,",
                        "so half-open scans are caught too) and leaves ports a local service uses alone.",
                    )
                ent = self.get(f"{P}_PORTS")
                if ent:
                    self.used.add(ent.key)
                if ent and ent.value:
                    m.note(_src(ent))
                    m.set(f"{proto}_ports", ent.value)
                else:
                    why = "malformed" if ent else "missing (or not readable by PortSentry)"
                    self.problem(
                        ent.line if ent else None,
                        f"{P}_PORTS is {why}: PortSentry would not start {P} mode '{mode}'; nothing is watched for {P}",
                    )
                    m.note(f"{P}_PORTS is {why}: PortSentry refused to start this mode, so nothing is watched.")
                    m.set(f"{proto}_ports", [])
                for key in (f"ADVANCED_PORTS_{P}", f"ADVANCED_EXCLUDE_{P}"):
                    self.unused(key, f"only the advanced mode a{proto} reads it ({P}_MODE is {mode})")
            m.blank()
        m.note("PortSentry skipped every port a local service had bound; nfsentry does the same, continuously.")
        m.set("inuse", "auto")

    def advanced(self, m: _Section, proto: str) -> None:
        P = proto.upper()
        ent = self.get(f"ADVANCED_PORTS_{P}")
        if ent:
            self.used.add(ent.key)
        if ent and ent.value:
            n = ent.value
            m.note(_src(ent))
        else:
            n = ADVANCED_DEFAULT
            m.note(f"ADVANCED_PORTS_{P} {'is malformed' if ent else 'is not set'}: PortSentry's default {ADVANCED_DEFAULT} applies.")
        hi = n - 1 if self.version == "1" else n
        rule = (
            "PortSentry 1.x watched the ports below it"
            if self.version == "1"
            else "PortSentry 2.0 watched the ports up to and including it"
        )
        hi = min(hi, 65535)
        m.note(f"{rule}: 1-{hi}.")
        m.set(f"{proto}_ports", [] if hi < 1 else [1 if hi == 1 else f"1-{hi}"])
        ex = self.get(f"ADVANCED_EXCLUDE_{P}")
        if ex and ex.value:
            self.used.add(ex.key)
            m.note(_src(ex))
            m.set(f"{proto}_exclude", ex.value)
        elif ex:
            self.used.add(ex.key)
            m.note(f"{_src(ex)} has no usable ports: nothing is excluded.")

    # -- [detection] ------------------------------------------------------------------------------
    def detection(self) -> None:
        d = self.sec["detection"]
        ent = self.get("SCAN_TRIGGER")
        n = ent.value if ent and ent.value is not None else 0
        if ent:
            self.used.add(ent.key)
            d.note(_src(ent) + ("" if ent.value is not None else f": malformed, read as {n}"))
        else:
            d.note("SCAN_TRIGGER is not set: PortSentry reacted on the first hit.")
        d.note(
            "PortSentry reacts on hit max(N, 1) (0 and 1 both mean the first hit); nfsentry's scan_trigger",
            f"counts the hits it lets pass, so {n} becomes {max(n - 1, 0)} (reaction on hit {max(n, 1)}).",
        )
        if self.version == "1" and n > V1_MAXSTATE:
            self.problem(
                ent.line if ent else None,
                f"SCAN_TRIGGER={n} is larger than PortSentry 1.2's state table "
                f"({V1_MAXSTATE}): 1.2 reacted on the first hit; nfsentry will wait for hit {n}",
            )
            d.note(f"1.2 could not count above {V1_MAXSTATE} and reacted on the first hit instead; nfsentry counts to {n}.")
        lo, hi = C.RANGES[("detection", "scan_trigger")]
        d.set("scan_trigger", min(max(n - 1, lo), hi))

    # -- [response] -------------------------------------------------------------------------------
    def command(self) -> list[str] | None:
        """KILL_RUN_CMD as an argument list, or None (with a note) when nfsentry cannot run it."""
        r = self.sec["response"]
        ent = self.get("KILL_RUN_CMD")
        if not ent or not ent.value:
            return None
        self.used.add(ent.key)
        r.note(_src(ent))
        why = None
        try:
            argv = shlex.split(ent.value)
        except ValueError as e:
            argv, why = [], f"it does not split into arguments ({e})"
        if argv and not why and not argv[0].startswith("/"):
            found = shutil.which(argv[0], path=PATH_FOR_COMMANDS)
            if found:
                r.note(f"{argv[0]!r} resolved to {found}: nfsentry runs commands without a shell or a PATH search.")
                argv[0] = found
        if argv and not why:
            try:
                argv = C.check_command(argv)
            except ValueError as e:
                why = str(e)
        if why or not argv:
            why = why or "it is empty"
            r.note(
                f"not carried over: {why}.",
                "nfsentry runs the command as an argument list, never through a shell (PortSentry used",
                "system()); put shell logic in a script and name the script here.",
            )
            r.commented("command", argv if argv else ent.value)
            self.problem(ent.line, f"KILL_RUN_CMD not carried over: {why}")
            return None
        if any("$MODE$" in a for a in argv):
            r.note("$MODE$ is nfsentry's scan label (SYN, FIN, XMAS, UDP, ...), not PortSentry's tcp/stcp/atcp/udp/...")
        r.set("command", argv)
        return argv

    def response(self) -> None:
        r = self.sec["response"]
        cmd = self.command()
        first = self.get("KILL_RUN_CMD_FIRST")
        if first:
            self.used.add(first.key)
            if cmd:
                r.note(_src(first))
                r.set("command_first", bool(first.value))
            else:
                r.note(f"{_src(first)} not carried over: there is no command to order.")
        r.blank()
        modes = {}
        for proto in ("tcp", "udp"):
            key = f"BLOCK_{proto.upper()}"
            ent = self.get(key)
            flag = ent.value if ent and ent.value is not None else 0
            mode = {0: "log", 1: "block", 2: "command"}[flag]
            if ent:
                self.used.add(key)
                r.note(_src(ent) + f": {('log only', 'block', 'run the external command only')[flag]}.")
            else:
                r.note(f"{key} is not set: PortSentry only logged {proto.upper()} scans.")
            if mode == "command" and not cmd:
                r.note(
                    "...but there is no command nfsentry can run, so it only logs (PortSentry ran nothing either",
                    "when KILL_RUN_CMD was missing).",
                )
                mode = "log"
            r.set(proto, mode)
            modes[proto] = mode
        r.blank()
        r.note(
            "PortSentry's blocks lasted until it was restarted or the rule was removed by hand: nfsentry keeps",
            "them until `nfsentry unblock` (and across restarts).",
        )
        r.set("block_duration", 0)
        r.blank()
        self.kill_route(r, modes)
        self.hosts_deny(r, modes)
        banner = self.get("PORT_BANNER")
        if banner:
            self.used.add(banner.key)
            r.blank()
            r.note(
                f"{_src(banner)} not carried over: nfsentry never answers from a monitored port",
                "(it decides on the first packet, in the kernel path), so there is no connection to write a banner to.",
            )

    def kill_route(self, r: _Section, modes: dict[str, str]) -> None:
        ent = self.get("KILL_ROUTE")
        if not ent:
            return
        self.used.add(ent.key)
        r.note(
            f"{_src(ent)} not carried over: not needed.",
            'nfsentry blocks in the kernel itself (nftables sets blocked4/blocked6) when tcp/udp = "block";',
            "if this command did more than block, put that part in a script and name it in `command`.",
        )
        if "block" not in modes.values():
            r.note("(PortSentry did not run it either: neither BLOCK_TCP nor BLOCK_UDP is 1.)")

    def hosts_deny(self, r: _Section, modes: dict[str, str]) -> None:
        ent = self.get("KILL_HOSTS_DENY")
        if not ent or not ent.value:
            if "block" in modes.values() and not self.get("KILL_ROUTE"):
                r.note(
                    "PortSentry had no KILL_ROUTE or KILL_HOSTS_DENY: its 'block' only wrote the blocked file;",
                    'nfsentry\'s block = "block" drops the source in the kernel.',
                )
            return
        self.used.add(ent.key)
        r.blank()
        r.note(_src(ent))
        template = ent.value.strip()
        if "$TARGET$" not in template:
            r.note("not carried over: it has no $TARGET$ (PortSentry skipped it too).")
            self.problem(ent.line, "KILL_HOSTS_DENY has no $TARGET$: PortSentry skipped it; not carried over")
            return
        r.note(f"nfsentry appends 'ALL: ADDR' lines to {HOSTS_DENY} (IPv6 as [ADDR]) when it blocks.")
        if not re.fullmatch(r"ALL\s*:\s*\$TARGET\$(\s*:\s*DENY)?", template, re.I):
            r.note(
                f"Your template {template!r} differs: nfsentry writes 'ALL: ADDR' instead; the kernel block",
                "already covers every service.",
            )
        if "block" not in modes.values():
            r.note('(Written only in block mode, as PortSentry did: neither tcp nor udp is "block" here.)')
        r.note(f"With the shipped systemd unit (ProtectSystem=strict) add ReadWritePaths={HOSTS_DENY}.")
        r.set("hosts_deny", HOSTS_DENY)

    # -- [ignore] ---------------------------------------------------------------------------------
    def ignore(self) -> None:
        g = self.sec["ignore"]
        ent = self.get("IGNORE_FILE")
        g.note(
            "nfsentry also never blocks the host's own addresses, its gateways and its resolvers",
            "(own_addresses, gateways, resolvers: on by default).",
        )
        if not ent or not ent.value:
            if not ent:
                self.problem(None, "IGNORE_FILE is not set: PortSentry 1.2 refused to start without it")
            g.note("IGNORE_FILE is not set" + (" to a usable path" if ent else "") + ".")
            if ent:
                self.used.add(ent.key)
            return
        self.used.add(ent.key)
        g.note(_src(ent))
        path = ent.value
        static = Path(path + ".static")
        if static.exists():
            g.note(
                f"(Debian builds it from {static} plus the local addresses each time PortSentry starts;",
                "nfsentry follows the local addresses itself.)",
            )
        try:
            C.read_ignore_file(path)
        except ValueError as e:
            if not Path(path).exists():
                g.note(f"not carried over: {path} does not exist, and nfsentry refuses to start with a missing ignore file.")
                g.commented("files", [path])
                self.problem(ent.line, f"IGNORE_FILE {path} does not exist; not carried over")
                return
            try:
                addrs, probs = read_ignore_lenient(path)
            except OSError as oe:
                g.note(f"not carried over: {path} cannot be read ({oe.strerror or oe}).")
                g.commented("files", [path])
                self.problem(ent.line, f"IGNORE_FILE {path} cannot be read: {oe.strerror or oe}")
                return
            self.problems.extend(probs)
            g.note(
                f"nfsentry cannot read it as it is ({e});",
                "its entries, read the way PortSentry reads them, are listed instead (edits to the file",
                "will not be seen: fix the file and list it in `files` to keep using it).",
            )
            g.commented("files", [path])
            g.set("addresses", addrs)
            self.problem(ent.line, f"IGNORE_FILE {path}: {e}; its entries were copied into [ignore] addresses")
            return
        g.set("files", [path])

    # -- [logging] --------------------------------------------------------------------------------
    def logging(self) -> None:
        lg = self.sec["logging"]
        style = "portsentry1" if self.version == "1" else "portsentry2"
        lg.note(
            f"Syslog lines in PortSentry {'1.x' if self.version == '1' else '2.0'} style "
            f"({'attackalert: ...' if self.version == '1' else 'Scan from: [...] ...'}), to the daemon facility like PortSentry.",
            "Tagged portsentry[PID] like PortSentry, so logcheck rules anchored on the tag keep matching.",
        )
        lg.set("format", style)
        lg.set("syslog_facility", "daemon")
        lg.set("syslog_ident", "portsentry")
        hist = self.get("HISTORY_FILE")
        lg.blank()
        if hist and hist.value:
            self.used.add(hist.key)
            lg.note(_src(hist))
            lg.note(
                "fail2ban's portsentry jail and your scripts keep reading it. With the shipped systemd unit",
                f"(ProtectSystem=strict) add ReadWritePaths={str(Path(hist.value).parent)}.",
            )
            lg.set("history_file", hist.value)
            lg.set("history_format", style)
        elif hist:
            self.used.add(hist.key)
            lg.note(f"{_src(hist)} not carried over: not an absolute path.")
        else:
            self.problem(None, "HISTORY_FILE is not set: PortSentry 1.2 refused to start without it; no history file is written")
        blk = self.get("BLOCKED_FILE")
        lg.blank()
        if blk and blk.value:
            self.used.add(blk.key)
            lg.note(_src(blk))
            lg.note(
                "PortSentry wrote one file per mode (BLOCKED_FILE.tcp, .atcp, .udp, ...) and emptied it at start;",
                "nfsentry appends the blocks of both protocols to this one file.",
            )
            lg.set("blocked_file", blk.value)
        elif blk:
            self.used.add(blk.key)
            lg.note(f"{_src(blk)} not carried over: not an absolute path.")
        res = self.get("RESOLVE_HOST")
        lg.blank()
        if res:
            self.used.add(res.key)
            lg.note(_src(res) + " (reverse DNS off the packet path)")
        lg.set("resolve_hosts", bool(res.value) if res else False)

    def unused(self, key: str, why: str) -> None:
        ent = self.get(key)
        if ent:
            self.used.add(key)
            self.sec["monitor"].note(f"{_src(ent)} not used: {why}.")

    def run(self) -> tuple[str, dict[str, dict[str, Any]]]:
        self.monitor()
        self.detection()
        self.response()
        self.ignore()
        self.logging()
        leftovers = [e for k, e in self.e.items() if k not in self.used]
        for e in leftovers:  # keys with empty values and the like: still say something about them
            self.sec["response" if e.key.startswith("KILL") or e.key == "PORT_BANNER" else "monitor"].note(
                f"{_src(e)} not carried over: empty or unusable value."
            )
        raw = {name: s.values for name, s in self.sec.items() if any(line for line in s.lines)}
        return self.render(), raw

    def render(self) -> str:
        out = [
            "# nfsentry configuration imported from PortSentry by `nfsentry import-portsentry`",
            f"#   from: {self.source} (PortSentry {'1.x' if self.version == '1' else '2.0'})",
        ]
        if self.defaults_source:
            out.append(f"#   and:  {self.defaults_source}")
        out += [
            "# Every PortSentry key appears below, either as a setting or as a comment saying why not.",
            "# Keys not named here keep nfsentry's defaults (see `nfsentry config check`).",
        ]
        if self.problems:
            out.append("#")
            out.append(f"# {len(self.problems)} problem(s) found while reading:")
            out += [f"#   {p}" for p in sorted(self.problems, key=lambda p: (p.source != self.source, p.source, p.line or 0))]
        for name, s in self.sec.items():
            lines = list(s.lines)
            while lines and lines[-1] == "":
                lines.pop()
            if not lines:
                continue
            out.append("")
            out.append(f"[{name}]")
            out.extend(lines)
        return "\n".join(_one_line(line) if line.startswith("#") else line for line in out) + "\n"


def _one_line(text: str) -> str:
    """A comment line stays one line whatever a path or value holds."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _read(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise C.ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _defaults_path(defaults_path: str | Path | None) -> str | None:
    """None: Debian's /etc/default/portsentry when it exists; '' : none."""
    if defaults_path is None:
        return DEFAULTS_FILE if Path(DEFAULTS_FILE).is_file() else None
    return str(defaults_path) or None


def convert(
    conf_text: str,
    defaults_text: str | None = None,
    version: str | None = None,
    source: str = "portsentry.conf",
    defaults_source: str | None = None,
) -> tuple[str, list[Problem], dict]:
    """Text in, (TOML text, problems, raw TOML dict) out. Reads only the ignore file it names."""
    if version not in (None, "1", "2"):
        raise ValueError(f"PortSentry version must be 1 or 2, not {version!r}")
    version = version or guess_version(conf_text)
    entries, problems = parse_conf(conf_text, version, source)
    modes: dict[str, tuple[str, int]] = {}
    if defaults_text is not None:
        modes, dprobs = parse_defaults(defaults_text, defaults_source or DEFAULTS_FILE)
        problems += dprobs
    imp = _Importer(entries, problems, version, modes, source, defaults_source if defaults_text is not None else None)
    text, raw = imp.run()
    ordered = sorted(imp.problems, key=lambda p: (p.source != source, p.source, p.line or 0))
    return text, ordered, raw


def import_config(
    conf_path: str | Path = DEFAULT_CONF, defaults_path: str | Path | None = None, version: str | None = None
) -> tuple[str, list[Problem]]:
    """Read portsentry.conf (and /etc/default/portsentry) -> (nfsentry TOML text, problems).

    ``defaults_path=None`` uses /etc/default/portsentry when it exists; ``""`` reads none (then
    TCP_MODE="tcp", UDP_MODE="udp", Debian's defaults). ``version`` '1'/'2' overrides the guess.
    Raises config.ConfigError (one line) when a file cannot be read; the TOML always validates.
    """
    conf_text = _read(conf_path, "PortSentry configuration")
    dpath = _defaults_path(defaults_path)
    defaults_text = _read(dpath, "PortSentry defaults file") if dpath else None
    text, problems, raw = convert(conf_text, defaults_text, version, str(conf_path), dpath)
    # The promise: nfsentry accepts what the importer writes. A failure here is an importer bug.
    if tomllib.loads(text) != raw:
        raise RuntimeError("portsentry import: the generated TOML does not read back as written")
    C.validate(raw, str(conf_path), read_files=True)
    return text, problems


def load_as_config(conf_path: str | Path, defaults_path: str | Path | None = None, version: str | None = None) -> C.Config:
    """Run nfsentry straight from a PortSentry configuration: the validated Config of the import.

    Problems are logged as warnings and kept in ``cfg.portsentry_problems``; ``cfg.path`` is the
    PortSentry file (so a reload must go through this function again, not config.load)."""
    text, problems = import_config(conf_path, defaults_path, version)
    cfg = C.validate(tomllib.loads(text), str(conf_path), read_files=True)
    for p in problems:
        log.warning("portsentry import: %s", p)
    cfg.portsentry_problems = problems  # type: ignore[attr-defined]
    cfg.portsentry_source = {"conf": str(conf_path), "defaults": _defaults_path(defaults_path)}  # type: ignore[attr-defined]
    return cfg
