"""FTP control-channel tracking: data connections are never mistaken for scans.

PortSentry's "advanced" mode follows FTP so that the data connection of a transfer (the server
connecting back to a client's ephemeral port in active mode, or a client connecting to a server's
ephemeral port in passive mode) is not counted as a port scan. nfsentry does it in the verdict loop,
for the host itself and as a gateway, where no local socket tells the kernel the port is in use.

This module is pure: raw address bytes (4 or 16, as :class:`nfsentry.packet.Packet` carries them)
and a ``now`` clock in, events out. No I/O, sockets, logging or scapy.

* :class:`FtpTracker` is fed the payload of every FTP control packet (queue 1). It reassembles lines
  per flow direction and parses the four announcements that open a data connection:

  ============  ===============  ==========================================================
  sent by       line             expectation (``peer`` may connect to ``addr``:``port``)
  ============  ===============  ==========================================================
  client        ``PORT``/``EPRT``  active: peer = server (control dst), addr = client (src)
  server        ``227``/``229``    passive: peer = client (control dst), addr = server (src)
  ============  ===============  ==========================================================

  It returns a list of events: :class:`Expectation` (to be written to the kernel set
  ``ftp_expect4``/``ftp_expect6`` and added to an :class:`ExpectationTable`) and reports
  (:class:`Bounce`, :class:`PasvMismatch`, :class:`Malformed`, :class:`Oversized`).
* :class:`ExpectationTable` answers, for every queued packet, "is this the data connection an FTP
  peer announced?" and consumes the answer.

Security reasoning
------------------
*Narrow expectations.* An expectation names the one address allowed to connect (``peer``), the one
address it connects to (``addr``) and the one port, for a short time (``expect_timeout``, 60 s by
default) and is consumed by the first matching packet (when the caller passes the packet's source
port, it is bound to that one connection instead, so a retransmitted SYN is not taken for a scan). A
third host probing the announced port is still a scan; a scan from source port 20 (``nmap -g 20``)
matches nothing and is still a scan: no source port ever creates or widens an expectation. Each
control connection has at most one pending expectation (FTP runs one data connection at a time per
control connection: a new ``PORT``/``PASV`` supersedes the previous one), so one connection cannot
flood the table.

*Only the endpoint itself authorizes connections to itself.* An active-mode announcement (``PORT``,
``EPRT``) must name the client's own control-connection source address; anything else is the classic
FTP bounce (the client asks the server to connect to a third party): no expectation, a
:class:`Bounce` report. A passive-mode expectation is always for the *control connection's* server
address, never for the address written in the reply: a ``229`` carries no address, and a ``227``'s
address is only compared. When a ``227`` names another address (a NAT'd server announcing its public
address, ``0.0.0.0``, a private address, or a hostile server pointing its client at a third party) a
:class:`PasvMismatch` is reported and, by default (``pasv_mismatch="control"``), the expectation is
still created for the control address. That is as narrow as a ``229`` from the same server (which is
always accepted): the server only authorizes its own client to connect to the server's own address,
which is also where NAT'd clients and modern clients (Python's ftplib, curl) actually connect, since
they ignore the ``227`` address. A client that does follow a third-party address gets no expectation
for it, so the third party's port is still protected. ``pasv_mismatch="refuse"`` creates none.

*Hostile input never crashes the tracker and costs bounded memory.* Each flow direction buffers at
most ``max_line`` bytes of an unfinished line; a longer line is dropped, reported once
(:class:`Oversized`) and skipped up to its newline. At most ``max_flows`` flows are tracked (least
recently used evicted, idle ones expire after ``flow_timeout``); a flow with nothing buffered is not
stored at all. Numbers are parsed with bounded digit counts; numbers > 255, ports outside 1..65535,
ambiguous dotted quads (leading zeros: octal for ``inet_aton`` servers), unknown EPRT protocols or
missing fields are reported as :class:`Malformed`. Report events carry at most 80 bytes of the line,
and every ``describe()`` escapes control and non-ASCII bytes (no log injection). The table is bounded
too (``max_entries``, oldest evicted).

*What it cannot see.* Without TCP sequence numbers (``feed(..., seq=None)``), a retransmitted segment
of a line split across packets duplicates bytes and yields a :class:`Malformed` report instead of an
expectation; pass ``seq`` to have retransmissions trimmed (a gap, i.e. a lost or reordered segment,
drops the current line). Addresses are compared as seen at the hook that queues the packets; the
daemon must queue only ``ct state established`` control packets so that forged control lines from
an unconnected host never reach the tracker.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from .addrs import addr_text

FTP_CONTROL_PORT = 21
DEFAULT_EXPECT_TIMEOUT = 60.0
DEFAULT_MAX_LINE = 2048
DEFAULT_MAX_FLOWS = 1024
DEFAULT_FLOW_TIMEOUT = 300.0
DEFAULT_MAX_EXPECTATIONS = 4096
PASV_MISMATCH_POLICIES = ("control", "refuse")

_REPORT_LINE = 80  # bytes of the offending line kept in a report
_SEQ_WINDOW = 1 << 20  # larger sequence jumps mean a new connection on the same 4-tuple
_U32 = 0xFFFFFFFF

# 227: six comma-separated numbers anywhere in the text, with or without parentheses. Bounded digit
# counts and digit look-arounds: "1000,..." does not match as "000,...", the search stays linear.
_RE_227 = re.compile(
    rb"(?<![0-9])([0-9]{1,3})\s*,\s*([0-9]{1,3})\s*,\s*([0-9]{1,3})\s*,\s*([0-9]{1,3})"
    rb"\s*,\s*([0-9]{1,3})\s*,\s*([0-9]{1,3})(?![0-9])"
)
# 229 without parentheses: <d><d><d>port<d>, d any printable but a digit or a parenthesis.
_RE_229 = re.compile(rb"([!-'*-/:-~])\1\1([0-9]{1,5})\1")


# --- address text -------------------------------------------------------------------------------

# addr_text (core.addrs): raw 4/16-byte address -> text; never raises, other lengths as hex


def safe_text(line: bytes, limit: int = _REPORT_LINE) -> str:
    """Printable ASCII rendering of attacker-controlled bytes: control and non-ASCII bytes escaped."""
    out = "".join(chr(c) if 32 <= c < 127 and c != 92 else f"\\x{c:02x}" for c in line[:limit])
    return out + ("..." if len(line) > limit else "")


def _family(b: bytes) -> int:
    return 4 if len(b) == 4 else 6


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """``peer`` may open one TCP connection to ``addr``:``port`` until ``expires``.

    ``mode`` is ``"active"`` (PORT/EPRT: peer = server, addr = client) or ``"passive"`` (227/229:
    peer = client, addr = server). ``command`` is ``"PORT"``, ``"EPRT"``, ``"227"`` or ``"229"``.
    ``ctl`` identifies the control connection (client, server, client port, server port); a table
    keeps one pending expectation per ``ctl``.
    """

    kind: ClassVar[str] = "expectation"
    family: int
    peer: bytes
    addr: bytes
    port: int
    expires: float
    mode: str
    command: str = ""
    ctl: tuple[bytes, bytes, int, int] | None = None

    @property
    def key(self) -> tuple[bytes, bytes, int]:
        """The match key: (packet src, packet dst, packet dport)."""
        return (self.peer, self.addr, self.port)

    @property
    def peer_text(self) -> str:
        return addr_text(self.peer)

    @property
    def addr_text(self) -> str:
        return addr_text(self.addr)

    @property
    def set_name(self) -> str:
        """The kernel set: ``ftp_expect4`` or ``ftp_expect6``."""
        return "ftp_expect4" if self.family == 4 else "ftp_expect6"

    @property
    def element(self) -> str:
        """The nft set element ``peer . addr . port`` (e.g. ``198.51.100.7 . 192.0.2.1 . 50000``)."""
        return f"{self.peer_text} . {self.addr_text} . {self.port}"

    def timeout(self, now: float) -> int:
        """Whole seconds left (at least 1), for the element's ``timeout``."""
        return max(1, math.ceil(self.expires - now))

    def nft_element(self, now: float) -> str:
        """``peer . addr . port timeout Ns``, ready for ``add element inet nfsentry <set_name> { ... }``."""
        return f"{self.element} timeout {self.timeout(now)}s"

    def describe(self) -> str:
        return f"ftp {self.mode} {self.command or 'expectation'}: {self.peer_text} may connect to {self.addr_text} port {self.port}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": "ftp_expectation",
            "family": self.family,
            "peer": self.peer_text,
            "addr": self.addr_text,
            "port": self.port,
            "expires": self.expires,
            "mode": self.mode,
            "command": self.command,
        }


