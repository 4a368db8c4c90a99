"""core: the pure rules. Bytes and a clock in, decisions out: packet decoding, scan
classification, the network/address API, units (ports, durations, trojan lists), the per-source
engine (+ its compiled fast path), FTP parsing, the safety valves, event records.

May import: the standard library and ``nfsentry.core`` only. No I/O, no scapy, no DNS.
"""
