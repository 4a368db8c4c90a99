"""Shared pytest fixtures: the namespace lab and skip rules for tests that need root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab, lab_unavailable_reason, sweep_stale  # noqa: E402

_reason: str | None = None
_checked = False


def _unavailable() -> str | None:
    global _reason, _checked
    if not _checked:
        _reason = lab_unavailable_reason()
        _checked = True
        if _reason is None:
            sweep_stale()
    return _reason


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "e2e" in item.keywords:
            reason = _unavailable()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"namespace lab unavailable: {reason}"))


@pytest.fixture
def lab():
    """A fresh standard lab (victim, attacker, legit, ignored on one bridge), torn down afterwards."""
    reason = _unavailable()
    if reason:
        pytest.skip(f"namespace lab unavailable: {reason}")
    lab = Lab.standard()
    try:
        yield lab
    finally:
        lab.close()
