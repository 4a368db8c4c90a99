"""Helpers for the reliability tests and bench/bench_flood.py (no tests in this module).

* :func:`flood` starts a bounded spoofed-SYN sender in a lab host: raw Ethernet frames on its
  interface (AF_PACKET), IPv4 sources from 198.19.0.0/16 and IPv6 sources from distinct /64s of
  2001:db8:f000::/36 -- never the lab's own 198.18.0.0/24 and 2001:db8::/64 -- and always bounded
  by a packet count AND a time limit.
* :func:`send_frames` sends a handful of hand-made IP packets (malformed ones included) that way.
* :func:`legit_rate` runs a real TCP client loop against an open service and counts sessions.
* :func:`proc_rss_kb`, :func:`proc_fds` read /proc for the daemon's memory and descriptors.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

from lab import PYTHON, Host

FLOOD_V4_NET = "198.19.0.0/16"
FLOOD_V6_NET = "2001:db8:f000::/36"

# The sender: builds every frame from a template, patching source address and checksums.
_SENDER = r"""
import json, os, socket, struct, sys, time
a = json.loads(sys.argv[1])
ifname, dmac, count, seconds, rate = a["iface"], bytes.fromhex(a["dmac"].replace(":", "")), a["count"], a["seconds"], a["rate"]
smac = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
dst4 = socket.inet_pton(socket.AF_INET, a["dst4"]) if a.get("dst4") else None
dst6 = socket.inet_pton(socket.AF_INET6, a["dst6"]) if a.get("dst6") else None
ports = a["ports"]
v6_every = a.get("v6_every", 0)   # every Nth packet is IPv6 (0 = none)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return (~t) & 0xFFFF

def tcp_syn(src, dst, sport, dport, pseudo_proto_len):
    h = struct.pack("!HHIIBBHHH", sport, dport, 0x1000 + sport, 0, 5 << 4, 0x02, 1024, 0, 0)
    c = csum(pseudo_proto_len + h)
    return h[:16] + struct.pack("!H", c) + h[18:]

def frame4(i, dport):
    src = struct.pack("!BBH", 198, 19, i & 0xFFFF)
    tcp = tcp_syn(src, dst4, 1024 + (i % 60000), dport, src + dst4 + struct.pack("!BBH", 0, 6, 20))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst4)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dmac + smac + b"\x08\x00" + ip + tcp

def frame6(i, dport):
    src = struct.pack("!IHH", 0x20010db8, 0xF000 | ((i >> 16) & 0x0FFF), i & 0xFFFF) + b"\0" * 7 + b"\1"
    tcp = tcp_syn(src, dst6, 1024 + (i % 60000), dport, src + dst6 + struct.pack("!IxxxB", 20, 6))
    ip = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, src, dst6)
    return dmac + smac + b"\x86\xdd" + ip + tcp

import signal
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))   # p.terminate(): end early, still report
sent = 0
start = time.monotonic()
deadline = start + seconds
batch = max(1, rate // 200) if rate else 256
while sent < count and time.monotonic() < deadline and not stopped:
    t0 = time.monotonic()
    for _ in range(min(batch, count - sent)):
        dport = ports[sent % len(ports)]
        if dst6 is not None and (dst4 is None or (v6_every and sent % v6_every == 0)):
            f = frame6(sent, dport)
        else:
            f = frame4(sent, dport)
        try:
            s.send(f)
        except OSError:   # ENOBUFS under load: the frame is lost, like on a real wire
            pass
        sent += 1
    if rate:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3)}), flush=True)
