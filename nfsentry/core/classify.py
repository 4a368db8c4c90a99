"""Scan classification: TCP flag combination -> label, IP option findings, SYN shape hints.

Labels are stable strings (logs, JSON, the database, ``instant_labels`` in the configuration):

=============  =============================================================================
label          packet
=============  =============================================================================
``SYN``        SYN alone. A first SYN cannot tell a connect() scan from a half-open (SYN,
               ``nmap -sS``) scan: both send the same first packet and differ only in what the
               scanner does with our reply, which never comes (the port is unused and the
               packet is held in the queue). So ``SYN`` means "connect() or half-open";
               :func:`syn_hint` adds an optional, separate hint for raw-socket SYN shapes.
``FIN``        FIN alone (``nmap -sF``).
``NULL``       no flags at all (``nmap -sN``).
``XMAS``       exactly FIN+PSH+URG (``nmap -sX``). (PortSentry 1.2 also called supersets such as
               FIN+PSH+URG+ACK "XMAS"; here they are ``UNKNOWN(FPAU)``, which is still instant.)
``FULL-XMAS``  all six classic flags SYN ACK RST FIN URG PSH set (``hping3 -FSRPAU``).
``ACK``        ACK alone (``nmap -sA`` / ``-sW``).
``MAIMON``     FIN+ACK (``nmap -sM``).
``UNKNOWN``    any other combination; the flag string travels with it (``UNKNOWN(SR)``), so
               nothing unidentified slips through (PortSentry's default case).
``UDP``        a UDP datagram to a monitored port.
``MALFORMED``  a packet the decoder could not fully decode (the reason is reported separately).
``IPOPTS``     a finding, not a scan label: IPv4 options / IPv6 option headers were present (the
               option names are reported; the scan label stays the flag label).
=============  =============================================================================

ECN bits: ECE and CWR (and the flag-string letters ``E`` and ``C``) never change the label of a
packet that has a classic flag set: a SYN with ECE+CWR is an ECN-setup SYN (RFC 3168) and stays
``SYN``; ``FIN`` with CWR is still a FIN probe. A packet with *only* ECE/CWR set is not a NULL
probe (its flags byte is not zero) and is ``UNKNOWN(E)`` / ``UNKNOWN(C)`` / ``UNKNOWN(EC)``.
Flag strings list set flags in ``FSRPAUEC`` order (FIN SYN RST PSH ACK URG ECE CWR).

Non-first fragments (no TCP header to read) are ``UNKNOWN`` with an empty flag string; TCP
packets that cannot be decoded are ``MALFORMED``. Other protocols (never queued by our rules) are
``UNKNOWN``.

Backscatter: :func:`is_reply_shaped` tells whether the flags are exactly a legitimate stack's
reply (RST, RST+ACK or SYN+ACK): what a third party sends us when someone spoofs our address to scan it.
The engine counts those but does not react on them (see ``EngineConfig.backscatter_guard``).
"""

from __future__ import annotations

__all__ = [
    "FIN",
    "SYN",
    "RST",
    "PSH",
    "ACK",
    "URG",
    "ECE",
    "CWR",
    "LABELS",
    "SCAN_LABELS",
    "LABEL_BY_FLAGS",
    "FLAG_STRINGS",
    "classify",
    "flag_string",
    "label_for_flags",
    "label_text",
    "describe",
    "syn_hint",
    "findings",
    "is_reply_shaped",
    "NMAP_SYN_WINDOWS",
]

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
CLASSIC = FIN | SYN | RST | PSH | ACK | URG  # 0x3F
_LETTERS = "FSRPAUEC"

# The one definition of the label vocabulary (the configuration's instant_labels are checked
# against LABELS). SCAN_LABELS: what one packet can be labelled; IPOPTS is a property of the packet
# (IP options present) that instant_labels may name too.
SCAN_LABELS = ("SYN", "FIN", "NULL", "XMAS", "FULL-XMAS", "ACK", "MAIMON", "UNKNOWN", "UDP", "MALFORMED")
LABELS = SCAN_LABELS[:-1] + ("IPOPTS", "MALFORMED")

# The flag table, on the six classic flags (ECE/CWR masked off, see the module docstring).
# Exact combinations only; everything else is UNKNOWN.
_EXACT = {SYN: "SYN", FIN: "FIN", 0: "NULL", FIN | PSH | URG: "XMAS", CLASSIC: "FULL-XMAS", ACK: "ACK", FIN | ACK: "MAIMON"}

DESCRIPTIONS = {
    "SYN": "SYN (connect() or half-open: the first packet cannot tell them apart)",
    "FIN": "FIN scan",
    "NULL": "NULL scan (no flags)",
    "XMAS": "XMAS scan (FIN+PSH+URG)",
    "FULL-XMAS": "full XMAS scan (all six flags)",
    "ACK": "ACK scan",
    "MAIMON": "Maimon scan (FIN+ACK)",
    "UNKNOWN": "unknown TCP flag combination",
    "UDP": "UDP probe",
    "IPOPTS": "IP options present",
    "MALFORMED": "malformed packet",
}


