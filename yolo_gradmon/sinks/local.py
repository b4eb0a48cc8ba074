"""Local files under ``<save_dir>/gradmon/``: the append-only log, then Parquet and ``summary.json``."""

from __future__ import annotations

from ..logfile import SCHEMA_VERSION, LogWriter, LOG_NAME
from .base import RunContext, Sink


class LocalSink(Sink):
    """Appends every logged step to ``gradients.jsonl`` (flushed per step)."""

    name = "local"

    def __init__(self):
        self.writer: LogWriter | None = None
        self.ctx: RunContext | None = None

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.writer = LogWriter(ctx.out_dir / LOG_NAME, append=ctx.resumed)  # a new run starts a new log
        if ctx.resumed:
            self.writer.write({"type": "resume", "step": ctx.start_step, "epoch": ctx.start_epoch + 1})
        self.writer.write(header_record(ctx))

    def log_step(self, stats, record, n_flagged) -> None:
        self.writer.write(record)

    def epoch_end(self, epoch: int, step: int) -> None:
        self.writer.write({"type": "epoch_end", "epoch": epoch, "step": step})

    def finish(self, summary: dict) -> None:
        self.writer.write({"type": "end", "steps_logged": summary.get("steps_logged")})
        self.writer.close()

    def close_after_error(self) -> None:
        if self.writer is not None:
            self.writer.close()


def header_record(ctx: RunContext) -> dict:
    return {
        "type": "header",
        "schema": SCHEMA_VERSION,
        "model": ctx.model_name,
        "task": getattr(getattr(ctx.trainer, "args", None), "task", None),
        "granularity": ctx.cfg.granularity,
        "modules": ctx.modules,
        "trainable": ctx.trainable,
        "numel": ctx.numel,
        "layer_index": ctx.layer_index,
        "config": ctx.cfg.to_dict(),
    }
