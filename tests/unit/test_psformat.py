"""PortSentry 1.x/2.0 output formats: syslog alert lines, history and blocked files.

Expected strings follow PortSentry's own format strings (1.2 portsentry.c/portsentry_io.c,
2.0 sentry.c): the tools people point at those files (fail2ban, logcheck, grep) must keep working.
Times are local, like PortSentry's: TZ is pinned.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
from event_util import detection_event

from nfsentry.sinks import psformat as F

TS = 1763770000.045  # 2025-11-22 00:06:40.045 UTC
EV = detection_event(
    ts=TS, label="SYN", flags="S", labels=["SYN"], reason="scan_trigger 0 reached", duration=0, expires=None, ip_options=[]
)


def ev(**kw):
    return {**EV, **kw}


@pytest.fixture(autouse=True)
def berlin(monkeypatch):
    """Local time is Europe/Berlin (UTC+1 in November) for every test here."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# == 1.x syslog ====================================================================================
@pytest.mark.parametrize(
    "label, flags, wording",
    [
        ("SYN", "S", "TCP SYN/Normal scan"),
        ("FIN", "F", "TCP FIN scan"),
        ("XMAS", "FPU", "TCP XMAS scan"),
        ("NULL", "", " TCP NULL scan"),  # 1.2's format string has the leading space
        ("FULL-XMAS", "FSRPAUEC", "TCP XMAS scan"),
        ("ACK", "A", "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 1 PSH: 0 URG: 0 RST: 0"),
        ("MAIMON", "FA", "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 1 ACK: 1 PSH: 0 URG: 0 RST: 0"),
        ("UNKNOWN", "SF", "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0"),
        ("UNKNOWN(SR)", None, "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 0 ACK: 0 PSH: 0 URG: 0 RST: 1"),
    ],
)
def test_v1_tcp_lines_use_1_2_wording_for_the_packet_flags(label, flags, wording):
    line = F.syslog_line(ev(label=label, flags=flags), "portsentry1")
    assert line == f"attackalert: {wording} from host: 198.18.0.2/198.18.0.2 to TCP port: 22"


def test_v1_label_alone_is_enough_when_the_event_has_no_flag_string():
    for label, wording in (("SYN", "TCP SYN/Normal"), ("FIN", "TCP FIN"), ("NULL", " TCP NULL"), ("XMAS", "TCP XMAS")):
        assert F.syslog_line(ev(label=label, flags=None), "portsentry1").startswith(f"attackalert: {wording} scan from host:")


def test_v1_udp_and_resolved_names_and_ipv6():
    line = F.syslog_line(ev(proto="udp", label="UDP", flags="", port=161, host="scanner.example.net"), "portsentry1")
    assert line == "attackalert: UDP scan from host: scanner.example.net/198.18.0.2 to UDP port: 161"
    v6 = ev(src="2001:db8:1::5", network="2001:db8:1::/64", family=6)
    assert F.syslog_line(v6, "portsentry1") == "attackalert: TCP SYN/Normal scan from host: 2001:db8:1::5/2001:db8:1::5 to TCP port: 22"


def test_v1_ip_options_get_1_2s_second_line():
    lines = F.syslog_lines(ev(ip_options=["RR"], label="FIN", flags="F"), "portsentry1")
    assert lines == [
        "attackalert: TCP FIN scan from host: 198.18.0.2/198.18.0.2 to TCP port: 22",
        "attackalert: Packet from host: 198.18.0.2/198.18.0.2 to TCP port: 22 has IP options set (detection avoidance technique).",
    ]
    assert F.syslog_line(ev(ip_options=["RR"]), "portsentry1") == lines[0].replace("FIN", "SYN/Normal")


def test_v1_block_line_is_1_2s_dropped_route_line_with_the_nft_command():
    b = ev(event="block")
    assert F.syslog_line(b, "portsentry1") == (
        "attackalert: Host 198.18.0.2 has been blocked via dropped route using command: "
        '"nft add element inet nfsentry blocked4 { 198.18.0.2 }"'
    )
    b6 = ev(event="block", src="2001:db8:1::5", network="2001:db8:1::/64", family=6, duration=3600)
    assert F.syslog_line(b6, "portsentry2", table="guard") == (
        "attackalert: Host 2001:db8:1::/64 has been blocked via dropped route using command: "
        '"nft add element inet guard blocked6 { 2001:db8:1::/64 timeout 3600s }"'
    )


def test_v1_silent_for_ignored_and_untriggered_like_1_2():
    assert F.syslog_lines(ev(ignored=True), "portsentry1") == []
    assert F.syslog_line(ev(triggered=False), "portsentry1") is None


