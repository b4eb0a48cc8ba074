"""Local files under ``<save_dir>/gradmon/``: the append-only log while training, then at train end the Parquet
tables, ``summary.json``, the PNGs and ``report.html``."""

from __future__ import annotations

from ultralytics.utils import LOGGER

from ..config import PREFIX
from ..record.logfile import LOG_NAME, LogWriter
from ..record.outputs import TrainEnd
from .sink import History, RunInfo, Sink


class LocalSink(Sink):
    """Appends every logged step to ``gradients.jsonl`` (flushed per step); writes the derived files at train end."""

    name = "local"

    def __init__(self):
        self.writer: LogWriter | None = None
        self.run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        self.run = run
        self.writer = LogWriter(run.out_dir / LOG_NAME, append=run.resumed)  # a new run starts a new log
        if run.resumed:
            self._write({"type": "resume", "step": run.start_step, "epoch": run.start_epoch + 1})
        self._write(run.header)

    def log_step(self, record: dict, n_flagged: int) -> None:
        self._write(record)

    def epoch_end(self, epoch: int, step: int, history: History) -> None:
        self._write({"type": "epoch_end", "epoch": epoch, "step": step})

    def finish(self, end: TrainEnd) -> None:
        if end.summary.get("complete", True):  # a training that raised has no end line: a rebuild says incomplete too
            self._write({"type": "end", "steps_logged": end.summary.get("steps_logged")})
        self.writer.close()
        out = self.run.out_dir
        try:
            end.write_tables()
        except Exception as e:  # noqa: BLE001 - the log is complete; a derived file failing is reported, not raised
            LOGGER.error(f"{PREFIX}could not write Parquet/summary.json in {out}: {e}")
            return
        try:
            from .report import write_report  # matplotlib only at train end

            write_report(end)  # PNGs + report.html
        except Exception as e:  # noqa: BLE001
            LOGGER.error(f"{PREFIX}could not write the PNGs/report.html in {out} ({type(e).__name__}: {e}); "
                         f"rebuild them with: yolo-gradmon report {out}")

    def _write(self, record: dict) -> None:
        try:
            self.writer.write(record)
        except OSError as e:  # name the file: a write error (disk full, I/O error) carries no filename
            raise OSError(e.errno, f"cannot write {self.writer.path}: {e.strerror or e}") from e

    def close_after_error(self) -> None:
        if self.writer is not None:
            self.writer.close()
