"""The control socket: a root-only UNIX stream socket speaking one JSON line each way.

Request ``{"cmd": "status"}`` / ``{"cmd": "block", "network": "...", "duration": 3600, "reason": "..."}``
/ ``{"cmd": "unblock", "networks": [...], "all": false, "ignore": false}`` / ``{"cmd": "reload"}``;
reply ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.

The socket file is 0600 in a 0700 directory, and every connection's peer credentials
(SO_PEERCRED) must be uid 0: a non-root user can neither connect nor change anything. Nothing
listens on the network.

This module is the protocol and the client the CLI uses; the server is
``nfsentry.daemon.control.ControlServer``.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class DaemonNotRunning(Exception):
    pass


class ControlError(Exception):
    """The daemon refused or failed a request; ``code`` is the CLI exit code it asks for."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def read_line(sock: socket.socket, limit: int) -> bytes:
    """Bytes up to and including the first newline (or what came before the peer closed, or
    ``limit`` bytes): one JSON message of the protocol."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def request(path: str, cmd: str, timeout: float = 10, **args: Any) -> dict[str, Any]:
    """Send one request; raises DaemonNotRunning when nothing listens, ControlError on refusal."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(f"the nfsentry daemon is not running (no control socket at {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied: {path} is for root only") from None
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may refuse (not root) and hang up before reading: its answer is still there
        data = read_line(s, 1 << 30)
    except TimeoutError:
        raise ControlError(f"the daemon did not answer within {timeout:g}s") from None
    finally:
        s.close()
    if not data:
        raise ControlError("the daemon closed the connection without answering")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request refused"), int(reply.get("code", 1)))
    return reply