def test_admin_events_are_adminalert_lines():
    assert (
        F.syslog_line({"ts": TS, "event": "unblock", "network": "198.18.0.2", "reason": "unblocked by admin"}, "portsentry1")
        == "adminalert: Host 198.18.0.2 has been unblocked (unblocked by admin)"
    )
    assert (
        F.syslog_line({"ts": TS, "event": "expire", "network": "2001:db8::/64"}, "portsentry2")
        == "adminalert: Block of host 2001:db8::/64 has expired"
    )
    assert F.syslog_line({"ts": TS, "event": "error", "reason": "nft failed"}, "portsentry1") == "adminalert: ERROR: nft failed"


def test_action_lines_for_hosts_deny_and_commands():
    assert (
        F.hosts_deny_alert_line(EV, "ALL: 198.18.0.2\n")
        == 'attackalert: Host 198.18.0.2 has been blocked via wrappers with string: "ALL: 198.18.0.2"'
    )
    assert (
        F.command_alert_line(EV, ["/usr/local/sbin/notify", "198.18.0.2", "22"])
        == 'attackalert: External command run for host: 198.18.0.2 using command: "/usr/local/sbin/notify 198.18.0.2 22"'
    )


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown PortSentry style"):
        F.syslog_line(EV, "nfsentry")
    with pytest.raises(ValueError):
        F.history_line(EV, "portsentry3")


# == 2.0 syslog ====================================================================================
def test_v2_scan_line_exact():
    assert F.syslog_line(ev(host="scanner.example.net"), "portsentry2") == (
        "Scan from: [198.18.0.2] (scanner.example.net) protocol: [TCP] port: [22] type: [TCP SYN/Normal scan] "
        "IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] blocked: [true]"
    )


@pytest.mark.parametrize(
    "label, flags, kind",
    [
        ("SYN", "S", "TCP SYN/Normal scan"),
        ("FIN", "F", "TCP FIN scan"),
        ("NULL", "", "TCP NULL scan"),
        ("XMAS", "FPU", "TCP XMAS scan"),
        ("FULL-XMAS", "FSRPAUEC", "TCP FULL-XMAS scan"),
        ("ACK", "A", "TCP ACK scan"),
        ("MAIMON", "FA", "TCP MAIMON scan"),
        ("UNKNOWN", "SF", "TCP UNKNOWN(SF) scan"),
        ("UNKNOWN(SR)", "SR", "TCP UNKNOWN(SR) scan"),
        ("MALFORMED", "S", "TCP MALFORMED packet (truncated tcp header)"),
    ],
)
def test_v2_type_field_names_nfsentrys_labels(label, flags, kind):
    line = F.syslog_line(ev(label=label, flags=flags, malformed="truncated tcp header" if label == "MALFORMED" else None), "portsentry2")
    assert f" type: [{kind}] " in line


@pytest.mark.parametrize(
    "changes, tail",
    [
        ({}, "IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] blocked: [true]"),
        ({"action": "alert", "blocked": False}, "ignored: [false] triggered: [true] noblock: [true] blocked: [false]"),
        ({"action": "log", "blocked": False}, "noblock: [true] blocked: [false]"),
        ({"action": "dry-run", "blocked": False}, "noblock: [true] blocked: [false]"),
        ({"action": "command", "blocked": False}, "noblock: [false] blocked: [false]"),
        ({"triggered": False}, "triggered: [false] noblock: [unset] blocked: [unset]"),
        ({"ignored": True}, "ignored: [true] triggered: [unset] noblock: [unset] blocked: [unset]"),
        ({"ip_options": ["LSRR"]}, "IP opts: [set] "),
    ],
)
def test_v2_flags_follow_2_0s_meaning(changes, tail):
    line = F.syslog_line(ev(**changes), "portsentry2")
    assert tail in line and line.startswith("Scan from: [198.18.0.2] (198.18.0.2) protocol: [TCP] port: [22] ")


def test_v2_udp():
    assert F.syslog_line(ev(proto="udp", label="UDP", flags="", port=53, action="alert", blocked=False), "portsentry2") == (
        "Scan from: [198.18.0.2] (198.18.0.2) protocol: [UDP] port: [53] type: [UDP] IP opts: [not set] "
        "ignored: [false] triggered: [true] noblock: [true] blocked: [false]"
    )


