"""Decode what NFQUEUE hands over (an IPv4 or IPv6 packet starting at the IP header).

Pure and allocation-light: ``struct.unpack_from`` on the raw bytes, no scapy, no ``ipaddress``.
:func:`decode` never raises: anything it cannot make sense of comes back as a :class:`Packet`
whose ``malformed`` field names the reason (``"truncated tcp header"``, ``"ipv4 ihl 3 < 5"``,
...), with whatever was decoded before the problem (addresses, ports) filled in so the caller
can still attribute and report it.

What is walked:

* IPv4: version, IHL (5..15), total length (trailing bytes beyond it are ignored), fragment
  offset / more-fragments flag, TTL, options by name (``RR`` 7, ``LSRR`` 131, ``SSRR`` 137,
  ``TS`` 68, anything else ``opt-<n>``; EOL/NOP padding is not reported). An option whose length
  byte is < 2 or runs past the header makes the packet malformed.
* IPv6: the fixed header, then extension headers (hop-by-hop 0, routing 43, fragment 44,
  destination options 60, AH 51 by its own length rule) up to :data:`MAX_EXT_HEADERS` headers;
  every header consumes >= 8 bytes, so the walk also ends with the packet. Hop-by-hop, routing
  and destination options are reported in ``ip_options`` as ``HBH``, ``RH<type>`` (``RH0`` is
  the deprecated source route) and ``DSTOPTS``. ESP (50) and "no next header" (59) end the walk.
* Fragments: a non-first fragment (offset > 0) has no transport header, so its ports, flags and
  window stay 0 and ``payload_offset`` points at the fragment data. A first fragment must still
  hold the whole TCP header or the UDP header.
* TCP: ports, flags byte, window, data offset (5..15 words, must fit), raw option bytes.
* UDP: ports; a UDP length < 8 or longer than the packet is malformed (unless the datagram is
  fragmented, when the length legitimately exceeds the first fragment).

decode() verifies no checksum (the kernel validated the IP header before the hook).
:func:`bad_checksum` verifies a TCP or UDP checksum on demand: the engine asks only where a packet
would react (nmap ``--badsum``, ``hping3 -b``: a packet the host's own stack discards is never a
real connection attempt). NFQUEUE hands over complete checksums (the kernel completes an offloaded,
partial one before copying a packet to userspace); NFLOG does not, so its copies are never checked.

:func:`decode_ipv4` decodes what a netdev ingress chain logs from an IPv4 frame (link-layer
protocol 0x0800) whatever its version field says, so a bad version still has a source.
"""

from __future__ import annotations

import struct

from .addrs import addr_text  # re-exported: Packet users format addresses with it

__all__ = ["Packet", "decode", "decode_ipv4", "bad_checksum", "addr_text", "MAX_EXT_HEADERS", "IP4_OPTION_NAMES"]

MAX_EXT_HEADERS = 16

# IPv4 option type -> name (RFC 791 / IANA). Others are reported as "opt-<n>".
IP4_OPTION_NAMES = {7: "RR", 131: "LSRR", 137: "SSRR", 68: "TS"}
_OPT4 = tuple(IP4_OPTION_NAMES.get(t, f"opt-{t}") for t in range(256))
_RH = tuple(f"RH{t}" for t in range(256))

_V4 = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl tos totlen id frag ttl proto csum src dst
_V6 = struct.Struct("!IHBB16s16s")  # ver/tc/flow plen next hlim src dst
_TCP = struct.Struct("!HHIIBBH")  # sport dport seq ack doff flags window
_UDP = struct.Struct("!HHH")  # sport dport length
_PORTS = struct.Struct("!HH")
_H = struct.Struct("!H")

_V4_UNPACK = _V4.unpack_from
_V6_UNPACK = _V6.unpack_from
_TCP_UNPACK = _TCP.unpack_from
_UDP_UNPACK = _UDP.unpack_from
_PORTS_UNPACK = _PORTS.unpack_from
_H_UNPACK = _H.unpack_from


