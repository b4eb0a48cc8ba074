"""The host worker: order, at most one logged step in flight, errors and stalls reported on the training thread."""

from __future__ import annotations

import threading
import time

import pytest

from yolo_gradmon.host_worker import HostWorker, HostWorkError


def test_items_run_in_order_on_another_thread():
    seen, threads = [], set()

    def handle(item):
        seen.append(item)
        threads.add(threading.get_ident())

    w = HostWorker(handle)
    for i in range(50):
        w.put(i)
    w.drain()
    assert seen == list(range(50))
    assert threads and threading.get_ident() not in threads
    assert w.close() and w.items_done == 50


def test_put_waits_for_the_previous_item_at_most_one_in_flight():
    inside, release = threading.Event(), threading.Event()
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def handle(item):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        inside.set()
        release.wait(5)
        with lock:
            in_flight[0] -= 1

    w = HostWorker(handle)
    w.put("a")
    assert inside.wait(5)
    t0 = time.perf_counter()
    threading.Timer(0.3, release.set).start()
    w.put("b")  # blocks until "a" is done
    waited = time.perf_counter() - t0
    w.drain()
    assert waited >= 0.25 and most[0] == 1 and w.items_done == 2
    w.close()


def test_an_error_is_raised_on_the_training_thread_at_the_next_put_or_drain():
    def handle(item):
        if item == "bad":
            raise ValueError("broken record")

    w = HostWorker(handle)
    w.put("bad")
    with pytest.raises(HostWorkError, match="ValueError: broken record") as info:
        w.drain()
    assert isinstance(info.value.__cause__, ValueError)
    w.put("good")  # reported once: the worker goes on
    w.drain()
    w.put("bad")
    with pytest.raises(HostWorkError):
        w.put("next")
    w.close()


def test_a_stuck_item_is_reported_after_the_stall_limit_and_close_never_hangs():
    release = threading.Event()
    w = HostWorker(lambda item: release.wait(10), stall_seconds=0.2)
    w.put(1)
    with pytest.raises(HostWorkError, match="did not finish within"):
        w.put(2)
    assert not w.close(timeout=0.1)  # still stuck: close returns instead of hanging
    release.set()
    assert w.close(timeout=5)


def test_close_finishes_the_item_in_flight():
    seen = []
    w = HostWorker(lambda item: (time.sleep(0.2), seen.append(item)))
    w.put("last")
    assert w.close() and seen == ["last"]
