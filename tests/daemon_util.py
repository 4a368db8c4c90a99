"""Run the real nfsentry daemon inside a lab namespace, with every path in the test's tmp dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import VENV_BIN, Host

NFSENTRY = str(VENV_BIN / "nfsentry")


def wait_until(what: str, check, timeout: float):
    """Poll ``check`` every 0.1 s until it returns something true (returned), or fail naming ``what``
    after ``timeout`` seconds (tests give a busy machine many times the quiet time)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def set_elements(host: Host, prefix: str) -> dict[str, int | float | None]:
    """network -> seconds left (None: no timeout) of the sets of table inet nfsentry in ``host``'s
    namespace whose name starts with ``prefix`` (IPv6 networks of a ``blocked6_<len>`` set with
    their length); {} when the table is not there."""
    out: dict[str, int | float | None] = {}
    res = host.nft(["-j", "list", "table", "inet", "nfsentry"], check=False)
    if res.returncode != 0:
        return out
    for item in json.loads(res.stdout)["nftables"]:
        st = item.get("set")
        if not st or not st["name"].startswith(prefix):
            continue
        for e in st.get("elem", []):
            val = e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
            v = val["val"]
            if isinstance(v, dict) and "prefix" in v:
                v = f"{v['prefix']['addr']}/{v['prefix']['len']}"
            if st["name"].startswith("blocked6_"):
                v = f"{v}/{st['name'].split('_')[1]}"
            out[str(v)] = val.get("expires")
    return out


def kernel_blocks(host: Host) -> dict[str, int | float | None]:
    """network -> seconds left (None: permanent), straight from the kernel's blocked sets."""
    return set_elements(host, "blocked")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Datagrams:
    """A datagram UNIX socket standing in for /dev/log, systemd's notify socket or journald,
    keeping (time received, parse(datagram)) for every datagram; ``on_message`` runs in the
    receiving thread."""

    def __init__(self, path: Path, parse: Callable[[bytes], Any], on_message: Callable[[Any], None] | None = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.settimeout(0.1)
        self.parse, self.on_message = parse, on_message
        self.got: list[tuple[float, Any]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data = self.sock.recv(1 << 20)
            except (TimeoutError, OSError):
                continue
            msg = self.parse(data)
            if self.on_message:
                self.on_message(msg)
            self.got.append((time.monotonic(), msg))

    def since(self, t: float, key: str | None = None) -> list[Any]:
        return [m for at, m in list(self.got) if at >= t and (key is None or key in m)]

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()


class SyslogSink(Datagrams):
    """/dev/log for the daemon under test: its syslog lines."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, lambda data: data.decode(errors="replace"))

    @property
    def lines(self) -> list[str]:
        return [m for _, m in list(self.got)]


class Nfsentry:
    """The daemon in `host`'s namespace. `overrides` are config sections merged over test defaults."""

    def __init__(self, host: Host, tmp: Path, overrides: dict[str, dict[str, Any]] | None = None, ignore: list[str] | None = None) -> None:
        self.host = host
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "ignore").touch()
        self.syslog = SyslogSink(tmp / "log.sock")
        self.json_file = tmp / "events.jsonl"
        self.sections: dict[str, dict[str, Any]] = {
            "storage": {"state_dir": str(tmp / "state")},
            "daemon": {"control_socket": str(tmp / "run" / "control.sock")},
            # syslog to the test's socket even where journald runs (journald would take the lines)
            "logging": {"json_file": str(self.json_file), "syslog_address": str(tmp / "log.sock"), "level": "debug", "journald": False},
            # an ignore file of the test's own: `unblock --ignore` appends there, never to /etc
            "ignore": {"addresses": ignore or [], "files": [str(tmp / "ignore")], "resolvers": False, "gateways": False},
        }
        for sec, vals in (overrides or {}).items():
            self.sections.setdefault(sec, {}).update(vals)
        self.config = write_config(tmp / "nfsentry.toml", self.sections)
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(
        self,
        timeout: float = 120,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        foreground: bool = True,
    ) -> Nfsentry:
        """``env``: variables added to the daemon's environment; ``prefix``: a command that execs
        the daemon (e.g. to set up a mount namespace); ``foreground=False``: no --foreground."""
        # (deadlines in here return as soon as the condition holds: generous for a busy machine)
        self.stderr_lines = []  # a restart must wait for its own "is active" line
        argv = [*(prefix or []), NFSENTRY, "run", *(["--foreground"] if foreground else []), "--config", str(self.config)]
        self.proc = self.host.popen(
            [*argv, *(extra_args or [])], stdout=subprocess.DEVNULL, env={**os.environ, **env} if env is not None else None
        )
        reader = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("is active" in l for l in self.stderr_lines):
                return self
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"nfsentry exited rc={self.proc.returncode}:\n" + "".join(self.stderr_lines))
            time.sleep(0.05)
        raise RuntimeError("nfsentry did not become active:\n" + "".join(self.stderr_lines))

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        lines = self.stderr_lines
        for line in proc.stderr:
            lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self.syslog.close()

    # -- observation -----------------------------------------------------------------------------
    def events(self, kind: str | None = None, src: str | None = None) -> list[dict[str, Any]]:
        if not self.json_file.exists():
            return []
        out = []
        for line in self.json_file.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if kind and ev.get("event") != kind:
                continue
            if src and ev.get("src") != src and ev.get("network") != src:
                continue
            out.append(ev)
        return out

    def wait_event(self, kind: str, src: str | None = None, timeout: float = 60, where=None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events(kind, src):
                if where is None or where(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError(
            f"no {kind} event for {src} within {timeout}s; events: {self.events()}\nstderr:\n{''.join(self.stderr_lines[-30:])}"
        )

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.host.run([NFSENTRY, *args, "--config", str(self.config)], check=check, timeout=timeout)

    def control(self, cmd: str, **args: Any) -> dict[str, Any]:
        """A request over the control socket from this process (no program start: cheap under qemu)."""
        from nfsentry.ipc import request

        return request(str(self.sections["daemon"]["control_socket"]), cmd, **args)

    def blocked(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("blocked", "--json").stdout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)
