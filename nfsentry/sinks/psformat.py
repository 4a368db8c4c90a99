"""PortSentry-compatible output: syslog alert lines, history and blocked files (1.x and 2.0 styles).

Pure functions: one event dict (docs/DESIGN.md) in, text out; nothing here touches a file, a
socket or the clock. Times come from ``event["ts"]`` and are rendered in local time, as PortSentry
does (pin ``TZ`` to test).

What PortSentry itself writes, and what these functions reproduce:

* 1.x syslog (``[logging] format = "portsentry1"``)::

    attackalert: TCP SYN/Normal scan from host: NAME/ADDR to TCP port: N
    attackalert: TCP FIN scan from host: ...           (also XMAS; NULL is " TCP NULL scan", with
                                                        1.2's leading space, so two spaces follow
                                                        "attackalert:")
    attackalert: Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 1 PSH: 0 URG: 0 RST: 0 from host: ...
    attackalert: UDP scan from host: NAME/ADDR to UDP port: N
    attackalert: Packet from host: NAME/ADDR to TCP port: N has IP options set (detection avoidance technique).
    attackalert: Host ADDR has been blocked via dropped route using command: "..."

  NAME is the resolved name, or the address itself when there is none (PortSentry prints
  ``ADDR/ADDR`` then). The TCP wording is 1.2's ``ReportPacketType()`` applied to the packet's
  flags, so nfsentry's extra labels come out the way 1.2 would have printed those packets
  (ACK and Maimon as "Unknown Type: ...", full-XMAS as "TCP XMAS scan").

* 2.0 syslog (``portsentry2``)::

    Scan from: [ADDR] (NAME) protocol: [TCP] port: [N] type: [TCP SYN/Normal scan] IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] blocked: [true]

  with nfsentry's extra labels named in the type field (``TCP ACK scan``, ``TCP MAIMON scan``,
  ``TCP FULL-XMAS scan``, ``TCP UNKNOWN(SF) scan``).

* 1.x history and blocked files: ``EPOCH - MM/DD/YYYY HH:MM:SS Host: NAME/ADDR Port: N TCP Blocked``
  (what Debian's fail2ban ``portsentry`` filter matches). PortSentry writes this line once a host
  has passed SCAN_TRIGGER, whatever BLOCK_TCP/BLOCK_UDP say (0, 1 or 2): fail2ban setups rely on
  it in log-only mode. One line per block: a detection that nfsentry blocks is written by the
  block event that follows it, not twice.
* 2.0 history: ``YYYY-MM-DDTHH:MM:SS.mmm+ZZZZ Scan from: [...] ...`` (the 2.0 syslog line with a
  local ISO-8601 time in front; 2.0's fail2ban filter is ``^[^ ]* Scan from: \\[<HOST>\\]``).
  Milliseconds are zero-padded (2.0 prints them unpadded, so ``.5`` there means 5 ms).

Never written to the history files: dry-run detections (a "Blocked" line would make fail2ban
block what nfsentry was told not to), ignored sources, and detections below the trigger.
"""

from __future__ import annotations

import time
from typing import Any

STYLES = ("portsentry1", "portsentry2")

_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# The flags a label stands for, when an event carries no flag string.
_LABEL_BITS = {
    "SYN": SYN,
    "FIN": FIN,
    "NULL": 0,
    "XMAS": FIN | PSH | URG,
    "FULL-XMAS": FIN | SYN | RST | PSH | ACK | URG,
    "ACK": ACK,
    "MAIMON": FIN | ACK,
}
_V2_TYPES = {"SYN": "TCP SYN/Normal scan", "FIN": "TCP FIN scan", "NULL": "TCP NULL scan", "XMAS": "TCP XMAS scan"}


