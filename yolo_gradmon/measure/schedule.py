"""One schedule for every sampled signal: for each optimizer step and each forward/backward pass, which of the
monitor's measurements run.

- parameter statistics: every ``log_every``-th optimizer step (a *logged* step), counted from the run's first step;
- the update/weight ratio, the weight norms and max |grad|: every ``update_every``-th logged step (they decide no
  flag; grad/weight uses the last measured weight norms in between);
- activation health: every ``health_every``-th logged step (it names a flag's cause; the last sample is used between);
- gradient flow: every ``flow_every``-th forward/backward pass of logged steps (with accumulation every logged step
  keeps some passes; with one pass per step it is every ``flow_every``-th logged step);
- the gradient noise scale: every logged step whose window has at least two passes (the first micro-batch's gradient
  is read before the second pass, ``noise_read``).

Logged steps are counted from 0 (``k``), so the first logged step measures everything. The schedule also tracks
the trainer's batch index within the epoch, which places each step inside or after Ultralytics' warm-up.
"""

from __future__ import annotations

import dataclasses

from ..config import GradmonConfig


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What is measured at one optimizer step."""

    step: int  # the optimizer step (1-based over the whole run)
    logged: bool  # parameter statistics
    update: bool  # the update/weight ratio of this very step
    warmup: bool | None  # inside Ultralytics' warm-up (logged steps only; None otherwise)
    slow: bool = True  # the weight norms and max |grad| (with the update ratio's cadence, update_ratio or not)


@dataclasses.dataclass(frozen=True)
class PassPlan:
    """What the hooks measure during one forward/backward pass (one micro-batch)."""

    flow: bool
    health: bool
    window_start: bool = False  # the first pass of an optimizer step's window
    noise_read: bool = False  # before this pass: read the window's first micro-batch gradient (noise scale)
    logged: bool = False  # the pass belongs to a logged step (the forward non-finite check runs on all of them)


class Schedule:
    """Counts optimizer steps and passes and decides, from the options, what each of them measures.

    Args:
        cfg: the monitor's options (``log_every``, ``update_ratio``/``update_every``, ``flow_every``,
            ``health_every``).
        start_step: optimizer steps already taken (a resumed run continues its count).
    """

    def __init__(self, cfg: GradmonConfig, start_step: int = 0):
        self.cfg = cfg
        self.step = start_step  # optimizer steps so far
        self.steps_this_run = 0
        self.flow_passes = 0  # forward/backward passes of logged steps so far (flow_every counts these)
        self.batch = -1  # batch index in the current epoch
        self.batches_per_epoch = 1
        self.warmup_iterations = 0
        self.epoch = 0
        self.window_passes = 0  # forward/backward passes since the last optimizer step

    # ------------------------------------------------------------------ the rules
    def is_logged(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) records parameter statistics."""
        return (step - 1) % self.cfg.log_every == 0

    def logged_index(self, step: int) -> int:
        """``k``: how many logged steps come before logged step ``step``."""
        return (step - 1) // self.cfg.log_every

    def measures_update(self, step: int) -> bool:
        return self.cfg.update_ratio and self.is_logged(step) and self.logged_index(step) % self.cfg.update_every == 0

    def measures_slow(self, step: int) -> bool:
        return self.is_logged(step) and self.logged_index(step) % self.cfg.update_every == 0

    def measures_health(self, step: int) -> bool:
        return self.is_logged(step) and self.logged_index(step) % self.cfg.health_every == 0

    # ------------------------------------------------------------------ the trainer's progress
    def start_epoch(self, epoch: int, batches: int, warmup_iterations: int) -> None:
        self.epoch = epoch
        self.batch = -1
        self.batches_per_epoch = max(1, batches)
        self.warmup_iterations = warmup_iterations

    def next_pass(self) -> PassPlan:
        """A batch starts: it belongs to the coming optimizer step; returns what its forward/backward pass measures."""
        self.batch += 1
        coming = self.step + 1
        logged = self.is_logged(coming)
        flow = logged and self.flow_passes % self.cfg.flow_every == 0
        self.flow_passes += logged
        start, second = self.window_passes == 0, self.window_passes == 1
        self.window_passes += 1
        return PassPlan(flow=flow, health=self.measures_health(coming), window_start=start,
                        noise_read=second and logged and self.cfg.noise_scale, logged=logged)

    def next_step(self) -> StepPlan:
        """The trainer's optimizer step runs: count it and return what it measures."""
        self.step += 1
        self.steps_this_run += 1
        self.window_passes = 0
        step = self.step
        logged = self.is_logged(step)
        warmup = None
        if logged:
            ni = self.epoch * self.batches_per_epoch + max(self.batch, 0)
            warmup = bool(self.warmup_iterations and ni <= self.warmup_iterations)
        return StepPlan(step=step, logged=logged, update=self.measures_update(step), slow=self.measures_slow(step),
                        warmup=warmup)
