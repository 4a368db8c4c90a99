"""Helpers shared by the tests/e2e/test_nft_*.py modules (no tests in here).

Everything that touches nftables runs inside a lab namespace: ``nft_py(host, code)`` runs a Python
snippet there with ``n = Nft()`` ready and prints the snippet's ``out`` as JSON.
"""

from __future__ import annotations

import json
import os
import textwrap

from lab import PYTHON, REPO

EXPECT_BACKEND = os.environ.get("NFSENTRY_EXPECT_BACKEND")  # "native" in the qemu stock-kernel tier

PRELUDE = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from nfsentry.nft import *
n = Nft()
out = None
"""


def nft_py(host, code: str, timeout: float = 60):
    """Run ``code`` in ``host``'s namespace (``n`` is an Nft); returns the value it left in ``out``."""
    res = host.run([PYTHON, "-c", PRELUDE + textwrap.dedent(code) + "\nprint('@@' + json.dumps(out))"], check=False, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"nft snippet failed in {host.role} (rc={res.returncode}):\n{res.stdout}\n{res.stderr}")
    line = next(ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("@@"))
    return json.loads(line[2:])


def expected_backend(probed: str) -> str:
    """What the probe must find: the tier's expectation when set, else what this kernel has."""
    return EXPECT_BACKEND or probed


CONNECT_MANY = textwrap.dedent("""
    import json, socket, sys, threading
    targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
    res = {}
    def one(addr, port):
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(timeout)
        try:
            s.connect((addr, port)); r = "connected"
        except ConnectionRefusedError:
            r = "refused"
        except (socket.timeout, TimeoutError):
            r = "timeout"
        except OSError as e:
            r = "error %s" % e.errno
        finally:
            s.close()
        res["%s:%d" % (addr, port)] = r
    ts = [threading.Thread(target=one, args=(a, p)) for a, p in targets]
    [t.start() for t in ts]; [t.join() for t in ts]
    print(json.dumps(res))
""")


def connect_many(host, targets: list[tuple[str, int]], timeout: float = 1.5) -> dict[str, str]:
    """TCP connects from ``host`` to every (addr, port) at once: {"addr:port": connected|refused|timeout}."""
    res = host.run([PYTHON, "-c", CONNECT_MANY, json.dumps(targets), str(timeout)], timeout=timeout + 30)
    return json.loads(res.stdout.strip().splitlines()[-1])


UDP_MANY = textwrap.dedent("""
    import json, socket, sys
    targets = json.loads(sys.argv[1])
    for addr, port in targets:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(b"probe", (addr, port)); s.close()
""")


def udp_send(host, targets: list[tuple[str, int]]) -> None:
    """One UDP datagram from ``host`` to every (addr, port)."""
    host.run([PYTHON, "-c", UDP_MANY, json.dumps(targets)])


# A NetfilterQueue listener bound to one queue: prints one JSON line per packet and accepts it.
LISTENER = textwrap.dedent("""
    import json, select, socket, struct, sys
    from netfilterqueue import NetfilterQueue

    def cb(pkt):
        b = pkt.get_payload()
        if b[0] >> 4 == 4:
            fam, ihl, proto, total = 4, (b[0] & 15) * 4, b[9], struct.unpack("!H", b[2:4])[0]
            src = socket.inet_ntop(socket.AF_INET, b[12:16]); dst = socket.inet_ntop(socket.AF_INET, b[16:20])
            l4len = total - ihl
        else:
            fam, ihl, proto = 6, 40, b[6]
            src = socket.inet_ntop(socket.AF_INET6, b[8:24]); dst = socket.inet_ntop(socket.AF_INET6, b[24:40])
            l4len = struct.unpack("!H", b[4:6])[0]
        sport, dport = struct.unpack("!HH", b[ihl:ihl + 4])
        payload = l4len - ((b[ihl + 12] >> 4) * 4 if proto == 6 else 8)
        print(json.dumps(dict(family=fam, src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                              flags=b[ihl + 13] if proto == 6 else 0, payload=payload, mark=pkt.get_mark())), flush=True)
        pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(int(sys.argv[1]), cb)
    print("READY", flush=True)
    fd = nfq.get_fd()
    while True:   # EOF on stdin: exit
        ready = select.select([fd, sys.stdin], [], [], 60)[0]
        if not ready or sys.stdin in ready and not sys.stdin.readline():
            break
        if fd in ready:
            nfq.run(block=False)
    print("DONE", flush=True)
""")


def start_listener(host, queue: int):
    import subprocess

    p = host.popen([PYTHON, "-u", "-c", LISTENER, str(queue)], stdin=subprocess.PIPE)
    line = p.stdout.readline()
    if "READY" not in line:
        raise AssertionError(f"queue {queue} listener did not start: {line}{p.stderr.read() if p.poll() is not None else ''}")
    return p


def stop_listener(p) -> list[dict]:
    out, err = p.communicate(timeout=30)
    assert "DONE" in out, err
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]
