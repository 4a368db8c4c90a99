"""daemon.handoff: how the control thread hands requests to the main thread and jobs reach the
fleet thread. The owner answers each item once; a failure comes back as the error; no answer
within the deadline is None, not a hang."""

from __future__ import annotations

import threading

from nfsentry.daemon.handoff import Handoff


def test_the_owner_answers_each_item_and_errors_come_back():
    h = Handoff()
    woken = threading.Event()
    results = {}

    def caller(n):
        results[n] = h.submit(n, woken.set, 10)

    threads = [threading.Thread(target=caller, args=(n,)) for n in (1, 2, 0)]
    for t in threads:
        t.start()
    served = 0
    while any(t.is_alive() for t in threads):
        woken.wait(1)
        woken.clear()
        h.serve(lambda n: 10 // n)  # 0 raises ZeroDivisionError in the owner
        served += 1
    assert results[1] == {"result": 10} and results[2] == {"result": 5}
    assert isinstance(results[0]["error"], ZeroDivisionError)
    h.serve(lambda n: 1 / 0)  # nothing left: nothing runs again
    assert served >= 1


def test_no_answer_in_time_is_none_and_fire_and_forget_does_not_wait():
    h = Handoff()
    assert h.submit("x", lambda: None, 0.05) is None  # nobody serves
    ran = []
    assert h.submit("y", lambda: None, None) is None
    h.serve(ran.append)
    assert ran == ["x", "y"]
