"""Appending to the files sinks write (JSON lines, PortSentry history/blocked files, hosts.deny):
one ``write`` of a whole line with O_APPEND, so concurrent writers never interleave inside a line."""

from __future__ import annotations

import os


def append(path: str, text: str, mode: int = 0o640) -> None:
    """Append ``text`` to ``path`` (created with ``mode`` when missing). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
