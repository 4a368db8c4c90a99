"""The reconciliation rule, as pure functions (no I/O): every path that changes blocks obeys it.

THE RULE
1. The kernel's blocked sets are what is enforced; the database is the record of what nfsentry
   decided (every block made by detection, by hand, by restore or by the fleet, with its reason,
   origin and end) and has not lifted.
2. Every change goes to the kernel first and then to the database, through the ledger only.
3. A removal made through nfsentry (``unblock``, ``unblock --all``) leaves the kernel and the
   database together and is final: nothing brings it back (no restart, no restore).
4. Kernel state lost outside nfsentry (a flushed ruleset, a reboot, a table deleted by hand) is
   put back from the database with the time it has left.
5. A kernel entry the database does not know (made just before a kill -9, added by the kernel
   itself from the packet path, or by hand with nft) is adopted into the database with the time
   it has left.
6. An entry whose time is up leaves both.
7. Blocking what is already blocked never shortens it and never drops its reason: the longer
   block stays (permanent is the longest), and the caller is told.
8. A duration is never made permanent by rounding: the kernel's timeouts are whole seconds, so a
   fractional duration is rounded up (0.5 s -> 1 s); 0 alone means until unblocked.
9. A block the kernel makes itself from the packet path (``[response] kernel_block``: the rule
   that queues a first probe adds its source) is the daemon's to confirm: when its engine blocks
   the source too, the block is recorded like any detection (with the escalated time); when it
   does not (a safety valve, narrowing, an ignored source, a bad checksum), the entry is
   withdrawn from the kernel and no record of it stays. Made while no daemon reads the queue, it
   is adopted at the next start (rule 5).

So ``nfsentry blocked`` (a listing of the kernel, annotated from the database) shows exactly what
the kernel drops, and the database says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nfsentry.core.units import kernel_timeout  # rule 8 (the kernel-side block's timeout uses it too)

PERMANENT = None  # an entry's end when it has none


def ends_at(duration: float, now: float) -> float | None:
    """The end of a block of ``duration`` seconds starting ``now`` (None = permanent)."""
    t = kernel_timeout(duration)
    return None if t == 0 else now + t


def merge(current_left: float | None, new_duration: float) -> str:
    """Rule 7 for a block requested on an entry already in the kernel with ``current_left``
    seconds left (None = permanent): "keep" it, or "extend" it to the new duration."""
    new = kernel_timeout(new_duration)
    if current_left is None:
        return "keep"
    if new == 0 or new > current_left:
        return "extend"
    return "keep"


@dataclass
class RestorePlan:
    """What start-up (or recovery from a flushed ruleset) must do so kernel and database agree."""

    put_back: list[tuple[str, int]] = field(default_factory=list)  # (network, kernel timeout) rule 4
    adopt: list[tuple[str, float | None]] = field(default_factory=list)  # (network, end) rule 5
    ended: list[str] = field(default_factory=list)  # database entries whose time is up (rule 6)


def plan_restore(kernel: dict[str, float | None], db: dict[str, float | None], now: float) -> RestorePlan:
    """``kernel``: network -> seconds left (None = permanent); ``db``: network -> end (None =
    permanent). Entries removed through nfsentry are not in ``db`` (rule 3), so they never come back."""
    plan = RestorePlan()
    for net, end in db.items():
        if end is not None and end <= now:
            if net not in kernel:
                plan.ended.append(net)
            continue
        if net not in kernel:
            plan.put_back.append((net, 0 if end is None else kernel_timeout(end - now)))
    for net, left in kernel.items():
        end = db.get(net, now)
        if net not in db or (end is not None and end <= now):
            plan.adopt.append((net, None if left is None else now + left))
    return plan