@dataclass(frozen=True, slots=True)
class FtpReport:
    """Base of the report events: the control packet (sender -> receiver) that completed the line."""

    kind: ClassVar[str] = "report"
    ts: float
    family: int
    src: bytes
    dst: bytes
    sport: int
    dport: int

    def _base(self) -> dict[str, Any]:
        return {
            "event": "ftp_" + self.kind,
            "ts": self.ts,
            "family": self.family,
            "src": addr_text(self.src),
            "dst": addr_text(self.dst),
            "sport": self.sport,
            "dport": self.dport,
        }

    def describe(self) -> str:  # pragma: no cover - overridden
        return f"ftp {self.kind} from {addr_text(self.src)}"

    def as_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        return self._base()


@dataclass(frozen=True, slots=True)
class Bounce(FtpReport):
    """A client's PORT/EPRT named ``announced``, not its own address ``real`` (= ``src``): refused."""

    kind: ClassVar[str] = "bounce"
    command: str = ""
    announced: bytes = b""
    port: int = 0

    @property
    def real(self) -> bytes:
        return self.src

    def describe(self) -> str:
        return (
            f"ftp bounce refused: client {addr_text(self.src)} sent {self.command} naming "
            f"{addr_text(self.announced)} port {self.port} to server {addr_text(self.dst)}"
        )

    def as_dict(self) -> dict[str, Any]:
        d = self._base()
        d.update(command=self.command, announced=addr_text(self.announced), real=addr_text(self.src), port=self.port)
        return d


