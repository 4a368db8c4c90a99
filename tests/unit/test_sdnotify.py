"""systemd notifications (sd_notify over the stdlib socket) and the watchdog fed by the main
thread's liveness, without systemd: the tests bind the NOTIFY_SOCKET themselves. The e2e side
(READY=1 after the table is in the kernel, pings from a real daemon, a really wedged main thread)
is tests/e2e/test_service_notify.py."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from nfsentry.config import schema as C
from nfsentry.daemon import daemon as D
from nfsentry.daemon import sdnotify as S
from nfsentry.sinks.alerts import Alerter


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)

    def messages(self, wait: float = 0.0) -> list[dict[str, str]]:
        """Every datagram waiting (after ``wait`` seconds of collecting), each as a dict."""
        out, deadline = [], time.monotonic() + wait
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return out
                continue
            out.append(dict(line.split("=", 1) for line in data.split("\n")))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


def test_socket_address_forms():
    assert S.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert S.socket_address("@abstract/name") == "\0abstract/name"
    for bad in ("", "@", "relative/path", "vsock:2:1234"):
        assert S.socket_address(bad) is None, bad


def test_notifier_takes_the_variable_and_sends_key_value_datagrams(listener, tmp_path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "OTHER": "x"}
    n = S.Notifier.from_environment(env)
    assert env == {"OTHER": "x"}  # children (external commands) never inherit it
    assert n.ready("detecting: 0 blocked")
    assert n.reloading() and n.stopping() and n.status("two\nlines")
    msgs = listener.messages()
    assert msgs[0] == {"READY": "1", "STATUS": "detecting: 0 blocked"}
    assert msgs[1]["RELOADING"] == "1" and int(msgs[1]["MONOTONIC_USEC"]) > 0
    assert msgs[2] == {"STOPPING": "1", "STATUS": "stopping"}
    assert msgs[3] == {"STATUS": "two lines"}  # a newline would start another field
    n.close()


def test_abstract_socket(tmp_path):
    name = f"nfsentry-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener("\0" + name)
    try:
        n = S.Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert n.ready("up")
        assert lst.messages() == [{"READY": "1", "STATUS": "up"}]
    finally:
        lst.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    n = S.Notifier.from_environment({})
    assert not n.enabled
    assert not n.ready("x") and not n.send(WATCHDOG=1)
    assert S.status(n, None) is None


def test_a_missing_or_full_socket_never_raises_nor_blocks(tmp_path):
    gone = S.Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.send(READY=1) and gone.errors == 1
    # a listener that never reads: its queue fills, and sending must not wait for it
    lst = Listener(str(tmp_path / "full.sock"))
    n = S.Notifier(str(tmp_path / "full.sock"))
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.extend(n.send(WATCHDOG=1) for _ in range(5000)), daemon=True)
    t.start()
    t.join(timeout=60)
    lst.close()
    assert not t.is_alive(), "sd_notify blocked on a full socket"
    assert True in results and False in results and n.errors == results.count(False)


def test_watchdog_interval_is_for_this_process_only():
    env = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert S.watchdog_interval(env) == 3.0 and env == {}
    assert S.watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert S.watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 3.0
    for bad in ("", "0", "x"):
        assert S.watchdog_interval({"WATCHDOG_USEC": bad}) is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_watchdog_feeds_only_while_the_main_thread_lives(listener, tmp_path):
    clock = Clock()
    wd = S.Watchdog(S.Notifier(str(tmp_path / "notify.sock")), interval=4.0, clock=clock)
    assert (wd.stale_after, wd.period) == (2.0, 1.0)
    sent = []
    for _ in range(10):  # an idle queue: the loop returns every 0.2 s and stamps
        clock.t += 0.2
        wd.alive = clock.t
        sent.append(wd.tick())
    assert sent.count(True) >= 2  # rate-limited to about one per period, but never none
    # the main thread wedges: once its stamp is older than half the interval, no more pings
    wedged_at = clock.t
    pings_after = []
    while clock.t < wedged_at + 10:
        clock.t += 0.25
        pings_after.append((clock.t - wedged_at, wd.tick()))
    assert all(age <= 2.0 for age, sent_one in pings_after if sent_one)
    assert wd.withheld > 0 and wd.stalled_since == wedged_at
    # it runs again: pings resume at once
    wd.alive = clock.t
    assert wd.tick() and wd.stalled_since is None
    msgs = listener.messages()
    assert msgs and all(m == {"WATCHDOG": "1"} for m in msgs) and len(msgs) == wd.pings


def test_the_daemon_main_loop_feeds_the_watchdog_and_a_stalled_one_does_not(monkeypatch, listener, tmp_path):
    """The real Daemon: its service() (what the main thread runs between and during receives) is
    the liveness stamp, the real notify thread sends the pings. A main thread that stops calling
    it (blocked in a call that never returns) stops them; when it runs again they resume."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: stale after 0.5 s, looked at every 0.25 s
    monkeypatch.setattr(D, "never_block_networks", lambda cfg: [])
    d = D.Daemon(C.defaults())
    d.build_core()
    assert d.watchdog is not None and "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    run = threading.Event()
    run.set()
    done = threading.Event()

    def main_loop():  # what Daemon.run does around NetfilterQueue.run: an idle queue returns every 0.2 s
        while not done.is_set():
            if run.wait(0.05):
                d.service()
                time.sleep(0.05)

    threads = [
        threading.Thread(target=main_loop, daemon=True),
        threading.Thread(target=S.notify_loop, args=(d.notify, d.watchdog, d.status_line, done.is_set), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        pings = []
        deadline = time.monotonic() + 30
        while len(pings) < 3 and time.monotonic() < deadline:
            pings += [m for m in listener.messages(0.2) if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, "no watchdog pings while the main loop runs"
        run.clear()  # the main thread stops coming back
        time.sleep(2.0)  # four times the stale limit: any ping decided before is out by now
        listener.messages()
        assert [m for m in listener.messages(2.0) if m.get("WATCHDOG")] == [], "pings went on with the main thread stalled"
        assert d.watchdog.stalled_since is not None
        wd = S.status(d.notify, d.watchdog)["watchdog"]
        assert wd["stalled"] and wd["withheld"] > 0 and wd["pings"] >= 3 and wd["interval"] == 1.0
        run.set()
        deadline = time.monotonic() + 30
        resumed = []
        while not resumed and time.monotonic() < deadline:
            resumed = [m for m in listener.messages(0.2) if m.get("WATCHDOG") == "1"]
        assert resumed, "pings did not resume when the main thread ran again"
    finally:
        done.set()
        for t in threads:
            t.join(timeout=5)


def test_reload_says_reloading_then_ready_even_when_refused(monkeypatch, listener, tmp_path):
    conf = tmp_path / "nfsentry.toml"
    events = tmp_path / "events.jsonl"
    logging = f'[logging]\nsyslog = false\njournald = false\njson_file = "{events}"\n'
    conf.write_text(f'[storage]\nstate_dir = "{tmp_path}/x"\n{logging}')
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setattr(D, "never_block_networks", lambda cfg: [])
    d = D.Daemon(C.load(conf))
    d.build_core()
    d.worker.alerter = Alerter(d.cfg)
    d.worker.alerter.emit({"ts": 1.0, "event": "unblock", "network": "198.18.0.1", "reason": "before"})
    events.rename(tmp_path / "events.jsonl.1")  # logrotate
    conf.write_text(f'[storage]\nstate_dir = "{tmp_path}/elsewhere"\n{logging}')  # restart-only: refused
    ok, msg = d.reload()
    assert not ok and "storage.state_dir" in msg
    msgs = listener.messages()
    assert [next(iter(m)) for m in msgs] == ["RELOADING", "READY"]
    assert msgs[1]["STATUS"].startswith("detecting: ")
    while not d.events.empty():  # what the worker does with what the reload handed it
        kind, obj, extra = d.events.get_nowait()
        d.worker.handle_event(kind, obj, extra)
    # the files are opened again whatever the outcome (logrotate's postrotate runs `nfsentry reload`)
    d.worker.alerter.emit({"ts": 2.0, "event": "unblock", "network": "198.18.0.1", "reason": "after"})
    d.worker.alerter.close()
    assert "before" in (tmp_path / "events.jsonl.1").read_text() and "after" not in (tmp_path / "events.jsonl.1").read_text()
    assert "after" in events.read_text()
