"""systemd's service notification protocol (sd_notify(3)) with the standard library, and the
watchdog fed by the main thread's liveness.

- :class:`Notifier`: ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) read once
  and taken out of the environment (children, such as ``[response] command``, never inherit it);
  each message is one datagram of ``KEY=value`` lines, sent without blocking. Without
  ``NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call does nothing.
- :class:`Watchdog`: ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, when systemd sets it, naming this
  process). The main thread (the scan queue's loop, the only one that touches the engine) stamps
  :attr:`Watchdog.alive` each time it runs its duties: at least every 0.2 s when the queue is
  idle, within a second or so when it is busy (the 1 s ticker makes the callback run them). The
  ``nfsentry-notify`` thread sends ``WATCHDOG=1`` only while that stamp is younger than half the
  watchdog interval: an idle queue keeps it fresh, a wedged main thread (stuck in a call that
  never returns) lets it age, the pings stop, and systemd restarts the service after
  ``WatchdogSec``. Nothing of this is on the per-packet path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping

log = logging.getLogger("nfsentry")

STATUS_INTERVAL = 10.0  # seconds between STATUS= updates (only when the text changed)


def socket_address(value: str) -> str | None:
    """The address NOTIFY_SOCKET names: a path, or an abstract name (leading '@' -> NUL);
    None for anything else (empty, relative, or a transport this implementation does not speak)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages; inert when ``address`` is None. Never raises: a notification
    that cannot be sent is counted (``errors``) and logged once."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.errors = 0
        self.sent = 0
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()  # the main thread and the notify thread both send
        if address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)  # the main thread sends too: never wait for systemd

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for (NOTIFY_SOCKET), taking the variable out of the environment."""
        env = os.environ if environ is None else environ
        raw = env.pop("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%s: not a path or abstract socket name; no notifications to systemd", raw)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: str | int) -> bool:
        """One notification: ``send(READY=1, STATUS="...")`` -> "READY=1\\nSTATUS=...". True when sent."""
        if self.sock is None or self.address is None:
            return False
        text = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items())
        try:
            with self.lock:
                self.sock.sendto(text.encode(), self.address)
        except OSError as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("cannot notify systemd at %s: %s (errors so far: %d)", self.address.replace("\0", "@"), e, self.errors)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC: what systemd 253+ wants with RELOADING=1 (older ones ignore it)
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000, STATUS="reloading")

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping")

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _one_line(v: str | int) -> str:
    return str(v).replace("\n", " ")


def watchdog_interval(environ: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds of WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID unset or ours),
    else None. Both variables are taken out of the environment."""
    env = os.environ if environ is None else environ
    usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        n = int(usec)
    except ValueError:
        return None
    return n / 1e6 if n > 0 else None


class Watchdog:
    """``WATCHDOG=1`` while the main thread lives. ``alive`` is written by the main thread only
    (a float store: no lock); :meth:`tick` runs on the notify thread every ``period`` seconds."""

    def __init__(self, notifier: Notifier, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.interval = interval
        self.clock = clock
        self.stale_after = interval / 2  # the main thread silent this long: stop feeding
        self.period = min(1.0, interval / 4)  # how often the notify thread looks
        self.alive = clock()
        self.last_ping = -1e18
        self.pings = 0
        self.withheld = 0  # ticks that found the main thread stalled
        self.stalled_since: float | None = None

    def tick(self) -> bool:
        """Send WATCHDOG=1 if the main thread showed life recently enough; True when sent."""
        now = self.clock()
        age = now - self.alive
        if age > self.stale_after:
            self.withheld += 1
            if self.stalled_since is None:
                self.stalled_since = self.alive
                log.error(
                    "the packet thread has not run its loop for %.1f s: withholding the systemd watchdog ping (WatchdogSec %.0f s)",
                    age,
                    self.interval,
                )
            return False
        if self.stalled_since is not None:
            log.warning("the packet thread runs again after %.1f s: watchdog pings resumed", now - self.stalled_since)
            self.stalled_since = None
        if now - self.last_ping < self.period * 0.9:
            return False
        if self.notifier.send(WATCHDOG=1):
            self.last_ping = now
            self.pings += 1
            return True
        return False


def notify_loop(notifier: Notifier, watchdog: Watchdog | None, status: Callable[[], str], stopping: Callable[[], bool]) -> None:
    """The ``nfsentry-notify`` thread (only when systemd listens): the watchdog's ticks, and a
    STATUS= line every STATUS_INTERVAL seconds when its text changed (``systemctl status``)."""
    period = watchdog.period if watchdog is not None else 1.0
    last_text, next_status = "", time.monotonic() + STATUS_INTERVAL
    while not stopping():
        if watchdog is not None:
            watchdog.tick()
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_INTERVAL
            try:
                text = status()
            except Exception as e:  # a status text must never stop the watchdog
                text = f"status unavailable: {type(e).__name__}"
            if text != last_text:
                last_text = text
                notifier.status(text)
        time.sleep(period)


def status(notifier: Notifier, watchdog: Watchdog | None) -> dict[str, object] | None:
    """For `status --json`: None when systemd does not listen."""
    if not notifier.enabled:
        return None
    out: dict[str, object] = {"notifications": notifier.sent, "errors": notifier.errors, "watchdog": None}
    if watchdog is not None:
        out["watchdog"] = {
            "interval": watchdog.interval,
            "pings": watchdog.pings,
            "withheld": watchdog.withheld,
            "stalled": watchdog.stalled_since is not None,
        }
    return out
