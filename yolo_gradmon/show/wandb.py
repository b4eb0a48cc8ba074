"""Weights & Biases sink: run-level gradient curves, native per-layer charts, the heatmap and flags table, alerts.

One run per training
    If a W&B run is active when training starts (the user's ``wandb.init``, or Ultralytics' own W&B callback,
    which starts its run in ``on_pretrain_routine_end``, before the monitor's ``on_train_start``), the sink
    logs into it and leaves finishing it to its owner. Otherwise it starts one like Ultralytics would
    (``project``/``name`` from the trainer args, ``dir=save_dir``, the trainer args as config) and finishes it
    at train end (or, if training raises, in Ultralytics' ``teardown`` event, as failed). Either way the
    monitor's options are in the run config under ``gradmon``.

Run-level curves (one flat ``run.log`` per logged optimizer step, x-axis ``gradients/step``; one panel each)
    A handful of keys whatever the model's size, comparable across the runs of a group (an ablation's variants
    are one line each). Healthy ranges from a real run (YOLO26n, COCO8, 320 px, batch 2, nbs 2, 30 epochs, seed 0:
    60 logged steps; ``python benchmarks/wandb_panels.py --train``) and the calibration in ``configs/default.yaml``:

    - ``gradients/step`` (the optimizer step, the x-axis of every ``gradients/*`` and ``gradmon/*`` key),
      ``gradients/epoch``, ``gradients/lr`` (param group 0);
    - ``gradients/total_norm``: ‖grad‖ of all parameters before clipping (healthy 78..1766 in that run; YOLO sums
      its loss over the batch: 1e2..4e3 in the calibration runs);
    - ``gradients/clip_active`` (0/1): 1 on every healthy YOLO step (``clip_norm`` 10 is below the summed loss'
      norm); ``gradients/amp_scale`` and ``gradients/amp_skipped`` (0/1; with AMP only);
    - ``gradients/flagged_modules``: modules with an active flag (healthy: 0);
    - ``gradients/depth/early_flow_rel_head``: median flow relative to the head of the early layers (the first
      quarter, :func:`~yolo_gradmon.record.depth.early_layers`), on the steps where the flow was sampled
      (``flow_every``). Healthy 0.59..22 (it falls as training converges); vanishing shows as a fall by decades;
    - ``gradients/depth/weakest_flow_rel_head`` and ``gradients/depth/weakest_layer_index``: the smallest flow
      relative to the head of any layer but the head, and that layer's index. Healthy 0.034..0.72 (17.Conv);
      YOLO11n's 20.Conv sits near 1e-3 (calibration minimum 6.7e-4); below ``vanish_flow_attenuation`` (1e-5) it is
      vanishing evidence;
    - ``gradients/depth/early_grad_to_weight``: median ‖grad‖/‖w‖ of the modules in the early layers. Healthy
      2.5..66 (before clipping, summed loss); ``vanish_grad_to_weight`` is 1e-6.

    No per-layer scalar by default: everything per module or layer is in the native charts below and in the local
    log (``gradients.jsonl``, ``modules.parquet``, ``layers.parquet``), whatever the options say.

Per-layer scalars on request (``wandb_layer_scalars``: ``none`` | ``all`` | comma-separated families)
    Per module ``gradients/norm/<module>`` (grad_norm), ``gradients/grad_to_weight/<module>``,
    ``gradients/update_to_weight/<module>`` (with ``update_ratio=True``; only on its sampled steps) and
    ``gradients/max_abs/<module>`` (max_abs_grad); per top-level layer ``gradients/flow/<layer>`` (flow_norm: RMS of
    ‖dL/d out‖ over the step's backward passes), ``gradients/flow_attenuation/<layer>`` and
    ``gradients/act_saturated/<layer>`` / ``gradients/act_dead/<layer>``. Module keys (``02.C3k2``) sort in depth
    order. A module that received no gradient at a step has no keys in that step's row; one that did has them, with
    **NaN** where the statistic is non-finite or undefined (the local log's ``null``). A family is held back while
    every value it had is one constant (``act_dead`` on a SiLU model: always 0), so it never makes a wall of flat
    panels; once it varies, its held values are logged at their own ``gradients/step`` and it streams from then on.

Native charts (``gradmon/*``; W&B custom charts and tables: hover, zoom, edit the Vega spec)
    - ``gradmon/layers/<family>`` (``wandb.plot.line_series``, stored as ``gradmon/layers/<family>_table`` with
      columns step, lineKey, lineVal): every module / layer a line, in depth order, over the logged steps, for
      ``grad_norm``, ``grad_to_weight``, ``update_to_weight`` and ``flow_attenuation`` (log10 values) and
      ``act_saturated`` / ``act_dead`` (fractions). A family that is constant or unmeasured over the run is left out
      and named in the summary (``gradmon/constant_families``, ``gradmon/unmeasured_families``). At most
      :data:`MAX_CHART_ROWS` points per chart: a longer run's logged steps are thinned evenly (the last one kept).
      Logged at train end and every ``wandb_media_every`` epochs.
    - ``gradmon/depth_profile`` (``wandb.plot.line`` over the table ``gradmon/depth_profile_table``: epoch, index,
      layer, median, min, max, log10_median, n): flow relative to the head by layer over the epoch's logged steps,
      x = layer index, y = log10 median. Logged at every epoch end (with flow measured in the epoch).
    - ``gradmon/heatmap`` (``wandb.Image`` of :mod:`yolo_gradmon.show.figures`' heatmap: log10 ‖grad‖, module x
      logged step; periodic ones written as ``wandb_media/heatmap_epoch0003.png``, or into a temp dir if the gradmon
      dir is not writable) and ``gradmon/flags`` (a ``wandb.Table``: kind, module, first_step, last_step, active,
      evidence JSON), at train end and every ``wandb_media_every`` epochs.

    Every chart row is logged at the last logged ``gradients/step``, through the same queue as the steps' rows.

Run summary
    ``gradmon/steps_logged``, ``gradmon/verdict``, ``gradmon/flagged_modules`` (count),
    ``gradmon/flagged_module_names``, ``gradmon/n_flags`` and ``gradmon/n_<kind>``, ``gradmon/weakest_module``,
    ``gradmon/weakest_grad_to_weight`` (its median ‖grad‖/‖w‖), ``gradmon/worst_attenuation`` (that median over the
    median of all modules' medians), ``gradmon/gradient_range_decades`` (log10 of the largest over the smallest
    module median ‖grad‖), the run's medians of the depth curves ``gradmon/early_flow_rel_head``,
    ``gradmon/weakest_flow_rel_head``, ``gradmon/early_grad_to_weight`` and ``gradmon/weakest_layer`` (the layer
    that was the weakest most often): columns of a group's runs table; ``gradmon/constant_families`` (``act_dead=0``)
    and ``gradmon/unmeasured_families`` (``act_saturated``), ``gradmon/alerts_sent``, ``gradmon/complete``.

Ultralytics' epoch rows stay whole
    Ultralytics' W&B callback logs losses and learning rates with ``commit=False`` in ``on_train_epoch_end``
    and commits the row with the validation metrics in ``on_fit_epoch_end``. Any ``run.log`` in between would
    commit their half row early (a split epoch). The monitor's callbacks are registered on the model, so they
    run before the integration callbacks of each event and never log inside that window; to be safe whatever
    the callback order, the sink places two flag-only markers right after Ultralytics' ``on_train_epoch_end``
    and ``on_fit_epoch_end`` W&B callbacks and queues its rows (charts too) while their row is open (logged at its
    next call after the commit, still at their own ``gradients/step``).

Alerts
    One ``run.alert`` per (module, kind) for ``nonfinite`` (ERROR), ``exploding`` and ``vanishing`` (WARN),
    at most :data:`MAX_ALERTS` per run plus one closing notice; ``wandb_alerts=False`` turns them off. Offline
    runs record alerts in their ``.wandb`` log (``"type": "alert"`` records in ``wandb leet inspect --json``).

Failures
    Every call is wrapped by :class:`~yolo_gradmon.show.sink.GuardedSink`: the first exception (``init``,
    ``log``, ``alert``...) disables this sink with one warning; the local log is untouched. A run the sink
    started is then finished as failed. The trainer callbacks the sink adds only flip flags or finish its own
    run inside ``try``, so they cannot raise into training.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from ultralytics.utils import LOGGER

from ..config import LAYER_FAMILIES, PREFIX, GradmonConfig
from ..judge.rules import KINDS, Flag
from ..record.depth import layer_profile, step_depth
from ..record.logfile import dumps, finite_or_none
from ..record.tables import module_frame
from .sink import History, RunInfo, Sink

STEP_KEY = "gradients/step"
ALERT_KINDS = {"nonfinite": "ERROR", "exploding": "WARN", "vanishing": "WARN"}
MAX_ALERTS = 20  # per run; one more alert says that further flags are only in the table
FLAG_COLUMNS = ["kind", "module", "first_step", "last_step", "active", "evidence"]
PROFILE_COLUMNS = ["epoch", "index", "layer", "median", "min", "max", "log10_median", "n"]
MODULE_FAMILIES = ("grad_norm", "grad_to_weight", "update_to_weight", "max_abs_grad")  # one value per module
# W&B key section of each family's per-layer scalars (wandb_layer_scalars): gradients/<section>/<module or layer>
SCALAR_SECTION = {"grad_norm": "norm", "grad_to_weight": "grad_to_weight", "update_to_weight": "update_to_weight",
                  "max_abs_grad": "max_abs", "flow_norm": "flow", "flow_attenuation": "flow_attenuation",
                  "act_saturated": "act_saturated", "act_dead": "act_dead"}
# the run-level depth curves: W&B key -> step_depth field
DEPTH_KEYS = {
    "gradients/depth/early_flow_rel_head": "early_flow",
    "gradients/depth/weakest_flow_rel_head": "weakest_flow",
    "gradients/depth/early_grad_to_weight": "early_grad_to_weight",
}
WEAKEST_LAYER_KEY = "gradients/depth/weakest_layer_index"
# native per-layer line charts (wandb.plot.line_series, key gradmon/layers/<family>): family -> (title, log10 values)
CHART_FAMILIES = {
    "grad_norm": ("log10 ‖grad‖ per {unit}", True),
    "grad_to_weight": ("log10 ‖grad‖/‖w‖ per {unit}", True),
    "update_to_weight": ("log10 ‖Δw‖/‖w‖ per {unit} (sampled steps)", True),
    "flow_attenuation": ("log10 flow relative to the head per layer", True),
    "act_saturated": ("Saturated-unit fraction per layer", False),
    "act_dead": ("Dead-unit fraction per layer", False),
}
PROFILE_KEY = "gradmon/depth_profile"  # W&B stores its table as gradmon/depth_profile_table
MAX_CHART_ROWS = 10_000  # wandb.Table.MAX_ROWS: a longer run's chart thins its logged steps evenly (the last kept)
_UL_WB_MODULE = "ultralytics.utils.callbacks.wb"  # Ultralytics' own W&B integration callbacks
_NAN = float("nan")


def _wandb_disabled() -> bool:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return mode == "disabled" or os.environ.get("WANDB_DISABLED", "").strip().lower() in {"true", "1", "yes"}


def make_wandb_sink(cfg: GradmonConfig) -> "WandbSink | None":
    """The W&B sink, or ``None`` when W&B cannot or should not be used (logging stays local).

    ``WANDB_MODE=disabled`` is a deliberate choice: an info line, no warning. ``wandb`` not importable: one
    warning naming the fix.
    """
    if _wandb_disabled():
        LOGGER.info(f"{PREFIX}W&B disabled (WANDB_MODE=disabled); logging gradients locally only.")
        return None
    try:
        import wandb
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything at import
        LOGGER.warning(
            f"{PREFIX}W&B logging is on (wandb=True) but wandb cannot be imported ({type(e).__name__}: {e}); "
            "logging gradients locally only. `pip install wandb`, or pass wandb=False to silence this."
        )
        return None
    if not hasattr(wandb, "__version__"):  # a directory named "wandb" shadowing the package
        LOGGER.warning(
            f"{PREFIX}W&B logging is on (wandb=True) but `import wandb` found {getattr(wandb, '__path__', wandb)!r}, "
            "not the wandb package; logging gradients locally only."
        )
        return None
    return WandbSink(cfg, wandb)



class _Held:
    """A requested per-layer scalar family that has not varied yet: its constant and the cells held back."""

    def __init__(self):
        self.value: float | None = None  # the one value seen so far
        self.cells: list[tuple[int, list[tuple[str, float]]]] = []  # (step, [(key, value)]) not logged yet


class WandbSink(Sink):
    """Streams the monitor's logged steps, flags, depth curves and native charts to one W&B run (see the module
    docstring)."""

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
        self._scalars: dict[str, list[str]] = {}  # wandb_layer_scalars: family -> one key per module / layer
        self._held: dict[str, _Held] = {}  # requested families not streamed yet (constant so far)
        self._finished = False
        self._media_dir: Path | None = None

    # ------------------------------------------------------------------ events
    def start(self, info: RunInfo) -> None:
        self.info = info
        wb = self.wb
        run = wb.run
        gradmon = {"gradmon": info.cfg.to_dict()}
        if run is None:
            self._hook_teardown(info.callbacks)  # a no-op unless init below returns a run (then owned here)
            run = wb.init(**self._init_kwargs(info, gradmon))
            self.owns_run = True
        else:
            run.config.update(gradmon, allow_val_change=True)
            if info.trainer_args:
                run.config.setdefaults(info.trainer_args)  # keep what the user or Ultralytics already set
        self.run = run
        run.define_metric(STEP_KEY)
        run.define_metric("gradients/*", step_metric=STEP_KEY)
        run.define_metric("gradmon/*", step_metric=STEP_KEY)
        families = [f for f in info.cfg.layer_scalar_families() if f != "update_to_weight" or info.cfg.update_ratio]
        self._scalars = {
            f: [f"gradients/{SCALAR_SECTION[f]}/{n}" for n in (info.modules if f in MODULE_FAMILIES else info.layers)]
            for f in families
        }
        self._held = {f: _Held() for f in families}
        self._place_markers(info.callbacks)
        whose = "new run" if self.owns_run else "active run"
        LOGGER.info(f"{PREFIX}streaming to W&B {whose} {getattr(run, 'name', None) or getattr(run, 'id', '')!r} (x-axis {STEP_KEY})")

    def log_step(self, record: dict, n_flagged: int) -> None:
        row = self._row(record, n_flagged)
        if self._scalars:
            for backfill in self._layer_scalars(record, row):
                self._log(backfill)
        self._log(row)
        self.steps_logged += 1
        self.last_step = int(record["step"])

    def on_flag(self, flag: Flag) -> None:
        self.flags[(flag.kind, flag.module)] = flag
        level = ALERT_KINDS.get(flag.kind)
        if level is None or not self.cfg.wandb_alerts:
            return
        key = (flag.module, flag.kind)
        if key in self._alerted or self._alerts_capped:
            return
        self._alerted.add(key)
        if self.alerts_sent >= MAX_ALERTS:
            self._alerts_capped = True
            self.run.alert(
                title="gradmon: more gradient flags",
                text=f"{MAX_ALERTS} gradient alerts were sent for this run; further flags are not alerted. "
                "See the run's gradmon/flags table and the local summary.json.",
                level="WARN",
            )
            return
        self.run.alert(title=f"gradmon: {flag.kind} gradients in {flag.module}", text=_alert_text(flag), level=level)
        self.alerts_sent += 1

    def epoch_end(self, epoch: int, step: int, history: History) -> None:
        self._drain()
        row = self._profile_row(history.records, epoch)  # every epoch
        every = self.cfg.wandb_media_every
        final = self.info.epochs
        if every > 0 and epoch % every == 0 and not (isinstance(final, int) and epoch >= final):
            flags = [f.to_dict() for f in self.flags.values()]
            row.update(self._media_row(history.records, flags, epoch))  # the train-end media cover the last epoch
        if row:
            if self.last_step is not None:
                row[STEP_KEY] = self.last_step
            self._log(row)

    def finish(self, summary: dict, history: History) -> None:
        self._row_open = False  # train end: Ultralytics' last row was committed in on_fit_epoch_end
        self._drain()
        flags = summary.get("flags") or []  # resumed flags too
        row = self._media_row(history.records, flags, None, summary.get("media"))
        if self.last_step is not None:
            row[STEP_KEY] = self.last_step
        self._log(row)
        ev = summary.get("nonfinite_event")  # the event's one line, origin first (yolo_gradmon.judge.nonfinite)
        if ev and self.cfg.wandb_alerts:
            self.run.alert(title=f"gradmon: non-finite gradients from {ev.get('origin') or ev.get('direction')}",
                           text=ev["line"], level="ERROR" if ev.get("alarm") else "WARN")
        self.run.summary.update(_summary_fields(summary, self.alerts_sent, history.records, self.info))
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
    def _row(self, record: dict, n_flagged: int) -> dict:
        """The run-level row of one logged step (a few keys whatever the model's size)."""
        row: dict[str, Any] = {
            STEP_KEY: int(record["step"]),
            "gradients/epoch": int(record["epoch"]),
            "gradients/total_norm": _num(record.get("total_norm")),
            "gradients/clip_active": int(bool(record.get("clip_active"))),
            "gradients/flagged_modules": int(n_flagged),
        }
        lr = record.get("lr") or []
        if len(lr):
            row["gradients/lr"] = _num(lr[0])
        if record.get("amp_scale") is not None:
            row["gradients/amp_scale"] = _num(record["amp_scale"])
        if record.get("amp_skipped") is not None:
            row["gradients/amp_skipped"] = int(bool(record["amp_skipped"]))
        depth = step_depth(record, self.info.header)
        for key, field in DEPTH_KEYS.items():
            if depth[field] is not None:  # flow not sampled at this step / no early module with a gradient: no key
                row[key] = depth[field]
        if depth["weakest_layer"] is not None:
            row[WEAKEST_LAYER_KEY] = self.info.layers.index(depth["weakest_layer"])
        return row

    def _layer_scalars(self, record: dict, row: dict) -> list[dict]:
        """Add the requested per-layer scalars to ``row``; a family is held back while every value it had is one
        constant (no wall of flat panels), and backfilled at its own steps once it varies. Returns the backfill
        rows to log first."""
        step = int(record["step"])
        has = record.get("has_grad")
        backfill: dict[int, dict] = {}
        for family, keys in self._scalars.items():
            values = record.get(family)
            if values is None:
                continue
            module = family in MODULE_FAMILIES
            cells = [
                (key, _num(v)) for i, (key, v) in enumerate(zip(keys, values))
                if (not module or has is None or has[i]) and (module or v is not None)
            ]
            if family == "update_to_weight" and all(math.isnan(v) for _, v in cells):
                continue  # not a sampled step of the update ratio (update_every): no keys
            held = self._held.get(family)
            if held is None:  # streamed: it has varied
                row.update(cells)
                continue
            if held.value is None and cells:
                held.value = cells[0][1]
            if all(v == held.value for _, v in cells):  # NaN never equals: a non-finite value is streamed
                if cells:
                    held.cells.append((step, cells))
                continue
            for s, old in held.cells:
                backfill.setdefault(s, {STEP_KEY: s}).update(old)
            del self._held[family]
            row.update(cells)
        return [backfill[s] for s in sorted(backfill)]

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
    def _profile_row(self, records: Sequence[dict], epoch: int) -> dict:
        """``gradmon/depth_profile``: flow relative to the head by layer over the epoch's logged steps (a table and
        a line chart of its log10 median over the layer index); empty without flow values in the epoch."""
        recs = [r for r in records if r.get("epoch") == epoch and r.get("flow_attenuation") is not None]
        rows = [
            [int(epoch), p["index"], p["layer"], p["median"], p["min"], p["max"],
             math.log10(p["median"]) if p["median"] else None, p["n"]]
            for p in layer_profile(recs, self.info.header)
        ]
        if not any(r[3] is not None for r in rows):
            return {}
        table = self.wb.Table(columns=PROFILE_COLUMNS, data=rows)
        chart = self.wb.plot.line(
            table, "index", "log10_median",
            title="Depth profile: log10 flow relative to the head by layer index (median over the epoch)",
        )
        return {PROFILE_KEY: chart}

    def _line_charts(self, records: Sequence[dict]) -> dict:
        """``gradmon/layers/<family>``: one native line chart per family, every layer (module) a line in depth order
        over the logged steps; families that are constant or unmeasured over the run are left out."""
        info = self.info
        unit = "layer" if info.header.get("granularity", "layer") == "layer" else info.header.get("granularity")
        out = {}
        for family, (title, log) in CHART_FAMILIES.items():
            if _family_state(records, family)[0] != "varied":
                continue
            names = info.modules if family in MODULE_FAMILIES else info.layers
            xs, ys = _series(records, family, len(names), log, family in MODULE_FAMILIES)
            keep = [i for i, x in enumerate(xs) if x]
            if not keep:
                continue
            out[f"gradmon/layers/{family}"] = self.wb.plot.line_series(
                xs=[xs[i] for i in keep], ys=[ys[i] for i in keep], keys=[names[i] for i in keep],
                title=title.format(unit=unit), xname=STEP_KEY,
            )
        return out

    def _media_row(self, records: list[dict], flags: list[dict], epoch: int | None, rendered: dict | None = None) -> dict:
        """Heatmap, flags table and native per-layer charts of everything logged so far (``flags``:
        ``Flag.to_dict()`` rows; ``epoch``: a periodic one)."""
        from . import figures  # matplotlib: imported only when media are drawn

        info = self.info
        out = self._media_path()
        if epoch is not None:  # periodic media: kept apart from the final heatmap.png
            out, tag, when = out / "wandb_media", f"_epoch{epoch:04d}", f" (after epoch {epoch})"
        else:
            tag = when = ""
        if rendered and Path(rendered.get("heatmap", "")).is_file():
            heat = Path(rendered["heatmap"])  # the monitor's local PNG
        else:
            frame = module_frame(records, info.modules)  # the monitor's records, resumed ones too
            flagged = sorted({f["module"] for f in flags})
            what = Path(info.model_name).name
            heat = figures.heatmap_png(
                frame, info.modules, out / f"heatmap{tag}.png", column="grad_norm",
                title=f"Parameter-gradient norm ‖grad‖ per module, {what}{when}", flagged=flagged
            )
        rows = [
            [f["kind"], f["module"], int(f["first_step"]), int(f["last_step"]), bool(f.get("active", True)),
             dumps(f.get("evidence") or {})]
            for f in flags
        ]
        return {
            "gradmon/heatmap": self.wb.Image(str(heat), caption="log10 ‖grad‖, module x logged step"),
            "gradmon/flags": self.wb.Table(columns=FLAG_COLUMNS, data=rows),
            **self._line_charts(records),
        }

    def _media_path(self) -> Path:
        if self._media_dir is None:
            out = Path(self.info.out_dir)
            try:
                out.mkdir(parents=True, exist_ok=True)
                ok = os.access(out, os.W_OK)
            except OSError:
                ok = False
            self._media_dir = out if ok else Path(tempfile.mkdtemp(prefix="gradmon-wandb-"))
        return self._media_dir

    # ------------------------------------------------------------------ run and trainer plumbing
    def _init_kwargs(self, info: RunInfo, gradmon: dict) -> dict:
        args = info.trainer_args
        project = args.get("project") or "Ultralytics"
        name = args.get("name") or Path(info.save_dir).name
        config = {**args, **gradmon}
        kwargs = dict(
            project=re.sub(r"[/\\#?%:]", "-", str(project))[-128:],  # as Ultralytics' callback names it
            name=str(name),
            config=config,
            job_type="train",
            dir=str(info.save_dir),
        )
        if info.resumed:  # continue the run of the interrupted training (the newest one in save_dir/wandb)
            runs = (Path(info.save_dir) / "wandb").glob("*run-*/run-*.wandb")
            last = max(runs, key=lambda f: f.stat().st_mtime, default=None)
            if last is not None:
                kwargs.update(id=last.stem[4:], resume="allow")
        return kwargs

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
            idx = [i for i, fn in enumerate(fns) if getattr(fn, "__module__", None) == _UL_WB_MODULE]
            if idx:
                fns.insert(idx[-1] + 1, marker)


# ---------------------------------------------------------------------------------------------- helpers
def _num(v) -> float:
    """A finite float, or NaN for None/NaN/Inf (the local log's null)."""
    v = finite_or_none(v)
    return _NAN if v is None else v


def _values(record: dict, family: str) -> list:
    v = record.get(family)
    if v is None:
        return []
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _family_state(records: Sequence[dict], family: str) -> tuple[str, float | None]:
    """``("varied", None)``, ``("constant", value)`` (every finite value of the run is that one) or
    ``("unmeasured", None)`` (no finite value at all, e.g. act_saturated without Sigmoid/Tanh-like units)."""
    module = family in MODULE_FAMILIES
    first = None
    for rec in records:
        has = rec.get("has_grad") if module else None
        for i, v in enumerate(map(finite_or_none, _values(rec, family))):
            if v is None or (has is not None and not has[i]):
                continue
            if first is None:
                first = v
            elif v != first:
                return "varied", None
    return ("unmeasured", None) if first is None else ("constant", first)


def _series(records: Sequence[dict], family: str, n: int, log: bool, module: bool) -> tuple[list[list], list[list]]:
    """Per module/layer: the logged steps with a finite value of ``family`` (positive when ``log``) and the values
    (log10 when ``log``), over at most :data:`MAX_CHART_ROWS` points in all (evenly thinned steps, the last kept)."""
    recs = [r for r in records if r.get(family) is not None]
    k = max(1, math.ceil(len(recs) * n / MAX_CHART_ROWS))
    if k > 1:
        recs = recs[::-1][::k][::-1]  # keeps the last step
    xs: list[list] = [[] for _ in range(n)]
    ys: list[list] = [[] for _ in range(n)]
    for rec in recs:
        step = int(rec["step"])
        has = rec.get("has_grad") if module else None
        for i, v in enumerate(map(finite_or_none, _values(rec, family)[:n])):
            if v is None or (has is not None and not has[i]) or (log and v <= 0):
                continue
            xs[i].append(step)
            ys[i].append(math.log10(v) if log else v)
    return xs, ys


def _alert_text(flag: Flag) -> str:
    ev = flag.evidence
    parts = []
    for k, v in ev.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        else:
            parts.append(f"{k}={v}")
    what = {
        "nonfinite": "non-finite (NaN/Inf) gradient values",
        "exploding": "gradient norm far above its running median",
        "vanishing": "gradient flow relative to the head (or grad/weight) far below its healthy range",
    }.get(flag.kind, flag.kind)
    return (
        f"Layer {flag.module}: {what} at optimizer step {flag.first_step}. " + ", ".join(parts)
        + ". Further steps of this flag are in the run's gradmon/flags table and the local summary.json."
    )


def _summary_fields(summary: dict, alerts_sent: int, records: Sequence[dict] = (), info: RunInfo | None = None) -> dict:
    flags = summary.get("flags") or []
    flagged = list(summary.get("flagged_modules") or [])
    out: dict[str, Any] = {
        "gradmon/steps_logged": int(summary.get("steps_logged") or 0),
        "gradmon/flagged_modules": len(flagged),
        "gradmon/flagged_module_names": ", ".join(flagged),
        "gradmon/n_flags": len(flags),
        "gradmon/alerts_sent": int(alerts_sent),
        "gradmon/complete": bool(summary.get("complete")),
    }
    if summary.get("verdict") is not None:
        out["gradmon/verdict"] = str(summary["verdict"])
    for kind in KINDS:
        out[f"gradmon/n_{kind}"] = sum(1 for f in flags if f.get("kind") == kind)
    stats = [s for s in summary.get("module_stats") or [] if s.get("median_grad_to_weight") is not None]
    g2w = [(float(s["median_grad_to_weight"]), s["module"]) for s in stats if math.isfinite(s["median_grad_to_weight"])]
    g2w = [(v, m) for v, m in g2w if v > 0]
    if g2w:
        lo, module = min(g2w)
        vals = sorted(v for v, _ in g2w)
        mid = vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] + vals[len(vals) // 2])
        out["gradmon/weakest_module"] = module
        out["gradmon/weakest_grad_to_weight"] = lo
        out["gradmon/worst_attenuation"] = lo / mid
    norms = [float(s["median_grad_norm"]) for s in summary.get("module_stats") or []
             if s.get("median_grad_norm") is not None and math.isfinite(s["median_grad_norm"]) and s["median_grad_norm"] > 0]
    if norms:
        out["gradmon/gradient_range_decades"] = math.log10(max(norms) / min(norms))
    depth = summary.get("depth") or {}  # run_depth: medians over the run's logged steps, for the runs table
    for key, field in DEPTH_KEYS.items():
        if depth.get(field) is not None:
            out[f"gradmon/{key.rsplit('/', 1)[-1]}"] = float(depth[field])
    if depth.get("weakest_layer") is not None:
        out["gradmon/weakest_layer"] = str(depth["weakest_layer"])
    if records:
        states = {f: _family_state(records, f) for f in LAYER_FAMILIES if any(r.get(f) is not None for r in records)}
        out["gradmon/constant_families"] = ", ".join(f"{f}={v:g}" for f, (s, v) in states.items() if s == "constant")
        out["gradmon/unmeasured_families"] = ", ".join(f for f, (s, _) in states.items() if s == "unmeasured")
    return out


__all__ = ["ALERT_KINDS", "MAX_ALERTS", "STEP_KEY", "WandbSink", "make_wandb_sink"]
