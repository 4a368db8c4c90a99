"""Test helper: put the right TCP/UDP checksum into a hand-built packet (struct-built packets carry
0, which the engine's bad-checksum rule would count instead of reacting to). Written apart from
nfsentry.core.packet.bad_checksum (a plain word loop), so the tests check one against the other."""

from __future__ import annotations

import struct

from nfsentry.core.packet import decode


def ones_sum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_checksum(raw: bytes) -> bytes:
    """``raw`` with its TCP or UDP checksum set right; unchanged when there is none to set
    (malformed, a fragment, another protocol)."""
    p = decode(raw)
    if p.proto not in (6, 17) or p.malformed or p.frag_offset or p.more_frags or p.family not in (4, 6):
        return raw
    start = p.payload_offset - (20 + len(p.tcp_options) if p.proto == 6 else 8)
    if p.family == 4:
        end = struct.unpack_from("!H", raw, 2)[0]
    else:
        end = 40 + struct.unpack_from("!H", raw, 4)[0]
    if p.proto == 17:
        end = start + struct.unpack_from("!H", raw, start + 4)[0]
    at = start + (16 if p.proto == 6 else 6)
    b = bytearray(raw)
    b[at : at + 2] = b"\0\0"
    seg = bytes(b[start:end])
    n = len(seg)
    pseudo = (
        p.src + p.dst + (bytes((0, p.proto)) + n.to_bytes(2, "big") if p.family == 4 else n.to_bytes(4, "big") + bytes((0, 0, 0, p.proto)))
    )
    csum = 0xFFFF - ones_sum(pseudo + seg)
    if p.proto == 17 and csum == 0:
        csum = 0xFFFF
    b[at : at + 2] = csum.to_bytes(2, "big")
    return bytes(b)