"""


def mac_of(host: Host, ifname: str = "eth0") -> str:
    return host.run(["cat", f"/sys/class/net/{ifname}/address"]).stdout.strip()


def flood(
    src: Host,
    dst: Host,
    *,
    count: int,
    seconds: float,
    rate: int = 0,
    ports: list[int] | None = None,
    v4: bool = True,
    v6: bool = True,
    v6_every: int = 4,
) -> subprocess.Popen:
    """Start a bounded spoofed-SYN flood from `src` to `dst` (count AND time bounded).

    IPv4 sources 198.19.x.y (the packet number picks x.y), IPv6 sources 2001:db8:fXXX:YYYY::1
    (one /64 per packet number). ``rate`` = packets/s (0 = as fast as the sender goes). The
    process prints one JSON line {"sent": N, "seconds": S} when it ends; see :func:`flood_result`.
    ``p.terminate()`` ends it early (SIGTERM), and it still prints that line.
    """
    assert count > 0 and 0 < seconds <= 120, "floods are bounded by count and time"
    args = {
        "iface": "eth0",
        "dmac": mac_of(dst),
        "count": count,
        "seconds": seconds,
        "rate": rate,
        "ports": ports or [7, 9, 13, 19, 111, 135, 139, 445],
        "dst4": dst.ip4 if v4 else None,
        "dst6": dst.ip6 if v6 else None,
        "v6_every": v6_every if (v4 and v6) else 0,
    }
    return src.popen([PYTHON, "-c", _SENDER, json.dumps(args)])


def flood_result(p: subprocess.Popen, timeout: float = 150) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


_FRAMES = r"""
import json, socket, sys
a = json.loads(sys.argv[1])
smac = bytes.fromhex(open(f"/sys/class/net/{a['iface']}/address").read().strip().replace(":", ""))
dmac = bytes.fromhex(a["dmac"].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((a["iface"], 0))
for h in a["packets"]:
    pkt = bytes.fromhex(h)
    s.send(dmac + smac + (b"\x86\xdd" if pkt[0] >> 4 == 6 else b"\x08\x00") + pkt)
print(len(a["packets"]))
"""


def send_frames(src: Host, dst: Host, packets: list[bytes]) -> None:
    """Send raw IP packets (bytes, IPv4 or IPv6, possibly malformed) from `src` to `dst`'s MAC."""
    args = {"iface": "eth0", "dmac": mac_of(dst), "packets": [p.hex() for p in packets]}
    src.run([PYTHON, "-c", _FRAMES, json.dumps(args)], timeout=60)


_CLIENT = r"""
import json, os, socket, sys, time
a = json.loads(sys.argv[1])
fam = socket.AF_INET6 if ":" in a["addr"] else socket.AF_INET
ok = fail = 0
errors = {}
end = time.monotonic() + a["seconds"]
stop = a.get("stop")
while time.monotonic() < end and not (stop and os.path.exists(stop)):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(a["timeout"])
    try:
        s.connect((a["addr"], a["port"]))
        if s.recv(64).startswith(b"hello"):
            ok += 1
        else:
            fail += 1
    except OSError as e:
        fail += 1
        k = f"{type(e).__name__}:{e.errno}"
        errors[k] = errors.get(k, 0) + 1
    finally:
        s.close()
    if a["interval"]:
        time.sleep(a["interval"])
print(json.dumps({"ok": ok, "fail": fail, "errors": errors, "seconds": a["seconds"]}), flush=True)
"""


def legit_rate_start(
    client: Host, addr: str, port: int, seconds: float, timeout: float = 30.0, interval: float = 0.0, stop: str | None = None
) -> subprocess.Popen:
    """Start the client loop; ``interval`` paces it (a long loop at full speed would run out of
    ephemeral ports: every session leaves a TIME_WAIT socket for a minute). ``timeout`` per session:
    long enough for a SYN lost under load to be retransmitted (1 s, then 2 s) -- a failed session
    is one that does not happen, not a slow one. It stops after ``seconds``, or earlier once the
    file ``stop`` exists."""
    args = {"addr": addr, "port": port, "seconds": seconds, "timeout": timeout, "interval": interval, "stop": stop}
    return client.popen([PYTHON, "-c", _CLIENT, json.dumps(args)])


def legit_rate_result(p: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    r["per_s"] = r["ok"] / r["seconds"]
    return r


def legit_rate(client: Host, addr: str, port: int, seconds: float) -> dict:
    """A real TCP client: connect, read the banner, close, as often as it can for `seconds`."""
    return legit_rate_result(legit_rate_start(client, addr, port, seconds))


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def timed_status(d) -> tuple[float, dict]:
    """`nfsentry status --json` through the CLI: (round-trip seconds, reply)."""
    t0 = time.monotonic()
    st = d.status()
    return time.monotonic() - t0, st


def wait_for(pred, timeout: float = 10, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dedent(s: str) -> str:
    return textwrap.dedent(s)