# == history and blocked files =====================================================================
def test_v1_history_line_exact_local_time():
    b = ev(event="block")
    assert F.history_line(b, "portsentry1") == "1763770000 - 11/22/2025 01:06:40 Host: 198.18.0.2/198.18.0.2 Port: 22 TCP Blocked"
    assert F.blocked_line(b) == F.history_line(b, "portsentry1")
    u = ev(proto="udp", label="UDP", flags="", port=161, host="scanner.example.net", action="alert", blocked=False)
    assert F.history_line(u) == "1763770000 - 11/22/2025 01:06:40 Host: scanner.example.net/198.18.0.2 Port: 161 UDP Blocked"


def test_v1_history_one_line_per_block_and_one_per_log_only_detection():
    # A blocked source: the detection is followed by a block event, which writes the line.
    assert F.history_line(ev(action="block"), "portsentry1") is None
    assert F.history_line(ev(event="block"), "portsentry1") is not None
    # BLOCK_TCP="0"/"2": PortSentry still wrote "... Blocked" (fail2ban relies on it).
    for action in ("alert", "log", "command", "alert (rate-limited)"):
        assert F.history_line(ev(action=action, blocked=False), "portsentry1").endswith("Port: 22 TCP Blocked")
    # Never for dry-run, ignored hosts, hits below the trigger, admins' blocks, unblocks.
    assert F.history_line(ev(action="dry-run", blocked=False)) is None
    assert F.history_line(ev(action="alert", ignored=True)) is None
    assert F.history_line(ev(action="alert", triggered=False)) is None
    manual = {
        "ts": TS,
        "event": "block",
        "network": "198.18.0.9",
        "src": "198.18.0.9",
        "action": "manual",
        "origin": "manual",
        "labels": [],
        "ports": [],
    }
    assert F.history_line(manual) is None and F.blocked_line(manual) is None
    assert F.history_line({"ts": TS, "event": "unblock", "network": "198.18.0.2"}) is None


def test_v2_history_is_the_scan_line_with_local_iso_time():
    assert F.history_line(EV, "portsentry2") == (
        "2025-11-22T01:06:40.045+0100 Scan from: [198.18.0.2] (198.18.0.2) protocol: [TCP] port: [22] "
        "type: [TCP SYN/Normal scan] IP opts: [not set] ignored: [false] triggered: [true] noblock: [false] blocked: [true]"
    )
    assert F.history_line(ev(event="block"), "portsentry2") is None  # 2.0 has no separate block line
    assert F.history_line(ev(action="dry-run"), "portsentry2") is None


def test_time_formats():
    assert F.time_1x(TS) == "11/22/2025 01:06:40"
    assert F.time_2x(TS) == "2025-11-22T01:06:40.045+0100"
    assert F.time_2x(1751328000.5) == "2025-07-01T02:00:00.500+0200"  # summer time
    assert F.time_2x(1763770000.9996) == "2025-11-22T01:06:41.000+0100"


def test_formatters_are_pure_and_never_mutate_the_event():
    before = dict(EV)
    for style in F.STYLES:
        F.syslog_lines(EV, style)
        F.history_line(EV, style)
    F.blocked_line(ev(event="block"))
    assert EV == before


# == the tools around PortSentry ===================================================================
def scan_events():
    """What the daemon emits for a SYN scan (blocked), a FIN scan (blocked, IPv6) and a UDP scan
    in log-only mode, from three sources: one detection per probe, and a block event after the
    detection that blocks."""
    out = []
    t = TS
    for port in (21, 22, 23, 25, 80):  # SYN scan from 198.18.0.2: blocked on the first probe
        t += 0.01
        out.append(ev(ts=t, port=port))
        if port == 21:
            out.append(ev(ts=t, event="block", port=port))
    for port in (111, 139):  # FIN scan from an IPv6 host, blocked as its /64
        t += 0.01
        fin = ev(ts=t, src="2001:db8:1::5", network="2001:db8:1::/64", family=6, label="FIN", flags="F", port=port)
        out.append(fin)
        if port == 111:
            out.append({**fin, "event": "block"})
    for port in (53, 69, 161):  # UDP scan, BLOCK_UDP="0": detections only
        t += 0.01
        out.append(
            ev(
                ts=t,
                src="198.18.0.3",
                network="198.18.0.3",
                proto="udp",
                label="UDP",
                flags="",
                port=port,
                action="alert",
                blocked=False,
                host="scanner.example.net",
            )
        )
    return out


def fail2ban_counts(logfile, filter_arg):
    out = subprocess.run(["fail2ban-regex", str(logfile), filter_arg], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out.stdout)
    assert m, out.stdout
    return tuple(int(x) for x in m.groups()), out.stdout


