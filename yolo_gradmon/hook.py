"""The monitor's hold on Ultralytics' trainer: wrapping the trainer instance's ``optimizer_step`` (what it reads from
a trainer is in :mod:`yolo_gradmon.trainer`).

Ultralytics declares ``optimizer_step`` / ``on_before_zero_grad`` callback events but never fires them, so the
monitor wraps the trainer *instance's* ``optimizer_step`` method from ``on_train_start``. Inside the wrapper the
gradients are exactly what the optimizer receives: accumulated over ``accumulate`` micro-batches, AMP-scaled
(divided out on the device by the capture) and not yet clipped (``clip_grad_norm_(max_norm=10)`` runs inside the
original ``optimizer_step``).

:class:`StepHook` places the wrapper, places it again when a callback replaced ``trainer.optimizer_step`` by a
function that no longer reaches it (a user wrapper around ours is fine: we stay innermost), and removes it at the end.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from .config import PREFIX


class HookError(RuntimeError):
    """The monitor cannot place its hook in this Ultralytics version's trainer."""


class StepHook:
    """Wraps ``trainer.optimizer_step`` so that each optimizer step runs inside ``on_step(run)``.

    ``run()`` calls the trainer's original step; the hook guarantees it runs exactly once per optimizer step whatever
    ``on_step`` does: an exception of the monitor's own goes to ``on_error`` and the step still runs, an exception of
    the trainer's step is never swallowed. A step reached again from inside ``on_step`` (our wrapper wrapped again by
    a callback that calls it) runs plainly.

    Args:
        trainer: an Ultralytics trainer.
        on_step: called with ``run`` for each optimizer step while ``active()`` is true.
        on_error: called with an exception ``on_step`` raised (the trainer's step then runs unmonitored).
        active: whether to measure at all (else the original step runs plainly).
        owner: the object the wrapper is marked with (a second monitor recognises a watched trainer by it).
    """

    def __init__(self, trainer, on_step: Callable[[Callable[[], None]], None], on_error: Callable[[Exception], None],
                 active: Callable[[], bool], owner: object):
        self.trainer = trainer
        self.on_step, self.on_error, self.active = on_step, on_error, active
        self.owner = owner
        self._fn = None
        self._in_step = False
        self._wrap()

    def _wrap(self) -> None:
        original = self.trainer.optimizer_step

        def optimizer_step(*args, **kwargs):
            return self._step(original, args, kwargs)

        optimizer_step._gradmon = self.owner
        optimizer_step._gradmon_original = original
        self.trainer.optimizer_step = optimizer_step
        self._fn = optimizer_step

    def _step(self, original, args, kwargs):
        if self._in_step or not self.active():
            return original(*args, **kwargs)  # nested (our wrapper wrapped again): measured once, in the outer call
        state = {"ran": False, "failed": False, "result": None}

        def run() -> None:
            state["ran"] = True
            try:
                state["result"] = original(*args, **kwargs)
            except BaseException:
                state["failed"] = True  # the trainer's own error: never swallowed
                raise

        self._in_step = True
        try:
            self.on_step(run)
        except Exception as e:  # noqa: BLE001 - the monitor failing never stops training
            if state["failed"]:
                raise
            self.on_error(e)
            if not state["ran"]:
                run()
        finally:
            self._in_step = False
        return state["result"]

    def ensure(self) -> None:
        """Hook again if something replaced ``trainer.optimizer_step`` by a function that no longer calls ours."""
        fn = self.trainer.__dict__.get("optimizer_step")
        if fn is not None and fn is self._fn:
            return
        if fn is not None and _reaches(fn, self.owner):
            self._fn = fn  # a user wrapper around ours: we still see every step, innermost
            return
        self._wrap()

    def remove(self) -> None:
        fn = self.trainer.__dict__.get("optimizer_step")
        if fn is not None and getattr(fn, "_gradmon", None) is self.owner:
            del self.trainer.optimizer_step


def check_trainer(trainer) -> None:
    """Fail loudly at train start if this trainer's internals no longer match what the hook needs."""
    missing = [a for a in ("optimizer_step", "optimizer", "model", "save_dir") if not hasattr(trainer, a)]
    if missing or not callable(getattr(trainer, "optimizer_step", None)):
        raise HookError(
            f"{PREFIX}cannot hook this Ultralytics trainer ({type(trainer).__name__}): missing {missing or ['optimizer_step()']}."
        )
    try:
        src = inspect.getsource(type(trainer)._do_train)
    except (OSError, TypeError, AttributeError):
        return  # source unavailable (frozen app): rely on the first-epoch check
    if "self.optimizer_step(" not in src:
        raise HookError(
            f"{PREFIX}{type(trainer).__name__}._do_train() does not call self.optimizer_step(); the gradient "
            "monitor cannot see optimizer steps in this Ultralytics version. Please report it with your version."
        )


def check_steps_reached(trainer, steps: int, batches: int) -> None:
    """At the end of the first epoch: enough batches ran for an optimizer step, yet none reached the wrapper."""
    if steps == 0 and batches >= max(1, int(getattr(trainer, "accumulate", 1) or 1)):
        raise HookError(
            f"{PREFIX}no optimizer step reached the monitor in epoch {trainer.epoch + 1} although {batches} batches "
            "ran: this Ultralytics version no longer calls trainer.optimizer_step(). Please report it with your "
            "ultralytics version."
        )


def run_first(trainer, event: str, fn: Callable) -> Callable[[], None]:
    """Place ``fn`` before every other callback of ``event`` on this trainer (Ultralytics runs an event's callbacks in
    list order); returns the function that takes it off again."""
    callbacks = getattr(trainer, "callbacks", None)
    if not isinstance(callbacks, dict):
        return lambda: None
    fns = callbacks.setdefault(event, [])
    fns.insert(0, fn)

    def remove() -> None:
        try:
            fns.remove(fn)
        except ValueError:
            pass

    return remove


def dedupe_callbacks(trainer, monitor) -> None:
    """Keep one registration of each of ``monitor``'s callbacks (``add_callback`` called twice by hand)."""
    from ultralytics.utils import LOGGER

    dropped = 0
    for fns in (getattr(trainer, "callbacks", None) or {}).values():
        seen, keep = set(), []
        for fn in fns:
            if getattr(fn, "__self__", None) is monitor:
                if fn.__func__ in seen:
                    dropped += 1
                    continue
                seen.add(fn.__func__)
            keep.append(fn)
        if len(keep) != len(fns):
            fns[:] = keep  # in place: also skips the repeats of the event now running
    if dropped:
        LOGGER.warning(f"{PREFIX}this GradientMonitor's callbacks were registered more than once; ignoring the repeats.")


def _reaches(fn, owner, depth: int = 0) -> bool:
    """Whether ``fn`` (what replaced ``trainer.optimizer_step``) still calls the wrapper marked with ``owner``,
    looking through bound methods, ``functools.wraps``/``partial`` and closure cells, which is how wrappers hold what
    they wrap."""
    try:
        if getattr(fn, "_gradmon", None) is owner:
            return True
        if depth >= 6:
            return False
        inner = [getattr(fn, "__wrapped__", None), getattr(fn, "__func__", None)]
        if isinstance(fn, functools.partial):
            inner += [fn.func, *fn.args, *fn.keywords.values()]
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                inner.append(cell.cell_contents)
            except ValueError:  # empty cell
                pass
    except Exception:  # noqa: BLE001 - an exotic callable: treat as not reaching us (we hook again)
        return False
    return any(callable(f) and _reaches(f, owner, depth + 1) for f in inner if f is not None)
