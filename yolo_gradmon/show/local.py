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
            self._write({"type": "resume", "step": ctx.start_step, "epoch": ctx.start_epoch + 1})
        self._write(header_record(ctx))

    def log_step(self, stats, record, n_flagged) -> None:
        self._write(record)

    def epoch_end(self, epoch: int, step: int) -> None:
        self._write({"type": "epoch_end", "epoch": epoch, "step": step})

    def finish(self, summary: dict) -> None:
        self._write({"type": "end", "steps_logged": summary.get("steps_logged")})
        self.writer.close()

    def _write(self, record: dict) -> None:
        try:
            self.writer.write(record)
        except OSError as e:  # name the file: a write error (disk full, I/O error) carries no filename
            raise OSError(e.errno, f"cannot write {self.writer.path}: {e.strerror or e}") from e

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
        **getattr(ctx, "header_extra", {}),
    }