@dataclass(frozen=True, slots=True)
class PasvMismatch(FtpReport):
    """A server's 227 named ``announced``, not its control address ``real`` (= ``src``).

    ``accepted`` tells whether an expectation for the control address was still created
    (``pasv_mismatch="control"``, the default) or not (``"refuse"``).
    """

    kind: ClassVar[str] = "pasv_mismatch"
    announced: bytes = b""
    port: int = 0
    accepted: bool = True

    @property
    def real(self) -> bytes:
        return self.src

    def describe(self) -> str:
        what = "using the control address" if self.accepted else "refused"
        return f"ftp 227 from server {addr_text(self.src)} names {addr_text(self.announced)} port {self.port} (NAT or third party?): {what}"

    def as_dict(self) -> dict[str, Any]:
        d = self._base()
        d.update(announced=addr_text(self.announced), real=addr_text(self.src), port=self.port, accepted=self.accepted)
        return d


@dataclass(frozen=True, slots=True)
class Malformed(FtpReport):
    """An announcement that could not be parsed: no expectation. ``line`` is at most 80 bytes."""

    kind: ClassVar[str] = "malformed"
    command: str = ""
    reason: str = ""
    line: bytes = b""

    def describe(self) -> str:
        return f"ftp malformed {self.command} from {addr_text(self.src)}: {self.reason}: {safe_text(self.line)}"

    def as_dict(self) -> dict[str, Any]:
        d = self._base()
        d.update(command=self.command, reason=self.reason, line=safe_text(self.line))
        return d


@dataclass(frozen=True, slots=True)
class Oversized(FtpReport):
    """A control line longer than ``limit`` bytes (``length`` seen so far) was dropped unparsed."""

    kind: ClassVar[str] = "oversized"
    length: int = 0
    limit: int = 0

    def describe(self) -> str:
        return f"ftp oversized control line from {addr_text(self.src)}: {self.length} bytes > {self.limit}, dropped"

    def as_dict(self) -> dict[str, Any]:
        d = self._base()
        d.update(length=self.length, limit=self.limit)
        return d


FtpEvent = Expectation | Bounce | PasvMismatch | Malformed | Oversized


# --- parsers (pure; raise ParseError with a reason) ---------------------------------------


