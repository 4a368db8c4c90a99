"""Issue 17 part 2 end to end: packets that never reach the input hook, with the real daemon, kernel,
nmap, hping3 and scapy in lab namespaces (compat backend here; the rules involved are our table's
and NFLOG, the same on both backends).

* source-routed probes (nmap --ip-options L/S) to a default host (accept_source_route 0) are
  reported with their IPOPTS finding and blocked, although the kernel drops them before input;
* IPv4 frames with a bad header (IHL 4, version 5) are reported as MALFORMED and blocked, on the
  interfaces there were at start and on one added later; the netdev table leaves with the daemon
  and with `rules unload`;
* bad-checksum probes (nmap --badsum, hping3 -b) never block: no set element, no event, counted.

Waits poll with deadlines far above what they take on a quiet machine (about a second).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import pytest
from daemon_util import Nfsentry, wait_until

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080  # an open victim service outside the monitored ports
MARGIN = 30.0


def wait_for(what: str, check, timeout: float = MARGIN):
    return wait_until(what, check, timeout)


def blocked4(victim) -> set[str]:
    """The addresses in the kernel's blocked4 set (straight from nft)."""
    res = victim.nft(["-j", "list", "set", "inet", "nfsentry", "blocked4"], check=False)
    if res.returncode != 0:
        return set()
    out = set()
    for item in json.loads(res.stdout)["nftables"]:
        for e in (item.get("set") or {}).get("elem", []):
            out.add(e["elem"]["val"] if isinstance(e, dict) else e)
    return out


def netdev_devices(victim) -> set[str] | None:
    """The interfaces table netdev nfsentry hooks (None: no such table)."""
    res = victim.nft(["list", "table", "netdev", "nfsentry"], check=False)
    if res.returncode != 0:
        return None
    from nfsentry.nft.elements import parse_ingress_devices

    return parse_ingress_devices(res.stdout)


def mac_of(host, ifname: str) -> str:
    return json.loads(host.run(["ip", "-j", "link", "show", ifname]).stdout)[0]["address"]


def send_bad_header(host, ifname: str, dst_mac: str, first_byte: int, src: str, dst: str, dport: int = 7) -> None:
    """One Ethernet frame of type IPv4 whose IP header starts with ``first_byte`` (scapy; the
    source MAC given: scapy's default for a Raw payload is all zeros, which a bridge drops)."""
    host.python(
        f"""
        from scapy.all import IP, TCP, Ether, Raw, raw, sendp
        pkt = raw(IP(src={src!r}, dst={dst!r}) / TCP(sport=40001, dport={dport}, flags="S"))
        frame = Ether(src={mac_of(host, ifname)!r}, dst={dst_mac!r}, type=0x0800) / Raw(bytes([{first_byte}]) + pkt[1:])
        sendp(frame, iface={ifname!r}, verbose=False)
        """
    )


@pytest.fixture
def daemon(lab, tmp_path):
    lab["victim"].tcp_service(OPEN_PORT)
    d = Nfsentry(lab["victim"], tmp_path / "nfs", ignore=[lab["ignored"].ip4, lab["ignored"].ip6])
    d.start()
    yield d
    d.close()


@pytest.mark.parametrize("opt, scan, name, label", [("L", "-sS", "LSRR", "SYN"), ("S", "-sU", "SSRR", "UDP")])
def test_source_routed_probes_to_a_default_host_are_reported_and_blocked(lab, daemon, opt, scan, name, label):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    # a default host: the kernel drops source-routed packets after prerouting (all AND the device)
    assert victim.run(["sysctl", "-n", "net.ipv4.conf.all.accept_source_route"]).stdout.strip() == "0"
    assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
    t0 = time.time()
    res = attacker.nmap(f"{scan} -Pn --max-retries 0 --host-timeout 20s --ip-options '{opt} {legit.ip4}' -p 7", victim.ip4)
    assert res.returncode == 0, res.stderr
    ev = daemon.wait_event("detection", attacker.ip4, timeout=MARGIN)
    blk = daemon.wait_event("block", attacker.ip4, timeout=MARGIN)
    print(f"\n{name}: probe sent -> engine decision {ev['ts'] - t0:.3f}s (nmap's own start-up included)")
    assert ev["ip_options"] == [name] and ev["label"] == label and ev["port"] == 7, ev
    assert ev["action"] == "block" and f"ip options {name}" in ev["reason"], ev
    assert blk["network"] == attacker.ip4 and blk["duration"] > 0
    assert any(f"ipopts={name}" in line for line in daemon.syslog.lines)
    # blocked in the kernel, and for real: the open service no longer answers
    assert attacker.ip4 in blocked4(victim)
    assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
    # it came through NFLOG (rule 8), once: the scan queue never saw a packet
    st = daemon.status()
    assert st["counters"]["nflog_packets"] == 1 and st["counters"]["queued"] == 0, st["counters"]
    assert len(daemon.events("detection")) == 1


