"""Appending to the files sinks write (JSON lines, PortSentry history/blocked files, hosts.deny):
one ``write`` of a whole line with O_APPEND, so concurrent writers never interleave inside a line.
``append`` opens the file for one line (hosts.deny); the alerter keeps its files open
(``open_append`` and ``write``) until a reload opens them again."""

from __future__ import annotations

import os


def append(path: str, text: str, mode: int = 0o640) -> None:
    """Append ``text`` to ``path`` (created with ``mode`` when missing). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def open_append(path: str, mode: int = 0o640) -> int:
    """A descriptor appending to ``path`` (created with ``mode`` when missing). Raises OSError."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)


def write(fd: int, text: str) -> None:
    """One line (or several) in one write; a short write (a full disk) raises OSError."""
    data = text.encode()
    n = os.write(fd, data)
    if n != len(data):
        raise OSError(28, f"short write ({n} of {len(data)} bytes)")
