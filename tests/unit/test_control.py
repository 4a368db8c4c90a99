"""Control socket: JSON lines, root-only file modes, peer-credential check, stale sockets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from nfsentry.daemon.control import ControlServer
from nfsentry.ipc import ControlError, DaemonNotRunning, request


def test_request_reply_and_errors(tmp_path):
    path = str(tmp_path / "run" / "control.sock")
    seen = []

    def handler(req):
        seen.append(req)
        if req["cmd"] == "boom":
            raise RuntimeError("kaboom")
        return {"ok": True, "echo": req.get("x")}

    srv = ControlServer(path, handler)
    srv.start()
    try:
        assert request(path, "status", x=5)["echo"] == 5
        with pytest.raises(ControlError, match="kaboom"):
            request(path, "boom")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with pytest.raises(Exception, match="another nfsentry daemon is running"):
            ControlServer(path, handler)
    finally:
        srv.close()
    with pytest.raises(DaemonNotRunning):
        request(path, "status")


def test_stale_socket_is_replaced(tmp_path):
    import socket

    path = str(tmp_path / "c.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a socket file nobody listens on (daemon was kill -9'd)
    srv = ControlServer(path, lambda r: {"ok": True})
    srv.start()
    try:
        assert request(path, "status")["ok"]
    finally:
        srv.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_non_root_is_refused():
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="nfsentry-ctl-", dir="/tmp")
    path = os.path.join(d, "c.sock")
    calls = []
    srv = ControlServer(path, lambda r: calls.append(r) or {"ok": True})
    srv.start()
    try:
        os.chmod(d, 0o755)
        os.chmod(path, 0o666)  # even with a careless mode, the peer-credential check refuses
        code = f"""
import os, sys, json, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({path!r})
s.sendall(b'{{"cmd": "unblock", "all": true}}\\n')
print(s.recv(4096).decode())
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
        assert "permission denied" in out.stdout, out.stderr
        assert calls == []
    finally:
        srv.close()
        shutil.rmtree(d)
