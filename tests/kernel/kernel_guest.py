"""Host side of the stock-kernel qemu tier: build/cache the image, boot it, read the guest's result.

The guest is Debian's own kernel (the package ``linux-image-amd64`` points at) booted with
software emulation (TCG; KVM where the host has hardware virtualization, see ``accelerators``)
and a busybox initramfs (``build-image.sh``, ``init``). It sees the host's ``/`` read-only over
9p, so it runs this repository's tests with the repository's venv, nft and nmap; it writes its
result into a per-boot folder shared writable over 9p (``guest-run.sh``). Nothing here needs root except what the guest does inside itself.

Also a command line for humans::

    python tests/kernel/kernel_guest.py [-k EXPR | pytest selection ...]

boots once with the console on the terminal and exits with the guest's pytest exit code.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD = HERE / "build-image.sh"
GUEST_RUN = HERE / "guest-run.sh"

# Budgets (seconds): they only stop a hang, and the tier ends when the guest powers off, so they
# cost nothing when it passes. TCG is CPU-bound: on a busy CI machine (two other processes spinning
# on the 2 cores) the tier takes ~2x its quiet time (guest run 368 s busy vs ~150-210 s; its slowest
# test 76 s), so each budget is about 10x the quiet time. A creeping tier shows in --durations.
BUILD_TIMEOUT = float(os.environ.get("NFSENTRY_KERNEL_BUILD_TIMEOUT", 600))  # also waits for another build's lock
BOOT_TIMEOUT = float(os.environ.get("NFSENTRY_KERNEL_TIMEOUT", 1500))  # the whole qemu run
GUEST_TEST_TIMEOUT = int(os.environ.get("NFSENTRY_GUEST_TEST_TIMEOUT", 900))  # per guest test
GUEST_MEM = os.environ.get("NFSENTRY_KERNEL_MEM", "1024")
GUEST_SMP = os.environ.get("NFSENTRY_KERNEL_SMP", str(min(2, os.cpu_count() or 1)))


def native_selection() -> str:
    """``-m native`` over the end-to-end files that mark a test native: collecting all of
    tests/e2e imports every module (hypothesis among them), ~3 s here and tens of seconds under TCG."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "e2e").glob("test_*.py") if "pytest.mark.native" in p.read_text())
    return shlex.join(["-m", "native", *(files or ["tests/e2e"])])


DEFAULT_SELECTION = native_selection()
# What the guest runs (pytest arguments, relative to the repository); override for debugging.
SELECTION = os.environ.get("NFSENTRY_GUEST_PYTEST_ARGS") or DEFAULT_SELECTION


class TierError(Exception):
    """The tier could not run (build, boot, timeout); the message says what and shows the evidence."""


@dataclass
class Image:
    path: Path
    vmlinuz: Path
    initramfs: Path
    kernel_release: str
    package: str
    build_seconds: float
    build_log: str


@dataclass
class GuestCase:
    nodeid: str
    outcome: str  # passed, failed, error, skipped
    message: str = ""
    text: str = ""


@dataclass
class GuestResult:
    rc: int | None  # guest pytest exit code (None: it never wrote one)
    kernel: str
    cases: list[GuestCase] = field(default_factory=list)
    wall: float = 0.0
    timed_out: bool = False
    timeout: float = BOOT_TIMEOUT
    console: str = ""
    log: str = ""
    out: Path | None = None

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.cases)

    @property
    def summary(self) -> str:
        parts = [f"{self.count(o)} {o}" for o in ("passed", "failed", "error", "skipped", "interrupted") if self.count(o)]
        return f"{', '.join(parts) or 'no tests'} in the guest (kernel {self.kernel or '?'}, {self.wall:.1f}s boot+tests)"

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.rc == 0 and self.count("passed") > 0 and not self.count("failed") and not self.count("error")

    def explain(self) -> str:
        """Why the tier failed, with the guest's own failure text."""
        lines: list[str] = []
        if self.timed_out:
            lines.append(f"guest did not finish within {self.timeout:.0f}s: qemu killed (see what it was doing below)")
        elif self.rc is None:
            lines.append("guest never reported a pytest exit code (crash or boot failure)")
        elif self.rc == 5:
            lines.append("guest pytest selected no tests (exit 5): nothing is marked native?")
        elif self.rc in (124, 137):
            lines.append(
                f"guest pytest run exceeded its time budget ({self.timeout - 30:.0f}s; "
                "NFSENTRY_KERNEL_TIMEOUT sets the whole boot's) and was interrupted"
            )
        elif self.rc != 0:
            lines.append(f"guest pytest exited {self.rc}")
        if self.rc == 0 and self.count("passed") == 0:
            lines.append("guest pytest passed nothing (everything skipped?)")
        lines.append(self.summary)
        for c in self.cases:
            if c.outcome in ("failed", "error"):
                lines.append("")
                lines.append(f"=== guest {c.outcome.upper()}: {c.nodeid}")
                if c.message and c.message.strip() not in c.text:
                    lines.append(c.message.strip()[:2000])
                if c.text:
                    lines.append(_tail(c.text, 60, 6000))
        for c in self.cases:
            if c.outcome in ("skipped", "interrupted"):
                lines.append(f"guest {c.outcome.upper()} {c.nodeid}{': ' + c.message if c.message else ''}")
        cut_short = self.timed_out or self.rc in (None, 124, 137)
        if cut_short or not any(c.outcome in ("failed", "error") for c in self.cases):
            # No (complete) junit detail: show what the guest printed, i.e. where it stopped.
            if self.log:
                lines += ["", "=== guest pytest output (tail)", _tail(self.log, 15 if self.cases else 60, 8000)]
            # The console repeats pytest's output (tee): show only what pytest did not print.
            seen = set(self.log.splitlines())
            console = "\n".join(l for l in self.console.splitlines() if l not in seen)
            lines += ["", "=== guest console (kernel, init; tail)", _tail(console, 40, 5000)]
        if self.out:
            lines.append(f"(guest output kept in {self.out})")
        return "\n".join(lines)