# == small helpers ==================================================================================
def flag_bits(flags: Any) -> int | None:
    """A TCP flag string ("S", "FPU", "" for none) or byte -> the flags byte; None if not a flag string."""
    if flags is None or isinstance(flags, bool):
        return None
    if isinstance(flags, int):
        return flags & 0xFF
    text = str(flags).strip().upper()
    if text in ("", "-", "NONE", "NULL"):
        return 0
    bits = 0
    for ch in text:
        if ch not in _BITS:
            return None
        bits |= _BITS[ch]
    return bits


def _label(ev: dict[str, Any]) -> str:
    return str(ev.get("label") or "").upper()


def _packet_bits(ev: dict[str, Any]) -> int | None:
    bits = flag_bits(ev.get("flags"))
    if bits is not None:
        return bits
    label = _label(ev)
    if label.startswith("UNKNOWN(") and label.endswith(")"):
        return flag_bits(label[8:-1])
    return _LABEL_BITS.get(label)


def _addr(ev: dict[str, Any]) -> str:
    return str(ev.get("src") or ev.get("network") or "")


def _name(ev: dict[str, Any]) -> str:
    """The resolved name, or the address itself (PortSentry prints ADDR/ADDR when unresolved)."""
    return str(ev.get("host") or _addr(ev))


def _proto(ev: dict[str, Any]) -> str:
    return str(ev.get("proto") or "").upper()


def _port(ev: dict[str, Any]) -> int:
    try:
        return int(ev.get("port") or 0)
    except (TypeError, ValueError):
        return 0


def _action(ev: dict[str, Any]) -> str:
    return str(ev.get("action") or "")


def _is_manual(ev: dict[str, Any]) -> bool:
    return _action(ev) == "manual" or ev.get("origin") == "manual"


def time_1x(ts: float) -> str:
    """1.x history time: 'MM/DD/YYYY HH:MM:SS' local time."""
    return time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(int(ts)))


def time_2x(ts: float) -> str:
    """2.0 history time: local ISO 8601 with milliseconds and UTC offset, '2026-11-22T01:02:03.045+0100'."""
    total_ms = int(round(float(ts) * 1000))
    sec, ms = divmod(total_ms, 1000)
    lt = time.localtime(sec)
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + f".{ms:03d}" + time.strftime("%z", lt)


# == scan type wording ==============================================================================
def tcp_type_1x(bits: int) -> str:
    """PortSentry 1.2's ReportPacketType() for a TCP flags byte (ECE/CWR are not looked at)."""
    syn, fin, ack = bool(bits & SYN), bool(bits & FIN), bool(bits & ACK)
    psh, rst, urg = bool(bits & PSH), bool(bits & RST), bool(bits & URG)
    if not (syn or fin or ack or psh or rst or urg):
        return " TCP NULL scan"  # sic: 1.2 prints a leading space here
    if fin and urg and psh:
        return "TCP XMAS scan"
    if fin and not (syn or ack or psh or rst or urg):
        return "TCP FIN scan"
    if syn and not (fin or ack or psh or rst or urg):
        return "TCP SYN/Normal scan"
    return (
        f"Unknown Type: TCP Packet Flags: SYN: {int(syn)} FIN: {int(fin)} ACK: {int(ack)} PSH: {int(psh)} URG: {int(urg)} RST: {int(rst)}"
    )


def _flag_text(bits: int) -> str:
    return "".join(ch for ch, b in _BITS.items() if bits & b)


def scan_type_2x(ev: dict[str, Any]) -> str:
    """The 2.0 ``type: [...]`` field, with nfsentry's extra labels named."""
    proto = _proto(ev)
    label = _label(ev)
    if proto == "UDP":
        return "UDP"
    if label == "MALFORMED":
        return f"{proto or 'IP'} MALFORMED packet ({ev.get('malformed') or 'malformed'})"
    if proto != "TCP":
        return label or "UNKNOWN"
    if label in _V2_TYPES:
        return _V2_TYPES[label]
    if label.startswith("UNKNOWN"):
        if "(" in label:
            return f"TCP {label} scan"
        flags = ev.get("flags")
        bits = flag_bits(flags)
        text = str(flags).strip().upper() if isinstance(flags, str) and bits else (_flag_text(bits) if bits else "?")
        return f"TCP UNKNOWN({text}) scan"
    if label in ("ACK", "MAIMON", "FULL-XMAS"):
        return f"TCP {label} scan"
    bits = _packet_bits(ev)  # IPOPTS or an unexpected label: describe the packet as 2.0 would
    return tcp_type_1x(bits).strip() if bits is not None else f"TCP {label or 'UNKNOWN'} scan"


