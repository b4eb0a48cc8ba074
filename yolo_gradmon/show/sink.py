"""The sink interface and the guard that keeps a failing sink from ever stopping training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from ..capture import StepStats
from ..config import GradmonConfig
from ..rules import Flag

from ..config import PREFIX  # noqa: F401 - re-exported for sinks


@dataclasses.dataclass
class RunContext:
    """What sinks know about the run being monitored."""

    save_dir: Path
    out_dir: Path
    model_name: str
    modules: list[str]
    trainable: list[bool]
    numel: list[int]
    layer_index: list[int]
    cfg: GradmonConfig
    trainer: Any = None
    resumed: bool = False
    start_step: int = 0
    start_epoch: int = 0
    records: list = dataclasses.field(default_factory=list)  # the monitor's step records, resumed ones too
    header_extra: dict = dataclasses.field(default_factory=dict)  # optional header fields (layers, flow, health)


class Sink:
    """Receives the monitor's events. Every method is optional."""

    name = "sink"

    def start(self, ctx: RunContext) -> None: ...

    def log_step(self, stats: StepStats, record: dict, n_flagged: int) -> None: ...

    def on_flag(self, flag: Flag) -> None: ...

    def epoch_end(self, epoch: int, step: int) -> None: ...

    def finish(self, summary: dict) -> None: ...

    def close_after_error(self) -> None:
        """Release resources after the guard disabled this sink."""


class GuardedSink:
    """Wraps a sink: the first exception disables it with one clear message; training goes on."""

    def __init__(self, sink: Sink, error: bool = False):
        self.sink = sink
        self.enabled = True
        self._error = error

    @property
    def name(self) -> str:
        return self.sink.name

    def call(self, method: str, *args) -> None:
        if not self.enabled:
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as e:  # noqa: BLE001 - a sink must never break training
            self.enabled = False
            msg = (
                f"{PREFIX}{self.sink.name} sink disabled after {type(e).__name__} in {method}(): {str(e).rstrip('. ')}. "
                "Training continues; other sinks are unaffected."
            )
            (LOGGER.error if self._error else LOGGER.warning)(msg)
            try:
                self.sink.close_after_error()
            except Exception:  # noqa: BLE001
                pass
