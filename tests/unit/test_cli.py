"""CLI parsing and output: bad input gives one line and exit 2, --json is stable, replay is offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nfsentry import __version__
from nfsentry.cli.app import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
NFSENTRY = str(Path(sys.executable).parent / "nfsentry")


def cfg_file(tmp_path: Path, extra: str = "") -> str:
    p = tmp_path / "c.toml"
    p.write_text(
        f'[storage]\nstate_dir = "{tmp_path}/state"\n[daemon]\ncontrol_socket = "{tmp_path}/run/c.sock"\n'
        f'[logging]\njson_file = ""\nsyslog = false\n{extra}'
    )
    return str(p)


def one_line_error(res, code=2, fragment=""):
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("nfsentry: "), err
    assert fragment in err, err


def test_version():
    res = runner.invoke(app, ["version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"nfsentry {__version__}"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["block", "198.18.0.300"], "bad address or prefix"),
        (["block", "0.0.0.0/0"], "refusing to block 0.0.0.0/0"),
        (["block", "::/0"], "refusing to block ::/0"),
        (["block", "198.18.0.2", "--for", "soon"], "bad duration"),
        (["unblock", "not-an-ip"], "bad address or prefix"),
        (["unblock"], "name at least one address, or --all"),
        (["unblock", "198.18.0.2", "--all"], "not both"),
        (["history", "--since", "yesterday-ish"], "bad --since"),
        (["history", "--source", "300.1.1.1"], "bad address"),
        (["blocked", "--family", "5"], "--family must be 4 or 6"),
        (["rules", "load", "--file", "no-such-ruleset"], "unknown rule file"),
        (["rules", "show", "--backend", "magic"], "--backend must be native or compat"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, args, fragment):
    c = cfg_file(tmp_path)
    res = runner.invoke(app, [*args, "--config", c])
    one_line_error(res, 2, fragment)
    assert not (tmp_path / "state").exists()  # nothing written


def test_missing_or_bad_config_is_exit_2(tmp_path):
    one_line_error(runner.invoke(app, ["config", "check", str(tmp_path / "nope.toml")]), 2, "no such configuration file")
    bad = tmp_path / "bad.toml"
    bad.write_text('[monitor]\ntcp_ports = ["1-70000"]\n')
    one_line_error(runner.invoke(app, ["status", "--config", str(bad)]), 2, "[monitor] tcp_ports")


def test_config_check_prints_only_problems_and_the_effective_settings_with_v(tmp_path):
    c = cfg_file(tmp_path, '[monitor]\ntcp_ports = [22, "100-110"]\ntcp_exclude = [105]\n')
    res = runner.invoke(app, ["config", "check", c])
    assert res.exit_code == 0 and res.stdout == f"{c}: ok\n"  # nothing to report: one line
    res = runner.invoke(app, ["config", "check", c, "-v"])
    assert res.exit_code == 0
    assert f"{c}: ok" in res.stdout and 'effective_tcp_ports = "22,100-104,106-110"' in res.stdout
    res = runner.invoke(app, ["config", "check", c, "--json"])
    data = json.loads(res.stdout)
    assert data["monitor"]["effective_tcp_ports"] == "22,100-104,106-110" and data["response"]["block_duration"] == "1h"


def test_status_when_not_running_is_exit_3(tmp_path):
    c = cfg_file(tmp_path)
    res = runner.invoke(app, ["status", "--config", c])
    assert res.exit_code == 3 and "not running" in res.stdout
    res = runner.invoke(app, ["status", "--config", c, "--json"])
    assert res.exit_code == 3 and json.loads(res.stdout) == {"running": False}


def test_history_json_from_the_database(tmp_path):
    from nfsentry.sinks.store import Store

    c = cfg_file(tmp_path)
    s = Store(tmp_path / "state" / "nfsentry.db")
    s.add_history(
        {
            "ts": 1000.0,
            "event": "detection",
            "src": "198.18.0.2",
            "network": "198.18.0.2",
            "proto": "tcp",
            "port": 22,
            "label": "SYN",
            "action": "block",
            "reason": "r",
        }
    )
    s.add_history(
        {
            "ts": 2000.0,
            "event": "block",
            "src": "2001:db8::5",
            "network": "2001:db8::/64",
            "proto": "tcp",
            "port": 23,
            "label": "FIN",
            "action": "block",
            "reason": "r",
        }
    )
    s.close()
    res = runner.invoke(app, ["history", "--json", "--config", c])
    rows = json.loads(res.stdout)
    assert [r["event"] for r in rows] == ["detection", "block"] and rows[1]["network"] == "2001:db8::/64"
    res = runner.invoke(app, ["history", "--json", "--source", "2001:db8::/64", "--config", c])
    assert [r["port"] for r in json.loads(res.stdout)] == [23]
    res = runner.invoke(app, ["history", "--config", c])
    assert res.exit_code == 0 and "198.18.0.2" in res.stdout and "2001:db8::/64" in res.stdout


def test_rules_show_renders_the_config(tmp_path):
    c = cfg_file(tmp_path, '[monitor]\ntcp_ports = [22, 2222]\nudp_ports = [53]\n[ignore]\naddresses = ["198.18.9.0/24"]\n')
    res = runner.invoke(app, ["rules", "show", "--config", c])
    assert res.exit_code == 0
    assert "table inet nfsentry" in res.stdout and "queue" in res.stdout
    assert "2222" in res.stdout and "198.18.9.0/24" in res.stdout
    compat = runner.invoke(app, ["rules", "show", "--config", c, "--backend", "compat"]).stdout
    assert "meta mark set" in compat and "queue flags bypass" not in compat


def _run_as_nobody(*args):
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NFSENTRY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
@pytest.mark.parametrize("args", [["block", "198.18.0.2"], ["unblock", "--all"], ["rules", "unload"], ["blocked"], ["run"]])
def test_not_root_is_exit_77_one_line(args):
    res = _run_as_nobody(*args)
    assert res.returncode == 77, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.strip().count("\n") == 0 and "root" in res.stderr


# -- replay ----------------------------------------------------------------------------------------
def make_capture(path: Path) -> None:
    from scapy.all import IP, TCP, UDP, IPv6, Raw, wrpcap

    V, A, L, A6, N6 = "198.18.0.1", "198.18.0.2", "198.18.0.3", "2001:db8:5::2", "2001:db8::9"
    pkts = []
    t = 1_700_000_000.0
    # benign: legit opens a session to open port 80 (the victim answers SYN-ACK, so the port is in use)
    for p in [
        IP(src=L, dst=V) / TCP(sport=40000, dport=80, flags="S"),
        IP(src=V, dst=L) / TCP(sport=80, dport=40000, flags="SA"),
        IP(src=L, dst=V) / TCP(sport=40000, dport=80, flags="A"),
        IP(src=L, dst=V) / TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET /"),
    ]:
        t += 0.01
        p.time = t
        pkts.append(p)
    # SYN scan from A over ports 20-25 (the victim answers RST: closed), FIN scan from A6
    for port in range(20, 26):
        t += 0.01
        p = IP(src=A, dst=V) / TCP(sport=50000, dport=port, flags="S")
        p.time = t
        pkts.append(p)
    for src in (A6, N6):  # N6 shares the victim's /64: its block must be narrowed to the address
        for port in (110, 111, 112, 113):
            t += 0.01
            p = IPv6(src=src, dst="2001:db8::1") / TCP(sport=50001, dport=port, flags="F")
            p.time = t
            pkts.append(p)
    t += 0.01
    p = IP(src=L, dst=V) / UDP(sport=5353, dport=5353) / Raw(b"x")  # unmonitored port
    p.time = t
    pkts.append(p)
    wrpcap(str(path), pkts)


def test_replay_reports_scans_with_capture_timestamps_and_ignores_benign(tmp_path):
    cap = tmp_path / "cap.pcap"
    make_capture(cap)
    c = cfg_file(tmp_path, "[detection]\nscan_trigger = 2\n")
    res = runner.invoke(app, ["replay", str(cap), "--config", c, "--json", "--local", "198.18.0.1", "--local", "2001:db8::1"])
    assert res.exit_code == 0, res.stderr
    evs = json.loads(res.stdout)
    got = [(e["event"], e["network"], e["label"], e["port"]) for e in evs]
    # scan_trigger 2: the third SYN (port 22) and the third FIN (port 112) react, later packets of
    # blocked sources never reach the queue; a /64 holding the protected host is narrowed to the
    # one address; the benign session to the port that answered (80) and the unmonitored UDP port
    # raise nothing
    assert got == [
        ("detection", "198.18.0.2", "SYN", 22),
        ("block", "198.18.0.2", "SYN", 22),
        ("detection", "2001:db8:5::/64", "FIN", 112),
        ("block", "2001:db8:5::/64", "FIN", 112),
        ("detection", "2001:db8::9", "FIN", 112),
        ("block", "2001:db8::9", "FIN", 112),
    ], got
    assert abs(evs[0]["ts"] - (1_700_000_000.0 + 0.07)) < 0.001
    assert all(e["src"] != "198.18.0.3" for e in evs)
    text = runner.invoke(app, ["replay", str(cap), "--config", c, "-o", "human", "--local", "198.18.0.1", "--local", "2001:db8::1"]).stdout
    blocks = [line.split()[3] for line in text.splitlines() if " block " in line]
    assert blocks == ["198.18.0.2", "2001:db8:5::/64", "2001:db8::9"], text
    tsv = runner.invoke(app, ["replay", str(cap), "--config", c, "--local", "198.18.0.1", "--local", "2001:db8::1"]).stdout
    assert tsv.splitlines()[0] == "time\tevent\tsource\tport\tlabel\taction\tfor\treason"  # piped: tsv
    assert [r.split("\t")[2] for r in tsv.splitlines() if r.split("\t")[1] == "block"] == blocks


def test_replay_bad_capture(tmp_path):
    c = cfg_file(tmp_path)
    one_line_error(runner.invoke(app, ["replay", str(tmp_path / "none.pcap"), "--config", c]), 2, "no such capture file")
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\x00" * 64)
    one_line_error(runner.invoke(app, ["replay", str(junk), "--config", c]), 2, "not a readable capture")
