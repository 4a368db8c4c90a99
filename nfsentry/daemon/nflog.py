"""Packets the kernel drops before the input hook (``[monitor] before_input``): the rules hand them
to NFLOG group ``[nft] nflog_group`` (rule 8: source-routed IPv4 from prerouting; rule 9: IPv4 with
a bad header from table netdev nfsentry), and this module receives them in the ``nfsentry-nflog``
thread and hands the bytes to the main thread, the one that owns the engine.

The kernel side is Debian's libnetfilter_log (package ``libnetfilter-log1``), called through
:mod:`ctypes` (no compiler, no hand-written netlink parsing): ``nflog_open``, ``nflog_bind_group``,
``nflog_set_mode(NFULNL_COPY_PACKET)``, ``nflog_callback_register``, then ``recv`` on
``nflog_fd`` and ``nflog_handle_packet``, whose callback reads the payload (``nflog_get_payload``:
the packet from its IP header on) and the link-layer protocol (``nflog_get_msg_packet_hdr``).

Hand-off: the callback appends ``(family, link protocol, bytes, time)`` to a bounded backlog and
sets the main thread's ``pending`` flag; ``Daemon.service`` calls :meth:`EarlyPackets.drain`, which
runs :meth:`Engine.process` (no checksum check: NFLOG copies an offloaded checksum as it is, and
these packets never get an answer anyway) and reports or blocks like the scan queue does. An idle
scan queue wakes the main thread every 0.2 s, so that is the longest such a packet waits. No lock:
``collections.deque`` appends and pops are atomic. Counters written: ``Counters.nflog`` (this
thread); detections and blocks are the main thread's (``Counters.main``).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import socket
import struct
import time
from typing import Any

from nfsentry.core.engine import Action
from nfsentry.core.packet import decode, decode_ipv4
from nfsentry.daemon.counters import Part

LIBRARY = "libnetfilter_log.so.1"
MISSING = "libnetfilter_log is missing: install the Debian package libnetfilter-log1 (or set [monitor] before_input = false)"
NFULNL_COPY_PACKET = 2
NFPROTO_NETDEV = 5  # the family of what a netdev chain logs
ETH_P_IP = 0x0800
COPY_RANGE = 0xFFFF  # whole packets (the rules rate-limit what they log)
RCVBUF = 4 << 20
MAX_BACKLOG = 4096  # packets waiting for the main thread; beyond, counted in nflog_lost
_BE16 = struct.Struct("!H")

_vp = ctypes.c_void_p
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.POINTER(ctypes.c_uint8 * 4), _vp, _vp)


class NflogError(Exception):
    """The NFLOG group could not be opened; str() is one line."""


def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError:
        raise NflogError(MISSING) from None
    lib.nflog_open.restype = _vp
    lib.nflog_close.argtypes = [_vp]
    lib.nflog_bind_pf.argtypes = [_vp, ctypes.c_uint16]
    lib.nflog_bind_group.argtypes = [_vp, ctypes.c_uint16]
    lib.nflog_bind_group.restype = _vp
    lib.nflog_unbind_group.argtypes = [_vp]
    lib.nflog_set_mode.argtypes = [_vp, ctypes.c_uint8, ctypes.c_uint]
    lib.nflog_set_qthresh.argtypes = [_vp, ctypes.c_uint32]
    lib.nflog_set_timeout.argtypes = [_vp, ctypes.c_uint32]
    lib.nflog_callback_register.argtypes = [_vp, _CALLBACK, _vp]
    lib.nflog_fd.argtypes = [_vp]
    lib.nflog_handle_packet.argtypes = [_vp, _vp, ctypes.c_int]
    lib.nflog_get_payload.argtypes = [_vp, ctypes.POINTER(_vp)]
    lib.nflog_get_msg_packet_hdr.argtypes = [_vp]
    lib.nflog_get_msg_packet_hdr.restype = ctypes.POINTER(ctypes.c_uint8 * 4)
    return lib


class Nflog:
    """One NFLOG group, bound: ``on_packet(family, link protocol, bytes)`` is called (from
    :meth:`receive`, on the caller's thread) for every packet the kernel logs to it."""

    def __init__(self, group: int, on_packet) -> None:
        self.group = group
        self._lib = lib = _library()
        self._on_packet = on_packet
        self._h = lib.nflog_open()
        if not self._h:
            raise NflogError(f"cannot open NFLOG: {os.strerror(ctypes.get_errno())}")
        for pf in (socket.AF_INET, socket.AF_INET6):  # needed by kernels before 3.17, a no-op after
            lib.nflog_bind_pf(self._h, pf)
        self._g = lib.nflog_bind_group(self._h, group)
        if not self._g:
            err = ctypes.get_errno()
            self.close()
            why = "another program listens on it (ulogd?)" if err in (errno.EPERM, errno.EBUSY) else os.strerror(err)
            raise NflogError(f"cannot bind NFLOG group {group}: {why}; choose another [nft] nflog_group")
        # every packet at once (no batching), whole
        if lib.nflog_set_mode(self._g, NFULNL_COPY_PACKET, COPY_RANGE) < 0 or lib.nflog_set_qthresh(self._g, 1) < 0:
            self.close()
            raise NflogError(f"cannot configure NFLOG group {group}: {os.strerror(ctypes.get_errno())}")
        lib.nflog_set_timeout(self._g, 0)
        self._cb = _CALLBACK(self._callback)  # kept: the library holds only a pointer
        lib.nflog_callback_register(self._g, self._cb, None)
        self.sock = socket.socket(fileno=os.dup(lib.nflog_fd(self._h)))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.settimeout(0.2)
        self._buf = bytearray(1 << 18)
        self._cbuf = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)

    def _callback(self, gh, nfmsg, nfd, data) -> int:
        ptr = _vp()
        n = self._lib.nflog_get_payload(nfd, ctypes.byref(ptr))
        hdr = self._lib.nflog_get_msg_packet_hdr(nfd)
        hw = _BE16.unpack(bytes(hdr.contents[:2]))[0] if hdr else 0
        if n > 0 and ptr.value:
            self._on_packet(nfmsg.contents[0], hw, ctypes.string_at(ptr.value, n))
        return 0

    def receive(self) -> bool:
        """Wait up to 0.2 s for one batch of messages and hand out its packets. False when none
        came; OSError(ENOBUFS) when the kernel dropped messages (the socket buffer was full)."""
        try:
            n = self.sock.recv_into(self._buf)
        except TimeoutError:
            return False
        self._lib.nflog_handle_packet(self._h, ctypes.addressof(self._cbuf), n)
        return True

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
            self.sock = None
        if getattr(self, "_g", None):
            self._lib.nflog_unbind_group(self._g)
            self._g = None
        if self._h:
            self._lib.nflog_close(self._h)
            self._h = None