class ParseError(ValueError):
    """Why an announcement's argument is invalid (becomes a :class:`Malformed` report)."""


def _byte_num(tok: bytes, what: str) -> int:
    tok = tok.strip()
    if not (1 <= len(tok) <= 3) or not tok.isdigit():
        raise ParseError(f"bad {what} number")
    n = int(tok)
    if n > 255:
        raise ParseError(f"{what} number {n} > 255")
    return n


def _port_num(tok: bytes) -> int:
    if not (1 <= len(tok) <= 5) or not tok.isdigit():
        raise ParseError("bad port")
    n = int(tok)
    if not 1 <= n <= 65535:
        raise ParseError(f"port {n} out of range")
    return n


def _six(nums: Iterable[bytes]) -> tuple[bytes, int]:
    v = [_byte_num(t, "address/port") for t in nums]
    port = v[4] * 256 + v[5]
    if port == 0:
        raise ParseError("port 0 out of range")
    return bytes(v[:4]), port


def parse_port(arg: bytes) -> tuple[bytes, int]:
    """``h1,h2,h3,h4,p1,p2`` -> (4-byte address, port). Raises :class:`ParseError`."""
    parts = arg.split(b",")
    if len(parts) != 6:
        raise ParseError(f"PORT needs 6 numbers, got {len(parts)}")
    return _six(parts)


def _dotted_quad(text: bytes) -> bytes:
    parts = text.split(b".")
    if len(parts) != 4:
        raise ParseError("bad IPv4 address")
    out = []
    for p in parts:
        if not (1 <= len(p) <= 3) or not p.isdigit() or (len(p) > 1 and p[0] == 0x30):
            raise ParseError("bad IPv4 address")  # leading zeros are octal to inet_aton(): ambiguous
        n = int(p)
        if n > 255:
            raise ParseError(f"IPv4 address number {n} > 255")
        out.append(n)
    return bytes(out)


def _ipv6(text: bytes) -> bytes:
    if not text or len(text) > 45 or text.translate(None, b"0123456789abcdefABCDEF:."):
        raise ParseError("bad IPv6 address")
    try:
        return socket.inet_pton(socket.AF_INET6, text.decode("ascii"))
    except (OSError, ValueError, UnicodeError):
        raise ParseError("bad IPv6 address") from None


def parse_eprt(arg: bytes) -> tuple[bytes, int]:
    """``<d>1<d>addr<d>port<d>`` or ``<d>2<d>v6addr<d>port<d>`` (RFC 2428) -> (address, port)."""
    if len(arg) < 2:
        raise ParseError("EPRT without argument")
    d = arg[:1]
    if not 33 <= d[0] <= 126:
        raise ParseError("bad EPRT delimiter")
    parts = arg.split(d)
    if len(parts) != 5 or parts[0] or parts[4]:
        raise ParseError("EPRT needs <d>proto<d>addr<d>port<d>")
    proto, text, port = parts[1], parts[2], parts[3]
    if proto == b"1":
        addr = _dotted_quad(text)
    elif proto == b"2":
        addr = _ipv6(text)
    else:
        raise ParseError("unsupported EPRT network protocol")
    return addr, _port_num(port)


def parse_227(text: bytes) -> tuple[bytes, int]:
    """The text of a 227 reply -> (announced 4-byte address, port). Parentheses are optional."""
    m = _RE_227.search(text)
    if m is None:
        raise ParseError("227 without h1,h2,h3,h4,p1,p2")
    return _six(m.groups())


def parse_229(text: bytes) -> int:
    """The text of a 229 reply (``(|||port|)``, any delimiter, parentheses optional) -> port."""
    left = text.find(b"(")
    right = text.find(b")", left + 1) if left >= 0 else -1
    if left >= 0 and right > left + 1:
        inner = text[left + 1 : right]
        d = inner[:1]
        parts = inner.split(d)
        if 33 <= d[0] <= 126 and not d.isdigit() and len(parts) == 5 and not parts[0] and not parts[4]:
            return _port_num(parts[3])
    m = _RE_229.search(text)
    if m is None:
        raise ParseError("229 without (<d><d><d>port<d>)")
    return _port_num(m.group(2))


