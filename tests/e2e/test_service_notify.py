"""Running as a systemd service, without systemd: the test binds the NOTIFY_SOCKET (and, in a
mount namespace of the daemon's own, journald's socket) itself and runs the real daemon in a lab
namespace.

- READY=1 arrives with the table in the kernel and the scan queue bound, and a probe sent right
  then is detected and blocked; WATCHDOG=1 keeps arriving on an idle queue; a main (verdict)
  thread really wedged (a reload reading a configuration that is a FIFO nobody writes: blocked in
  open(), while the rest of the process, status included, goes on) stops the pings, and they
  resume when it runs again; STOPPING=1 at SIGTERM.
- The JSON events file is opened again on `nfsentry reload`, on SIGHUP, and by logrotate.
- journald: a real scan reaches the journal socket as an entry with NFSENTRY_* fields; with
  neither journald nor syslog (a container) and no --foreground, it reaches stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import struct
import subprocess
import threading
import time

import pytest
from daemon_util import NFSENTRY, Datagrams, Nfsentry, wait_until

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 3_000_000  # 3 s: pinged about every 0.75 s, withheld once the loop is 1.5 s silent


def notify_fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n") if line)


def journal_fields(data: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=value lines, or KEY, newline, le64 size, bytes, newline."""
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            k, v = line, data[nl + 9 : nl + 9 + size]
            i = nl + 9 + size + 1
        out[k.decode()] = v.decode(errors="replace")
    return out


def queue_bound(host, num: int = 0) -> bool:
    text = host.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    return any(line.split()[0] == str(num) for line in text.splitlines() if line.strip())


