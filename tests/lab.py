"""A network-namespace lab for end-to-end tests.

Every host is its own network namespace; hosts on one segment are joined by a Linux bridge that
lives in a namespace of its own, so nothing is ever created in the machine's root namespace.
Addresses come only from 198.18.0.0/15 and 2001:db8::/32 and no host gets a default route.

Topology built by :func:`Lab.standard` (segment "lan" = 198.18.0.0/24, 2001:db8::/64)::

    victim   198.18.0.1  2001:db8::1      (where nfsentry runs)
    attacker 198.18.0.2  2001:db8::2
    legit    198.18.0.3  2001:db8::3
    ignored  198.18.0.4  2001:db8::4

``Lab.add_inside()`` adds segment "inside" (198.18.1.0/24, 2001:db8:1::/64) behind the victim, which
then routes between the two segments (gateway mode): hosts get routes for the other segment
only, never a default route.

Teardown kills every process the lab started or that still runs inside its namespaces, then
deletes the namespaces; it runs from the fixture finaliser, from ``atexit`` and on SIGTERM.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "nfslab"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("NFSENTRY_VENV", REPO / ".venv")) / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable

_live_labs: list[Lab] = []


def sh(cmd: list[str] | str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command in the current namespace, capturing text output."""
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} -> rc={res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def lab_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"needs {tool}"
    name = f"{PREFIX}probe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        return f"cannot create a network namespace: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def list_lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def sweep_stale() -> None:
    """Remove namespaces left by a lab whose process no longer exists (a crashed earlier run)."""
    for ns in list_lab_namespaces():
        # names are nfslab<pid>x<n>-<role>
        try:
            pid = int(ns[len(PREFIX) :].split("x", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _kill_ns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _kill_ns_pids(ns: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.02)


@dataclass
class Host:
    lab: Lab
    role: str
    ns: str
    ip4: str = ""
    ip6: str = ""
    ifaces: dict = field(default_factory=dict)  # segment -> (ifname, ip4, ip6)

    # -- running things -------------------------------------------------------------------
    def cmd(self, cmd: list[str] | str) -> list[str]:
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: list[str] | str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return sh(self.cmd(cmd), check=check, timeout=timeout, **kw)

    def popen(self, cmd: list[str] | str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p = subprocess.Popen(self.cmd(cmd), start_new_session=True, **kw)
        self.lab.procs.append(p)
        return p

    def python(self, code: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run([PYTHON, "-c", textwrap.dedent(code)], check=check, timeout=timeout)

    def nft(self, args: str | list[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        args = shlex.split(args) if isinstance(args, str) else args
        return self.run(["nft", *args], check=check, input=stdin)

    # -- services ------------------------------------------------------------------------------
    def tcp_service(self, port: int, family: int = 0, banner: str = "hello") -> subprocess.Popen:
        """A small TCP server (IPv4 and IPv6 unless family is 4 or 6) that sends a banner line."""
        return self._service("tcp", port, family, banner)

    def udp_service(self, port: int, family: int = 0) -> subprocess.Popen:
        """A small UDP echo server."""
        return self._service("udp", port, family, "")

    def _service(self, proto: str, port: int, family: int, banner: str) -> subprocess.Popen:
        code = textwrap.dedent(f"""
            import socket, threading, sys
            fams = {{0: [socket.AF_INET, socket.AF_INET6], 4: [socket.AF_INET], 6: [socket.AF_INET6]}}[{family}]
            socks = []
            for fam in fams:
                s = socket.socket(fam, socket.SOCK_STREAM if {proto!r} == 'tcp' else socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(('::' if fam == socket.AF_INET6 else '0.0.0.0', {port}))
                if {proto!r} == 'tcp':
                    s.listen(128)
                socks.append(s)
            def tcp(s):
                while True:
                    c, _ = s.accept()
                    try:
                        c.sendall({banner!r}.encode() + b'\\n')
                        c.settimeout(2)
                        try:
                            d = c.recv(4096)
                            if d:
                                c.sendall(d)
                        except OSError:
                            pass
                    finally:
                        c.close()
            def udp(s):
                while True:
                    d, a = s.recvfrom(65535)
                    s.sendto(d, a)
            for s in socks:
                threading.Thread(target=tcp if {proto!r} == 'tcp' else udp, args=(s,), daemon=True).start()
            print('READY', flush=True)
            threading.Event().wait()
        """)
        p = self.popen([PYTHON, "-u", "-c", code])
        line = p.stdout.readline()
        if "READY" not in line:
            raise RuntimeError(
                f"{proto} service on {self.role}:{port} did not start: {line}{p.stderr.read() if p.poll() is not None else ''}"
            )
        return p

    # -- clients ---------------------------------------------------------------------------------
    def connect(self, addr: str, port: int, timeout: float = 2.0) -> str:
        """Try a TCP connect from this host: 'connected', 'refused' or 'timeout'."""
        res = self.python(
            f"""
            import socket
            fam = socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout({timeout})
            try:
                s.connect(({addr!r}, {port})); print('connected')
            except ConnectionRefusedError:
                print('refused')
            except (socket.timeout, TimeoutError):
                print('timeout')
            except OSError as e:
                print('error', e.errno)
        """,
            timeout=timeout + 15,
        )
        return res.stdout.strip()

    def udp_query(self, addr: str, port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes | None:
        res = self.python(
            f"""
            import socket, sys
            fam = socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout({timeout})
            s.sendto({payload!r}, ({addr!r}, {port}))
            try:
                d, _ = s.recvfrom(65535); sys.stdout.write(d.hex())
            except (socket.timeout, TimeoutError, OSError):
                pass
        """,
            timeout=timeout + 15,
        )
        out = res.stdout.strip()
        return bytes.fromhex(out) if out else None

    def nmap(self, args: str | list[str], target: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run nmap from this host. Always -n (no DNS here); add -Pn yourself when discovery is not the point."""
        args = shlex.split(args) if isinstance(args, str) else list(args)
        if ":" in target and "-6" not in args:
            args.append("-6")
        return self.run(["nmap", "-n", *args, target], check=False, timeout=timeout)

    def hping3(self, args: str | list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """Run hping3 from this host; callers must bound it with -c COUNT."""
        args = shlex.split(args) if isinstance(args, str) else list(args)
        if "-c" not in args:
            raise ValueError("hping3 in tests must be bounded with -c COUNT")
        return self.run(["hping3", *args], check=False, timeout=timeout)


class Lab:
    """A set of namespaces joined by bridges. Use as a context manager or via the pytest fixture."""

    _counter = 0

    def __init__(self) -> None:
        Lab._counter += 1
        self.tag = f"{PREFIX}{os.getpid()}x{Lab._counter}"
        self.hosts: dict[str, Host] = {}
        self.segments: dict[str, tuple[str, ipaddress.IPv4Network, ipaddress.IPv6Network]] = {}
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.closed = False
        _live_labs.append(self)

    # -- construction ---------------------------------------------------------------------------
    def _add_ns(self, role: str) -> str:
        ns = f"{self.tag}-{role}"
        sh(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No DAD delay for the documentation addresses; no router solicitations leaving.
        # one program start per namespace (they are slow under qemu's TCG in the stock-kernel tier)
        sh(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_ra=0",
                "net.ipv6.conf.default.accept_ra=0",
            ],
            check=False,
        )
        return ns

    def add_segment(self, name: str, net4: str, net6: str) -> None:
        ns = self._add_ns(f"sw{name}")
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        self.segments[name] = (ns, ipaddress.ip_network(net4), ipaddress.ip_network(net6))

    def add_host(self, role: str, segment: str, hostnum: int) -> Host:
        host = self.hosts.get(role)
        if host is None:
            host = Host(self, role, self._add_ns(role))
            self.hosts[role] = host
        self.attach(host, segment, hostnum)
        return host

    def attach(self, host: Host, segment: str, hostnum: int) -> None:
        swns, net4, net6 = self.segments[segment]
        ifname = f"eth{len(host.ifaces)}"
        port = f"p{len(self.hosts)}{segment[:6]}{len(host.ifaces)}"[:15]
        ip4 = str(net4.network_address + hostnum)
        ip6 = str(net6.network_address + hostnum)
        sh(
            ["ip", "-n", swns, "-batch", "-"],
            input=f"link add {port} type veth peer name {ifname} netns {host.ns}\nlink set {port} master br0 up\n",
        )
        sh(
            ["ip", "-n", host.ns, "-batch", "-"],
            input=f"addr add {ip4}/{net4.prefixlen} dev {ifname}\n"
            f"addr add {ip6}/{net6.prefixlen} dev {ifname} nodad\nlink set {ifname} up\n",
        )
        host.ifaces[segment] = (ifname, ip4, ip6)
        if not host.ip4:
            host.ip4, host.ip6 = ip4, ip6

    @classmethod
    def standard(cls) -> Lab:
        lab = cls()
        try:
            lab.add_segment("lan", "198.18.0.0/24", "2001:db8::/64")
            for num, role in enumerate(("victim", "attacker", "legit", "ignored"), start=1):
                lab.add_host(role, "lan", num)
            lab.wait_ready()
        except BaseException:
            lab.close()
            raise
        return lab

    def add_inside(self, roles: tuple[str, ...] = ("inside",)) -> list[Host]:
        """Put a second segment behind the victim and make the victim route between them."""
        self.add_segment("inside", "198.18.1.0/24", "2001:db8:1::/64")
        victim = self.hosts["victim"]
        self.attach(victim, "inside", 1)
        victim.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        victim.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        hosts = [self.add_host(role, "inside", 10 + i) for i, role in enumerate(roles)]
        _, gw4, gw6 = victim.ifaces["inside"]
        for h in hosts:
            h.run(["ip", "route", "add", "198.18.0.0/24", "via", gw4])
            h.run(["ip", "-6", "route", "add", "2001:db8::/64", "via", gw6])
        _, lgw4, lgw6 = victim.ifaces["lan"]
        for role, h in self.hosts.items():
            if "lan" in h.ifaces and role != "victim":
                h.run(["ip", "route", "add", "198.18.1.0/24", "via", lgw4])
                h.run(["ip", "-6", "route", "add", "2001:db8:1::/64", "via", lgw6])
        self.wait_ready()
        return hosts

    def wait_ready(self, timeout: float = 60) -> None:  # returns as soon as every address answers
        """Wait until every host's IPv4 and IPv6 addresses answer from the victim (bridge learning, NDP)."""
        victim = self.hosts.get("victim")
        if victim is None:
            return
        targets = [ip for h in self.hosts.values() if h is not victim for (_, a4, a6) in h.ifaces.values() for ip in (a4, a6)]
        deadline = time.monotonic() + timeout
        for ip in targets:
            while True:
                if victim.run(["ping", "-c1", "-W1", ip], check=False).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab: {ip} unreachable from victim")
                time.sleep(0.1)

    # -- teardown -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
        for ns in reversed(self.namespaces):
            _kill_ns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self in _live_labs:
            _live_labs.remove(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]


def _close_all() -> None:
    for lab in list(_live_labs):
        lab.close()


atexit.register(_close_all)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by the teardown test
    _close_all()
    raise SystemExit(128 + signum)


try:
    signal.signal(signal.SIGTERM, _on_sigterm)
except ValueError:  # imported outside the main thread
    pass