def flag_string(flags: int) -> str:
    """Flags byte -> letters in FSRPAUEC order (``0x12`` -> ``"SA"``, 0 -> ``""``)."""
    return "".join(c for i, c in enumerate(_LETTERS) if flags & (1 << i))


def label_for_flags(flags: int) -> str:
    """The scan label for a TCP flags byte (see the module table)."""
    classic = flags & CLASSIC
    if classic == 0 and flags:
        return "UNKNOWN"  # only ECE/CWR: not a NULL probe
    return _EXACT.get(classic, "UNKNOWN")


# Precomputed for the hot path: index by the flags byte.
FLAG_STRINGS: tuple[str, ...] = tuple(flag_string(f) for f in range(256))
LABEL_BY_FLAGS: tuple[str, ...] = tuple(label_for_flags(f) for f in range(256))
_REPLY_CLASSIC = frozenset((RST, RST | ACK, SYN | ACK))
_REPLY = tuple((f & CLASSIC) in _REPLY_CLASSIC for f in range(256))


# Mid-stream shapes a legitimate stack sends inside a connection (data, urgent data, a close with
# data). They are UNKNOWN as a scan label, but reach us only when conntrack lost the connection,
# so they never react *instantly*; scan_trigger and the window still count them.
_STREAM_CLASSIC = frozenset((PSH | ACK, ACK | URG, PSH | ACK | URG, FIN | PSH | ACK, FIN | PSH | ACK | URG))
_STREAM = tuple((f & CLASSIC) in _STREAM_CLASSIC for f in range(256))


def is_stream_shaped(flags: int) -> bool:
    """PSH+ACK, ACK+URG, PSH+ACK+URG, FIN+PSH+ACK(+URG): what an established connection sends."""
    return _STREAM[flags & 0xFF]


def is_reply_shaped(flags: int) -> bool:
    """RST, RST+ACK or SYN+ACK (ECE/CWR ignored): exactly what a legitimate stack sends back to a
    probe, so possibly backscatter from a scan spoofing our address."""
    return _REPLY[flags & 0xFF]


def classify(pkt) -> str:
    """The scan label of a decoded :class:`~nfsentry.packet.Packet`."""
    if pkt.malformed is not None:
        return "MALFORMED"
    proto = pkt.proto
    if proto == 6:
        if pkt.frag_offset:
            return "UNKNOWN"
        return LABEL_BY_FLAGS[pkt.flags]
    if proto == 17:
        return "UDP"
    return "UNKNOWN"


def label_text(label: str, flags: str) -> str:
    """``UNKNOWN`` carries its flag string: ``UNKNOWN(SR)``; other labels print as themselves."""
    if label == "UNKNOWN" and flags:
        return f"UNKNOWN({flags})"
    return label


def describe(label: str) -> str:
    return DESCRIPTIONS.get(label, label)


# nmap's raw-socket SYN probe (-sS, and the SYN of -O/-sV host discovery): a 24-byte TCP header
# whose only option is MSS, and a window of 1024 (older nmap) or one of 1024/2048/3072/4096
# (nmap >= 5). An OS stack's connect() SYN carries SACK-permitted, timestamps and window scale
# (Linux/BSD/Windows alike) and a window like 64240/65535/29200.
NMAP_SYN_WINDOWS = frozenset((1024, 2048, 3072, 4096))


def syn_hint(pkt) -> str:
    """Optional hint about who built a lone SYN; never changes the label.

    ``"nmap"``: the nmap raw SYN shape above. ``"no-options"``: a SYN without any TCP option
    (masscan, hping3, scapy defaults; no common OS stack sends one). ``""`` otherwise, which
    includes every SYN a connect() scan sends: a SYN alone stays ambiguous.
    """
    if pkt.proto != 6 or pkt.malformed is not None or pkt.frag_offset or pkt.flags & CLASSIC != SYN:
        return ""
    opts = pkt.tcp_options
    if not opts:
        return "no-options"
    if pkt.flags == SYN and pkt.window in NMAP_SYN_WINDOWS and len(opts) == 4 and opts[0] == 2 and opts[1] == 4:
        return "nmap"
    return ""


def findings(pkt) -> tuple[str, ...]:
    """Findings beyond the scan label: ``IPOPTS(RR,LSRR)``, ``MALFORMED(<reason>)``,
    ``FRAGMENT(offset=<n>)`` for non-first fragments."""
    out = []
    if pkt.ip_options:
        out.append(f"IPOPTS({','.join(pkt.ip_options)})")
    if pkt.malformed is not None:
        out.append(f"MALFORMED({pkt.malformed})")
    if pkt.frag_offset:
        out.append(f"FRAGMENT(offset={pkt.frag_offset})")
    return tuple(out)