def test_ready_after_the_rules_then_a_watchdog_that_only_a_running_loop_feeds(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    at_ready: dict[str, bool] = {}

    def on_message(msg):  # in the listener thread, before anything else happens to the lab
        if msg.get("READY") == "1" and not at_ready:
            at_ready["table"] = victim.nft("list table inet nfsentry", check=False).returncode == 0
            at_ready["queue"] = queue_bound(victim)

    sysd = Datagrams(tmp_path / "notify.sock", notify_fields, on_message)
    d = Nfsentry(victim, tmp_path / "nfs")
    fifo_writer = None
    try:
        assert victim.nft("list table inet nfsentry", check=False).returncode != 0  # nothing before
        t0 = time.monotonic()
        d.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        ready = wait_until("READY=1", lambda: sysd.since(t0, "READY"), 60)[0]
        assert at_ready == {"table": True, "queue": True}, at_ready
        assert ready["STATUS"].startswith("detecting: 0 blocked"), ready
        # protection is on at READY: the first probe after it is detected and blocked
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        statuses = [m["STATUS"] for m in sysd.since(t0, "STATUS")]
        assert statuses[0] == "loading the ruleset" and "READY" not in sysd.since(t0)[0], statuses

        # an idle queue keeps the watchdog fed
        t1 = time.monotonic()
        wait_until("watchdog pings", lambda: len(sysd.since(t1, "WATCHDOG")) >= 4, 60)
        assert all(m == {"WATCHDOG": "1"} for m in sysd.since(t1, "WATCHDOG"))
        assert not any("withholding" in line for line in d.stderr_lines)  # never, while it ran

        # wedge the main thread for real: SIGHUP makes it reload, and the configuration is now a
        # FIFO no one writes, so it blocks in open(); the process lives on (status answers)
        conf, saved = d.config, d.config.read_text()
        conf.unlink()
        os.mkfifo(conf)
        t2 = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        wait_until("RELOADING=1", lambda: sysd.since(t2, "RELOADING"), 30)
        time.sleep(3 * 1.5)  # three times the stale limit: pings decided before the wedge are out
        t3 = time.monotonic()
        st = d.control("status")  # answered by the control thread: the process lives
        assert st["ok"] and d.proc.poll() is None
        assert st["systemd"]["watchdog"]["stalled"] and st["systemd"]["watchdog"]["withheld"] > 0, st["systemd"]
        time.sleep(4.0)
        assert sysd.since(t3, "WATCHDOG") == [], "pings went on with the main thread wedged"
        assert any("withholding the systemd watchdog ping" in line for line in d.stderr_lines)

        # it runs again (the FIFO gets the configuration): the reload finishes, pings resume
        def write_fifo():
            with open(conf, "w") as f:
                f.write(saved)

        fifo_writer = threading.Thread(target=write_fifo, daemon=True)
        fifo_writer.start()
        t4 = time.monotonic()
        wait_until("READY=1 after the reload", lambda: sysd.since(t4, "READY"), 60)
        wait_until("watchdog pings again", lambda: len(sysd.since(t4, "WATCHDOG")) >= 2, 60)
        assert any("watchdog pings resumed" in line for line in d.stderr_lines)
        conf.unlink()
        conf.write_text(saved)

        t5 = time.monotonic()
        assert d.stop() == 0
        assert sysd.since(t5, "STOPPING")
    finally:
        if fifo_writer is None and d.config.is_fifo():  # unblock a wedged daemon before stopping it
            fd = os.open(d.config, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        d.close()
        sysd.close()


def test_the_events_file_is_opened_again_on_reload_sighup_and_by_logrotate(lab, tmp_path):
    """Rotation: rename, then `nfsentry reload` (logrotate's postrotate) or SIGHUP; until then the
    daemon writes to the renamed file (nothing lost), after it to a new file at the configured
    path. Last, logrotate itself (create mode, postrotate `nfsentry reload`)."""
    victim, attacker = lab["victim"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs")
    rotate_conf = tmp_path / "logrotate.conf"
    rotate_conf.write_text(
        f"{d.json_file} {{\n  rotate 3\n  create 0640 root root\n  postrotate\n    {NFSENTRY} reload --config {d.config}\n  endscript\n}}\n"
    )
    try:
        d.start()
        last = 0.0
        for n, how in enumerate(("reload", "sighup", "logrotate")):
            if n:
                d.cli("unblock", "--all")
            attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
            first = d.wait_event("detection", attacker.ip4, where=lambda e: e["ts"] > last)
            reloads = sum("configuration reloaded" in line for line in d.stderr_lines)
            if how == "logrotate":
                rotated = d.json_file.with_name("events.jsonl.1")
                res = subprocess.run(
                    ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(rotate_conf)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert res.returncode == 0, res.stderr
                d.cli("unblock", "--all")
            else:
                rotated = d.json_file.with_name(f"events.jsonl.{how}")
                os.rename(d.json_file, rotated)
                d.cli("unblock", "--all")  # an event while the file is renamed: still the open file
                wait_until("the unblock in the renamed file", lambda: '"unblock"' in rotated.read_text(), 30)
                assert not d.json_file.exists()
                if how == "reload":
                    assert "reloaded" in d.cli("reload").stdout
                else:
                    d.proc.send_signal(signal.SIGHUP)
            wait_until("the reload", lambda: sum("configuration reloaded" in line for line in d.stderr_lines) > reloads, 30)
            attacker.nmap("-sS -Pn --max-retries 0 -p 9", victim.ip4)
            ev = d.wait_event("detection", attacker.ip4, where=lambda e: e["port"] == 9)  # the configured path: a new file
            assert ev["ts"] > first["ts"]
            last = ev["ts"]
            old = [json.loads(x) for x in rotated.read_text().splitlines()]
            assert any(e["event"] == "detection" and e["port"] == 7 and e["ts"] == first["ts"] for e in old), how
            assert all(e.get("port") != 9 for e in old if e["ts"] > first["ts"]), how  # (earlier rounds' are there)
            assert not any(e["event"] == "detection" and e["port"] == 7 and e["ts"] == first["ts"] for e in d.events()), how
    finally:
        d.close()


def in_private_run_systemd(journal_socket=None) -> list[str]:
    """A prefix that execs the daemon in a mount namespace of its own where /run/systemd is an
    empty tmpfs, holding journald's socket only if ``journal_socket`` is given (bind-mounted)."""
    script = "mount -t tmpfs nfsentry-test /run/systemd && mkdir -p /run/systemd/journal"
    if journal_socket is not None:
        script += f" && touch /run/systemd/journal/socket && mount --bind {shlex.quote(str(journal_socket))} /run/systemd/journal/socket"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script + ' && exec "$@"', "nfsentry-ns"]


def test_detections_reach_journald_with_fields_and_not_syslog_too(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    journal = Datagrams(tmp_path / "journal.sock", journal_fields)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"logging": {"journald": True}})
    try:
        d.start(prefix=in_private_run_systemd(tmp_path / "journal.sock"))
        wait_until("the start-up line in the journal", lambda: [m for _, m in journal.got if "is active" in m.get("MESSAGE", "")], 30)
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)

        def entry(kind):
            return [m for _, m in journal.got if m.get("NFSENTRY_EVENT") == kind and m.get("NFSENTRY_SRC") == attacker.ip4]

        det = wait_until("the detection in the journal", lambda: entry("detection"), 30)[0]
        assert det["MESSAGE"].startswith(f"scan detected: src={attacker.ip4} proto=tcp port=7 label=SYN")
        assert (det["NFSENTRY_LABEL"], det["NFSENTRY_ACTION"], det["NFSENTRY_PORT"], det["NFSENTRY_PROTO"]) == ("SYN", "block", "7", "tcp")
        assert (det["PRIORITY"], det["SYSLOG_IDENTIFIER"], det["SYSLOG_FACILITY"]) == ("4", "nfsentry", "3")
        blk = wait_until("the block in the journal", lambda: entry("block"), 30)[0]
        assert blk["NFSENTRY_NETWORK"] == attacker.ip4 and blk["MESSAGE"].startswith(f"blocked: network={attacker.ip4}")
        # journald forwards to syslog: the daemon does not send the lines twice
        assert not any("scan detected" in line for line in d.syslog.lines)
    finally:
        d.close()
        journal.close()


def test_without_journald_or_syslog_detections_go_to_stderr(lab, tmp_path):
    """A container: no journal socket, no /dev/log, not in the foreground."""
    victim, attacker = lab["victim"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"logging": {"journald": True, "syslog_address": str(tmp_path / "no-log")}})
    try:
        d.start(prefix=in_private_run_systemd(None), foreground=False)
        assert any("journald unavailable" in line and "go to stderr" in line for line in d.stderr_lines), d.stderr_lines
        attacker.nmap("-sS -Pn --max-retries 0 -p 7", victim.ip4)
        d.wait_event("block", attacker.ip4)
        wait_until("the detection on stderr", lambda: any(f"scan detected: src={attacker.ip4}" in line for line in d.stderr_lines), 30)
    finally:
        d.close()