needs_fail2ban = pytest.mark.skipif(
    shutil.which("fail2ban-regex") is None or not __import__("os").path.exists("/etc/fail2ban/filter.d/portsentry.conf"),
    reason="Debian's fail2ban (fail2ban-regex and filter.d/portsentry.conf) is not installed",
)


@needs_fail2ban
def test_debians_fail2ban_portsentry_filter_matches_every_v1_history_line(tmp_path):
    hist = tmp_path / "portsentry.history"
    lines = [line for line in (F.history_line(e, "portsentry1") for e in scan_events()) if line]
    hist.write_text("\n".join(lines) + "\n")
    # one per blocked source (2) + one per log-only UDP detection (3)
    assert len(lines) == 5
    (total, ignored, matched, missed), report = fail2ban_counts(hist, "/etc/fail2ban/filter.d/portsentry.conf")
    assert (total, matched, missed) == (5, 5, 0), report
    hosts = set(re.findall(r"/(\S+) Port:", hist.read_text()))
    assert hosts == {"198.18.0.2", "2001:db8:1::5", "198.18.0.3"}


@needs_fail2ban
def test_portsentry_2_0s_fail2ban_filter_matches_every_v2_history_line(tmp_path):
    hist = tmp_path / "portsentry.history"
    lines = [line for line in (F.history_line(e, "portsentry2") for e in scan_events()) if line]
    hist.write_text("\n".join(lines) + "\n")
    assert len(lines) == 10  # every detection
    (total, ignored, matched, missed), report = fail2ban_counts(hist, r"^[^ ]* Scan from: \[<HOST>\]")
    assert (total, matched, missed) == (10, 10, 0), report


def test_logcheck_style_grep_finds_every_v1_detection(tmp_path):
    syslog = tmp_path / "syslog"
    events = scan_events() + [
        ev(ts=TS + 1, label="NULL", flags="", port=8080),
        ev(ts=TS + 2, label="XMAS", flags="FPU", port=8081, ip_options=["RR"]),
    ]
    with syslog.open("w") as f:
        f.write("Nov 22 01:06:39 host sshd[99]: Accepted publickey for admin\n")
        for e in events:
            for line in F.syslog_lines(e, "portsentry1"):
                f.write(f"Nov 22 01:06:40 host nfsentry[4242]: {line}\n")
    detections = [e for e in events if e["event"] == "detection"]
    grep = subprocess.run(["grep", "-c", "attackalert", str(syslog)], capture_output=True, text=True)
    found = int(grep.stdout)
    # every detection line, plus the block lines and the IP-options line, all say attackalert
    assert found == len(detections) + 2 + 1
    scan = subprocess.run(
        ["grep", "-cE", r"attackalert: .* from host: [^ ]+/[^ ]+ to (TCP|UDP) port: [0-9]+$", str(syslog)], capture_output=True, text=True
    )
    assert int(scan.stdout) == len(detections)


# == wired into the alert sinks ====================================================================
def test_alerter_writes_portsentry_syslog_history_and_blocked_files(tmp_path):
    import socket

    from nfsentry.config import schema as C
    from nfsentry.sinks.alerts import Alerter

    sock_path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(2)
    hist, blocked = tmp_path / "lib" / "portsentry.history", tmp_path / "lib" / "portsentry.blocked"
    cfg = C.validate(
        {
            "logging": {
                "journald": False,  # syslog even where journald runs
                "syslog_address": sock_path,
                "json_file": "",
                "format": "portsentry1",
                "history_file": str(hist),
                "blocked_file": str(blocked),
            }
        }
    )
    a = Alerter(cfg)
    try:
        for e in scan_events()[:3]:  # SYN to 21 (detection + block), SYN to 22
            a.emit(e)
        msgs = [rx.recv(4096).decode() for _ in range(3)]
    finally:
        a.close()
        rx.close()
    assert [m.rstrip("\x00").split(": ", 1)[1] for m in msgs] == [
        "attackalert: TCP SYN/Normal scan from host: 198.18.0.2/198.18.0.2 to TCP port: 21",
        "attackalert: Host 198.18.0.2 has been blocked via dropped route using command: "
        '"nft add element inet nfsentry blocked4 { 198.18.0.2 }"',
        "attackalert: TCP SYN/Normal scan from host: 198.18.0.2/198.18.0.2 to TCP port: 22",
    ]
    assert hist.read_text() == "1763770000 - 11/22/2025 01:06:40 Host: 198.18.0.2/198.18.0.2 Port: 21 TCP Blocked\n"
    assert blocked.read_text() == hist.read_text()
