"""examples/try-it.sh, the README's "try it" box, end to end.

The script makes its own pair of namespaces (victim, scanner), runs the real daemon in the victim
with a temporary configuration, scans it with nmap and shows the block. These tests run it as a
user would and check what it promises: it reports the block (`nfsentry blocked`, `history`,
`status`), the scanner really is dropped, and afterwards nothing is left: no namespace, no
temporary directory, nothing in /etc/nfsentry, /var/lib/nfsentry, /var/log or /run/nfsentry, no
rule in this machine's own namespace. Every nfsentry process the script starts runs under strace,
so a write to any file outside the test's directory is seen even if it was removed again.
It also cleans up when the daemon fails and when the script is stopped by SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lab import REPO, VENV_BIN

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "examples" / "try-it.sh"
NFSENTRY = VENV_BIN / "nfsentry"
SCANNER_IP = "198.18.0.2"
WATCHED = [Path("/etc/nfsentry"), Path("/var/lib/nfsentry"), Path("/var/log/nfsentry"), Path("/run/nfsentry")]
# syscalls that create, change or remove a file (open/openat count only with a writing flag)
WRITE_CALLS = "open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,symlink,symlinkat,truncate"
WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


@pytest.fixture(autouse=True)
def _tools():
    for tool in ("nmap", "strace", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    if not NFSENTRY.exists():
        pytest.skip(f"needs {NFSENTRY} (make venv)")


def tree(path: Path) -> dict[str, tuple[int, int]] | None:
    """path -> {relative name: (size, mtime_ns)} of everything under it; None when it does not exist."""
    if not path.exists():
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    return out


def named_nfsentry_under(path: Path) -> set[str]:
    """Every file or directory under ``path`` whose name says nfsentry (e.g. /var/log/nfsentry.log)."""
    found = set()
    for root, dirs, files in os.walk(path):
        found |= {str(Path(root) / n) for n in dirs + files if "nfsentry" in n}
    return found


def machine_state() -> dict:
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, timeout=60).stdout
    return {"watched": {str(p): tree(p) for p in WATCHED}, "var_log_names": named_nfsentry_under(Path("/var/log")), "root_ruleset": ruleset}


def try_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("nfstry")]


def traced_nfsentry(tmp_path: Path) -> tuple[Path, Path]:
    """A wrapper that runs the real nfsentry under strace (file-changing syscalls, one log per run)."""
    logs = tmp_path / "strace"
    logs.mkdir()
    wrapper = tmp_path / "nfsentry-traced"
    wrapper.write_text(f'#!/bin/bash\nexec strace -f -qq -y --seccomp-bpf -e trace={WRITE_CALLS} -o "{logs}/trace.$$" "{NFSENTRY}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, logs


def file_writes(logs: Path) -> list[tuple[str, str]]:
    """(path, strace line) of every successful file-changing syscall in the strace logs."""
    found = []
    traces = list(logs.glob("trace.*"))
    assert traces, "strace wrote no log: the wrapper did not run"
    for trace in traces:
        for line in trace.read_text(errors="replace").splitlines():
            # a call interrupted by another thread's is split: its arguments come on the
            # "<unfinished ...>" line (counted as done: a failed write outside is suspect too)
            m = re.match(r"\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)", line) or re.match(r"\d+\s+(\w+)\((.*) <unfinished \.\.\.>()", line)
            if not m or (m.group(3) and int(m.group(3)) < 0):
                continue
            call, args = m.group(1), m.group(2)
            if call in ("open", "openat", "openat2") and not WRITE_FLAGS.search(args):
                continue
            # -y prints a directory fd (and AT_FDCWD) with its path, 3</its/path>: a relative
            # name is joined to it; one without is relative to the cwd the script started in
            for dirfd, name in re.findall(r'(?:(?:\d+|AT_FDCWD)<([^>]*)>,\s*)?"([^"]*)"', args):
                path = name if name.startswith("/") else f"{dirfd}/{name}" if dirfd else str(REPO / name)
                found.append((path, f"{trace.name}: {line}"))
    return found


def writes_outside(writes: list[tuple[str, str]], allowed: Path) -> list[str]:
    """The writes to a path outside ``allowed`` (bytecode caches, /dev, /proc and /sys aside)."""
    ok = (str(allowed) + "/", "/dev/", "/proc/", "/sys/")
    return [line for path, line in writes if not path.startswith(ok) and "/__pycache__/" not in path]


def run_script(tmp_path: Path, nfsentry: Path, args: list[str] | None = None, stdin: str | None = None, timeout: float = 400):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, NFSENTRY=str(nfsentry), TMPDIR=str(tmpdir))
    return subprocess.run(
        [str(SCRIPT), *(args or [])], input=stdin or "", capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def section(out: str, command: str) -> str:
    """What the script printed after `victim# nfsentry COMMAND`, up to the next prompt or heading."""
    start = out.index(f"victim# nfsentry {command}")
    rest = out[start:].split("\n", 1)[1]
    return re.split(r"\n(?:victim# |==> |try-it victim# |the daemon's log)", rest, maxsplit=1)[0]


def test_try_it_reports_the_block_and_leaves_nothing_behind(tmp_path):
    before = machine_state()
    before_ns = try_namespaces()
    wrapper, logs = traced_nfsentry(tmp_path)
    # --shell with commands on stdin: the shell's `nfsentry` is that daemon (lift the block, list)
    shell_cmds = "nfsentry unblock 198.18.0.2\nnfsentry blocked -o json\n"
    res = run_script(tmp_path, wrapper, ["--shell"], stdin=shell_cmds)
    out = res.stdout
    assert res.returncode == 0, f"rc={res.returncode}\n{out}\n{res.stderr}"

    # the scanner reached the victim before the scan and not after it
    pings = re.findall(r"1 packets transmitted, (\d) received", out)
    assert pings == ["1", "0"], out
    # `nfsentry blocked` (run by the script against its daemon) lists the scanner, a detection
    blocked = section(out, "blocked")
    assert SCANNER_IP in blocked, out
    # history: the scan detected (a SYN, nmap -sS) and the block
    history = section(out, "history")
    rows = [line for line in history.splitlines() if SCANNER_IP in line]
    assert any("detection" in r and "SYN" in r for r in rows), history
    assert any(re.search(r"\bblock\b", r) for r in rows), history
    assert "is running" in section(out, "status"), out
    # stats only when this nfsentry has the command, then it must have run
    has_stats = subprocess.run([str(NFSENTRY), "stats", "--help"], capture_output=True).returncode == 0
    assert ("victim# nfsentry stats" in out) == has_stats
    # the daemon's own log: active, and it blocked the scanner
    assert "is active" in out and re.search(rf"blocked: network={re.escape(SCANNER_IP)}", out), out
    # the --shell part: unblock worked against the same daemon, after which nothing is blocked
    assert f"try-it victim# nfsentry unblock {SCANNER_IP}\nunblocked 1: {SCANNER_IP}\n" in out, out
    assert "try-it victim# nfsentry blocked -o json\n[]\n" in out, out

    # nothing left: namespaces, temporary directory, files outside it, rules in our namespace
    m = re.search(r"deleted network namespaces (\S+) (\S+)", out)
    assert m, out
    left = try_namespaces()
    assert m.group(1) not in left and m.group(2) not in left
    assert set(left) <= set(before_ns)
    assert not Path("/run/netns", m.group(1)).exists()
    assert list((tmp_path / "tmpdir").iterdir()) == []
    after = machine_state()
    assert after["watched"] == before["watched"]
    assert after["var_log_names"] == before["var_log_names"]
    assert after["root_ruleset"] == before["root_ruleset"]
    assert "nfsentry" not in after["root_ruleset"]
    writes = file_writes(logs)
    # the audit saw the daemon's own writes (its database in the temporary directory) ...
    assert any(p.startswith(str(tmp_path / "tmpdir")) and p.endswith("/state/nfsentry.db") for p, _ in writes), writes[:20]
    # ... and none anywhere else
    assert writes_outside(writes, tmp_path) == []


def test_try_it_cleans_up_when_the_daemon_fails(tmp_path):
    failing = tmp_path / "nfsentry-failing"
    failing.write_text(
        '#!/bin/bash\n[ "$1" = run ] && { echo "nfsentry: simulated start-up failure" >&2; exit 1; }\nexec ' + f'"{NFSENTRY}" "$@"\n'
    )
    failing.chmod(0o755)
    before_ns = try_namespaces()
    res = run_script(tmp_path, failing, timeout=200)
    assert res.returncode != 0
    assert "simulated start-up failure" in res.stderr and "the daemon exited before it was active" in res.stderr, res.stderr
    assert "deleted network namespaces" in res.stdout
    assert set(try_namespaces()) <= set(before_ns)
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_try_it_cleans_up_on_sigterm(tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    before_ns = try_namespaces()
    env = dict(os.environ, NFSENTRY=str(NFSENTRY), TMPDIR=str(tmpdir))
    proc = subprocess.Popen([str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    seen = []
    try:
        deadline = time.monotonic() + 200
        assert proc.stdout is not None
        for line in proc.stdout:  # stop it once the daemon runs in its namespace
            seen.append(line)
            if "is active" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert any("is active" in line for line in seen), "".join(seen)
        assert try_namespaces() != before_ns  # it really made them
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, "".join(seen) + rest
    assert "deleted network namespaces" in rest
    assert set(try_namespaces()) <= set(before_ns)
    assert list(tmpdir.iterdir()) == []