def _tail(text: str, nlines: int, nchars: int) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-nlines:])
    return tail[-nchars:]


def disabled_reason() -> str | None:
    """The explicit opt-out (NFSENTRY_KERNEL_TIER=0) or being inside the guest."""
    if os.environ.get("NFSENTRY_IN_GUEST") == "1":
        return "inside the qemu guest"
    if os.environ.get("NFSENTRY_KERNEL_TIER", "1").lower() in ("0", "no", "off", "skip"):
        return "disabled by NFSENTRY_KERNEL_TIER=0"
    return None


def missing_tools() -> list[str]:
    return [t for t in ("qemu-system-x86_64", "busybox", "apt-get", "dpkg-deb") if not shutil.which(t)]


def build_image(timeout: float = BUILD_TIMEOUT) -> Image:
    """Download/build the stock-kernel image, or reuse the cached one (then about a second)."""
    start = time.monotonic()
    try:
        res = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise TierError(f"building the kernel image took more than {timeout:.0f}s\n{e.stderr or ''}") from None
    if res.returncode != 0:
        raise TierError(f"building the kernel image failed (rc={res.returncode}):\n{res.stderr}{res.stdout}")
    path = Path(res.stdout.strip().splitlines()[-1])
    img = Image(
        path=path,
        vmlinuz=path / "vmlinuz",
        initramfs=path / "initramfs.cpio.gz",
        kernel_release=(path / "kernel-release").read_text().strip(),
        package=(path / "package").read_text().strip() if (path / "package").exists() else "",
        build_seconds=time.monotonic() - start,
        build_log=res.stderr,
    )
    return img


def _die_with_parent() -> None:  # runs in the child before exec: qemu dies if pytest is killed
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def accelerators(sysfs: Path = Path("/sys/module"), kvm_dev: Path = Path("/dev/kvm")) -> list[str]:
    """qemu's -accel list, first that works wins. NFSENTRY_KERNEL_ACCEL=kvm|tcg forces one.

    KVM only on hardware virtualization (kvm_intel / kvm_amd loaded, /dev/kvm usable), then TCG
    as qemu's fallback. Not on this machine kind: its /dev/kvm is kvm_pvm (KVM without VMX/SVM),
    which runs a stock guest kernel's privileged code instruction by instruction; measured
    (issue 14): Debian's kernel did not finish decompressing in 60 s, and booted uncompressed
    (PVH) it reached 17 s of guest boot in 60 s, where TCG boots to init in ~5 s."""
    tcg = "tcg,thread=multi"
    forced = os.environ.get("NFSENTRY_KERNEL_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return ["kvm"] if forced == "kvm" else [tcg]
    hardware = any((sysfs / m).exists() for m in ("kvm_intel", "kvm_amd")) and not (sysfs / "kvm_pvm").exists()
    if hardware and os.access(kvm_dev, os.R_OK | os.W_OK):
        return ["kvm", tcg]
    return [tcg]


def qemu_argv(image: Image, out: Path, console: Path | None) -> list[str]:
    append = "console=ttyS0 quiet panic=-1 mitigations=off random.trust_cpu=on"
    accel = [a for acc in accelerators() for a in ("-accel", acc)]
    return [
        "qemu-system-x86_64",
        *accel,
        "-cpu",
        "max",
        "-M",
        "pc",
        "-smp",
        GUEST_SMP,
        "-m",
        GUEST_MEM,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}" if console else "stdio",
        "-kernel",
        str(image.vmlinuz),
        "-initrd",
        str(image.initramfs),
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={str(out).replace(',', ',,')},mount_tag=out,security_model=none,multidevs=remap",
        "-device",
        "virtio-rng-pci",
        "-nic",
        "none",
    ]