class Packet:
    """One decoded packet. Built by :func:`decode`; treat as read-only."""

    __slots__ = (
        "family",
        "src",
        "dst",
        "proto",
        "sport",
        "dport",
        "flags",
        "window",
        "tcp_options",
        "ip_options",
        "ext_headers",
        "frag_offset",
        "more_frags",
        "payload_offset",
        "ttl",
        "malformed",
    )

    def __init__(
        self,
        family: int = 0,
        src: bytes = b"",
        dst: bytes = b"",
        proto: int = 0,
        sport: int = 0,
        dport: int = 0,
        flags: int = 0,
        window: int = 0,
        tcp_options: bytes = b"",
        ip_options: tuple = (),
        ext_headers: tuple = (),
        frag_offset: int = 0,
        more_frags: bool = False,
        payload_offset: int = 0,
        ttl: int = 0,
        malformed: str | None = None,
    ):
        self.family = family  # 4 or 6 (0 if unknown)
        self.src = src  # 4 or 16 raw bytes (b"" if not decodable)
        self.dst = dst
        self.proto = proto  # final transport protocol number
        self.sport = sport  # 0 when absent
        self.dport = dport
        self.flags = flags  # TCP flags byte, 0 for non-TCP
        self.window = window
        self.tcp_options = tcp_options  # raw TCP option bytes
        self.ip_options = ip_options  # IPv4 option names / IPv6 option-bearing ext headers
        self.ext_headers = ext_headers  # IPv6 extension header numbers walked
        self.frag_offset = frag_offset  # fragment offset in bytes
        self.more_frags = more_frags
        self.payload_offset = payload_offset  # index of the transport payload in the raw bytes
        self.ttl = ttl  # TTL / hop limit
        self.malformed = malformed  # reason, or None

    @property
    def has_transport(self) -> bool:
        """True when the transport header was decoded (TCP/UDP, not a non-first fragment)."""
        return self.frag_offset == 0 and self.proto in (6, 17) and self.malformed is None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Packet({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


_new = object.__new__


def _mk(
    family,
    src,
    dst,
    proto,
    sport,
    dport,
    flags,
    window,
    tcp_options,
    ip_options,
    ext_headers,
    frag_offset,
    more_frags,
    payload_offset,
    ttl,
    malformed,
    _P=Packet,
):
    """Packet(...) without the type-call overhead (the decoder's fast paths)."""
    p = _new(_P)
    p.family = family
    p.src = src
    p.dst = dst
    p.proto = proto
    p.sport = sport
    p.dport = dport
    p.flags = flags
    p.window = window
    p.tcp_options = tcp_options
    p.ip_options = ip_options
    p.ext_headers = ext_headers
    p.frag_offset = frag_offset
    p.more_frags = more_frags
    p.payload_offset = payload_offset
    p.ttl = ttl
    p.malformed = malformed
    return p


# The fast shapes: the packets that make up nearly all of a flood or a scan. IPv4 without options
# (first byte IP4_NO_OPTIONS) or IPv6 without extension headers (next header TCP or UDP), not
# fragmented (IPv4: no IP4_FRAG_BITS set), total/payload length within the bytes given, and a
# whole TCP header (data offset TCP_HDR .. the segment) or UDP header (length UDP_HDR .. the
# datagram). These names are the one definition of those checks: decode()'s fast path below,
# Engine.process_raw's (core/engine.py) and the compiled one (_fastpath.c, via _fastpath_defs.h
# generated by core/cdefs.py) all use them. Byte offsets (``*_AT``) are from the start of the
# header they belong to.
IP4_NO_OPTIONS = 0x45  # version 4, IHL 5 words
IP4_HDR = 20
IP6_HDR = 40
TCP_HDR = 20  # without options
UDP_HDR = 8
PROTO_TCP, PROTO_UDP = 6, 17
IP4_FRAG_BITS = 0x3FFF  # more-fragments flag + fragment offset
IP4_TOTLEN_AT, IP4_FRAG_AT, IP4_PROTO_AT, IP4_SRC_AT = 2, 6, 9, 12
IP6_PLEN_AT, IP6_NEXT_AT, IP6_SRC_AT = 4, 6, 8
TCP_DPORT_AT, TCP_DOFF_AT, TCP_FLAGS_AT = 2, 12, 13
UDP_DPORT_AT, UDP_LEN_AT = 2, 4
V4TCP_MIN, V4UDP_MIN = IP4_HDR + TCP_HDR, IP4_HDR + UDP_HDR  # 40, 28 bytes
V6TCP_MIN, V6UDP_MIN = IP6_HDR + TCP_HDR, IP6_HDR + UDP_HDR  # 60, 48 bytes

# Fast paths (one unpack for IP + transport header) for the fast shapes. Anything else, and
# anything that fails a check here, goes through the general decoder (_decode), which is the
# reference: a property test proves both give the same Packet.
_V4TCP = struct.Struct("!xxHxxHBB2x4s4sHH8xBBH")  # totlen frag ttl proto src dst | sport dport doff flags win
_V4UDP = struct.Struct("!xxHxxHBB2x4s4sHHH")  # totlen frag ttl proto src dst | sport dport ulen
_V6TCP = struct.Struct("!4xHBB16s16sHH8xBBH")  # plen next hlim src dst | sport dport doff flags win
_V6UDP = struct.Struct("!4xHBB16s16sHHH")  # plen next hlim src dst | sport dport ulen
_V4TCP_UNPACK = _V4TCP.unpack_from
_V4UDP_UNPACK = _V4UDP.unpack_from
_V6TCP_UNPACK = _V6TCP.unpack_from
_V6UDP_UNPACK = _V6UDP.unpack_from


def decode(raw: bytes | bytearray | memoryview) -> Packet:
    """Decode one IP packet. Never raises; malformed input gives ``Packet.malformed``."""
    try:
        if type(raw) is not bytes:
            raw = bytes(raw)
        n = len(raw)
        if n >= V4UDP_MIN:
            b0 = raw[0]
            if b0 == IP4_NO_OPTIONS:
                proto = raw[IP4_PROTO_AT]
                if proto == PROTO_TCP:
                    if n >= V4TCP_MIN:
                        tot, frag, ttl, _p, src, dst, sport, dport, doff, flags, window = _V4TCP_UNPACK(raw)
                        if V4TCP_MIN <= tot <= n and not frag & IP4_FRAG_BITS:
                            doff = (doff >> 4) << 2
                            if doff == TCP_HDR:
                                return _mk(4, src, dst, 6, sport, dport, flags, window, b"", (), (), 0, False, V4TCP_MIN, ttl, None)
                            if TCP_HDR < doff <= tot - IP4_HDR:
                                return _mk(
                                    4, src, dst, 6, sport, dport, flags, window, raw[40 : 20 + doff], (), (), 0, False, 20 + doff, ttl, None
                                )
                elif proto == PROTO_UDP:
                    tot, frag, ttl, _p, src, dst, sport, dport, ulen = _V4UDP_UNPACK(raw)
                    if V4UDP_MIN <= tot <= n and not frag & IP4_FRAG_BITS and UDP_HDR <= ulen <= tot - IP4_HDR:
                        return _mk(4, src, dst, 17, sport, dport, 0, 0, b"", (), (), 0, False, 28, ttl, None)
            elif b0 >> 4 == 6 and n >= V6UDP_MIN:
                nh = raw[IP6_NEXT_AT]
                if nh == PROTO_TCP:
                    if n >= V6TCP_MIN:
                        plen, _nh, hlim, src, dst, sport, dport, doff, flags, window = _V6TCP_UNPACK(raw)
                        if TCP_HDR <= plen <= n - IP6_HDR:
                            doff = (doff >> 4) << 2
                            if doff == TCP_HDR:
                                return _mk(6, src, dst, 6, sport, dport, flags, window, b"", (), (), 0, False, V6TCP_MIN, hlim, None)
                            if TCP_HDR < doff <= plen:
                                return _mk(
                                    6,
                                    src,
                                    dst,
                                    6,
                                    sport,
                                    dport,
                                    flags,
                                    window,
                                    raw[60 : 40 + doff],
                                    (),
                                    (),
                                    0,
                                    False,
                                    40 + doff,
                                    hlim,
                                    None,
                                )
                elif nh == PROTO_UDP:
                    plen, _nh, hlim, src, dst, sport, dport, ulen = _V6UDP_UNPACK(raw)
                    if UDP_HDR <= plen <= n - IP6_HDR and UDP_HDR <= ulen <= plen:
                        return _mk(6, src, dst, 17, sport, dport, 0, 0, b"", (), (), 0, False, 48, hlim, None)
        return _decode(raw)
    except Exception as e:  # pragma: no cover - safety net; property tests call _decode directly
        return Packet(malformed=f"decoder error: {type(e).__name__}")


def _decode(raw) -> Packet:
    if type(raw) is not bytes:
        raw = bytes(raw)
    n = len(raw)
    if not n:
        return Packet(malformed="empty packet")
    ver = raw[0] >> 4
    if ver == 4:
        return _decode4(raw, n)
    if ver == 6:
        return _decode6(raw, n)
    return Packet(malformed=f"bad ip version {ver}")


def _decode4(raw: bytes, n: int) -> Packet:
    if n < 20:
        return Packet(4, malformed=f"truncated ipv4 header ({n} bytes)")
    vihl, _tos, tot, _ident, frag, ttl, proto, _csum, src, dst = _V4_UNPACK(raw)
    ihl = (vihl & 15) << 2
    if ihl < 20:
        return Packet(4, src, dst, proto, ttl=ttl, malformed=f"ipv4 ihl {ihl >> 2} < 5")
    if ihl > n:
        return Packet(4, src, dst, proto, ttl=ttl, malformed=f"ipv4 header ({ihl} bytes) longer than packet ({n})")
    if tot < ihl:
        return Packet(4, src, dst, proto, ttl=ttl, malformed=f"ipv4 total length {tot} shorter than header ({ihl})")
    if tot > n:
        return Packet(4, src, dst, proto, ttl=ttl, malformed=f"truncated ipv4 packet (total length {tot} > {n} bytes)")
    frag_offset = (frag & 0x1FFF) << 3
    more = (frag & 0x2000) != 0
    opts: tuple = ()
    if ihl > 20:
        opts, err = _ip4_options(raw, 20, ihl)
        if err is not None:
            return Packet(4, src, dst, proto, ip_options=opts, frag_offset=frag_offset, more_frags=more, ttl=ttl, malformed=err)
    if frag_offset:
        if frag_offset + tot - ihl > 65535:
            err = "ipv4 fragment ends beyond 65535 bytes"
            return Packet(
                4, src, dst, proto, ip_options=opts, frag_offset=frag_offset, more_frags=more, payload_offset=ihl, ttl=ttl, malformed=err
            )
        return Packet(4, src, dst, proto, 0, 0, 0, 0, b"", opts, (), frag_offset, more, ihl, ttl, None)
    return _transport(raw, ihl, tot, 4, src, dst, proto, opts, (), 0, more, ttl)


def _ip4_options(raw: bytes, i: int, end: int) -> tuple[tuple, str | None]:
    names: list[str] = []
    while i < end:
        t = raw[i]
        if t == 0:  # end of option list
            break
        if t == 1:  # no-operation (padding)
            i += 1
            continue
        if i + 1 >= end:
            return tuple(names), f"ipv4 option {_OPT4[t]} runs past the header"
        ln = raw[i + 1]
        if ln < 2:
            return tuple(names), f"ipv4 option {_OPT4[t]} has bad length {ln}"
        if i + ln > end:
            return tuple(names), f"ipv4 option {_OPT4[t]} runs past the header"
        names.append(_OPT4[t])
        i += ln
    return tuple(names), None


def _decode6(raw: bytes, n: int) -> Packet:
    if n < 40:
        return Packet(6, malformed=f"truncated ipv6 header ({n} bytes)")
    _vtf, plen, nh, hlim, src, dst = _V6_UNPACK(raw)
    end = 40 + plen
    if end > n:
        return Packet(6, src, dst, nh, ttl=hlim, malformed=f"truncated ipv6 packet (payload length {plen} > {n - 40} bytes)")
    if plen == 0 and nh == 0:
        end = n  # possible jumbogram (length in a hop-by-hop option): take what we were given
    if nh not in _EXT:
        return _transport(raw, 40, end, 6, src, dst, nh, (), (), 0, False, hlim)
    off = 40
    exts: list[int] = []
    opts: list[str] = []
    frag_offset = 0
    more = False
    for _ in range(MAX_EXT_HEADERS):
        if nh not in _EXT:
            break
        if off + 8 > end:  # every extension header is at least 8 bytes
            return _bad6(src, dst, nh, opts, exts, frag_offset, more, off, hlim, f"ipv6 extension header {nh} runs past the packet")
        if nh == 44:  # fragment: fixed 8 bytes
            fo = _H_UNPACK(raw, off + 2)[0]
            exts.append(44)
            frag_offset = fo & 0xFFF8
            more = (fo & 1) != 0
            nh = raw[off]
            off += 8
            if frag_offset:  # non-first fragment: no transport header follows
                return Packet(6, src, dst, nh, 0, 0, 0, 0, b"", tuple(opts), tuple(exts), frag_offset, more, off, hlim, None)
            continue
        if nh == 51:  # AH: length in 4-octet units, minus 2
            ln = (raw[off + 1] + 2) << 2
        else:  # hop-by-hop, routing, destination options: 8-octet units, minus 1
            ln = (raw[off + 1] + 1) << 3
            if nh == 0:
                if off != 40:
                    return _bad6(src, dst, nh, opts, exts, frag_offset, more, off, hlim, "ipv6 hop-by-hop header not first")
                opts.append("HBH")
            elif nh == 43:
                opts.append(_RH[raw[off + 2]])
            else:
                opts.append("DSTOPTS")
        if off + ln > end:
            return _bad6(src, dst, nh, opts, exts, frag_offset, more, off, hlim, f"ipv6 extension header {nh} runs past the packet")
        exts.append(nh)
        nh = raw[off]
        off += ln
    else:
        if nh in _EXT:
            return _bad6(src, dst, nh, opts, exts, frag_offset, more, off, hlim, f"more than {MAX_EXT_HEADERS} ipv6 extension headers")
    return _transport(raw, off, end, 6, src, dst, nh, tuple(opts), tuple(exts), frag_offset, more, hlim)


_EXT = frozenset((0, 43, 44, 51, 60))


def _bad6(src, dst, nh, opts, exts, frag_offset, more, off, hlim, reason) -> Packet:
    return Packet(6, src, dst, nh, 0, 0, 0, 0, b"", tuple(opts), tuple(exts), frag_offset, more, off, hlim, reason)


# One Packet(...) per line: sixteen fields exploded one per line would hide the checks.
# fmt: off
def _transport(raw: bytes, off: int, end: int, family: int, src: bytes, dst: bytes, proto: int,
               opts: tuple, exts: tuple, frag_offset: int, more: bool, ttl: int) -> Packet:
    if proto == 6:
        if end - off < 20:
            sport = dport = 0
            if end - off >= 4:
                sport, dport = _PORTS_UNPACK(raw, off)
            return Packet(family, src, dst, 6, sport, dport, 0, 0, b"", opts, exts, frag_offset, more,
                          off, ttl, f"truncated tcp header ({end - off} bytes)")
        sport, dport, _seq, _ack, doff, flags, window = _TCP_UNPACK(raw, off)
        doff = (doff >> 4) << 2
        if doff == 20:
            return Packet(family, src, dst, 6, sport, dport, flags, window, b"", opts, exts,
                          frag_offset, more, off + 20, ttl, None)
        if doff < 20:
            return Packet(family, src, dst, 6, sport, dport, flags, window, b"", opts, exts,
                          frag_offset, more, off, ttl, f"tcp data offset {doff >> 2} < 5")
        if off + doff > end:
            return Packet(family, src, dst, 6, sport, dport, flags, window, b"", opts, exts,
                          frag_offset, more, off, ttl,
                          f"tcp header ({doff} bytes) longer than packet ({end - off})")
        return Packet(family, src, dst, 6, sport, dport, flags, window, raw[off + 20:off + doff], opts,
                      exts, frag_offset, more, off + doff, ttl, None)
    if proto == 17:
        if end - off < 8:
            sport = dport = 0
            if end - off >= 4:
                sport, dport = _PORTS_UNPACK(raw, off)
            return Packet(family, src, dst, 17, sport, dport, 0, 0, b"", opts, exts, frag_offset, more,
                          off, ttl, f"truncated udp header ({end - off} bytes)")
        sport, dport, ulen = _UDP_UNPACK(raw, off)
        if not more and (ulen < 8 or off + ulen > end) and not (ulen == 0 and family == 6):
            return Packet(family, src, dst, 17, sport, dport, 0, 0, b"", opts, exts, frag_offset, more,
                          off + 8, ttl, f"bad udp length {ulen} ({end - off} bytes present)")
        return Packet(family, src, dst, 17, sport, dport, 0, 0, b"", opts, exts, frag_offset, more,
                      off + 8, ttl, None)
    return Packet(family, src, dst, proto, 0, 0, 0, 0, b"", opts, exts, frag_offset, more, off, ttl, None)
# fmt: on


def decode_ipv4(raw: bytes | bytearray | memoryview) -> Packet:
    """An IPv4 frame's packet (link-layer protocol 0x0800: what a netdev ingress chain logs),
    whatever its version field says. :func:`decode` reads the version from the packet; here a
    version other than 4 is itself the finding, reported with the addresses and protocol of the
    IPv4 header the frame claims to carry."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    ver = raw[0] >> 4 if raw else 4
    if ver == 4 or len(raw) < IP4_HDR:
        return decode(raw) if ver == 4 else Packet(4, malformed=f"bad ip version {ver} in an ipv4 frame ({len(raw)} bytes)")
    _vihl, _tos, _tot, _ident, _frag, ttl, proto, _csum, src, dst = _V4_UNPACK(raw)
    return Packet(4, src, dst, proto, ttl=ttl, malformed=f"bad ip version {ver} in an ipv4 frame")


_SOURCE_ROUTES = frozenset(("LSRR", "SSRR"))


def bad_checksum(raw: bytes | bytearray | memoryview, pkt: Packet | None = None) -> bool:
    """True when the TCP or UDP checksum of ``raw`` (an IP packet, ``pkt`` its decoded form if the
    caller has it) is provably wrong: what ``nmap --badsum`` and ``hping3 -b`` send, and what the
    host's own stack discards. False when it is right, and whenever it cannot be verified: not TCP
    or UDP, malformed, a fragment, a copy shorter than the packet, an IPv4 UDP checksum of 0 (none
    sent), a source route (IPv4 LSRR/SSRR, an IPv6 routing header: the checksum covers the final
    destination, not the header's). An IPv6 UDP checksum of 0 is wrong (RFC 8200).

    The one's complement sum of 16-bit words is the sum modulo 0xFFFF (2**16 = 1 mod 0xFFFF), so
    a whole pseudo-header + segment is taken as one big integer: a correct checksum makes it 0.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    if pkt is None:
        fast = _bad_fast(raw)
        if fast is not None:
            return fast
        pkt = decode(raw)
    proto = pkt.proto
    if (proto != 6 and proto != 17) or pkt.malformed is not None or pkt.frag_offset or pkt.more_frags:
        return False
    if proto == 6:
        start = pkt.payload_offset - TCP_HDR - len(pkt.tcp_options)
    else:
        start = pkt.payload_offset - UDP_HDR
    if pkt.family == 4:
        if _SOURCE_ROUTES.intersection(pkt.ip_options):
            return False
        end = _H_UNPACK(raw, IP4_TOTLEN_AT)[0]
    elif pkt.family == 6:
        if 43 in pkt.ext_headers:
            return False
        plen = _H_UNPACK(raw, IP6_PLEN_AT)[0]
        if not plen:  # a jumbogram: its length is in a hop-by-hop option
            return False
        end = IP6_HDR + plen
    else:
        return False
    if proto == 17:
        csum = _H_UNPACK(raw, start + 6)[0]
        if not csum:
            return pkt.family == 6
        end = start + _H_UNPACK(raw, start + 4)[0]
    if start < 0 or end > len(raw) or end - start < (TCP_HDR if proto == 6 else UDP_HDR):
        return False
    if pkt.family == 4:
        pseudo = pkt.src + pkt.dst + bytes((0, proto)) + (end - start).to_bytes(2, "big")
    else:
        pseudo = pkt.src + pkt.dst + (end - start).to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return _sum_bad(pseudo, raw[start:end])


def _sum_bad(pseudo: bytes, seg: bytes) -> bool:
    """Pseudo-header + segment (checksum included) do not sum to 0 (one's complement)."""
    if len(seg) & 1:
        seg += b"\0"
    return int.from_bytes(pseudo + seg, "big") % 0xFFFF != 0


_CK4 = struct.Struct("!2xH2xHxB2x8s").unpack_from  # totlen frag proto src+dst
_CK6 = struct.Struct("!4xHB1x32s").unpack_from  # plen next src+dst


def _bad_fast(raw: bytes) -> bool | None:
    """:func:`bad_checksum` for the fast shapes (see below: what the engine's hot path reads from
    the bytes), without decoding; None for anything else (decode() then decides)."""
    n = len(raw)
    if n >= V4UDP_MIN and raw[0] == IP4_NO_OPTIONS:
        tot, frag, proto, addrs = _CK4(raw)
        if frag & IP4_FRAG_BITS or tot > n:
            return None
        if proto == PROTO_TCP and tot >= V4TCP_MIN and TCP_HDR <= (raw[IP4_HDR + TCP_DOFF_AT] >> 4) << 2 <= tot - IP4_HDR:
            return _sum_bad(addrs + bytes((0, 6)) + (tot - IP4_HDR).to_bytes(2, "big"), raw[IP4_HDR:tot])
        if proto == PROTO_UDP and tot >= V4UDP_MIN:
            ulen, csum = _H2(raw, IP4_HDR + UDP_LEN_AT)
            if UDP_HDR <= ulen <= tot - IP4_HDR:
                return csum != 0 and _sum_bad(addrs + bytes((0, 17)) + ulen.to_bytes(2, "big"), raw[IP4_HDR : IP4_HDR + ulen])
        return None
    if n >= V6UDP_MIN and raw[0] >> 4 == 6:
        plen, proto, addrs = _CK6(raw)
        if plen > n - IP6_HDR:
            return None
        if proto == PROTO_TCP and plen >= TCP_HDR and n >= V6TCP_MIN and TCP_HDR <= (raw[IP6_HDR + TCP_DOFF_AT] >> 4) << 2 <= plen:
            return _sum_bad(addrs + plen.to_bytes(4, "big") + b"\0\0\0\x06", raw[IP6_HDR : IP6_HDR + plen])
        if proto == PROTO_UDP and plen >= UDP_HDR:
            ulen, csum = _H2(raw, IP6_HDR + UDP_LEN_AT)
            if UDP_HDR <= ulen <= plen:
                return csum == 0 or _sum_bad(addrs + ulen.to_bytes(4, "big") + b"\0\0\0\x11", raw[IP6_HDR : IP6_HDR + ulen])
    return None


_H2 = struct.Struct("!HH").unpack_from
