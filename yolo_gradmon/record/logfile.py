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
from pathlib import Path

from ..fields import MODULE_FIELDS, plain_values

SCHEMA_VERSION = 1
LOG_NAME = "gradients.jsonl"


class LogSchemaError(ValueError):
    """A log written with a schema this version cannot read."""


def dumps(record: dict) -> str:
    """Strict JSON for one log line: NaN/Inf become null."""
    return json.dumps(plain_values(record), allow_nan=False, separators=(",", ":"))


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

    def resume_point(self, start_epoch: int) -> tuple[int, list[dict]]:
        """Where a run resumed at ``start_epoch`` (0-based, as Ultralytics counts) continues: the last optimizer step
        of the epochs before it, and the step records up to it."""
        step = self.last_step_of_epoch(start_epoch)
        if step is None:
            step = max((r["step"] for r in self.steps if r["epoch"] <= start_epoch), default=0)
        return step, [r for r in self.steps if r["step"] <= step]

    @property
    def layers(self) -> list[str]:
        """Every top-level layer (flow / activation-health columns align with it); [] in logs without them."""
        return list(self.header.get("layers") or [])


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


def resume_log(path: Path, modules: list[str], granularity: str, start_epoch: int) -> tuple[int, list[dict]]:
    """The optimizer step and the step records a run resumed at ``start_epoch`` continues ``path``'s log from.

    Raises ``RuntimeError`` (and leaves the log as it is) when the log records other modules than ``modules``: its
    step lines could not be read with a new header.
    """
    log = read_log(path)
    if log.modules != list(modules):
        raise RuntimeError(
            f"cannot continue {path}: it logs other modules (granularity {log.header.get('granularity')!r}, "
            f"{len(log.modules)} modules; now {granularity!r}, {len(modules)}). "
            "Resume with the gradmon options of the interrupted run; the log is left as it is"
        )
    return log.resume_point(start_epoch)


def find_in_run(path: str | Path, name: str) -> Path:
    """Accept the file itself, its ``gradmon/`` dir, or the training run's ``save_dir``; return the file ``name``."""
    p = Path(path)
    for cand in (p, p / name, p / "gradmon" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no {name} found at {p} (expected <save_dir>/gradmon/{name})")


def locate_log(path: str | Path) -> Path:
    """The log file of ``path`` (the log itself, its ``gradmon/`` dir or the run's ``save_dir``)."""
    return find_in_run(path, LOG_NAME)


def header_record(model: str, task: str | None, granularity: str, measured: dict, config: dict,
                  train: dict | None = None, data: dict | None = None) -> dict:
    """The ``header`` log line. ``measured``: the modules (``modules``, ``trainable``, ``numel``, ``layer_index``) and,
    under ``depth``, the top-level layers and depth signals (``layers``, ``layer_from``, ``layer_acts``, ``flow``,
    ``activation_health``). ``train``: the trainer's step arithmetic (:func:`yolo_gradmon.trainer.train_facts`), when known. ``data``: the
    dataset trained on (``yaml``, ``root``, ``train_images``, ``generated``; ``yolo_gradmon.trainer.dataset_facts``), when known."""
    depth = dict(measured.get("depth") or {})
    out = {
        "type": "header",
        "schema": SCHEMA_VERSION,
        "model": model,
        "task": task,
        "granularity": granularity,
        **{k: measured[k] for k in ("modules", "trainable", "numel", "layer_index")},
        "config": config,
        **depth,
    }
    if train:
        out["train"] = train
    if data:
        out["data"] = data
    return out


def step_record(stats, warmup: bool | None) -> dict:
    """The ``step`` log line of a :class:`~yolo_gradmon.measure.params.StepStats`, plain from here on (lists, ``None``
    for non-finite: :mod:`yolo_gradmon.fields`), so the record every consumer receives equals the line read back."""
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
        "weights_measured": stats.weights_measured,
        "has_grad": stats.has_grad,
        **{name: getattr(stats, name) for name in MODULE_FIELDS},
        **stats.extra,  # flow / activation-health fields (optional in the log)
    }
    return plain_values(rec)