# == syslog lines ===================================================================================
def block_command(ev: dict[str, Any], table: str = "nfsentry") -> str:
    """The nft command equivalent to the block, for 1.x's 'blocked via dropped route using command' line."""
    net = str(ev.get("network") or ev.get("src") or "")
    fam = 6 if (ev.get("family") == 6 or ":" in net) else 4
    dur = ev.get("duration") or 0
    timeout = f" timeout {int(dur)}s" if dur else ""
    return f"nft add element inet {table} blocked{fam} {{ {net}{timeout} }}"


def blocked_alert_line(ev: dict[str, Any], table: str = "nfsentry") -> str:
    net = str(ev.get("network") or ev.get("src") or "")
    return f'attackalert: Host {net} has been blocked via dropped route using command: "{block_command(ev, table)}"'


def hosts_deny_alert_line(ev: dict[str, Any], text: str) -> str:
    """1.x/2.0 line for a hosts.deny entry written for the event's source (for actions)."""
    return f'attackalert: Host {ev.get("network") or _addr(ev)} has been blocked via wrappers with string: "{text.rstrip()}"'


def command_alert_line(ev: dict[str, Any], argv: list[str]) -> str:
    """1.x/2.0 line for an external command run for the event's source (for actions)."""
    return f'attackalert: External command run for host: {ev.get("network") or _addr(ev)} using command: "{" ".join(argv)}"'


def detection_line_1x(ev: dict[str, Any]) -> str | None:
    proto, name, addr, port = _proto(ev), _name(ev), _addr(ev), _port(ev)
    if _label(ev) == "MALFORMED":
        where = f" to {proto} port: {port}" if proto in ("TCP", "UDP") else ""
        return f"attackalert: Malformed {proto or 'IP'} packet ({ev.get('malformed') or 'malformed'}) from host: {name}/{addr}{where}"
    if proto == "UDP":
        return f"attackalert: UDP scan from host: {name}/{addr} to UDP port: {port}"
    if proto == "TCP":
        bits = _packet_bits(ev)
        kind = tcp_type_1x(bits) if bits is not None else f"TCP {_label(ev) or 'UNKNOWN'} scan"
        return f"attackalert: {kind} from host: {name}/{addr} to TCP port: {port}"
    return f"attackalert: {_label(ev) or 'Unknown'} packet from host: {name}/{addr}"


def ipopts_line_1x(ev: dict[str, Any]) -> str | None:
    proto = _proto(ev)
    if not ev.get("ip_options") or proto not in ("TCP", "UDP"):
        return None
    return (
        f"attackalert: Packet from host: {_name(ev)}/{_addr(ev)} to {proto} port: {_port(ev)} "
        f"has IP options set (detection avoidance technique)."
    )


def _tf(value: Any) -> str:
    return "true" if value else "false"


def scan_line_2x(ev: dict[str, Any]) -> str:
    """2.0's 'Scan from:' line (without the date, as 2.0 sends it to syslog)."""
    action = _action(ev)
    ignored = bool(ev.get("ignored"))
    triggered = ev.get("triggered", True)
    if ignored:  # 2.0 stops before the trigger check for ignored hosts
        trig = noblock = blocked = "unset"
    elif not triggered:
        trig, noblock, blocked = "false", "unset", "unset"
    else:
        trig = "true"
        noblock = _tf(action not in ("block", "command"))
        blocked = _tf(ev.get("blocked") or action == "block")
    opts = "set" if ev.get("ip_options") else "not set"
    proto = _proto(ev) or "IP"
    return (
        f"Scan from: [{_addr(ev)}] ({_name(ev)}) protocol: [{proto}] port: [{_port(ev)}] "
        f"type: [{scan_type_2x(ev)}] IP opts: [{opts}] ignored: [{_tf(ignored)}] triggered: [{trig}] "
        f"noblock: [{noblock}] blocked: [{blocked}]"
    )