# --- tracker ------------------------------------------------------------------------------------


class _Flow:
    __slots__ = ("buf", "seen", "discard", "next_seq")

    def __init__(self, now: float) -> None:
        self.buf = b""  # unfinished line (<= max_line bytes)
        self.seen = now
        self.discard = False  # skipping the rest of an oversized line up to its newline
        self.next_seq: int | None = None


class FtpTracker:
    """Reassembles FTP control lines per flow direction and turns announcements into events.

    A packet is a control packet when ``dport`` (client -> server) or else ``sport`` (server ->
    client) is one of ``control_ports``; others are ignored. Clients' ``PORT``/``EPRT`` and servers'
    ``227``/``229`` are parsed (commands case-insensitive, CRLF or LF, several lines per packet, a
    line split over any number of packets); every other line is ignored.
    """

    def __init__(
        self,
        expect_timeout: float = DEFAULT_EXPECT_TIMEOUT,
        max_line: int = DEFAULT_MAX_LINE,
        max_flows: int = DEFAULT_MAX_FLOWS,
        *,
        flow_timeout: float = DEFAULT_FLOW_TIMEOUT,
        control_ports: Iterable[int] = (FTP_CONTROL_PORT,),
        pasv_mismatch: str = "control",
    ) -> None:
        if expect_timeout <= 0 or max_line < 16 or max_flows < 1 or flow_timeout <= 0:
            raise ValueError("expect_timeout and flow_timeout > 0, max_line >= 16, max_flows >= 1")
        if pasv_mismatch not in PASV_MISMATCH_POLICIES:
            raise ValueError(f"pasv_mismatch must be one of {PASV_MISMATCH_POLICIES}")
        self.expect_timeout = float(expect_timeout)
        self.max_line = int(max_line)
        self.max_flows = int(max_flows)
        self.flow_timeout = float(flow_timeout)
        self.control_ports = frozenset(control_ports)
        self.pasv_mismatch = pasv_mismatch
        # Flow direction (src, dst, sport, dport) -> state, least recently used first. Only flows
        # with something to remember (a partial line, a discard, a sequence number) are stored.
        self._flows: dict[tuple[bytes, bytes, int, int], _Flow] = {}
        self.stats = {
            "packets": 0,
            "lines": 0,
            "expectations": 0,
            "bounces": 0,
            "pasv_mismatches": 0,
            "malformed": 0,
            "oversized": 0,
            "flows_evicted": 0,
            "flows_expired": 0,
            "retransmits": 0,
            "gaps": 0,
        }

    def __len__(self) -> int:
        """Number of flow directions with state."""
        return len(self._flows)

    def buffered(self) -> int:
        """Bytes held in partial-line buffers (at most ``max_line * max_flows``)."""
        return sum(len(f.buf) for f in self._flows.values())

    def expire(self, now: float) -> int:
        """Forget flows idle for more than ``flow_timeout``; returns how many."""
        old = [k for k, f in self._flows.items() if now - f.seen > self.flow_timeout]
        for k in old:
            del self._flows[k]
        self.stats["flows_expired"] += len(old)
        return len(old)

    def feed(self, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, now: float, seq: int | None = None) -> list[FtpEvent]:
        """Feed one TCP control packet's payload; returns the events of the lines it completed.

        ``seq`` (optional) is the TCP sequence number of the payload's first byte; with it,
        retransmitted bytes are dropped instead of being appended twice. Never raises on any input
        bytes, addresses, ports or split points.
        """
        if dport in self.control_ports:
            from_client = True
        elif sport in self.control_ports:
            from_client = False
        else:
            return []
        if not payload or len(src) not in (4, 16) or len(dst) != len(src):
            return []
        if type(src) is not bytes or type(dst) is not bytes:
            src, dst = bytes(src), bytes(dst)
        data = bytes(payload)
        self.stats["packets"] += 1
        flows = self._flows
        key = (src, dst, sport, dport)
        fl = flows.pop(key, None)
        if fl is not None and now - fl.seen > self.flow_timeout:
            fl = None  # a stale partial line is never joined to new bytes
            self.stats["flows_expired"] += 1
        # Flows are kept in last-seen order: drop the idle ones at the front (amortized O(1)).
        while flows:
            first = next(iter(flows))
            if now - flows[first].seen <= self.flow_timeout:
                break
            del flows[first]
            self.stats["flows_expired"] += 1
        if fl is None:
            fl = _Flow(now)
        fl.seen = now
        events: list[FtpEvent] = []

        if seq is not None:
            data = self._sequence(fl, data, seq & _U32)

        if data and fl.discard:
            i = data.find(b"\n")
            if i < 0:
                data = b""
            else:
                data = data[i + 1 :]
                fl.discard = False
        if data:
            buf = fl.buf + data if fl.buf else data
            lines = buf.split(b"\n")
            rest = lines.pop()
            for line in lines:
                if len(line) > self.max_line:
                    self._oversized(events, now, src, dst, sport, dport, len(line))
                else:
                    self._line(line, events, now, src, dst, sport, dport, from_client)
            if len(rest) > self.max_line:
                self._oversized(events, now, src, dst, sport, dport, len(rest))
                rest = b""
                fl.discard = True
            fl.buf = rest

        if fl.buf or fl.discard or fl.next_seq is not None:
            if len(flows) >= self.max_flows:
                del flows[next(iter(flows))]
                self.stats["flows_evicted"] += 1
            flows[key] = fl
        return events

    # -- internals --

    def _sequence(self, fl: _Flow, data: bytes, seq: int) -> bytes:
        nxt = fl.next_seq
        end = (seq + len(data)) & _U32
        if nxt is None:
            fl.next_seq = end
            return data
        diff = ((seq - nxt + 0x80000000) & _U32) - 0x80000000
        if diff == 0:
            fl.next_seq = end
            return data
        if abs(diff) > _SEQ_WINDOW:  # a new connection reusing the 4-tuple: start afresh
            fl.buf, fl.discard, fl.next_seq = b"", False, end
            return data
        if diff < 0:  # retransmission, possibly carrying new bytes too
            self.stats["retransmits"] += 1
            if -diff >= len(data):
                return b""
            fl.next_seq = end
            return data[-diff:]
        # A gap: bytes we never saw (lost, reordered). The current line cannot be trusted.
        self.stats["gaps"] += 1
        fl.buf, fl.discard, fl.next_seq = b"", True, end
        return data

    def _oversized(self, events: list, now: float, src: bytes, dst: bytes, sport: int, dport: int, length: int) -> None:
        self.stats["oversized"] += 1
        events.append(Oversized(now, _family(src), src, dst, sport, dport, length, self.max_line))

    def _line(self, line: bytes, events: list, now: float, src: bytes, dst: bytes, sport: int, dport: int, from_client: bool) -> None:
        self.stats["lines"] += 1
        line = line.strip(b" \t\r")
        fam = _family(src)
        if from_client:
            verb = line[:4].upper()
            if verb not in (b"PORT", b"EPRT") or (len(line) > 4 and line[4] not in (32, 9)):
                return
            command = verb.decode()
            arg = line[4:].strip(b" \t")
            try:
                addr, port = parse_port(arg) if verb == b"PORT" else parse_eprt(arg)
            except ParseError as e:
                self.stats["malformed"] += 1
                events.append(Malformed(now, fam, src, dst, sport, dport, command, str(e), line[:_REPORT_LINE]))
                return
            if addr != src:
                self.stats["bounces"] += 1
                events.append(Bounce(now, fam, src, dst, sport, dport, command, addr, port))
                return
            self.stats["expectations"] += 1
            events.append(Expectation(fam, dst, src, port, now + self.expect_timeout, "active", command, (src, dst, sport, dport)))
            return
        code = line[:3]
        if code not in (b"227", b"229") or (len(line) > 3 and line[3] not in (32, 45)):
            return
        command = code.decode()
        text = line[4:]
        try:
            if code == b"227":
                announced, port = parse_227(text)
            else:
                announced, port = src, parse_229(text)
        except ParseError as e:
            self.stats["malformed"] += 1
            events.append(Malformed(now, fam, src, dst, sport, dport, command, str(e), line[:_REPORT_LINE]))
            return
        if announced != src:
            accepted = self.pasv_mismatch == "control"
            self.stats["pasv_mismatches"] += 1
            events.append(PasvMismatch(now, fam, src, dst, sport, dport, announced, port, accepted))
            if not accepted:
                return
        self.stats["expectations"] += 1
        events.append(Expectation(fam, dst, src, port, now + self.expect_timeout, "passive", command, (dst, src, dport, sport)))


