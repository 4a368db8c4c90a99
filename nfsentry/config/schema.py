"""Configuration: TOML schema, built-in defaults and validation.

nfsentry runs with no file at all (every key has a default). A file only overrides what it names.
Every key is validated on load; the first problem raises :class:`ConfigError` whose message is
one line naming the key and the problem (``[response] block_duration: bad duration 'x'``). The
daemon and the CLI turn that into exit code 2 with nothing loaded into the kernel.
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfsentry.core.addrs import parse_network
from nfsentry.core.classify import LABELS
from nfsentry.core.events import EventPolicy
from nfsentry.core.units import (
    MAX_SERVICE_GRACE,
    RATE,
    TROJAN_TCP,
    TROJAN_UDP,
    format_duration,
    parse_duration,
    parse_ports,
    ranges_text,
    subtract_ranges,
)

DEFAULT_PATH = "/etc/nfsentry/nfsentry.toml"
DEFAULT_IGNORE_FILE = "/etc/nfsentry/ignore"  # read when it exists (a missing one is empty); others must exist

# The schema: section -> key -> default. Types are checked against the default's type
# (with the explicit checkers below for durations, ports, networks, enums).
DEFAULTS: dict[str, dict[str, Any]] = {
    "monitor": {
        "tcp_ports": ["1-1023", *TROJAN_TCP],
        "udp_ports": ["1-1023", *TROJAN_UDP],
        "tcp_exclude": [],
        "udp_exclude": [],
        "inuse": "auto",  # auto | socket | poll | off
        "recent_service_grace": "10m",  # a port in use stays exempt this long after its socket is gone; 0 = off
        "mode": "host",  # host | gateway | observe
        "ftp": True,  # follow FTP control channels (queue 1)
        "protect": [],  # gateway mode: networks behind this host whose ports are watched too
        "before_input": True,  # report what the kernel drops before the input hook (source-routed
        #                        IPv4 to monitored ports, bad IPv4 headers), through [nft] nflog_group
    },
    "detection": {
        "scan_trigger": 0,  # PortSentry SCAN_TRIGGER: 0 reacts on the first hit
        "window_ports": 0,  # react at N distinct ports within window_seconds (0 = off)
        "window_seconds": "60s",
        "instant_labels": ["NULL", "XMAS", "FULL-XMAS", "UNKNOWN", "MALFORMED"],
        "ipv6_prefix": 64,
        "max_sources": 100000,
        "max_ports_per_source": 64,
    },
    "response": {
        "tcp": "block",  # log | block | command   (PortSentry BLOCK_TCP 0/1/2)
        "udp": "block",  # log | block | command   (PortSentry BLOCK_UDP 0/1/2)
        "probe_verdict": "accept",  # verdict for counted-but-not-blocked probes: accept | drop
        "dry_run": False,  # learning mode: log what would be blocked, block nothing
        "block_duration": "1h",  # 0 = until unblocked (PortSentry's behaviour)
        "max_block_duration": "7d",
        "escalation_factor": 2.0,
        "command": [],  # argv, e.g. ["/usr/local/sbin/notify", "$TARGET$", "$PORT$", "$MODE$"]
        "command_first": False,  # PortSentry KILL_RUN_CMD_FIRST
        "hosts_deny": "",  # append "ALL: ADDR" lines to this file (TCP wrappers); "" = off
        "max_blocks_per_minute": 0,  # 0 = unlimited
        "max_blocked": 100000,  # cap on the blocked sets' size (a spoofed flood cannot grow them without bound); 0 = unlimited
        "keep_blocks_on_exit": True,  # on SIGTERM keep the table (and its blocks) loaded
        "kernel_block": True,  # the rule that queues a first probe the policy blocks also blocks its source, in the kernel
        "kernel_block_rate": "100/second",  # new kernel-side blocks allowed, all sources together (N/second or N/minute)
    },
    "ignore": {
        "addresses": [],  # addresses and CIDRs, IPv4 and IPv6
        "files": [
            "/etc/nfsentry/ignore"
        ],  # PortSentry-style ignore files (one address[/mask] per line); `nfsentry ignore add` writes to the first
        "own_addresses": True,  # the host's own addresses (refreshed when they change)
        "gateways": True,  # default gateway(s)
        "resolvers": True,  # nameservers from resolv_conf
        "resolv_conf": "/etc/resolv.conf",
        "refresh_interval": "30s",  # how often own addresses/gateways/resolvers are re-read
    },
    "logging": {
        "journald": True,  # structured entries to journald when its socket is there (instead of syslog: journald forwards)
        "syslog": True,
        "syslog_facility": "daemon",
        "syslog_address": "/dev/log",
        "syslog_ident": "nfsentry",  # "portsentry" keeps logcheck rules anchored on "portsentry[" matching
        "format": "nfsentry",  # nfsentry | portsentry1 | portsentry2 (syslog line style)
        "json_file": "/var/log/nfsentry/events.jsonl",  # "" = off
        "history_file": "",  # PortSentry-format history file; "" = off
        "history_format": "portsentry1",  # portsentry1 | portsentry2
        "blocked_file": "",  # PortSentry-format blocked file; "" = off
        "resolve_hosts": False,  # reverse DNS for log lines (off the hot path)
        "level": "info",
    },
    "storage": {
        "state_dir": "/var/lib/nfsentry",
        "database": "",  # "" = <state_dir>/nfsentry.db
        "history_days": 90,  # history rows older than this are deleted (hourly, space reclaimed); 0 = kept forever
    },
    "daemon": {"control_socket": "/run/nfsentry/control.sock", "queue_maxlen": 4096},
    "nft": {
        "table": "nfsentry",
        "queue": 0,
        "ftp_queue": 1,
        "backend": "auto",  # auto | native | compat
        "mark": 0x4E460000,
        "fail_open": True,  # no daemon listening: queued packets pass (true) or are dropped (false)
        "nflog_group": 20038,  # NFLOG group of [monitor] before_input (0x4e46, "NF", like the mark)
    },
    "fleet": {  # share blocks through a CrowdSec Local API (docs/fleet.md); off by default
        "enabled": False,
        "url": "",  # the LAPI, e.g. "http://198.18.0.10:8080"
        "machine_id": "",  # watcher login (cscli machines add NAME --password PW)
        "password": "",
        "cert": "",  # or a TLS client certificate and key (https only)
        "key": "",
        "ca": "",  # CA bundle for an https LAPI ("" = the system's)
        "api_key": "",  # bouncer key (cscli bouncers add NAME)
        "push": True,  # send this host's blocks to the LAPI (needs machine credentials)
        "pull": True,  # enforce the LAPI's decisions (needs api_key)
        "pull_interval": "1s",  # deltas this often (100ms works)
        "resync_interval": "5m",  # a full resync (startup=true) this often
        "scenario": "nfsentry/portscan",
        "min_prefix4": 24,  # pulled IPv4 ranges shorter than this are refused
        "min_prefix6": 48,  # pulled IPv6 ranges shorter than this are refused
        "max_pulled": 100000,  # the most pulled entries enforced; beyond, refused
        "timeout": "5s",  # one HTTP request's limit
    },
    "metrics": {  # Prometheus metrics, off by default
        "listen": "",  # "ADDRESS:PORT" to serve /metrics on, e.g. "127.0.0.1:9467" or "[::1]:9467"; "" = off
        "textfile": "",  # node-exporter textfile collector file (*.prom), rewritten every textfile_interval; "" = off
        "textfile_interval": "15s",
    },
}

ENUMS = {
    ("monitor", "inuse"): ("auto", "socket", "poll", "off"),
    ("monitor", "mode"): ("host", "gateway", "observe"),
    ("response", "tcp"): ("log", "block", "command"),
    ("response", "udp"): ("log", "block", "command"),
    ("response", "probe_verdict"): ("accept", "drop"),
    ("logging", "format"): ("nfsentry", "portsentry1", "portsentry2"),
    ("logging", "history_format"): ("portsentry1", "portsentry2"),
    ("logging", "syslog_facility"): (
        "auth",
        "authpriv",
        "daemon",
        "kern",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
        "security",
        "user",
    ),
    ("logging", "level"): ("debug", "info", "warning", "error"),
    ("nft", "backend"): ("auto", "native", "compat"),
}
DURATIONS = {
    ("monitor", "recent_service_grace"),
    ("detection", "window_seconds"),
    ("response", "block_duration"),
    ("response", "max_block_duration"),
    ("ignore", "refresh_interval"),
    ("fleet", "pull_interval"),
    ("fleet", "resync_interval"),
    ("fleet", "timeout"),
    ("metrics", "textfile_interval"),
}
PORT_LISTS = {("monitor", "tcp_ports"), ("monitor", "udp_ports"), ("monitor", "tcp_exclude"), ("monitor", "udp_exclude")}
RANGES = {
    ("detection", "scan_trigger"): (0, 1_000_000),
    ("detection", "window_ports"): (0, 65535),
    ("detection", "ipv6_prefix"): (16, 128),
    ("detection", "max_sources"): (100, 50_000_000),
    ("detection", "max_ports_per_source"): (1, 65535),
    ("response", "max_blocks_per_minute"): (0, 1_000_000),
    ("response", "max_blocked"): (0, 10_000_000),
    ("daemon", "queue_maxlen"): (16, 1_000_000),
    ("nft", "queue"): (0, 65535),
    ("nft", "ftp_queue"): (0, 65535),
    ("nft", "nflog_group"): (0, 65535),
    ("nft", "mark"): (1, 0xFFFFFFFF),
    ("fleet", "min_prefix4"): (1, 32),
    ("fleet", "min_prefix6"): (1, 128),
    ("fleet", "max_pulled"): (0, 10_000_000),
    ("storage", "history_days"): (0, 36500),
}
# Characters never allowed in an external command template: the command is run as an argument
# list without a shell, but a template that looks like shell code is a configuration mistake.
SHELL_META = set(";|&`$<>(){}\\\n\r*?!~'\"")
PLACEHOLDERS = ("$TARGET$", "$PORT$", "$MODE$")


class ConfigError(ValueError):
    """A configuration problem; str() is one line naming the key."""


def check_command(argv: Any) -> list[str]:
    """Validate an external command template (an argument list, no shell)."""
    if isinstance(argv, str):
        raise ValueError('must be a list of arguments (it is never run through a shell), e.g. ["/usr/local/sbin/x", "$TARGET$"]')
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("must be a list of strings")
    if not argv:
        return []
    if not argv[0].startswith("/"):
        raise ValueError(f"program {argv[0]!r} must be an absolute path")
    for arg in argv:
        stripped = arg
        for ph in PLACEHOLDERS:
            stripped = stripped.replace(ph, "")
        bad = sorted(set(stripped) & SHELL_META)
        if bad:
            raise ValueError(f"argument {arg!r} contains shell metacharacters {''.join(bad)!r}")
    return list(argv)


@dataclass
class Config:
    """The validated configuration. ``data`` holds every key (defaults filled in)."""

    data: dict[str, dict[str, Any]]
    path: str | None = None
    # derived, validated values
    tcp_ports: list[tuple[int, int]] = field(default_factory=list)
    udp_ports: list[tuple[int, int]] = field(default_factory=list)
    ignore: list = field(default_factory=list)  # ip_network objects from addresses + files
    durations: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    @property
    def db_path(self) -> Path:
        return Path(self.data["storage"]["database"] or Path(self.data["storage"]["state_dir"]) / "nfsentry.db")

    def effective(self) -> dict[str, dict[str, Any]]:
        """The effective settings (for `config check` and status)."""
        out = copy.deepcopy(self.data)
        out["monitor"]["effective_tcp_ports"] = ranges_text(self.tcp_ports)
        out["monitor"]["effective_udp_ports"] = ranges_text(self.udp_ports)
        out["ignore"]["effective_count"] = len(self.ignore)
        for secret in ("password", "api_key"):  # never printed
            if out["fleet"][secret]:
                out["fleet"][secret] = "(set)"
        return out

    def event_policy(self) -> EventPolicy:
        """What decision events report as their action (core.events)."""
        r = self.data["response"]
        return EventPolicy(
            modes={"tcp": r["tcp"], "udp": r["udp"]}, dry_run=bool(r["dry_run"]), observe=self.data["monitor"]["mode"] == "observe"
        )


def read_ignore_file(path: str | Path) -> list:
    """A PortSentry-style ignore file: one address[/mask] per line, '#' comments. Raises ValueError
    naming the line on a bad entry."""
    nets = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as e:
        if str(path) == DEFAULT_IGNORE_FILE:  # the built-in default, made by the first `ignore add`
            return []
        raise ValueError(f"cannot read ignore file {path}: {e.strerror}") from None
    except OSError as e:
        raise ValueError(f"cannot read ignore file {path}: {e.strerror}") from None
    for num, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        entry = fields[0]  # like PortSentry, text after the address ("198.18.0.1 router") is ignored
        try:
            nets.append(parse_network(entry, "address"))
        except ValueError as e:
            raise ValueError(f"{path}:{num}: {e}") from None
    return nets


def read_ignore(cfg: Config) -> list:
    """The ignore list of ``cfg`` as it is on disk now: its [ignore] addresses and the files'
    entries read again (`ignore add/del` changed a file). ConfigError naming a bad entry."""
    nets = []
    for entry in cfg["ignore"]["addresses"]:
        try:
            nets.append(parse_network(entry, "address"))
        except ValueError as e:
            raise ConfigError(f"[ignore] addresses: {e}") from None
    for f in cfg["ignore"]["files"]:
        try:
            nets.extend(read_ignore_file(f))
        except ValueError as e:
            raise ConfigError(f"[ignore] files: {e}") from None
    return nets


def validate(raw: dict[str, Any], path: str | None = None, read_files: bool = True) -> Config:
    """Merge `raw` over the defaults and validate every key. Raises ConfigError."""
    data = _merged(raw)
    cfg = Config(data=data, path=path)
    for (section, key), choices in ENUMS.items():
        if data[section][key] not in choices:
            raise ConfigError(f"[{section}] {key}: {data[section][key]!r} is not one of {', '.join(choices)}")
    for (section, key), (lo, hi) in RANGES.items():
        v = data[section][key]
        if not lo <= v <= hi:
            raise ConfigError(f"[{section}] {key}: {v} outside {lo}-{hi}")
    for section, key in DURATIONS:
        try:
            cfg.durations[key] = parse_duration(data[section][key], "duration")
        except ValueError as e:
            raise ConfigError(f"[{section}] {key}: {e}") from None
    if cfg.durations["recent_service_grace"] > MAX_SERVICE_GRACE:
        raise ConfigError(f"[monitor] recent_service_grace: longer than {format_duration(MAX_SERVICE_GRACE)}")
    if cfg.durations["window_seconds"] <= 0:
        raise ConfigError("[detection] window_seconds: must be more than 0")
    if cfg.durations["max_block_duration"] and cfg.durations["block_duration"] > cfg.durations["max_block_duration"]:
        raise ConfigError("[response] block_duration: longer than max_block_duration")
    if not 1.0 <= float(data["response"]["escalation_factor"]) <= 100:
        raise ConfigError("[response] escalation_factor: must be between 1 and 100")
    ports = {}
    for section, key in PORT_LISTS:
        try:
            ports[key] = parse_ports(data[section][key], key)
        except ValueError as e:
            raise ConfigError(f"[{section}] {key}: {e}") from None
    cfg.tcp_ports = subtract_ranges(ports["tcp_ports"], ports["tcp_exclude"])
    cfg.udp_ports = subtract_ranges(ports["udp_ports"], ports["udp_exclude"])
    for label in data["detection"]["instant_labels"]:
        if label not in LABELS:
            raise ConfigError(f"[detection] instant_labels: unknown label {label!r} (known: {', '.join(LABELS)})")
    try:
        data["response"]["command"] = check_command(data["response"]["command"])
    except ValueError as e:
        raise ConfigError(f"[response] command: {e}") from None
    if "command" in (data["response"]["tcp"], data["response"]["udp"]) and not data["response"]["command"]:
        raise ConfigError('[response] command: tcp/udp = "command" needs a command')
    _check_names_and_paths(data, cfg)
    _check_fleet(data["fleet"], cfg)
    for entry in data["monitor"]["protect"]:
        try:
            parse_network(entry, "network")
        except ValueError as e:
            raise ConfigError(f"[monitor] protect: {e}") from None
    if not RATE.fullmatch(data["response"]["kernel_block_rate"]):
        raise ConfigError(
            f'[response] kernel_block_rate: {data["response"]["kernel_block_rate"]!r} is not a rate like "100/second" or "600/minute"'
        )
    if data["monitor"]["mode"] == "gateway" and not data["monitor"]["protect"]:
        raise ConfigError('[monitor] protect: gateway mode needs the networks behind this host (e.g. ["198.18.1.0/24"])')
    for entry in data["ignore"]["addresses"]:
        try:
            cfg.ignore.append(parse_network(entry, "address"))
        except ValueError as e:
            raise ConfigError(f"[ignore] addresses: {e}") from None
    if read_files:
        for f in data["ignore"]["files"]:
            try:
                cfg.ignore.extend(read_ignore_file(f))
            except ValueError as e:
                raise ConfigError(f"[ignore] files: {e}") from None
    return cfg


def _merged(raw: dict[str, Any]) -> dict[str, Any]:
    """The defaults with `raw` over them: known sections and keys, each of the default's type."""
    data = copy.deepcopy(DEFAULTS)
    if not isinstance(raw, dict):
        raise ConfigError("configuration must be a TOML table")
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"unknown section [{section}]{did_you_mean(section, DEFAULTS, '[{}]')} (known: {', '.join(DEFAULTS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"[{section}] unknown key '{key}'{unknown_key_hint(section, key)}")
            default = DEFAULTS[section][key]
            if isinstance(default, bool) != isinstance(value, bool) or (
                not isinstance(default, bool) and not _type_ok(default, value, (section, key))
            ):
                raise ConfigError(f"[{section}] {key}: expected {_type_name(default, (section, key))}, got {value!r}")
            data[section][key] = value
    return data