def write_job(out: Path, selection: str | None, guest_timeout: float) -> None:
    venv = Path(os.environ.get("NFSENTRY_VENV", REPO / ".venv"))
    env = {
        "NFSENTRY_REPO": str(REPO),
        "NFSENTRY_VENV": str(venv),
        "NFSENTRY_GUEST_TIMEOUT": str(int(guest_timeout)),
        "NFSENTRY_GUEST_TEST_TIMEOUT": str(GUEST_TEST_TIMEOUT),
        "NFSENTRY_GUEST_PYTEST_ARGS": selection or SELECTION,
    }
    job = ["#!/bin/bash", "# written by tests/kernel/kernel_guest.py for one boot"]
    job += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    job.append(f"exec /bin/bash {shlex.quote(str(GUEST_RUN))}")
    (out / "job.sh").write_text("\n".join(job) + "\n")
    # init covers /tmp with a tmpfs, which would hide a checkout or venv under the host's /tmp.
    keep = out / "keep-host-tmp"
    keep.unlink(missing_ok=True)
    if any(p.resolve().is_relative_to("/tmp") for p in (REPO, venv)):
        keep.touch()


def boot(image: Image, out: Path, selection: str | None = None, timeout: float = BOOT_TIMEOUT, live: bool = False) -> GuestResult:
    """Boot the guest once, run the selected tests in it, return what it reported."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "junit.xml", "pytest.log", "kernel"):
        (out / stale).unlink(missing_ok=True)
    # The guest's pytest gets the boot budget minus time for boot and power-off, so a hanging
    # test still leaves a junit report and an exit code behind.
    write_job(out, selection, max(20, timeout - 30))
    console = None if live else out / "console.log"
    argv = qemu_argv(image, out, console)
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=None if live else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )
    timed_out = False
    try:
        _, qemu_err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        _, qemu_err = proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt, pytest-timeout): never leave qemu
            _kill(proc)
    wall = time.monotonic() - start
    rc_text = _read(out / "rc").strip()
    res = GuestResult(
        rc=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        kernel=_read(out / "kernel").strip(),
        wall=wall,
        timed_out=timed_out,
        timeout=timeout,
        console=_read(console) if console else "",
        log=_read(out / "pytest.log"),
        out=out,
    )
    if qemu_err and qemu_err.strip():
        res.console += f"\n[qemu stderr, rc={proc.returncode}]\n{qemu_err}"
    res.cases = parse_junit(out / "junit.xml")
    if res.timed_out or res.rc in (None, 124, 137):
        # An interrupted run records the test it stopped in without an outcome: not a pass.
        for c in res.cases:
            if c.outcome == "passed" and f"::{c.nodeid.rsplit('::', 1)[-1]} PASSED" not in res.log:
                c.outcome = "interrupted"
    return res


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path else ""
    except OSError:
        return ""


def parse_junit(path: Path) -> list[GuestCase]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    cases = []
    for tc in root.iter("testcase"):
        cls, name = tc.get("classname", ""), tc.get("name", "")
        if not name and tc.find("failure") is None and tc.find("error") is None:
            continue  # the placeholder an interrupted run leaves for the test it stopped in
        nodeid = f"{tc.get('file') or cls.replace('.', '/') + '.py'}::{name}" if cls else name
        outcome, message, text = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message, text = el.get("message", ""), (el.text or "")
                break
        cases.append(GuestCase(nodeid, outcome, message, text))
    return cases


def main(argv: list[str]) -> int:
    reason = missing_tools()
    if reason:
        print(f"missing: {' '.join(reason)} (make deps-test)", file=sys.stderr)
        return 2
    image = build_image()
    print(f"image {image.path} ({image.package}, kernel {image.kernel_release}) in {image.build_seconds:.1f}s", file=sys.stderr)
    selection = shlex.join(argv) if argv else None
    if argv and argv[0] == "-k":
        selection = f"{SELECTION} {shlex.join(argv)}"
    out = Path(tempfile.mkdtemp(prefix="nfsentry-guest-"))
    res = boot(image, out, selection, live=True)
    print(f"\n[host] {res.summary}; rc={res.rc}; output in {out}", file=sys.stderr)
    if not res.ok:
        print(res.explain(), file=sys.stderr)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