# --- expectation table ---------------------------------------------------------------------------


class ExpectationTable:
    """Pending expectations, matched (and consumed) against queued packets.

    The engine calls ``match`` for a queued TCP packet only while ``pending`` (the live dict of
    expectations) is non-empty, so an empty table costs one truth test of a dict.
    At most ``max_entries`` are kept (the oldest evicted) and one per control connection (a newer
    announcement on the same control connection supersedes the older). Not thread-safe: use it from
    one thread or behind a lock.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_EXPECTATIONS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries >= 1")
        self.max_entries = int(max_entries)
        # key (peer, addr, port) -> [expectation, bound source port or None], oldest first.
        self._d: dict[tuple[bytes, bytes, int], list] = {}
        self._ctl: dict[tuple, tuple[bytes, bytes, int]] = {}
        self.pending = self._d  # never rebound: truthy while expectations exist
        self.stats = {"added": 0, "matched": 0, "expired": 0, "evicted": 0, "superseded": 0}

    def __len__(self) -> int:
        return len(self._d)

    def __bool__(self) -> bool:
        return bool(self._d)

    def __iter__(self) -> Iterator[Expectation]:
        return iter([slot[0] for slot in self._d.values()])

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def _remove(self, key: tuple[bytes, bytes, int]) -> Expectation | None:
        slot = self._d.pop(key, None)
        if slot is None:
            return None
        exp = slot[0]
        if exp.ctl is not None and self._ctl.get(exp.ctl) == key:
            del self._ctl[exp.ctl]
        return exp

    def add(self, exp: Expectation) -> list[Expectation]:
        """Add (or refresh) ``exp``; returns the expectations it removed (superseded on the same
        control connection, or evicted as the oldest), so their kernel elements can be deleted."""
        removed: list[Expectation] = []
        key = exp.key
        self._remove(key)  # refresh: re-inserted at the end
        if exp.ctl is not None:
            prev = self._ctl.get(exp.ctl)
            if prev is not None:
                old = self._remove(prev)
                if old is not None:
                    removed.append(old)
                    self.stats["superseded"] += 1
        while len(self._d) >= self.max_entries:
            old = self._remove(next(iter(self._d)))
            if old is not None:
                removed.append(old)
            self.stats["evicted"] += 1
        self._d[key] = [exp, None]
        if exp.ctl is not None:
            self._ctl[exp.ctl] = key
        self.stats["added"] += 1
        return removed

    def match(self, src: bytes, dst: bytes, dport: int, now: float, sport: int | None = None) -> bool:
        """True when a TCP packet src -> dst:dport is an announced data connection; consumes it.

        Exact match only: ``src`` must be the peer, ``dst`` the announced address, ``dport`` the
        announced port, before expiry. With ``sport``, the first match binds the expectation to that
        source port and a retransmitted SYN of the same connection (same ``sport``) matches again
        until expiry; without it the expectation is gone after the first match.
        """
        if not self._d:
            return False
        key = (src, dst, dport)
        slot = self._d.get(key)
        if slot is None:
            return False
        if now >= slot[0].expires:
            self._remove(key)
            self.stats["expired"] += 1
            return False
        bound = slot[1]
        if bound is None:
            if sport is None:
                self._remove(key)
            else:
                slot[1] = sport
            self.stats["matched"] += 1
            return True
        return sport is not None and sport == bound

    def discard(self, exp: Expectation) -> bool:
        """Remove ``exp`` (by key); True when it was present."""
        return self._remove(exp.key) is not None

    def expire(self, now: float) -> int:
        """Remove expired expectations; returns how many."""
        old = [k for k, slot in self._d.items() if now >= slot[0].expires]
        for k in old:
            self._remove(k)
        self.stats["expired"] += len(old)
        return len(old)

    def clear(self) -> None:
        self._d.clear()
        self._ctl.clear()
