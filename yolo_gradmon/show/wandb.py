"""Weights & Biases sink: the run's lifecycle, the queue that keeps Ultralytics' epoch rows whole, alerts, and the
media at epoch and train end. What it logs is built in :mod:`.wandb_rows` (plain Python); docs/wandb.md lists every
key with its healthy range.

One run per training: a run already active when training starts (the user's ``wandb.init``, or Ultralytics' own W&B
callback, which starts its run before the monitor's ``on_train_start``) is logged into and left to its owner to
finish; otherwise the sink opens one as Ultralytics would (:func:`.wandb_run.open_run`) and finishes it at train end,
or as failed in Ultralytics' ``teardown`` event if training raises. Gradient rows use their own x-axis,
``gradients/step``.

Ultralytics' callback logs an epoch's losses with ``commit=False`` in ``on_train_epoch_end`` and commits them with the
validation metrics in ``on_fit_epoch_end``; a ``run.log`` in between would split that row. Two flag-only markers
placed right after those callbacks track the open row, and rows logged meanwhile wait in a queue.

Every call is guarded by :class:`~yolo_gradmon.show.sink.GuardedSink`: the first exception disables this sink with one
warning (a run it started is then finished as failed); the trainer callbacks it adds cannot raise into training.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from ..config import PREFIX, GradmonConfig
from ..judge.rules import Flag
from ..record.outputs import TrainEnd
from ..record.tables import module_frame
from . import wandb_rows as rows
from .sink import History, RunInfo, Sink
from .wandb_run import (HOW_TO_ENABLE, ULTRALYTICS_EPOCH_PREFIXES, ULTRALYTICS_WB_MODULE, import_wandb, open_run,
                        resumed_run_id, ultralytics_epoch_callbacks, ultralytics_wandb_on)
from .noise import WandbNoiseRows

STEP_KEY = rows.STEP_KEY
ALERT_KINDS = {"nonfinite": "ERROR", "exploding": "WARN", "vanishing": "WARN"}
MAX_ALERTS = 20  # per run; one more alert says that further flags are only in the table
PROFILE_KEY = "gradmon/depth_profile"  # W&B stores its table as gradmon/depth_profile_table


def make_wandb_sink(cfg: GradmonConfig) -> "WandbSink | None":
    """The W&B sink, or ``None`` when W&B cannot or should not be used (logging stays local, with one line why)."""
    wb = import_wandb()
    return WandbSink(cfg, wb) if wb is not None else None


class WandbSink(Sink):
    """Streams the monitor's logged steps, flags, depth curves and native charts to one W&B run."""

    name = "wandb"

    def __init__(self, cfg: GradmonConfig, wandb_module: Any):
        self.cfg = cfg
        self.wb = wandb_module
        self.run = None
        self.owns_run = False
        self.info: RunInfo | None = None
        self.flags: dict[tuple[str, str], Flag] = {}
        self.steps_logged = 0
        self.last_step: int | None = None
        self.alerts_sent = 0
        self._alerted: set[tuple[str, str]] = set()
        self._alerts_capped = False
        self._row_open = False  # Ultralytics' W&B callback has an uncommitted (commit=False) row
        self._queue: list[dict] = []
        self._scalars: rows.LayerScalars | None = None  # wandb_layer_scalars, when requested
        self._finished = False
        self._media_dir: Path | None = None
        self._noise = WandbNoiseRows()  # the noise-scale curve key and per-layer chart (show/noise.py)

    # ------------------------------------------------------------------ events
    def start(self, info: RunInfo) -> None:
        self.info = info
        run = self.wb.run
        gradmon = {"gradmon": info.cfg.to_dict(), "gradmon_data": info.header.get("data") or {}}  # which dataset
        if run is None:
            self._hook_teardown(info.callbacks)  # a no-op unless the run below opens (then owned here)
            args = info.trainer_args
            run = open_run(self.wb, project=args.get("project") or "Ultralytics",
                           name=args.get("name") or Path(info.save_dir).name,
                           config={**args, **gradmon}, save_dir=info.save_dir,
                           resume_id=resumed_run_id(info.save_dir) if info.resumed else None)
            self.owns_run = True
        else:
            run.config.update(gradmon, allow_val_change=True)
            if info.trainer_args:
                run.config.setdefaults(info.trainer_args)  # keep what the user or Ultralytics already set
        self.run = run
        run.define_metric(STEP_KEY)
        run.define_metric("gradients/*", step_metric=STEP_KEY)
        run.define_metric("gradmon/*", step_metric=STEP_KEY)
        self._add_ultralytics_metrics(info.callbacks)
        families = [f for f in info.cfg.layer_scalar_families() if f != "update_to_weight" or info.cfg.update_ratio]
        if families:
            self._scalars = rows.LayerScalars(families, info.modules, info.layers)
        self._place_markers(info.callbacks)
        whose = "new run" if self.owns_run else "active run"
        LOGGER.info(f"{PREFIX}streaming to W&B {whose} {getattr(run, 'name', None) or getattr(run, 'id', '')!r} "
                    f"(x-axis {STEP_KEY})")

    def log_step(self, record: dict, n_flagged: int) -> None:
        row = rows.step_row(record, n_flagged, self.info.header)
        row.update(self._noise.step(record))
        if self._scalars is not None:
            for backfill in self._scalars.add(record, row):
                self._log(backfill)
        self._log(row)
        self.steps_logged += 1
        self.last_step = int(record["step"])

    def on_flag(self, flag: Flag) -> None:
        self.flags[(flag.kind, flag.module)] = flag
        level = ALERT_KINDS.get(flag.kind)
        key = (flag.module, flag.kind)
        if level is None or not self.cfg.wandb_alerts or key in self._alerted or self._alerts_capped:
            return
        self._alerted.add(key)
        if self.alerts_sent >= MAX_ALERTS:
            self._alerts_capped = True
            self.run.alert(title="gradmon: more gradient flags", level="WARN",
                           text=f"{MAX_ALERTS} gradient alerts were sent for this run; further flags are not alerted. "
                                "See the run's gradmon/flags table and the local summary.json.")
            return
        self.run.alert(title=f"gradmon: {flag.kind} gradients in {flag.module}", text=rows.alert_text(flag), level=level)
        self.alerts_sent += 1

    def epoch_end(self, epoch: int, step: int, history: History) -> None:
        self._drain()
        row = self._profile_row(history.records, epoch)  # every epoch
        every, final = self.cfg.wandb_media_every, self.info.epochs
        if every > 0 and epoch % every == 0 and not (isinstance(final, int) and epoch >= final):
            flags = [f.to_dict() for f in self.flags.values()]  # the train-end media cover the last epoch
            row.update(self._media_row(history.records, flags, epoch))
        if row:
            self._log_at_last_step(row)

    def finish(self, end: TrainEnd) -> None:
        self._row_open = False  # train end: Ultralytics' last row was committed in on_fit_epoch_end
        self._drain()
        final = self._media_row(end.records, end.summary.get("flags") or [], None, end)
        final.update(self._noise.final(end.summary, self.wb))
        self._log_at_last_step(final)
        self.run.summary.update(rows.summary_fields(end.summary, self.alerts_sent, end.records)
                                | self._noise.summary_fields(end.summary))
        ev = end.summary.get("nonfinite_event")  # the event's one line, origin first (yolo_gradmon.judge.nonfinite)
        if ev and self.cfg.wandb_alerts:
            self.run.alert(title=f"gradmon: non-finite gradients from {ev.get('origin') or ev.get('direction')}",
                           text=ev["line"], level="ERROR" if ev.get("alarm") else "WARN")
        self._finished = True
        if self.owns_run:
            self.run.finish()

    def close_after_error(self) -> None:
        """The guard disabled the sink: finish a run it started (as failed); leave anyone else's alone."""
        self._queue.clear()
        if self.owns_run and self.run is not None and not self._finished:
            self._finished = True
            self.run.finish(exit_code=1)

    # ------------------------------------------------------------------ logging
    def _log_at_last_step(self, row: dict) -> None:
        if self.last_step is not None:
            row[STEP_KEY] = self.last_step  # every chart row sits at the last logged gradients/step
        self._log(row)

    def _log(self, row: dict) -> None:
        if self._row_open:
            self._queue.append(row)  # never commit Ultralytics' half row: log after their commit
            return
        self._drain()
        self.run.log(row)

    def _drain(self) -> None:
        if self._row_open:
            return
        while self._queue:
            self.run.log(self._queue.pop(0))

    # ------------------------------------------------------------------ charts and media
    def _profile_row(self, records: list[dict], epoch: int) -> dict:
        """``gradmon/depth_profile``: a table and a line chart of the log10 median flow relative to the head over the
        layer index, over the epoch's logged steps; empty without flow values in the epoch."""
        data = rows.profile_rows(records, self.info.header, epoch)
        if not data:
            return {}
        table = self.wb.Table(columns=rows.PROFILE_COLUMNS, data=data)
        title = "Depth profile: log10 flow relative to the head by layer index (median over the epoch)"
        return {PROFILE_KEY: self.wb.plot.line(table, "index", "log10_median", title=title)}

    def _media_row(self, records: list[dict], flags: list[dict], epoch: int | None, end: TrainEnd | None = None) -> dict:
        """Heatmap, flags table and native per-layer charts of everything logged so far (``epoch``: a periodic one;
        ``end``: train end's results, whose module table is drawn instead of building one)."""
        from . import figures  # matplotlib: imported only when media are drawn

        info = self.info
        tag, when = (f"_epoch{epoch:04d}", f" (after epoch {epoch})") if epoch is not None else ("", "")
        frame = end.modules if end is not None else module_frame(records, info.modules)
        heat = figures.heatmap_png(frame, info.modules, self._media_path() / f"heatmap{tag}.png", column="grad_norm",
                                   title=f"Parameter-gradient norm ‖grad‖ per module, {Path(info.model_name).name}{when}",
                                   flagged=sorted({f["module"] for f in flags}))
        charts = {key: self.wb.plot.line_series(xname=STEP_KEY, **spec)
                  for key, spec in rows.line_charts(records, info.header).items()}
        return {
            "gradmon/heatmap": self.wb.Image(str(heat), caption="log10 ‖grad‖, module x logged step"),
            "gradmon/flags": self.wb.Table(columns=rows.FLAG_COLUMNS, data=rows.flag_rows(flags)),
            **charts,
        }

    def _media_path(self) -> Path:
        """``<gradmon dir>/wandb_media`` (the images uploaded to W&B), or a temp dir where that is not writable."""
        if self._media_dir is None:
            out = Path(self.info.out_dir) / "wandb_media"
            try:
                out.mkdir(parents=True, exist_ok=True)
                ok = os.access(out, os.W_OK)
            except OSError:
                ok = False
            self._media_dir = out if ok else Path(tempfile.mkdtemp(prefix="gradmon-wandb-"))
        return self._media_dir

    # ------------------------------------------------------------------ trainer callbacks
    def _add_ultralytics_metrics(self, callbacks: dict | None) -> None:
        """Ultralytics' losses, learning rates and metrics in this run when its own W&B callback is off: its epoch
        callbacks, registered here (with it on, it logs them itself: nothing is logged twice). They run only while
        this sink's run is the active one, never raise into training, and mark the row they leave uncommitted."""
        if callbacks is None or ultralytics_wandb_on(callbacks):
            return
        for prefix in ULTRALYTICS_EPOCH_PREFIXES:
            self.run.define_metric(f"{prefix}/*", step_metric="epoch")
        sink = self

        def guarded(fn, row_open: bool):
            def gradmon_ultralytics_metrics(trainer):
                if sink._finished or sink.run is None or sink.wb.run is not sink.run:
                    return  # the sink was disabled (its run finished), or another run took over
                try:
                    fn(trainer)
                    sink._row_open = row_open  # on_train_epoch_end leaves its row open; on_fit_epoch_end commits it
                except Exception as e:  # noqa: BLE001 - a metric row failing never stops training
                    sink._row_open = False
                    LOGGER.warning(f"{PREFIX}could not log Ultralytics' epoch metrics to W&B ({type(e).__name__}: {e})")
            return gradmon_ultralytics_metrics

        for event, fn in ultralytics_epoch_callbacks(self.wb).items():
            callbacks.setdefault(event, []).append(guarded(fn, row_open=event == "on_train_epoch_end"))

    def failure_line(self, error: Exception) -> str:
        """What to print when this sink is disabled: why, and how to turn W&B on."""
        return (f"W&B logging is off for this run ({type(error).__name__}: {str(error).rstrip('. ')}). To turn it on: "
                f"{HOW_TO_ENABLE}. The gradients are logged locally in {self.info.out_dir if self.info else 'gradmon/'}.")

    def _hook_teardown(self, callbacks: dict | None) -> None:
        if callbacks is None:
            return
        sink = self

        def gradmon_wandb_teardown(_trainer):
            if sink.owns_run and sink.run is not None and not sink._finished:
                sink._finished = True  # training raised before on_train_end: close our run as failed
                try:
                    sink.run.finish(exit_code=1)
                except Exception as e:  # noqa: BLE001 - never mask the trainer's own exception
                    LOGGER.warning(f"{PREFIX}could not finish the W&B run ({type(e).__name__}: {e}).")

        callbacks.setdefault("teardown", []).append(gradmon_wandb_teardown)

    def _place_markers(self, callbacks: dict | None) -> None:
        """Track Ultralytics' uncommitted W&B row: open after their ``on_train_epoch_end``, closed after their
        ``on_fit_epoch_end`` (the markers only set a flag: they cannot fail)."""
        if callbacks is None:
            return
        sink = self

        def gradmon_wandb_row_open(_trainer):
            sink._row_open = True

        def gradmon_wandb_row_closed(_trainer):
            sink._row_open = False

        for event, marker in (("on_train_epoch_end", gradmon_wandb_row_open), ("on_fit_epoch_end", gradmon_wandb_row_closed)):
            fns = callbacks.get(event) or []
            idx = [i for i, fn in enumerate(fns) if getattr(fn, "__module__", None) == ULTRALYTICS_WB_MODULE]
            if idx:
                fns.insert(idx[-1] + 1, marker)


__all__ = ["ALERT_KINDS", "MAX_ALERTS", "STEP_KEY", "WandbSink", "make_wandb_sink"]
