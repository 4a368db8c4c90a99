"""The control socket: a root-only UNIX stream socket speaking one JSON line each way.

Request ``{"cmd": "status"}`` / ``{"cmd": "block", "network": "...", "duration": 3600, "reason": "..."}``
/ ``{"cmd": "unblock", "networks": [...], "all": false, "ignore": false}`` / ``{"cmd": "reload"}``;
reply ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.

The socket file is 0600 in a 0700 directory, and every connection's peer credentials
(SO_PEERCRED) must be uid 0: a non-root user can neither connect nor change anything. Nothing
listens on the network.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable

MAX_REQUEST = 64 * 1024


class DaemonNotRunning(Exception):
    pass


class ControlError(Exception):
    """The daemon refused or failed a request; ``code`` is the CLI exit code it asks for."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


class ControlServer:
    """Accepts connections in a thread and hands each request to `handler` (returns a dict)."""

    def __init__(self, path: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.handler = handler
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists() or self.path.is_symlink():
            # A live daemon answers; a stale socket from a killed one is replaced.
            try:
                request(str(self.path), "ping", timeout=1)
            except DaemonNotRunning:
                self.path.unlink()
            else:
                raise ControlError(f"another nfsentry daemon is running (control socket {self.path} answers)")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="nfsentry-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.stopping:
                    return
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
                if uid != 0:
                    conn.settimeout(1)
                    try:  # take the request first, so the caller is not hung up on mid-send (EPIPE)
                        conn.recv(MAX_REQUEST)
                    except OSError:
                        pass
                    self._reply(conn, {"ok": False, "error": "permission denied: the control socket is for root only"})
                    return
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                try:
                    req = json.loads(data.split(b"\n", 1)[0] or b"{}")
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("request must be a JSON object with a 'cmd'")
                except ValueError as e:
                    self._reply(conn, {"ok": False, "error": f"bad request: {e}"})
                    return
                if req["cmd"] == "ping":
                    self._reply(conn, {"ok": True, "pong": True})
                    return
                try:
                    reply = self.handler(req)
                except Exception as e:  # never kill the control thread
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                self._reply(conn, reply)
            except OSError:
                pass

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


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
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"the daemon did not answer within {timeout:g}s") from None
    finally:
        s.close()
    if not data:
        raise ControlError("the daemon closed the connection without answering")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request refused"), int(reply.get("code", 1)))
    return reply
