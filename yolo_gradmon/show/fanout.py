"""The monitor's sinks, in order: the local files first (a failure there is an error), then W&B and any extra sink,
then the console; each guarded, so a failing sink is disabled with one message and training goes on."""

from __future__ import annotations

from ultralytics.utils import LOGGER

from ..config import PREFIX, GradmonConfig
from .console import ConsoleSink
from .local import LocalSink
from ..judge.rules import Flag
from ..record.outputs import TrainEnd
from .sink import GuardedSink, History, RunInfo, Sink


class Fanout(Sink):
    """Hands every monitor event to every enabled sink, in order."""

    name = "fanout"

    def __init__(self, cfg: GradmonConfig, extra: list[Sink] = ()):
        local = GuardedSink(LocalSink(), error=True)
        self.local = local
        console = ConsoleSink(table=cfg.console, local_ok=lambda: local.enabled)
        self.sinks: list[GuardedSink] = [local, *(GuardedSink(s) for s in [*extra, *_wandb(cfg)]), GuardedSink(console)]

    def start(self, run: RunInfo) -> None:
        for sink in self.sinks:
            sink.start(run)

    def log_step(self, record: dict, n_flagged: int) -> None:
        for sink in self.sinks:
            sink.log_step(record, n_flagged)

    def on_flag(self, flag: Flag) -> None:
        for sink in self.sinks:
            sink.on_flag(flag)

    def epoch_end(self, epoch: int, step: int, history: History) -> None:
        for sink in self.sinks:
            sink.epoch_end(epoch, step, history)

    def finish(self, end: TrainEnd) -> None:
        for sink in self.sinks:
            sink.finish(end)
        for sink in self.sinks:  # said again at the very end, where a user reads
            if not sink.enabled and sink.failure:
                LOGGER.warning(f"{PREFIX}{sink.failure}")


def _wandb(cfg: GradmonConfig) -> list[Sink]:
    if not cfg.wandb:
        return []
    try:
        from .wandb import make_wandb_sink

        sink = make_wandb_sink(cfg)
    except Exception as e:  # noqa: BLE001 - no W&B never stops training
        LOGGER.warning(f"{PREFIX}W&B sink unavailable ({type(e).__name__}: {e}); logging locally only.")
        return []
    return [sink] if sink is not None else []
