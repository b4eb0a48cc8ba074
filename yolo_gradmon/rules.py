"""Vanishing / exploding / dead / non-finite gradient detection: pure functions of the logged history.

:class:`RuleEngine` consumes one logged step at a time (so a training run pays O(modules) per step) and
:func:`evaluate` replays a whole history through it, so the flags in ``summary.json``, the console and
W&B are the same whether computed live or rebuilt from the log.

Windows are counted in *logged* steps, so ``log_every`` changes wall time, not the logic.

- ``nonfinite``: any NaN/Inf gradient value; flagged on the step it appears.
- ``dead``: gradient exactly zero for ``dead_window`` consecutive logged steps.
- ``vanishing``: grad/weight ratio below ``vanish_grad_to_weight`` (or update/weight below
  ``vanish_update_to_weight``) for ``vanish_window`` consecutive logged steps; clears after it stays above
  for as many steps (hysteresis; the flag records first and last step).
- ``exploding``: grad norm above ``explode_factor`` x its running median for ``explode_window`` consecutive
  logged steps, after ``min_steps`` steps of history.

Inside Ultralytics' warm-up the learning rate ramps up from 0, so update/weight ratios there are not
evidence of vanishing when ``warmup_skip`` is on (grad/weight ratios still are: they do not depend on lr).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

from .config import GradmonConfig

KINDS = ("nonfinite", "exploding", "vanishing", "dead")


@dataclasses.dataclass
class Flag:
    """One detected condition of one module, with its evidence."""

    kind: str
    module: str
    first_step: int
    last_step: int
    evidence: dict
    active: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        ev = ", ".join(f"{k}={_fmt(v)}" for k, v in self.evidence.items())
        return f"{self.kind} gradients in {self.module} (steps {self.first_step}-{self.last_step}): {ev}"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass
class StepView:
    """The per-step inputs the rules need (a subset of a log ``step`` line)."""

    step: int
    has_grad: Sequence[bool]
    grad_norm: Sequence[float | None]
    grad_to_weight: Sequence[float | None]
    update_to_weight: Sequence[float | None]
    nonfinite: Sequence[int]
    warmup: bool = False

    @classmethod
    def from_record(cls, rec: dict) -> "StepView":
        return cls(
            step=int(rec["step"]),
            has_grad=rec.get("has_grad") or [True] * len(rec["grad_norm"]),
            grad_norm=rec["grad_norm"],
            grad_to_weight=rec["grad_to_weight"],
            update_to_weight=rec["update_to_weight"],
            nonfinite=rec["nonfinite"],
            warmup=bool(rec.get("warmup")),
        )


def _f(x) -> float:
    return float("nan") if x is None else float(x)


class RuleEngine:
    """Incremental detector over logged steps for a fixed module list."""

    def __init__(self, modules: Sequence[str], trainable: Sequence[bool], cfg: GradmonConfig):
        self.modules = list(modules)
        self.trainable = list(trainable)
        self.cfg = cfg
        n = len(self.modules)
        self._low = np.zeros(n, dtype=np.int64)  # consecutive low-signal steps
        self._ok = np.zeros(n, dtype=np.int64)  # consecutive healthy steps while flagged
        self._zero = np.zeros(n, dtype=np.int64)
        self._high = np.zeros(n, dtype=np.int64)
        self._norms: list[list[float]] = [[] for _ in range(n)]
        self.flags: list[Flag] = []
        self._open: dict[tuple[str, int], Flag] = {}
        self.steps_seen = 0

    def update(self, view: StepView) -> list[Flag]:
        """Consume one logged step; return the flags raised by it (new flags only)."""
        cfg = self.cfg
        self.steps_seen += 1
        new: list[Flag] = []
        for i, name in enumerate(self.modules):
            if not self.trainable[i] or not view.has_grad[i]:
                continue
            g = _f(view.grad_norm[i])
            r = _f(view.grad_to_weight[i])
            u = _f(view.update_to_weight[i])
            nf = int(view.nonfinite[i] or 0)
            if nf > 0 or not math.isfinite(g):
                new += self._raise("nonfinite", i, view.step, {"nonfinite_values": nf, "grad_norm": g})
                continue
            # dead
            self._zero[i] = self._zero[i] + 1 if g == 0.0 else 0
            if self._zero[i] >= cfg.dead_window:
                new += self._raise("dead", i, view.step, {"zero_steps": int(self._zero[i]), "window": cfg.dead_window})
            # vanishing (hysteresis)
            if view.warmup and cfg.warmup_skip:
                u = float("nan")  # warm-up ramps lr from 0: tiny updates there say nothing about gradients
            low = g > 0.0 and (
                (math.isfinite(r) and r < cfg.vanish_grad_to_weight)
                or (math.isfinite(u) and u < cfg.vanish_update_to_weight)
            )
            if low:
                self._low[i] += 1
                self._ok[i] = 0
                if self._low[i] >= cfg.vanish_window:
                    ev = {
                        "grad_to_weight": r,
                        "update_to_weight": u,
                        "threshold_grad_to_weight": cfg.vanish_grad_to_weight,
                        "threshold_update_to_weight": cfg.vanish_update_to_weight,
                        "window": cfg.vanish_window,
                    }
                    new += self._raise("vanishing", i, view.step, ev)
            else:
                self._low[i] = 0
                if ("vanishing", i) in self._open:
                    self._ok[i] += 1
                    if self._ok[i] >= cfg.vanish_window:
                        self._open.pop(("vanishing", i)).active = False
            # exploding
            hist = self._norms[i]
            if len(hist) >= cfg.min_steps:
                med = float(np.median(hist[-50:]))
                if med > 0 and g > cfg.explode_factor * med:
                    self._high[i] += 1
                    if self._high[i] >= cfg.explode_window:
                        ev = {"grad_norm": g, "running_median": med, "factor": g / med, "threshold": cfg.explode_factor}
                        new += self._raise("exploding", i, view.step, ev)
                    continue  # keep the spike out of the running median
                self._high[i] = 0
            hist.append(g)
        return new

    def _raise(self, kind: str, i: int, step: int, evidence: dict) -> list[Flag]:
        key = (kind, i)
        flag = self._open.get(key)
        if flag is not None:
            flag.last_step = step
            flag.evidence = _merge_evidence(flag.evidence, evidence)
            return []
        flag = Flag(kind, self.modules[i], step, step, evidence)
        self.flags.append(flag)
        self._open[key] = flag
        return [flag]

    def summary(self) -> list[dict]:
        return [f.to_dict() for f in self.flags]


def _merge_evidence(old: dict, new: dict) -> dict:
    out = dict(new)
    if "nonfinite_values" in old:
        out["nonfinite_values"] = int(old["nonfinite_values"]) + int(new.get("nonfinite_values", 0))
    if "grad_to_weight" in old and "grad_to_weight" in new:
        out["min_grad_to_weight"] = min(_f(old.get("min_grad_to_weight", old["grad_to_weight"])), _f(new["grad_to_weight"]))
    return out


def evaluate(modules: Sequence[str], trainable: Sequence[bool], records: Iterable[dict], cfg: GradmonConfig) -> list[Flag]:
    """Replay logged ``step`` records through a fresh :class:`RuleEngine`; return every flag."""
    engine = RuleEngine(modules, trainable, cfg)
    for rec in records:
        engine.update(StepView.from_record(rec))
    return engine.flags
