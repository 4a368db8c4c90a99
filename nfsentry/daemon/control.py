"""The daemon's side of the control socket (protocol: ``nfsentry.ipc``).

- :class:`ControlServer`: the root-only UNIX socket; its accept loop runs in the
  ``nfsentry-control`` thread, one short-lived thread per connection.
- :class:`Commands`: requests cross to the main thread (the only one that touches the engine):
  ``control_request`` runs in a connection's thread, queues the request and waits; ``run`` (called
  by ``Daemon.service``) executes them in the main thread. ``status`` is answered in place (it only
  reads). Counters written: ``Counters.main`` (from the main thread).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfsentry.config.schema import ConfigError, read_ignore
from nfsentry.core.addrs import block_target_checker, normalize_block_target, normalize_network
from nfsentry.daemon.handoff import Handoff
from nfsentry.ipc import ControlError, DaemonNotRunning, read_line, request
from nfsentry.ledger.neverblock import never_block_networks

MAX_REQUEST = 32 * 1024 * 1024  # a bulk block of 100,000 entries is ~6 MB; only root gets this far


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
                        conn.recv(65536)  # (not MAX_REQUEST: nothing of it is read)
                    except OSError:
                        pass
                    self._reply(conn, {"ok": False, "error": "permission denied: the control socket is for root only"})
                    return
                data = read_line(conn, MAX_REQUEST)
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


class Commands:
    """Control requests, executed by the main thread."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.requests = Handoff()

    def control_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Called in the control thread: hand over to the main thread and wait for the answer."""
        if req["cmd"] == "status":
            return {"ok": True, **self.d.status()}
        if req["cmd"] == "fleet_status":
            fleet = self.d.fleet
            return {"ok": True, "fleet": fleet.status() if fleet is not None else {"enabled": False}}
        if req["cmd"] == "unblock" and self.d.fleet is not None and not req.get("all"):
            return self.unblock_with_fleet(req)
        if req["cmd"] == "block_many":  # checking 10,000 targets is pure: here, not on the packet thread
            try:
                req = {**req, "checked": self.check_many(req)}
            except ValueError as e:
                return {"ok": False, "error": str(e), "code": 2}
        box = self.requests.submit(req, self.d.wake, 30)
        if box is None:
            return {"ok": False, "error": "the daemon did not execute the request within 30s"}
        return box["result"]

    def unblock_with_fleet(self, req: dict[str, Any]) -> dict[str, Any]:
        """Control thread: the pulled blocks of the targets are lifted by the fleet thread (their
        decisions deleted at the LAPI first, unless ``local``); the local ones by the main thread."""
        fleet = self.d.fleet
        nets = [normalize_network(n) for n in req.get("networks", [])]
        try:
            got = fleet.call(lambda: fleet.unblock(nets, bool(req.get("local"))))
        except Exception as e:  # the LAPI unreachable: nothing lifted, say so
            return {"ok": False, "error": f"lifting the fleet block failed, nothing changed: {e} (--local lifts it on this host only)"}
        reply = self.control_request({**req, "cmd": "unblock_local"})
        if not reply.get("ok"):
            return reply
        lifted = got["lifted"]
        reply["unblocked"] = list(reply.get("unblocked", [])) + [f"{n} (fleet)" for n in lifted]
        reply["not_blocked"] = [n for n in reply.get("not_blocked", []) if n not in lifted]
        reply["fleet"] = got
        return reply

    def run(self) -> None:
        """Main thread: execute the requests waiting."""
        self.requests.serve(self.answer)

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        """A request's reply: every failure becomes one ({"ok": False, ...}), never an exception."""
        try:
            return self.execute(req)
        except (ValueError, ConfigError) as e:  # bad input from the CLI: its exit code 2
            return {"ok": False, "error": str(e), "code": 2}
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def execute(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "block":
            return self.block(req)
        if cmd in ("unblock", "unblock_local"):
            return self.unblock(req)
        if cmd == "reload":
            ok, msg = self.d.reload()
            return {"ok": ok, "message": msg, "config": self.d.cfg.path} if ok else {"ok": False, "error": msg}
        if cmd == "unload":  # `rules unload --force`: the daemon stops detecting and says so
            d = self.d
            with d.ruleset_lock:  # the worker must not see the table gone and put it back meanwhile
                d.nft.unload()
                d.unloaded_by_admin = True
                d.degraded = "the ruleset was unloaded by `nfsentry rules unload --force`: nothing is detected or blocked until `nfsentry rules load`"
            return {"ok": True, "table": d.nft.table}
        if cmd == "ignore":
            net = normalize_network(req["network"])
            self.add_ignore(net)
            return {"ok": True, "ignored": net}
        if cmd == "unignore":
            return self.unignore(normalize_network(req["network"]))
        if cmd == "block_many":
            return self.block_many(req)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def block(self, req: dict[str, Any]) -> dict[str, Any]:
        d = self.d
        net = normalize_block_target(req["network"], d.never_block if not req.get("force") else [])
        duration = float(req.get("duration", d.cfg.durations["block_duration"]))
        res = d.ledger.block(net, duration, req.get("reason"))
        if res.status != "kept":
            d.engine.mark_blocked(net, res.expires or 0.0)
            d.counters.main["blocks"] += 1
            d.counters.main["blocks_manual"] += 1
        return {"ok": True, "blocked": net, "status": res.status, "expires": res.expires, "by": res.by}

    def check_many(self, req: dict[str, Any]) -> list[tuple[str, float, str | None]]:
        """`block -f`'s entries [[network, duration or null, reason or null], ...] checked, all or
        nothing: one refused entry (bad, or never to be blocked) refuses the request, naming it."""
        d = self.d
        default = float(d.cfg.durations["block_duration"])
        check = block_target_checker(d.never_block if not req.get("force") else [])
        names = req.get("names") or []  # where each entry came from ("list.txt:12"), for the refusal
        items = []
        for i, (network, duration, reason) in enumerate(req.get("entries", [])):
            try:
                net = check(network)
                items.append((net, default if duration is None else float(duration), reason))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{names[i] if i < len(names) else network}: {e}") from None
        return items

    def block_many(self, req: dict[str, Any]) -> dict[str, Any]:
        """Main thread: the checked entries through the ledger (one kernel transaction)."""
        d = self.d
        items = req["checked"] if "checked" in req else self.check_many(req)
        results = d.ledger.block_many(items)
        for r in results:
            if r.status != "kept":
                d.engine.mark_blocked(r.network, r.expires or 0.0)
                d.counters.main["blocks"] += 1
                d.counters.main["blocks_manual"] += 1
        return {"ok": True, "results": [[r.network, r.status, r.expires, r.by] for r in results]}

    def unignore(self, net: str) -> dict[str, Any]:
        """`ignore del` while running: the CLI took it out of the ignore file first; the never-block
        list and the kernel's ignore sets are made again from the configuration's files."""
        d = self.d
        d.cfg.ignore = read_ignore(d.cfg)  # ConfigError (a bad line in a file): refused, exit 2
        d.runtime_ignore.discard(net)
        nets = sorted(set(never_block_networks(d.cfg)) | d.runtime_ignore)
        d.nft.set_ignore(nets)
        d.set_never_block(nets)
        return {"ok": True, "unignored": net, "still": net in nets}

    def unblock(self, req: dict[str, Any]) -> dict[str, Any]:
        d = self.d
        reason = req.get("reason") or "unblocked by admin"
        d.valves.forget_narrowed()  # an unblocked address scanning again is a new block
        if req.get("all"):
            removed, covered, not_blocked = d.ledger.unblock_all(), {}, []
        else:
            res = d.ledger.unblock(
                [normalize_network(n) for n in req.get("networks", [])], covering=bool(req.get("covering")), reason=reason
            )
            removed, covered, not_blocked = res.removed, res.covered, res.not_blocked
        for net in removed:
            d.engine.forget(net)
            if req.get("ignore"):
                self.add_ignore(net)
        reply = {"ok": True, "unblocked": removed, "covered": covered, "not_blocked": not_blocked}
        if req.get("all") and d.fleet is not None:  # the fleet's blocks are not this host's to lift wholesale
            reply["fleet_kept"] = d.fleet.status().get("pulled", {}).get("in_force", 0)
        return reply

    def add_ignore(self, net: str) -> None:
        """`unblock --ignore` / `ignore` while running: kept across never-block refreshes."""
        d = self.d
        d.nft.add_ignore(net)
        d.runtime_ignore.add(net)
        d.set_never_block(sorted(set(d.never_block) | {net}))
