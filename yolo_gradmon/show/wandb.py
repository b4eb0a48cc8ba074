"""Weights & Biases sink: per-step gradient metrics, media and flag tables, alerts.

One run per training
    If a W&B run is active when training starts (the user's ``wandb.init``, or Ultralytics' own W&B callback,
    which starts its run in ``on_pretrain_routine_end``, before the monitor's ``on_train_start``), the sink
    logs into it and leaves finishing it to its owner. Otherwise it starts one like Ultralytics would
    (``project``/``name`` from the trainer args, ``dir=save_dir``, the trainer args as config) and finishes it
    at train end (or, if training raises, in Ultralytics' ``teardown`` event, as failed). Either way the
    monitor's options are in the run config under ``gradmon``.

Metrics (one flat ``run.log`` per logged optimizer step, x-axis ``gradients/step``)
    ``gradients/step`` (the optimizer step, the x-axis of every ``gradients/*`` and ``gradmon/*`` key),
    ``gradients/epoch``, ``gradients/lr`` (param group 0), ``gradients/total_norm``, ``gradients/clip_active``
    (0/1), ``gradients/amp_scale`` and ``gradients/amp_skipped`` (0/1; with AMP only),
    ``gradients/flagged_modules`` (modules with an active flag), and per module
    ``gradients/norm/<module>``, ``gradients/grad_to_weight/<module>``, ``gradients/update_to_weight/<module>``
    (with ``update_ratio=True``) and ``gradients/max_abs/<module>``; per top-level layer, with the depth signals
    on, ``gradients/flow/<layer>`` (RMS of ‖dL/d out‖ over the step's backward passes),
    ``gradients/flow_attenuation/<layer>`` (that over the head's, the least attenuated pass) and
    ``gradients/act_saturated/<layer>`` / ``gradients/act_dead/<layer>`` (fractions; only layers that have such
    activations). Module keys (``02.C3k2``) sort in depth
    order. A module that received no gradient at a step has no keys in that step's row; a module that did has
    all of them, with **NaN** where the statistic is non-finite (NaN/Inf gradients) or undefined (zero weight
    norm): the same cells the local log stores as ``null``.

Ultralytics' epoch rows stay whole
    Ultralytics' W&B callback logs losses and learning rates with ``commit=False`` in ``on_train_epoch_end``
    and commits the row with the validation metrics in ``on_fit_epoch_end``. Any ``run.log`` in between would
    commit their half row early (a split epoch). The monitor's callbacks are registered on the model, so they
    run before the integration callbacks of each event and never log inside that window; to be safe whatever
    the callback order, the sink places two flag-only markers right after Ultralytics' ``on_train_epoch_end``
    and ``on_fit_epoch_end`` W&B callbacks and queues its rows while their row is open (logged at its next
    call after the commit, still at their own ``gradients/step``).

Media (``gradmon/*``, at train end and every ``wandb_media_every`` epochs)
    ``gradmon/heatmap`` and ``gradmon/curves`` (``wandb.Image`` of :mod:`yolo_gradmon.show.figures`' PNGs, written
    into the gradmon dir as ``heatmap.png``/``curves.png``, periodic ones as ``wandb_media/heatmap_epoch0003.png``
    etc., or into a temp dir if the gradmon dir is not writable) and ``gradmon/flags`` (a ``wandb.Table``: kind,
    module, first_step, last_step, active, evidence JSON), logged at the last logged ``gradients/step``. Run summary: ``gradmon/steps_logged``,
    ``gradmon/flagged_modules`` (count), ``gradmon/flagged_module_names``, ``gradmon/n_flags`` and
    ``gradmon/n_<kind>``, ``gradmon/weakest_module``, ``gradmon/weakest_grad_to_weight`` (its median
    ‖grad‖/‖w‖), ``gradmon/worst_attenuation`` (that median over the median of all modules' medians),
    ``gradmon/gradient_range_decades`` (log10 of the largest over the smallest module median ‖grad‖),
    ``gradmon/alerts_sent``, ``gradmon/complete``.

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
from typing import Any

from ultralytics.utils import LOGGER

from ..config import GradmonConfig
from ..judge.rules import KINDS, Flag
from ..record.logfile import LAYER_COLUMNS, dumps, finite_or_none
from ..record.tables import module_frame
from ..config import PREFIX
from .sink import History, RunInfo, Sink

STEP_KEY = "gradients/step"
_DEPTH_SECTION = {"flow_norm": "flow"}  # W&B section of a per-layer log field (the others keep the field's name)
ALERT_KINDS = {"nonfinite": "ERROR", "exploding": "WARN", "vanishing": "WARN"}
MAX_ALERTS = 20  # per run; one more alert says that further flags are only in the table
FLAG_COLUMNS = ["kind", "module", "first_step", "last_step", "active", "evidence"]
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


class WandbSink(Sink):
    """Streams the monitor's logged steps, flags and media to one W&B run (see the module docstring)."""

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
        self._depth_keys: dict[str, list[str]] = {}  # per LAYER_COLUMNS field: one key per top-level layer
        self._finished = False
        self._media_dir: Path | None = None
        self._keys: list[tuple[str, str, str, str]] = []

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
        self._keys = [
            (f"gradients/norm/{m}", f"gradients/grad_to_weight/{m}", f"gradients/update_to_weight/{m}",
             f"gradients/max_abs/{m}")
            for m in info.modules
        ]
        layers = info.layers  # every top-level layer, parameter-free ones too
        self._depth_keys = {
            field: [f"gradients/{_DEPTH_SECTION.get(field, field)}/{layer}" for layer in layers]
            for field in LAYER_COLUMNS
        }
        self._place_markers(info.callbacks)
        whose = "new run" if self.owns_run else "active run"
        LOGGER.info(f"{PREFIX}streaming to W&B {whose} {getattr(run, 'name', None) or getattr(run, 'id', '')!r} (x-axis {STEP_KEY})")

    def log_step(self, record: dict, n_flagged: int) -> None:
        self._log(self._row(record, n_flagged))
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
        every = self.cfg.wandb_media_every
        final = self.info.epochs
        if every > 0 and epoch % every == 0 and not (isinstance(final, int) and epoch >= final):
            flags = [f.to_dict() for f in self.flags.values()]
            self._log(self._media_row(history.records, flags, epoch))  # the train-end media cover the last epoch

    def finish(self, summary: dict, history: History) -> None:
        self._row_open = False  # train end: Ultralytics' last row was committed in on_fit_epoch_end
        self._drain()
        flags = summary.get("flags") or []  # resumed flags too
        self._log(self._media_row(history.records, flags, None, summary.get("media")))
        self.run.summary.update(_summary_fields(summary, self.alerts_sent))
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
        row: dict[str, Any] = {
            STEP_KEY: int(record["step"]),
            "gradients/epoch": int(record["epoch"]),
            "gradients/total_norm": _num(record.get("total_norm")),
            "gradients/clip_active": int(bool(record.get("clip_active"))),
            "gradients/flagged_modules": int(n_flagged),
        }
        lr = record.get("lr") or []
        if lr:
            row["gradients/lr"] = _num(lr[0])
        if record.get("amp_scale") is not None:
            row["gradients/amp_scale"] = _num(record["amp_scale"])
        if record.get("amp_skipped") is not None:
            row["gradients/amp_skipped"] = int(bool(record["amp_skipped"]))
        has = record.get("has_grad")
        gn, g2w, u2w, mx = (record[c] for c in ("grad_norm", "grad_to_weight", "update_to_weight", "max_abs_grad"))
        upd = self.cfg.update_ratio
        for i, (k_n, k_g, k_u, k_m) in enumerate(self._keys):
            if has is not None and not has[i]:
                continue  # no gradient reached this module at this step: no keys
            row[k_n] = _num(gn[i])
            row[k_g] = _num(g2w[i])
            if upd:
                row[k_u] = _num(u2w[i])
            row[k_m] = _num(mx[i])
        for field, keys in self._depth_keys.items():
            values = record.get(field) or []
            for key, v in zip(keys, values):
                if v is not None:  # layer not reached by this step's passes / no activation of that kind: no key
                    row[key] = _num(v)
        return row

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

    # ------------------------------------------------------------------ media
    def _media_row(self, records: list[dict], flags: list[dict], epoch: int | None, rendered: dict | None = None) -> dict:
        """Heatmap, curves and flags table (``flags``: ``Flag.to_dict()`` rows) of everything logged so far
        (``epoch``: a periodic one)."""
        from . import figures  # matplotlib: imported only when media are drawn

        info = self.info
        out = self._media_path()
        if epoch is not None:  # periodic media: kept apart from the final heatmap.png / curves.png
            out, tag, when = out / "wandb_media", f"_epoch{epoch:04d}", f" (after epoch {epoch})"
        else:
            tag = when = ""
        if rendered and all(Path(rendered.get(k, "")).is_file() for k in ("heatmap", "curves")):
            heat, curves = Path(rendered["heatmap"]), Path(rendered["curves"])  # the monitor's local PNGs
        else:
            frame = module_frame(records, info.modules)  # the monitor's records, resumed ones too
            flagged = sorted({f["module"] for f in flags})
            what = Path(info.model_name).name
            heat = figures.heatmap_png(
                frame, info.modules, out / f"heatmap{tag}.png", column="grad_norm",
                title=f"Parameter-gradient norm ‖grad‖ per module, {what}{when}", flagged=flagged
            )
            curves = figures.curves_png(frame, info.modules, out / f"curves{tag}.png", column="grad_norm")
        rows = [
            [f["kind"], f["module"], int(f["first_step"]), int(f["last_step"]), bool(f.get("active", True)),
             dumps(f.get("evidence") or {})]
            for f in flags
        ]
        row: dict[str, Any] = {
            "gradmon/heatmap": self.wb.Image(str(heat), caption="log10 ‖grad‖, module x logged step"),
            "gradmon/curves": self.wb.Image(str(curves), caption="‖grad‖ per module over logged steps"),
            "gradmon/flags": self.wb.Table(columns=FLAG_COLUMNS, data=rows),
        }
        if self.last_step is not None:
            row[STEP_KEY] = self.last_step
        return row

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


def _summary_fields(summary: dict, alerts_sent: int) -> dict:
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
    return out


__all__ = ["ALERT_KINDS", "MAX_ALERTS", "STEP_KEY", "WandbSink", "make_wandb_sink"]
