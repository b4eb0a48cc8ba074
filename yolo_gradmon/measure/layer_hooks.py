"""Per-layer forward hooks that come and go with the schedule: one forward hook on every top-level layer and a
forward pre-hook on layer 0 that marks the start of a pass, registered while armed and removed when disarmed (so an
unlogged step runs with no hook of ours at all). :class:`~.flow.FlowHooks` and :class:`~.finite.FiniteWatch` build on it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn


class ArmedLayerHooks:
    """Registers ``forward_hook(i)`` on each of ``layers`` and ``start_pass`` on the first, while armed.

    Subclasses provide ``_forward_hook(i)`` (the hook of layer ``i``), ``_start_pass(module, inputs)`` and
    ``_on_disarm()`` (called before the hooks come off: fold or finalize what the armed passes measured)."""

    layers: Sequence[nn.Module]

    def __init__(self):
        self.armed = False  # the next passes are measured
        self._handles: list = []

    def arm(self, on: bool, keep: bool = False) -> None:
        """Hooks on (the next forward/backward passes are measured) or off: no hook at all, or with ``keep`` the hooks
        stay registered but idle (``armed`` is False; a subclass's ``_start_pass`` checks it). Re-registering a hook
        per layer costs more than calling an idle one on a pass of a logged step that does not measure this signal;
        unlogged steps run with no hook."""
        if on == self.armed and (on or keep or not self._handles):
            return
        if on:
            if not self._handles:
                self._handles = [m.register_forward_hook(self._forward_hook(i)) for i, m in enumerate(self.layers)]
                self._handles.append(self.layers[0].register_forward_pre_hook(self._start_pass))
        else:
            if self.armed:
                self._on_disarm()
            if not keep:
                for h in self._handles:
                    h.remove()
                self._handles = []
        self.armed = on

    def remove(self) -> None:
        self.arm(False)

    def _forward_hook(self, i: int) -> Callable:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _start_pass(self, module, inputs) -> None:  # pragma: no cover
        raise NotImplementedError

    def _on_disarm(self) -> None:  # pragma: no cover
        raise NotImplementedError
