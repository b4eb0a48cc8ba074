"""The monitor's host work off the training thread: one background thread that turns each logged step's synced values
into a record, judges it and hands it to the sinks, in order.

The training thread pays only the device statistics and the logged step's one host sync; it hands the synced values
here (:meth:`HostWorker.put`) and goes on. At most one logged step is in flight: ``put`` first waits until the worker
has finished the previous one (normally long done: the host work of a logged step takes about 2 ms, a training step
tens of milliseconds or more), so

- memory and latency are bounded: a flag reaches the console before the training thread hands over the next logged
  step, within one logged step of the record that raised it;
- a SIGKILL loses at most two records: the one the worker holds and the last logged step, whose update ratio is still
  on the device (docs/faults.md);
- a stuck sink cannot hang training: after ``stall_seconds`` the monitor is switched off with one message.

An exception in the host work is raised on the training thread at the next ``put`` or ``drain``, where the monitor
switches itself off (a failing *sink* is handled inside the work, by :class:`~yolo_gradmon.show.sink.GuardedSink`).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

STALL_SECONDS = 120.0
"""How long the training thread waits for the previous logged step's host work before giving up on the monitor."""


class HostWorkError(RuntimeError):
    """The host work of a logged step raised (its exception is ``__cause__``) or did not finish in time."""


class HostWorker:
    """Runs ``handle(item)`` for each item on one daemon thread, one item at a time, in the order given.

    Args:
        handle: the host work of one item (called on the worker thread).
        name: the thread's name (seen in ``py-spy`` / ``faulthandler`` dumps).
        stall_seconds: the longest wait for the previous item in :meth:`put` and :meth:`drain` (default
            :data:`STALL_SECONDS`).
    """

    def __init__(self, handle: Callable[[Any], None], name: str = "gradmon-host", stall_seconds: float | None = None):
        self._handle = handle
        self.stall_seconds = STALL_SECONDS if stall_seconds is None else stall_seconds
        self._cv = threading.Condition()
        self._item: Any = None
        self._has_item = False
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self.items_done = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the training thread's side
    def put(self, item: Any) -> None:
        """Hand over one item; waits until the previous one is finished. Raises :class:`HostWorkError` if the
        previous item failed or did not finish within ``stall_seconds``."""
        with self._cv:
            self._wait_idle()
            self._item, self._has_item, self._busy = item, True, True
            self._cv.notify_all()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every item handed over is finished (epoch end, train end). Raises like :meth:`put`."""
        with self._cv:
            self._wait_idle(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the item in flight and stop the thread; returns whether it stopped within ``timeout`` (default
        ``stall_seconds``). Never raises."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(self.stall_seconds if timeout is None else timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ internals
    def _wait_idle(self, timeout: float | None = None) -> None:
        limit = self.stall_seconds if timeout is None else timeout
        if not self._cv.wait_for(lambda: not self._busy, timeout=limit):
            raise HostWorkError(f"the host work of a logged step did not finish within {limit:.0f} s (a sink is stuck?)")
        if self._error is not None:
            err, self._error = self._error, None
            raise HostWorkError(f"{type(err).__name__}: {err}") from err
        if self._closed:
            raise HostWorkError("the host worker is closed")

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._has_item or self._closed)
                if not self._has_item:
                    return  # closed, nothing left
                item, self._item, self._has_item = self._item, None, False
            try:
                self._handle(item)
            except BaseException as e:  # noqa: BLE001 - reported on the training thread at the next put/drain
                with self._cv:
                    self._error = e
            finally:
                with self._cv:
                    self._busy = False
                    self.items_done += 1
                    self._cv.notify_all()
