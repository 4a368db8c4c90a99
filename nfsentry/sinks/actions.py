"""Extra responses: an external command (argument list, never a shell) and a hosts.deny line.

Only validated values are substituted: the target is an address/prefix text produced by
``ipaddress``, the port an integer and the mode one of nfsentry's fixed labels.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess

from nfsentry.sinks import files

_MODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def substitute(template: list[str], target: str, port: int, mode: str) -> list[str]:
    net = ipaddress.ip_network(target, strict=False)  # raises on anything but an address/prefix
    if not (0 <= int(port) <= 65535):
        raise ValueError(f"bad port {port!r}")
    if not _MODE_RE.match(mode):
        raise ValueError(f"bad mode {mode!r}")
    text = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return [a.replace("$TARGET$", text).replace("$PORT$", str(int(port))).replace("$MODE$", mode) for a in template]


def run_command(template: list[str], target: str, port: int, mode: str, timeout: float = 30) -> tuple[int, str]:
    """Run the configured command; returns (exit code, first line of output). Never raises on failure."""
    argv = substitute(template, target, port, mode)
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
        out = (res.stdout + res.stderr).strip().splitlines()
        return res.returncode, out[0] if out else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def hosts_deny_line(target: str) -> str:
    net = ipaddress.ip_network(target, strict=False)
    if net.version == 6:
        addr = f"[{net.network_address}]" + (f"/{net.prefixlen}" if net.prefixlen < 128 else "")
    else:
        addr = str(net.network_address) + (f"/{net.netmask}" if net.prefixlen < 32 else "")
    return f"ALL: {addr}\n"


def append_hosts_deny(path: str, target: str) -> None:
    line = hosts_deny_line(target)
    try:
        with open(path, encoding="utf-8") as f:
            if line in f.read().splitlines(keepends=True):
                return
    except FileNotFoundError:
        pass
    files.append(path, line, 0o644)
