"""The sink interface, what sinks are told about a run, and the guard that keeps a failing sink from ever stopping
training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from ultralytics.utils import LOGGER

from ..config import PREFIX, GradmonConfig
from ..judge.rules import Flag
from ..record.outputs import TrainEnd


@dataclasses.dataclass
class RunInfo:
    """What sinks know about the run being monitored (no live trainer object).

    Attributes:
        header: the log's header line (model, modules, trainable, numel, layer_index, layers, options...).
        cfg: the monitor's options.
        save_dir: the trainer's ``save_dir``; ``out_dir`` is ``save_dir/gradmon``.
        resumed, start_step, start_epoch: where a ``resume=True`` run continues its log.
        epochs: the planned number of epochs (None if unknown).
        trainer_args: the trainer's arguments (``vars(trainer.args)``), e.g. for a W&B run's config and name.
        callbacks: the trainer's callback lists (``trainer.callbacks``), for a sink that must act at a trainer
            event of its own (the W&B sink's teardown and row markers); None when there is none.
    """

    header: dict
    cfg: GradmonConfig
    save_dir: Path
    out_dir: Path
    resumed: bool = False
    start_step: int = 0
    start_epoch: int = 0
    epochs: int | None = None
    trainer_args: dict = dataclasses.field(default_factory=dict)
    callbacks: dict | None = None

    @property
    def modules(self) -> list[str]:
        return list(self.header["modules"])

    @property
    def layers(self) -> list[str]:
        return list(self.header.get("layers") or [])

    @property
    def model_name(self) -> str:
        return str(self.header.get("model"))


@dataclasses.dataclass
class History:
    """What the monitor has logged so far: every ``step`` record (resumed ones too) and every flag, read-only for
    sinks."""

    records: list[dict]
    flags: list[Flag]


class Sink:
    """Receives the monitor's events. Every method is optional.

    ``start`` once, then per logged optimizer step ``on_flag`` for each new flag and ``log_step``, ``epoch_end`` at
    each epoch's end, and ``finish`` once at train end with the results built once for every sink.

    ``on_flag`` and ``log_step`` run on the monitor's host thread (:mod:`yolo_gradmon.host_worker`), never on the
    training thread; ``start``, ``epoch_end`` and ``finish`` run on the training thread while the host thread is idle.
    Events never overlap and always come in order, so a sink needs no lock of its own.
    """

    name = "sink"

    def start(self, run: RunInfo) -> None: ...

    def log_step(self, record: dict, n_flagged: int) -> None:
        """One logged optimizer step (a plain ``step`` log record) and the number of modules with an active flag."""

    def on_flag(self, flag: Flag) -> None: ...

    def epoch_end(self, epoch: int, step: int, history: History) -> None: ...

    def finish(self, end: TrainEnd) -> None:
        """Train end: the tables and ``summary.json`` content, built once and read-only for sinks."""

    def close_after_error(self) -> None:
        """Release resources after the guard disabled this sink."""

    def failure_line(self, error: Exception) -> str | None:
        """What to tell the user when ``error`` disabled this sink (None: the guard's generic line)."""
        return None


class GuardedSink(Sink):
    """Wraps a sink: the first exception disables it with one clear message; training goes on."""

    def __init__(self, sink: Sink, error: bool = False):
        self.sink = sink
        self.enabled = True
        self.failure: str | None = None  # the line said when the sink was disabled
        self._error = error

    @property
    def name(self) -> str:
        return self.sink.name

    def start(self, run: RunInfo) -> None:
        self._call(self.sink.start, run)

    def log_step(self, record: dict, n_flagged: int) -> None:
        self._call(self.sink.log_step, record, n_flagged)

    def on_flag(self, flag: Flag) -> None:
        self._call(self.sink.on_flag, flag)

    def epoch_end(self, epoch: int, step: int, history: History) -> None:
        self._call(self.sink.epoch_end, epoch, step, history)

    def finish(self, end: TrainEnd) -> None:
        self._call(self.sink.finish, end)

    def _call(self, method: Callable[..., None], *args: Any) -> None:
        if not self.enabled:
            return
        try:
            method(*args)
        except Exception as e:  # noqa: BLE001 - a sink must never break training
            self.enabled = False
            try:
                line = self.sink.failure_line(e)
            except Exception:  # noqa: BLE001
                line = None
            self.failure = line or (f"{self.sink.name} sink disabled after {type(e).__name__} in {method.__name__}(): "
                                    f"{str(e).rstrip('. ')}.")
            (LOGGER.error if self._error else LOGGER.warning)(
                f"{PREFIX}{self.failure} Training continues; other sinks are unaffected.")
            try:
                self.sink.close_after_error()
            except Exception:  # noqa: BLE001
                pass