class EarlyPackets(Part):
    """The daemon's part: the ``nfsentry-nflog`` thread (:meth:`run`) and the main thread's
    :meth:`drain`."""

    def __init__(self, daemon: Any) -> None:
        super().__init__(daemon, daemon.counters.nflog)
        self.backlog: collections.deque = collections.deque()
        self.nflog: Nflog | None = None

    def open(self, group: int) -> None:
        self.nflog = Nflog(group, self._on_packet)

    def _on_packet(self, family: int, hw: int, raw: bytes) -> None:
        """The NFLOG thread: to the main thread."""
        self.counts["nflog_packets"] += 1
        if len(self.backlog) >= MAX_BACKLOG:
            self.counts["nflog_lost"] += 1
            return
        self.backlog.append((family, hw, raw, time.time()))
        self.d.verdicts.pending = True

    def run(self) -> None:
        """The NFLOG thread's loop (returns every 0.2 s when idle to check for a stop)."""
        nflog = self.nflog
        while not self.d.stop_flag and nflog is not None and nflog.sock is not None:
            try:
                nflog.receive()
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped messages: a flood outran us
                    self.counts["nflog_lost"] += 1
                    continue
                if self.d.stop_flag:
                    return
                self.internal_error("nflog recv", e)
                time.sleep(0.01)
            except Exception as e:  # a callback error: keep receiving
                self.internal_error("nflog packet", e)

    def drain(self) -> None:
        """Main thread (Daemon.service): every packet waiting, through the engine; reactions are
        reported and blocked like the scan queue's (Verdicts.logged)."""
        backlog, verdicts = self.backlog, self.d.verdicts
        engine = self.d.engine
        while backlog:
            family, hw, raw, ts = backlog.popleft()
            try:
                pkt = decode_ipv4(raw) if family == NFPROTO_NETDEV and hw == ETH_P_IP else decode(raw)
                d = engine.process(pkt, ts)
                if d.action == Action.BLOCK or d.action == Action.ALERT:
                    verdicts.logged(d)
            except Exception as e:
                verdicts.internal_error("nflog packet", e)

    def close(self) -> None:
        if self.nflog is not None:
            self.nflog.close()

    def status(self) -> dict[str, Any]:
        return {"nflog_group": self.nflog.group if self.nflog else None, "backlog": len(self.backlog)}
