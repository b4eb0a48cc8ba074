"""Train end's results, built once: the tables and the summary of a run, handed to every sink as one
:class:`TrainEnd` (the local sink writes them, the console and W&B show them), and rebuilt from the log alone for
``yolo-gradmon report``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl

from ..config import GradmonConfig
from ..judge.rules import Flag, evaluate
from .logfile import LOG_NAME, dumps, find_in_run, read_log
from .summary import build_summary
from .tables import LAYERS_PARQUET_NAME, PARQUET_NAME, STEPS_PARQUET_NAME, layer_frame, module_frame, step_frame

SUMMARY_NAME = "summary.json"


@dataclasses.dataclass
class TrainEnd:
    """Everything train end shows, computed once.

    Attributes:
        header: the log's header line.
        records: every ``step`` record (resumed ones too), plain as in the log.
        flags: every flag.
        modules: one row per logged step and module (``gradients.parquet``; the per-layer fields included when the
            log has them).
        layers: one row per logged step and top-level layer (``layers.parquet``); None without per-layer signals.
        steps: one row per logged step (``steps.parquet``).
        summary: the ``summary.json`` content.
        log_path: the log these were built from.
    """

    header: dict
    records: list[dict]
    flags: list[Flag]
    modules: pl.DataFrame
    layers: pl.DataFrame | None
    steps: pl.DataFrame
    summary: dict
    log_path: Path

    @classmethod
    def build(cls, header: dict, records: list[dict], flags: list[Flag], complete: bool,
              log_path: Path, stopped_by: str | None = None) -> "TrainEnd":
        """The tables and the summary of ``records`` (each table built once); ``complete=False`` with ``stopped_by``
        (the exception) for a training that raised before its end."""
        names = list(header.get("layers") or [])
        modules = module_frame(records, list(header["modules"]), header.get("layer_index") if names else None)
        layers = layer_frame(records, names) if names else None
        summary = build_summary(header, records, flags, complete, modules, layers, stopped_by)
        return cls(header, list(records), list(flags), modules, layers, step_frame(records), summary, Path(log_path))

    @classmethod
    def from_log(cls, path: str | Path) -> "TrainEnd":
        """Rebuild from ``gradients.jsonl`` alone (``path``: the log, its ``gradmon/`` dir or the run's ``save_dir``),
        read once; the flags are replayed through the rules, so they equal the live ones."""
        log_path = find_in_run(path, LOG_NAME)
        log = read_log(log_path)
        cfg = GradmonConfig.from_dict(log.header.get("config", {}))
        flags = evaluate(log.modules, log.header["trainable"], log.steps, cfg, log.header.get("layer_index"), log.header)
        return cls.build(log.header, log.steps, flags, log.ended, log_path)

    @property
    def out_dir(self) -> Path:
        return self.log_path.parent

    def write_tables(self) -> None:
        """Write the Parquet files and ``summary.json`` beside the log."""
        out = self.out_dir
        self.modules.write_parquet(out / PARQUET_NAME)
        self.steps.write_parquet(out / STEPS_PARQUET_NAME)
        if self.layers is not None:
            self.layers.write_parquet(out / LAYERS_PARQUET_NAME)
        (out / SUMMARY_NAME).write_text(json.dumps(json.loads(dumps(self.summary)), indent=2))


def rebuild(path: str | Path) -> dict:
    """Rebuild Parquet and ``summary.json`` from ``gradients.jsonl`` alone (``path``: run dir, gradmon dir or log);
    return the summary."""
    end = TrainEnd.from_log(path)
    end.write_tables()
    return end.summary


def load_summary(path: str | Path) -> dict:
    """The ``summary.json`` of ``path`` (the file, its ``gradmon/`` dir or the run's ``save_dir``)."""
    return json.loads(find_in_run(path, SUMMARY_NAME).read_text())
