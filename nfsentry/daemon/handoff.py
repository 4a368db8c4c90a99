"""Work handed to the thread that owns some state, and waited for.

The control thread hands requests to the main thread (``Commands``), and the control and main
threads hand jobs to the fleet thread (``Fleet.call``). Both hand over the same way: a queue of
(item, box, done) that the owning thread drains when it wakes, filling the box and setting
done; the caller waits with a deadline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class Handoff:
    def __init__(self) -> None:
        self.pending: queue.Queue = queue.Queue()

    def submit(self, item: Any, wake: Callable[[], None], timeout: float | None) -> dict[str, Any] | None:
        """Queue ``item``, wake its owner and wait up to ``timeout`` s (None: do not wait). The
        box the owner filled ({"result": ...} or {"error": exception}), or None when it did not
        answer in time (or no wait was asked)."""
        box: dict[str, Any] = {}
        done = threading.Event()
        self.pending.put((item, box, done))
        wake()
        if timeout is None or not done.wait(timeout):
            return None
        return box

    def serve(self, handle: Callable[[Any], Any]) -> None:
        """The owning thread: run ``handle`` on every item waiting, answering each."""
        while True:
            try:
                item, box, done = self.pending.get_nowait()
            except queue.Empty:
                return
            try:
                box["result"] = handle(item)
            except Exception as e:
                box["error"] = e
            done.set()