def test_bad_ipv4_headers_are_reported_as_malformed_and_blocked(lab, daemon):
    victim, attacker = lab["victim"], lab["attacker"]
    # the lab's switch is a Linux bridge; with br_netfilter loaded it would validate IPv4 headers
    # and drop these frames itself (a real switch does not look at them)
    switch_ns = lab.segments["lan"][0]
    subprocess.run(["ip", "netns", "exec", switch_ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"], capture_output=True)
    victim_mac = mac_of(victim, "eth0")
    assert netdev_devices(victim) == {"eth0"}
    for first, reason in ((0x44, "ipv4 ihl 4 < 5"), (0x55, "bad ip version 5 in an ipv4 frame")):
        assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
        since = time.time()
        send_bad_header(attacker, "eth0", victim_mac, first, attacker.ip4, victim.ip4)
        ev = daemon.wait_event("detection", attacker.ip4, where=lambda e: e["ts"] >= since - 1 and e["malformed"] == reason)
        assert ev["label"] == "MALFORMED" and ev["action"] == "block" and ev["family"] == 4, ev
        assert "instant MALFORMED" in ev["reason"], ev
        daemon.wait_event("block", attacker.ip4, where=lambda e: e["ts"] >= ev["ts"] - 0.001)
        assert attacker.ip4 in blocked4(victim)
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
        daemon.cli("unblock", "--all")
    assert daemon.status()["counters"]["queued"] == 0


def test_interfaces_added_later_are_watched_and_the_netdev_table_leaves_with_the_daemon(lab, tmp_path):
    victim = lab["victim"]
    d = Nfsentry(victim, tmp_path / "nfs", {"response": {"keep_blocks_on_exit": False}})
    d.start()
    try:
        assert netdev_devices(victim) == {"eth0"}
        victim.run(["ip", "link", "add", "nfsx0", "type", "veth", "peer", "name", "nfsx1"])
        victim.run(["ip", "link", "set", "nfsx0", "up"])
        victim.run(["ip", "link", "set", "nfsx1", "up"])
        t0 = time.monotonic()
        wait_for("the new link hooked", lambda: netdev_devices(victim) == {"eth0", "nfsx0", "nfsx1"})
        print(f"\nnew interfaces hooked after {time.monotonic() - t0:.2f}s")
        # a frame arriving on the new link (sent into it from its peer)
        send_bad_header(victim, "nfsx1", mac_of(victim, "nfsx0"), 0x44, "198.18.9.9", victim.ip4)
        ev = d.wait_event("detection", "198.18.9.9")
        assert ev["label"] == "MALFORMED" and ev["malformed"] == "ipv4 ihl 4 < 5"
        wait_for("198.18.9.9 blocked", lambda: "198.18.9.9" in blocked4(victim))
        # a link deleted: the table follows
        victim.run(["ip", "link", "del", "nfsx0"])
        wait_for("the deleted link unhooked", lambda: netdev_devices(victim) == {"eth0"})
        st = d.status()
        assert st["before_input"]["devices"] == ["eth0"] and st["before_input"]["nflog_group"] == 20038, st["before_input"]
        # `rules unload --force` takes it away with our table, `rules load` (another process)
        # brings it back, and the daemon still follows the interfaces
        d.cli("rules", "unload", "--force")
        assert netdev_devices(victim) is None
        d.cli("rules", "load")
        assert netdev_devices(victim) == {"eth0"}
        victim.run(["ip", "link", "add", "nfsx2", "type", "veth", "peer", "name", "nfsx3"])
        wait_for("a link added after rules load hooked", lambda: netdev_devices(victim) == {"eth0", "nfsx2", "nfsx3"})
        victim.run(["ip", "link", "del", "nfsx2"])
    finally:
        d.close()
    # keep_blocks_on_exit = false: both tables gone
    tables = victim.nft(["list", "tables"]).stdout
    assert "nfsentry" not in tables, tables
    # keep_blocks_on_exit = true: the blocked sets stay, nothing that reports does
    d2 = Nfsentry(victim, tmp_path / "nfs2")
    d2.start()
    try:
        assert netdev_devices(victim) == {"eth0"}
    finally:
        d2.close()
    assert netdev_devices(victim) is None
    chains = victim.nft(["list", "chains", "inet"]).stdout
    assert "chain prerouting" in chains and "source_routed" not in chains and "to_daemon" not in chains, chains
    # `rules load` / `rules unload` without a daemon: the netdev table comes and goes with ours
    d2.cli("rules", "load")
    assert netdev_devices(victim) == {"eth0"}
    d2.cli("rules", "unload")
    assert netdev_devices(victim) is None and "nfsentry" not in victim.nft(["list", "tables"]).stdout


def test_bad_checksum_probes_never_block_and_are_counted(lab, daemon):
    victim, attacker = lab["victim"], lab["attacker"]
    assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"

    def counted() -> tuple[int, int]:  # (packets queued, bad checksums the engine counted)
        st = daemon.status()
        return st["counters"]["queued"], st["engine"]["badsum"]

    steps = [
        lambda: attacker.nmap("-sS -Pn --badsum --max-retries 0 --host-timeout 20s -p 1,7,9", victim.ip4),
        lambda: attacker.nmap("-sU -Pn --badsum --max-retries 0 --host-timeout 20s -p 7,9", victim.ip4),
        # (--send-ip: the kernel finds the neighbour; nmap's own ND probe would carry a bad checksum too)
        lambda: attacker.nmap("-sS -Pn --send-ip --badsum --max-retries 0 --host-timeout 20s -p 7", victim.ip6),
        lambda: attacker.hping3(["-S", "-b", "-p", "7", "-c", "3", "-i", "u20000", victim.ip4]),
        lambda: attacker.hping3(["-2", "-b", "-p", "9", "-c", "3", "-i", "u20000", victim.ip4]),
    ]
    for i, step in enumerate(steps):
        before, _ = counted()
        step()
        # every packet the tool got queued is a bad checksum, counted (the engine's figures lag <= 1 s)
        wait_for(f"step {i}: queued and counted", lambda: (lambda q, b: q > before and b == q)(*counted()))
    queued, bad = counted()
    print(f"\n{bad} bad-checksum probes queued and counted, none reacted to")
    st = daemon.status()
    assert st["engine"]["block"] == 0 and st["engine"]["alert"] == 0 and st["counters"]["blocks"] == 0, st["engine"]
    assert daemon.events("detection") == [] and daemon.events("block") == []
    assert blocked4(victim) == set() and daemon.blocked() == []
    assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
    # the detector was live all along: the same probe with a right checksum blocks at once
    attacker.nmap("-sS -Pn --max-retries 0 --host-timeout 20s -p 7", victim.ip4)
    daemon.wait_event("block", attacker.ip4)
    assert attacker.ip4 in blocked4(victim)
    assert counted()[1] == bad


def pcap_of(frame: bytes) -> bytes:
    """A one-frame pcap (Ethernet), written without scapy: tcpreplay sends it (one program start,
    cheap under the qemu tier's TCG)."""
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame


def bad_header_frame(src_mac: str, dst_mac: str, src: str, dst: str, first_byte: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40002, 7, 1, 0, 5 << 4, 0x02, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", first_byte, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    mac = bytes.fromhex
    return mac(dst_mac.replace(":", "")) + mac(src_mac.replace(":", "")) + b"\x08\x00" + ip + tcp


@pytest.mark.native
def test_lean_on_this_kernel_source_route_bad_header_and_bad_checksum(lab, tmp_path):
    """Kept lean for the qemu stock-kernel tier (Debian's kernel, native backend; compat here):
    an LSRR probe and an IHL-4 frame are reported and blocked, a --badsum probe only counted."""
    victim, attacker, legit, other = lab["victim"], lab["attacker"], lab["legit"], lab["ignored"]
    subprocess.run(
        ["ip", "netns", "exec", lab.segments["lan"][0], "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"], capture_output=True
    )
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        assert victim.run(["sysctl", "-n", "net.ipv4.conf.all.accept_source_route"]).stdout.strip() == "0"
        assert netdev_devices(victim) == {"eth0"}
        # a bad checksum: counted, nothing else
        legit.nmap("-sS -Pn --badsum --max-retries 0 --host-timeout 20s -p 7", victim.ip4)
        wait_for("the bad checksum counted", lambda: d.control("status")["engine"]["badsum"] >= 1, timeout=120)
        # a source-routed probe: reported with its option, blocked
        attacker.nmap(f"-sS -Pn --max-retries 0 --host-timeout 20s --ip-options 'L {legit.ip4}' -p 7", victim.ip4)
        ev = d.wait_event("detection", attacker.ip4, timeout=120)
        assert ev["ip_options"] == ["LSRR"] and ev["action"] == "block", ev
        wait_for("LSRR source blocked", lambda: attacker.ip4 in blocked4(victim), timeout=120)
        # an IPv4 header of 16 bytes: MALFORMED, blocked
        pcap = tmp_path / "ihl4.pcap"
        pcap.write_bytes(pcap_of(bad_header_frame(mac_of(other, "eth0"), mac_of(victim, "eth0"), other.ip4, victim.ip4, 0x44)))
        other.run(["tcpreplay", "-q", "-i", "eth0", str(pcap)], timeout=120)
        ev = d.wait_event("detection", other.ip4, timeout=120)
        assert ev["label"] == "MALFORMED" and ev["malformed"] == "ipv4 ihl 4 < 5" and ev["action"] == "block", ev
        wait_for("MALFORMED source blocked", lambda: other.ip4 in blocked4(victim), timeout=120)
        assert legit.ip4 not in blocked4(victim) and not d.events("detection", legit.ip4)
    finally:
        d.close()
