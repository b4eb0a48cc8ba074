"""The ``dying`` rule: a layer with a ReLU-family activation whose dead-channel fraction (``act_dead``: channels with
no gradient over a whole batch) stays at or above ``dying_dead`` for ``dying_window`` consecutive activation-health
samples (plain Python; the health samples are every ``health_every``-th logged step).

Only layers whose activations can die for good count (ReLU family: a flat half-line, see :data:`DYING_KINDS`);
SiLU's flat tail below x ~ -9 is never reached by healthy BatchNorm inputs, so SiLU layers are never judged here.
"""

from __future__ import annotations

from typing import Sequence

DYING_KINDS = frozenset({"ReLU", "ReLU6", "Hardswish"})
"""Activations with a flat half-line (zero output below a point): units that can stop passing gradient for good.
Two-tailed ones (Sigmoid, Tanh, Hardtanh...) are judged by their saturation instead."""


class DyingTracker:
    """Consecutive health samples at or above the bound, per top-level layer.

    Args:
        layer_acts: the log header's ``layer_acts`` (activation class names per layer).
        bound: ``dying_dead``; window: ``dying_window``.
    """

    def __init__(self, layer_acts: Sequence[Sequence[str]], bound: float, window: int):
        self.acts = [sorted(set(a) & DYING_KINDS) for a in layer_acts]
        self.bound, self.window = bound, window
        self.samples = 0
        self._run = [0] * len(self.acts)
        self._series: list[list[float]] = [[] for _ in self.acts]

    @property
    def judged(self) -> bool:
        """Whether any layer can die at all (else the rule has nothing to say)."""
        return any(self.acts)

    def update(self, act_dead: Sequence[float | None], step: int) -> tuple[dict[int, dict], list[int]]:
        """One health sample: ({layer: evidence} for layers meeting the rule, [layers back under the bound])."""
        self.samples += 1
        hits, ended = {}, []
        for j, kinds in enumerate(self.acts):
            v = act_dead[j] if j < len(act_dead) else None
            if not kinds or v is None:
                continue
            series = self._series[j]
            series.append(float(v))
            if v >= self.bound:
                self._run[j] += 1
            else:
                if self._run[j] >= self.window:
                    ended.append(j)
                self._run[j] = 0
            if self._run[j] >= self.window:
                run = series[-self._run[j]:]
                hits[j] = {"dead_fraction": float(v), "first_dead_fraction": run[0],
                           "trend_per_sample": (run[-1] - run[0]) / max(1, len(run) - 1),
                           "activation": "/".join(kinds), "samples_above": self._run[j], "window": self.window,
                           "threshold_dead": self.bound, "health_step": step}
        return hits, ended
