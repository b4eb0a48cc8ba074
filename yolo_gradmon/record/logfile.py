"""The append-only gradient log (``<save_dir>/gradmon/gradients.jsonl``): format, writer and reader.

One strict-JSON object per line (non-finite numbers are ``null``), flushed after every logged step, so a
SIGKILL loses at most the step being written. A line torn by a kill is ignored by :func:`read_log` and cut
before a resumed run appends to the file. Line types:

``header``    schema version, granularity, module names (depth order), trainable flags, numel, options.
``step``      one logged optimizer step; per-module arrays aligned with the latest header's modules.
``epoch_end`` the last optimizer step of an epoch (lets ``resume=True`` continue the step count).
``resume``    written when a run resumes; earlier lines with ``step`` greater than its ``step`` are superseded.
``end``       training finished.

Everything else (``gradients.parquet``, ``summary.json``, reports) is derived from this file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

SCHEMA_VERSION = 1
LOG_NAME = "gradients.jsonl"
MODULE_COLUMNS = ("grad_norm", "weight_norm", "grad_to_weight", "update_to_weight", "max_abs_grad", "nonfinite")
STEP_COLUMNS = ("lr", "amp_scale", "amp_skipped", "total_norm", "clip_active", "warmup")
# Optional per-layer arrays of a ``step`` line, aligned with the header's ``layers`` (every top-level layer, with or
# without parameters); absent in logs written without the flow / activation-health signals (same schema version).
LAYER_COLUMNS = ("flow_norm", "flow_attenuation", "act_saturated", "act_dead")
LAYERS_PARQUET_NAME = "layers.parquet"


class LogSchemaError(ValueError):
    """A log written with a schema this version cannot read."""


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating,)):
        return _clean(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def dumps(record: dict) -> str:
    """Strict JSON for one log line: NaN/Inf become null."""
    return json.dumps(_clean(record), allow_nan=False, separators=(",", ":"))


class LogWriter:
    """Appends lines to the log, flushing each one."""

    def __init__(self, path: Path, append: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            drop_torn_tail(self.path)
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def drop_torn_tail(path: Path) -> int:
    """Cut a partial last line (the process was killed mid-write) so appended lines start on a line of their own.

    Returns the number of bytes removed.
    """
    if not path.is_file():
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return 0
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            if pos == size and chunk.endswith(b"\n"):
                return 0
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                fh.truncate(keep)
                return size - keep
            pos = start
        fh.truncate(0)
        return size


class GradLog:
    """A parsed log: the last header, the surviving step lines (resume-superseded ones removed), epoch ends."""

    def __init__(self, header: dict, steps: list[dict], epoch_ends: dict[int, int], ended: bool, truncated: bool):
        self.header = header
        self.steps = steps
        self.epoch_ends = epoch_ends
        self.ended = ended
        self.truncated = truncated

    @property
    def modules(self) -> list[str]:
        return list(self.header.get("modules", []))

    def last_step_of_epoch(self, epoch: int) -> int | None:
        return self.epoch_ends.get(epoch)

    def frame(self) -> pl.DataFrame:
        """Long format: one row per (logged step, module that received a gradient)."""
        return module_frame(self.steps, self.modules, self.header.get("layer_index") if self.layers else None)

    @property
    def layers(self) -> list[str]:
        """Every top-level layer (flow / activation-health columns align with it); [] in logs without them."""
        return list(self.header.get("layers") or [])

    def layer_frame(self) -> pl.DataFrame:
        """Depth signals: one row per (logged step, top-level layer)."""
        return layer_frame(self.steps, self.layers)

    def step_frame(self) -> pl.DataFrame:
        """Whole-model columns: one row per logged step."""
        return step_frame(self.steps)


def module_frame(records: list[dict], modules: list[str], layer_index: list[int] | None = None) -> pl.DataFrame:
    """Long format of ``step`` records: one row per (step, module that received a gradient).

    With ``layer_index`` (the header's: each module's top-level layer), the optional ``LAYER_COLUMNS`` are added too,
    each module carrying its layer's value (null where the log has none).
    """
    extra = LAYER_COLUMNS if layer_index is not None else ()
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "module", *MODULE_COLUMNS, *extra)}
    for rec in records:
        has = rec.get("has_grad")
        for i, name in enumerate(modules):
            if has is not None and not has[i]:
                continue
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["module"].append(name)
            for c in MODULE_COLUMNS:
                v = rec[c][i]
                cols[c].append(None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
            for c in extra:
                arr, li = rec.get(c), layer_index[i]
                cols[c].append(_finite_or_none(arr[li]) if arr is not None and 0 <= li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "module": pl.Utf8}
    schema.update({c: pl.Float64 for c in (*MODULE_COLUMNS, *extra)})
    schema["nonfinite"] = pl.Int64
    return pl.DataFrame(cols, schema=schema)


def _finite_or_none(v):
    return None if v is None or not math.isfinite(float(v)) else float(v)


def layer_frame(records: list[dict], layers: list[str]) -> pl.DataFrame:
    """The depth signals of ``step`` records: one row per (step, top-level layer), for records that carry them.

    Columns: ``step, epoch, layer, flow_backwards`` and ``LAYER_COLUMNS`` (null where not measured).
    """
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "layer", "flow_backwards", *LAYER_COLUMNS)}
    for rec in records:
        if not any(rec.get(c) is not None for c in LAYER_COLUMNS):
            continue
        for li, name in enumerate(layers):
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["layer"].append(name)
            cols["flow_backwards"].append(rec.get("flow_backwards"))
            for c in LAYER_COLUMNS:
                arr = rec.get(c)
                cols[c].append(_finite_or_none(arr[li]) if arr is not None and li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "layer": pl.Utf8, "flow_backwards": pl.Int64}
    schema.update({c: pl.Float64 for c in LAYER_COLUMNS})
    return pl.DataFrame(cols, schema=schema)


def step_frame(records: list[dict]) -> pl.DataFrame:
    """Whole-model columns of ``step`` records: one row per logged step."""
    schema = {
        "step": pl.Int64,
        "epoch": pl.Int64,
        "lr": pl.Float64,
        "amp_scale": pl.Float64,
        "amp_skipped": pl.Boolean,
        "total_norm": pl.Float64,
        "clip_active": pl.Boolean,
        "warmup": pl.Boolean,
    }
    rows = []
    for r in records:
        row = {k: _clean(r.get(k)) for k in schema}
        row["lr"] = (r.get("lr") or [None])[0]
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)


def read_log(path: str | Path) -> GradLog:
    """Read ``gradients.jsonl`` (or the ``gradmon`` dir / run dir containing it).

    A torn last line (process killed mid-write) is ignored; an unknown schema version is an error.
    """
    path = locate_log(path)
    header: dict | None = None
    steps: list[dict] = []
    epoch_ends: dict[int, int] = {}
    ended = truncated = False
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                truncated = True
                break
            raise LogSchemaError(f"{path}:{n + 1}: corrupt line in gradient log")
        kind = rec.get("type")
        if kind == "header":
            version = rec.get("schema")
            if version != SCHEMA_VERSION:
                if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
                    hint = "a newer yolo_gradmon wrote it: upgrade yolo_gradmon (pip install -U yolo-gradmon) to read it"
                elif isinstance(version, int) and not isinstance(version, bool):
                    hint = "an older yolo_gradmon wrote it: read it with that version (no migration exists)"
                else:
                    hint = "the header's 'schema' field is missing or not an integer; is it a yolo_gradmon log?"
                raise LogSchemaError(
                    f"{path} was written with gradient-log schema {version!r}; this yolo_gradmon reads schema "
                    f"{SCHEMA_VERSION} only: {hint}."
                )
            header = rec
        elif kind == "step":
            if header is None:
                raise LogSchemaError(f"{path}:{n + 1}: step line before any header")
            steps.append(rec)
        elif kind == "epoch_end":
            epoch_ends[int(rec["epoch"])] = int(rec["step"])
        elif kind == "resume":
            cut = int(rec["step"])
            steps = [s for s in steps if s["step"] <= cut]
            epoch_ends = {e: s for e, s in epoch_ends.items() if e < int(rec["epoch"])}
            ended = False
        elif kind == "end":
            ended = True
    if header is None:
        raise LogSchemaError(f"{path} has no header line; is it a yolo_gradmon log?")
    return GradLog(header, steps, epoch_ends, ended, truncated)


def locate_log(path: str | Path) -> Path:
    """Accept the log file itself, its ``gradmon/`` dir, or the training run's ``save_dir``."""
    p = Path(path)
    for cand in (p, p / LOG_NAME, p / "gradmon" / LOG_NAME):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no {LOG_NAME} found at {p} (expected <save_dir>/gradmon/{LOG_NAME})")


def step_record(stats, warmup: bool | None) -> dict:
    """The ``step`` log line of a :class:`~yolo_gradmon.capture.StepStats`."""
    rec = {
        "type": "step",
        "step": stats.step,
        "epoch": stats.epoch,
        "lr": stats.lr,
        "amp_scale": stats.amp_scale,
        "amp_skipped": stats.amp_skipped,
        "total_norm": stats.total_norm,
        "clip_active": stats.clip_active,
        "warmup": warmup,
        "has_grad": [bool(x) for x in stats.has_grad],
    }
    for c in MODULE_COLUMNS:
        rec[c] = getattr(stats, c)
    return rec


def iter_module_series(log: GradLog, column: str) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """(module, steps, values) per module in depth order, values NaN where missing."""
    frame = log.frame()
    for name in log.modules:
        sub = frame.filter(pl.col("module") == name)
        yield name, sub["step"].to_numpy(), sub[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