def _admin_line(ev: dict[str, Any]) -> str:
    kind = ev.get("event")
    net = ev.get("network") or ev.get("src") or ""
    reason = ev.get("reason") or ev.get("message") or ""
    if kind == "unblock":
        return f"adminalert: Host {net} has been unblocked" + (f" ({reason})" if reason else "")
    if kind == "expire":
        return f"adminalert: Block of host {net} has expired" + (f" ({reason})" if reason else "")
    if kind == "error":
        return f"adminalert: ERROR: {reason or 'unknown error'}"
    return f"adminalert: {kind}: {reason or net}".rstrip(": ")


def _check_style(style: str, what: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown PortSentry {what} {style!r} (use {' or '.join(STYLES)})")


def syslog_lines(ev: dict[str, Any], style: str, table: str = "nfsentry") -> list[str]:
    """Every syslog line PortSentry would have written for this event (1.x adds an IP-options line)."""
    _check_style(style, "style")
    kind = ev.get("event")
    if kind == "detection":
        if style == "portsentry2":
            return [scan_line_2x(ev)]
        if ev.get("ignored") or not ev.get("triggered", True):
            return []  # 1.x says nothing about ignored hosts or hits below SCAN_TRIGGER
        return [line for line in (detection_line_1x(ev), ipopts_line_1x(ev)) if line]
    if kind == "block":
        return [blocked_alert_line(ev, table)]
    return [_admin_line(ev)]


def syslog_line(ev: dict[str, Any], style: str, table: str = "nfsentry") -> str | None:
    """The main syslog line for the event in PortSentry 'portsentry1' or 'portsentry2' style, or None."""
    lines = syslog_lines(ev, style, table)
    return lines[0] if lines else None


# == history and blocked files ======================================================================
def _writes_history(ev: dict[str, Any]) -> bool:
    if ev.get("ignored") or not ev.get("triggered", True) or _action(ev) == "dry-run":
        return False
    return _proto(ev) in ("TCP", "UDP")


def record_1x(ev: dict[str, Any]) -> str:
    """'EPOCH - MM/DD/YYYY HH:MM:SS Host: NAME/ADDR Port: N TCP Blocked' (1.2's WriteBlocked)."""
    ts = float(ev["ts"])
    return f"{int(ts)} - {time_1x(ts)} Host: {_name(ev)}/{_addr(ev)} Port: {_port(ev)} {_proto(ev)} Blocked"


def history_line(ev: dict[str, Any], style: str = "portsentry1") -> str | None:
    """The history-file line for the event in the given style, or None when PortSentry writes none."""
    _check_style(style, "history style")
    kind = ev.get("event")
    if style == "portsentry2":
        if kind != "detection" or not _writes_history(ev):
            return None  # 2.0's history holds scan events; the block is in its 'blocked:' field
        return f"{time_2x(float(ev['ts']))} {scan_line_2x(ev)}"
    if kind == "block":
        if _is_manual(ev) or _proto(ev) not in ("TCP", "UDP"):
            return None  # no scanned port to report: an admin's block, or an imported/restored one
        return record_1x(ev)
    if kind == "detection":
        if _action(ev) == "block" or not _writes_history(ev):
            return None  # a blocked source gets its line from the block event that follows
        return record_1x(ev)
    return None


def blocked_line(ev: dict[str, Any]) -> str | None:
    """The 1.x blocked-file line (same text as the 1.x history line; PortSentry writes both)."""
    return history_line(ev, "portsentry1")