def did_you_mean(word: str, choices: Any, form: str = "'{}'") -> str:
    """ " (did you mean 'block_duration'?)" for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


def unknown_key_hint(section: str, key: str) -> str:
    """An unknown key's hint: the key of that name in another section, else the closest name."""
    home = [s for s, keys in DEFAULTS.items() if key in keys and s != section]
    if home:
        return f" (it belongs in [{home[0]}])"
    return did_you_mean(key, DEFAULTS[section])


def _check_names_and_paths(data: dict[str, Any], cfg: Config) -> None:
    """Absolute paths, identifiers, the refresh interval, distinct queues."""
    for key in ("hosts_deny",):
        v = data["response"][key]
        if v and not v.startswith("/"):
            raise ConfigError(f"[response] {key}: {v!r} must be an absolute path")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", data["logging"]["syslog_ident"]):
        raise ConfigError(f"[logging] syslog_ident: bad identifier {data['logging']['syslog_ident']!r}")
    for key in ("json_file", "history_file", "blocked_file"):
        v = data["logging"][key]
        if v and not v.startswith("/"):
            raise ConfigError(f"[logging] {key}: {v!r} must be an absolute path")
    if not 1 <= cfg.durations["refresh_interval"] <= 86400:
        raise ConfigError("[ignore] refresh_interval: must be between 1s and 1d")
    if not data["ignore"]["resolv_conf"].startswith("/"):
        raise ConfigError(f"[ignore] resolv_conf: {data['ignore']['resolv_conf']!r} must be an absolute path")
    for key in ("state_dir", "database"):
        v = data["storage"][key]
        if v and not v.startswith("/"):
            raise ConfigError(f"[storage] {key}: {v!r} must be an absolute path")
    if not data["daemon"]["control_socket"].startswith("/"):
        raise ConfigError("[daemon] control_socket: must be an absolute path")
    if data["nft"]["queue"] == data["nft"]["ftp_queue"]:
        raise ConfigError("[nft] ftp_queue: must differ from queue")
    if data["nft"]["nflog_group"] in (data["nft"]["queue"], data["nft"]["ftp_queue"]):
        raise ConfigError("[nft] nflog_group: must differ from queue and ftp_queue")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,31}", data["nft"]["table"]):
        raise ConfigError(f"[nft] table: bad table name {data['nft']['table']!r}")
    _check_metrics(data["metrics"], cfg)


