"""The compiled fast path takes the Python core's constants from a generated header: it must be
current (regenerate with ``python -m nfsentry.core.cdefs > nfsentry/core/_fastpath_defs.h``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nfsentry.core import cdefs, packet
from nfsentry.core.engine import LEAN_CODES, LEAN_SHIFT, Action, lean_action, lean_code, lean_proto

HEADER = Path(cdefs.__file__).with_name(cdefs.HEADER_NAME)


def test_committed_header_is_what_the_python_definitions_generate():
    assert HEADER.read_text() == cdefs.header(), (
        "stale nfsentry/core/_fastpath_defs.h: run python -m nfsentry.core.cdefs > nfsentry/core/_fastpath_defs.h"
    )


def test_the_regeneration_command_prints_the_header():
    out = subprocess.run([sys.executable, "-m", "nfsentry.core.cdefs"], capture_output=True, text=True, check=True)
    assert out.stdout == HEADER.read_text()


def test_header_carries_every_action_and_the_lean_code():
    text = HEADER.read_text()
    for a in Action:
        assert f"#define NFS_ACTION_{a.name} {int(a)}\n" in text
    assert f"#define NFS_LEAN_SHIFT {LEAN_SHIFT}\n" in text
    assert f"#define NFS_IP4_FRAG_BITS {packet.IP4_FRAG_BITS:#x}\n" in text


def test_the_c_source_uses_the_names_not_the_numbers():
    src = HEADER.with_name("_fastpath.c").read_text()
    assert '#include "_fastpath_defs.h"' in src
    for literal in ("<< 8 | proto", "0x3FFF", "0x45", "counts, 5)", "counts, 2)", "p[9]", "p[6]", "p + 12"):
        assert literal not in src, literal


def test_lean_code_round_trips():
    for a in Action:
        for proto in (0, 6, 17, 255):
            code = lean_code(a, proto)
            assert lean_action(code) is a and lean_proto(code) == proto and 0 <= code < LEAN_CODES
    assert lean_code(Action.DROP, 6) == 5 << 8 | 6