def parse_listen(text: str) -> tuple[str, int]:
    """ "127.0.0.1:9467" / "[::1]:9467" -> (address, port); ValueError saying what is wrong. An
    address literal only (never a name to resolve)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    if not m:
        raise ValueError(f'{text!r} is not ADDRESS:PORT (e.g. "127.0.0.1:9467" or "[::1]:9467")')
    addr, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    import ipaddress

    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IP address") from None
    if (ip.version == 6) != bool(m.group(1)):
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets ([::1]:9467)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} outside 1-65535")
    return str(ip), int(port)


def _check_metrics(m: dict[str, Any], cfg: Config) -> None:
    if m["listen"]:
        try:
            parse_listen(m["listen"])
        except ValueError as e:
            raise ConfigError(f"[metrics] listen: {e}") from None
    if m["textfile"] and (not m["textfile"].startswith("/") or not m["textfile"].endswith(".prom")):
        raise ConfigError(
            f"[metrics] textfile: {m['textfile']!r} must be an absolute path ending in .prom (node-exporter reads only those)"
        )
    if not 1 <= cfg.durations["textfile_interval"] <= 3600:
        raise ConfigError("[metrics] textfile_interval: must be between 1s and 1h")


def _check_fleet(f: dict[str, Any], cfg: Config) -> None:
    """[fleet]: a usable URL and the credentials the switched-on directions need."""
    if not 0.01 <= cfg.durations["pull_interval"] <= 3600:
        raise ConfigError("[fleet] pull_interval: must be between 10ms and 1h")
    if not 1 <= cfg.durations["resync_interval"] <= 86400:
        raise ConfigError("[fleet] resync_interval: must be between 1s and 1d")
    if not 0.1 <= cfg.durations["timeout"] <= 120:
        raise ConfigError("[fleet] timeout: must be between 100ms and 2m")
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,128}", f["scenario"]):
        raise ConfigError(f"[fleet] scenario: bad scenario name {f['scenario']!r}")
    if f["machine_id"] and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", f["machine_id"]):
        raise ConfigError(f"[fleet] machine_id: bad machine name {f['machine_id']!r}")
    for key in ("cert", "key", "ca"):
        if f[key] and not f[key].startswith("/"):
            raise ConfigError(f"[fleet] {key}: {f[key]!r} must be an absolute path")
    if bool(f["cert"]) != bool(f["key"]):
        raise ConfigError("[fleet] cert: a TLS client certificate needs both cert and key")
    if any(c in f["api_key"] for c in "\r\n") or any(c in f["password"] for c in "\r\n"):
        raise ConfigError("[fleet] api_key: must be one line")
    if not f["enabled"]:
        return
    m = re.fullmatch(r"(https?)://([^/\s]+)/?", f["url"])
    if not m:
        raise ConfigError(f"[fleet] url: {f['url']!r} is not a LAPI URL like http://198.18.0.10:8080")
    if f["cert"] and m.group(1) != "https":
        raise ConfigError("[fleet] cert: a TLS client certificate needs an https url")
    if not f["push"] and not f["pull"]:
        raise ConfigError("[fleet] enabled: push and pull are both off")
    # machine_id is also this host's name in its decisions' origin (nfsentry/<machine_id>): how it
    # knows its own pushes when they come back, with a TLS client certificate too (the LAPI then
    # names the watcher CN@address itself).
    if f["push"] and not (f["machine_id"] and (f["password"] or f["cert"])):
        raise ConfigError("[fleet] machine_id: push needs machine_id and password (or machine_id, cert and key)")
    if f["pull"] and not f["api_key"] and not f["cert"]:
        raise ConfigError("[fleet] api_key: pull needs a bouncer api_key (cscli bouncers add NAME) or cert and key")


def _type_ok(default: Any, value: Any, where: tuple[str, str]) -> bool:
    if where == ("response", "command"):
        return True  # check_command() explains what is wrong with it
    if where in DURATIONS:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return type(value) is type(default)


def _type_name(default: Any, where: tuple[str, str]) -> str:
    if where in DURATIONS:
        return 'a duration like "1h"'
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}[type(default)]


def load(path: str | Path | None = None, read_files: bool = True) -> Config:
    """Load a TOML file over the defaults. path=None: the default path if it exists, else defaults."""
    if path is None:
        if not Path(DEFAULT_PATH).exists():
            return validate({}, None, read_files)
        path = DEFAULT_PATH
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: TOML syntax error: {e}") from None
    try:
        return validate(raw, str(p), read_files)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def defaults() -> Config:
    return validate({}, None)
