"""GradientMonitor: options, ``attach(model)``, and the thin glue to Ultralytics' trainer callbacks.

Flow (one way): trainer ``optimizer_step`` → :mod:`capture` (on-device stats) → :mod:`rules` (flags)
→ sinks (:mod:`sinks.local`, :mod:`sinks.wandb`) and the console.

Ultralytics declares ``optimizer_step`` / ``on_before_zero_grad`` callback events but never fires them,
so the monitor wraps the trainer *instance's* ``optimizer_step`` method from ``on_train_start``. Inside
the wrapper the gradients are exactly what the optimizer receives (accumulated, AMP-scaled: divided
out on the device, not yet clipped).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from . import console
from .capture import GradientCapture, StepStats, _scale_tensor
from .config import GradmonConfig
from .layout import build_layout
from .logfile import LOG_NAME, read_log, step_record
from .outputs import build_summary, write_outputs
from .rules import RuleEngine, StepView
from .signals import DepthSignals
from .config import PREFIX
from .sinks.base import GuardedSink, RunContext
from .sinks.local import LocalSink, header_record

OUT_DIRNAME = "gradmon"


class HookError(RuntimeError):
    """The monitor cannot place its hook in this Ultralytics version's trainer."""


class GradientMonitor:
    """Watches per-module gradients during Ultralytics training.

    Example:
        >>> from ultralytics import YOLO
        >>> from yolo_gradmon import GradientMonitor
        >>> model = YOLO("yolo26n.yaml")
        >>> GradientMonitor(log_every=1).attach(model)
        >>> model.train(data="coco8.yaml", epochs=10)  # writes <save_dir>/gradmon/

    Args:
        config: a :class:`GradmonConfig`, a mapping of options, or the path of a YAML file of options.
        **options: option overrides (see ``configs/default.yaml``); unknown keys and invalid values raise
            :class:`~yolo_gradmon.config.GradmonConfigError` immediately.

    After training, ``monitor.summary`` holds the ``summary.json`` content and ``monitor.out_dir`` the
    output directory.
    """

    def __init__(self, config: GradmonConfig | dict | str | Path | None = None, **options: Any):
        if isinstance(config, GradmonConfig):
            cfg = GradmonConfig.from_dict(config.to_dict(), **options)
        elif isinstance(config, (str, Path)):
            cfg = GradmonConfig.from_yaml(config, **options)
        else:
            cfg = GradmonConfig.from_dict(config or {}, **options)
        self.cfg = cfg
        self.extra_sinks: list = []
        self._reset()

    # ------------------------------------------------------------------ attaching
    def attach(self, model) -> "GradientMonitor":
        """Register on an Ultralytics ``YOLO`` model's callbacks (call before ``model.train``).

        Attaching a second monitor (or the same one twice) to one model is a no-op with a warning, so
        gradients are never logged twice.
        """
        existing = getattr(model, "_gradmon_monitor", None)
        if existing is not None:
            LOGGER.warning(f"{PREFIX}a GradientMonitor is already attached to this model; ignoring the second attach().")
            return existing
        for event, fn in self.callbacks().items():
            model.add_callback(event, fn)
        model._gradmon_monitor = self
        return self

    def callbacks(self) -> dict:
        """The Ultralytics callback functions, for ``model.add_callback(event, fn)`` or a trainer's callbacks.

        Registered by hand, repeats of this monitor's callbacks are ignored (one warning), and a monitor whose
        trainer is already watched by another one stays inactive (one warning): gradients are never logged twice.
        """
        return {
            "on_train_start": self.on_train_start,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_train_end": self.on_train_end,
        }

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.summary: dict | None = None
        self.out_dir: Path | None = None
        self.records: list[dict] = []
        self.flags = []
        self._active = False
        self._trainer = None
        self._model = None
        self._capture: GradientCapture | None = None
        self._engine: RuleEngine | None = None
        self._signals: DepthSignals | None = None
        self._sinks: list[GuardedSink] = []
        self._step = 0
        self._calls = 0
        self._batch_i = -1
        self._flow_passes = 0  # forward/backward passes of logged steps so far (flow_every counts these)
        self._nw = 0
        self._nb = 1
        self._warmup: dict[int, bool] = {}
        self._ctx: RunContext | None = None
        self._in_step = False
        self._hooked_fn = None
        self._finished = False

    def __getstate__(self):
        # DDP: Ultralytics pickles callbacks (cloudpickle) into worker processes; ship the options and the extra
        # sinks that can travel, never live state (tensors, open files, the trainer).
        return {"cfg": self.cfg, "extra_sinks": _picklable(self.extra_sinks)}

    def __setstate__(self, state):
        self.cfg = state["cfg"]
        self.extra_sinks = state.get("extra_sinks", [])
        self._reset()

    # ------------------------------------------------------------------ callbacks
    def on_train_start(self, trainer) -> None:
        if self._active and self._trainer is trainer:
            return  # this callback was registered twice: already watching this trainer
        self._reset()
        if RANK not in {-1, 0}:
            return  # gradients are all-reduced: rank 0 sees the global ones and is the only writer
        _check_trainer(trainer)  # HookError: loud by design, before anything is written
        owner = trainer.__dict__.get("_gradmon_owner")
        if owner is not None and owner is not self:
            LOGGER.warning(
                f"{PREFIX}another GradientMonitor already watches this training; this one stays inactive "
                "(gradients are never logged twice)."
            )
            return
        _dedupe_callbacks(trainer, self)
        try:
            self._start(trainer)
        except Exception as e:  # noqa: BLE001 - a monitor that cannot start never stops training
            self._disable(e)

    def _start(self, trainer) -> None:
        self._trainer = trainer
        trainer._gradmon_owner = self
        self._setup_model(trainer)
        save_dir = Path(trainer.save_dir)
        self.out_dir = save_dir / OUT_DIRNAME
        resumed, start_step = self._resume_point(trainer)
        layout = self._capture.layout
        self._ctx = RunContext(
            save_dir=save_dir,
            out_dir=self.out_dir,
            model_name=_model_name(trainer),
            modules=layout.names,
            trainable=layout.trainable,
            numel=layout.numel,
            layer_index=layout.layer_index,
            cfg=self.cfg,
            trainer=trainer,
            resumed=resumed,
            start_step=start_step,
            start_epoch=int(getattr(trainer, "start_epoch", 0)),
            header_extra=self._signals.header(),
            records=self.records,
        )
        self._sinks = [GuardedSink(LocalSink(), error=True)] + [GuardedSink(s) for s in self._make_extra_sinks()]
        for s in self._sinks:
            s.call("start", self._ctx)
        self._wrap_optimizer_step(trainer)
        self._active = True
        n_tr = sum(layout.trainable)
        console.print_start(layout.n_groups, n_tr, self.cfg.granularity, self.cfg.log_every, str(self.out_dir))

    def on_train_epoch_start(self, trainer) -> None:
        if not self._active:
            return
        try:
            self._batch_i = -1
            self._nb = max(1, len(trainer.train_loader))
            self._nw = _warmup_iterations(trainer, self._nb)
            self._ensure_hooked(trainer)
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def on_train_batch_start(self, trainer) -> None:
        if not self._active:
            return
        self._batch_i += 1
        try:
            self._ensure_hooked(trainer)  # a callback may have replaced trainer.optimizer_step
            # this batch belongs to the coming optimizer step (number self._step + 1): hooks only if it is logged;
            # the flow then on every flow_every-th pass of logged steps (with accumulation every logged step keeps
            # some), activation health on every health_every-th logged step (k counts logged steps from 0)
            cfg = self.cfg
            logged = self._step % cfg.log_every == 0
            k = self._step // cfg.log_every
            flow = logged and self._flow_passes % cfg.flow_every == 0
            self._flow_passes += logged
            self._signals.arm(flow=flow, health=logged and k % cfg.health_every == 0)
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def on_train_epoch_end(self, trainer) -> None:
        if not self._active:
            return
        try:
            # no hook of ours on the model between epochs: Ultralytics deep-copies it there (NaN recovery's new EMA),
            # and a copy carrying our hooks could not be saved; the next batch re-arms them
            self._signals.arm(flow=False, health=False)
            self._flush()
        except Exception as e:  # noqa: BLE001
            self._disable(e)
            return
        for s in self._sinks:
            s.call("epoch_end", int(trainer.epoch) + 1, self._step)
        if self._calls == 0 and trainer.epoch == self._ctx.start_epoch and self._batch_i + 1 >= max(1, trainer.accumulate):
            raise HookError(
                f"{PREFIX}no optimizer step reached the monitor in epoch {trainer.epoch + 1} although "
                f"{self._batch_i + 1} batches ran: this Ultralytics version no longer calls trainer.optimizer_step(). "
                "Please report it with your ultralytics version."
            )

    def on_train_end(self, trainer) -> None:
        if self._ctx is None or self._finished:
            return
        self._finished = True
        try:
            self._finish()
        except Exception as e:  # noqa: BLE001 - never stop the trainer at its very end
            LOGGER.error(f"{PREFIX}could not finish the gradient outputs ({type(e).__name__}: {e}); "
                         f"the log up to here is in {self.out_dir}.")
        finally:
            self._active = False
            self._unwrap(trainer)
            self._remove_signals()

    def _finish(self) -> None:
        if not self._sinks:
            return  # the monitor failed to start (already reported)
        if self._active:
            try:
                self._flush()
            except Exception as e:  # noqa: BLE001
                self._disable(e)
        self._active = False
        header = header_record(self._ctx)
        self.summary = build_summary(header, self.records, self.flags, complete=True)
        local = self._sinks[0]
        if local.enabled:
            try:
                self.summary = write_outputs(self.out_dir, header, self.records, self.flags, complete=True)
                from .report import render_pngs  # matplotlib only at train end

                heat, curves = render_pngs(self.out_dir, header, self.records)
                self.summary["media"] = {"heatmap": str(heat), "curves": str(curves)}
            except Exception as e:  # noqa: BLE001
                LOGGER.error(f"{PREFIX}could not write Parquet/summary/PNGs in {self.out_dir}: {e}")
        for s in self._sinks:
            s.call("finish", self.summary)
        if self.cfg.console:
            where = str(self.out_dir) if local.enabled else f"memory only (the local log in {self.out_dir} failed, see above)"
            console.print_end(self.summary, where)

    # ------------------------------------------------------------------ internals
    def _make_extra_sinks(self) -> list:
        sinks = list(self.extra_sinks)
        if self.cfg.wandb:
            try:
                from .sinks.wandb import make_wandb_sink

                sink = make_wandb_sink(self.cfg)
            except Exception as e:  # noqa: BLE001 - no W&B never stops training
                LOGGER.warning(f"{PREFIX}W&B sink unavailable ({type(e).__name__}: {e}); logging locally only.")
                sink = None
            if sink is not None:
                sinks.append(sink)
        return sinks

    def _setup_model(self, trainer) -> None:
        model = unwrap_model(trainer.model)
        self._model = model
        self._capture = GradientCapture(
            build_layout(model, self.cfg.granularity), update_ratio=self.cfg.update_ratio, clip_norm=self.cfg.clip_norm
        )
        self._remove_signals()
        scale = lambda: _scale_tensor(getattr(trainer, "scaler", None))  # noqa: E731 - AMP scale of each backward
        self._signals = DepthSignals(model, self.cfg, trainer, scale_fn=scale)
        self._capture.extra_sources = self._signals.sources_for_capture
        layout = self._capture.layout
        self._engine = RuleEngine(layout.names, layout.trainable, self.cfg, layout.layer_index, self._signals.header())

    def _model_replaced(self, trainer) -> None:
        """A callback replaced ``trainer.model`` mid-run: finish the old model's record, re-hook the new one."""
        self._flush()
        old_names, engine = self._capture.layout.names, self._engine
        self._setup_model(trainer)
        layout = self._capture.layout
        if layout.names != old_names:
            raise RuntimeError(
                f"trainer.model was replaced mid-run by a model with other {self.cfg.granularity}s "
                f"({len(old_names)} -> {layout.n_groups}); the log cannot mix the two layouts"
            )
        engine.trainable = list(layout.trainable)
        self._engine = engine  # same modules: the rule state (windows, open flags) carries over

    def _resume_point(self, trainer) -> tuple[bool, int]:
        """On ``resume=True``, continue the existing log: restore the step counter and the rule state."""
        log_path = self.out_dir / LOG_NAME
        start_epoch = int(getattr(trainer, "start_epoch", 0))
        if not (getattr(trainer.args, "resume", False) and start_epoch > 0 and log_path.is_file()):
            return False, 0
        log = read_log(log_path)
        step = log.last_step_of_epoch(start_epoch)
        if step is None:
            step = max((r["step"] for r in log.steps if r["epoch"] <= start_epoch), default=0)
        kept = [r for r in log.steps if r["step"] <= step]
        if log.modules != self._capture.layout.names:  # its step lines could not be read with a new header
            raise RuntimeError(
                f"cannot continue {log_path}: it logs other modules (granularity {log.header.get('granularity')!r}, "
                f"{len(log.modules)} modules; now {self.cfg.granularity!r}, {self._capture.layout.n_groups}). "
                "Resume with the gradmon options of the interrupted run; the log is left as it is"
            )
        for rec in kept:
            self.records.append(rec)
            self._engine.update(StepView.from_record(rec))
        self.flags = list(self._engine.flags)
        self._step = step
        LOGGER.info(f"{PREFIX}resuming {log_path} after optimizer step {step} (epoch {start_epoch})")
        return True, step

    def _wrap_optimizer_step(self, trainer) -> None:
        original = trainer.optimizer_step
        monitor = self

        def optimizer_step(*args, **kwargs):
            return monitor._on_optimizer_step(trainer, original, args, kwargs)

        optimizer_step._gradmon = self
        optimizer_step._gradmon_original = original
        trainer.optimizer_step = optimizer_step
        self._hooked_fn = optimizer_step

    def _ensure_hooked(self, trainer) -> None:
        """Hook again if something replaced ``trainer.optimizer_step`` by a function that no longer calls ours."""
        fn = trainer.__dict__.get("optimizer_step")
        if fn is not None and fn is self._hooked_fn:
            return
        if fn is not None and _reaches(fn, self):
            self._hooked_fn = fn  # a user wrapper around ours: we still see every step, innermost
            return
        self._wrap_optimizer_step(trainer)

    def _unwrap(self, trainer) -> None:
        fn = trainer.__dict__.get("optimizer_step")
        if fn is not None and getattr(fn, "_gradmon", None) is self:
            del trainer.optimizer_step
        if trainer.__dict__.get("_gradmon_owner") is self:
            del trainer._gradmon_owner

    def _on_optimizer_step(self, trainer, original, args, kwargs):
        if not self._active or self._in_step:
            return original(*args, **kwargs)  # nested (our wrapper wrapped again): capture once, in the outer call
        self._in_step = True
        try:
            return self._monitored_step(trainer, original, args, kwargs)
        finally:
            self._in_step = False

    def _monitored_step(self, trainer, original, args, kwargs):
        state = {"ran": False, "result": None}

        def run():
            state["ran"] = True
            try:
                state["result"] = original(*args, **kwargs)
            except BaseException:
                state["failed"] = True  # the trainer's own error: never swallowed
                raise

        self._calls += 1
        self._step += 1
        step = self._step
        logged = (step - 1) % self.cfg.log_every == 0
        try:
            if unwrap_model(trainer.model) is not self._model:
                self._model_replaced(trainer)  # a callback rebuilt the model: re-establish the layout
            if logged:
                ni = int(trainer.epoch) * self._nb + max(self._batch_i, 0)
                self._warmup[step] = bool(self._nw and ni <= self._nw)
            self._capture.step(
                run,
                step=step,
                epoch=int(trainer.epoch) + 1,
                logged=logged,
                lr=[g["lr"] for g in trainer.optimizer.param_groups],
                scaler=getattr(trainer, "scaler", None),
                on_complete=self._emit,  # the previous record is written before this step runs
            )
        except Exception as e:  # noqa: BLE001
            if state.get("failed"):
                raise
            self._disable(e)
            if not state["ran"]:
                run()
        return state["result"]

    def _remove_signals(self) -> None:
        if self._signals is not None:
            try:
                self._signals.remove()
            except Exception:  # noqa: BLE001 - removing hooks never stops training
                pass

    def _disable(self, e: Exception) -> None:
        self._active = False
        self._remove_signals()
        where = f"; the log up to here is in {self.out_dir}" if self.out_dir is not None else ""
        LOGGER.error(
            f"{PREFIX}gradient capture disabled after {type(e).__name__}: {e}. Training continues unmonitored{where}."
        )

    def _flush(self) -> None:
        if self._capture is not None:
            self._emit(self._capture.flush())

    def _emit(self, done: list[StepStats]) -> None:
        for stats in done:
            record = step_record(stats, self._warmup.pop(stats.step, None))
            record.update(stats.extra)  # flow / activation-health fields (optional in the log)
            self.records.append(record)
            new = self._engine.update(StepView.from_record(record))
            self.flags = self._engine.flags
            for flag in new:
                console.warn_flag(flag)
                for s in self._sinks:
                    s.call("on_flag", flag)
            n_flagged = len({f.module for f in self._engine.flags if f.active})
            for s in self._sinks:
                s.call("log_step", stats, record, n_flagged)


def _check_trainer(trainer) -> None:
    """Fail loudly at train start if this trainer's internals no longer match what the hook needs."""
    missing = [a for a in ("optimizer_step", "optimizer", "model", "save_dir") if not hasattr(trainer, a)]
    if missing or not callable(getattr(trainer, "optimizer_step", None)):
        raise HookError(
            f"{PREFIX}cannot hook this Ultralytics trainer ({type(trainer).__name__}): missing {missing or ['optimizer_step()']}."
        )
    try:
        src = inspect.getsource(type(trainer)._do_train)
    except (OSError, TypeError, AttributeError):
        return  # source unavailable (frozen app): rely on the first-epoch check
    if "self.optimizer_step(" not in src:
        raise HookError(
            f"{PREFIX}{type(trainer).__name__}._do_train() does not call self.optimizer_step(); the gradient "
            "monitor cannot see optimizer steps in this Ultralytics version. Please report it with your version."
        )


def _dedupe_callbacks(trainer, monitor) -> None:
    """Keep one registration of each of this monitor's callbacks (``add_callback`` called twice by hand)."""
    dropped = 0
    for fns in (getattr(trainer, "callbacks", None) or {}).values():
        seen, keep = set(), []
        for fn in fns:
            if getattr(fn, "__self__", None) is monitor:
                if fn.__func__ in seen:
                    dropped += 1
                    continue
                seen.add(fn.__func__)
            keep.append(fn)
        if len(keep) != len(fns):
            fns[:] = keep  # in place: also skips the repeats of the event now running
    if dropped:
        LOGGER.warning(f"{PREFIX}this GradientMonitor's callbacks were registered more than once; ignoring the repeats.")


def _reaches(fn, monitor, depth: int = 0) -> bool:
    """Whether ``fn`` (what replaced ``trainer.optimizer_step``) still calls the monitor's wrapper, looking through
    bound methods, ``functools.wraps``/``partial`` and closure cells, which is how wrappers hold what they wrap."""
    try:
        if getattr(fn, "_gradmon", None) is monitor:
            return True
        if depth >= 6:
            return False
        inner = [getattr(fn, "__wrapped__", None), getattr(fn, "__func__", None)]
        if isinstance(fn, functools.partial):
            inner += [fn.func, *fn.args, *fn.keywords.values()]
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                inner.append(cell.cell_contents)
            except ValueError:  # empty cell
                pass
    except Exception:  # noqa: BLE001 - an exotic callable: treat as not reaching us (we hook again)
        return False
    return any(callable(f) and _reaches(f, monitor, depth + 1) for f in inner if f is not None)


def _picklable(sinks: list) -> list:
    """The extra sinks that survive pickling into DDP workers; the others are dropped with a warning."""
    try:
        import cloudpickle as pickler  # what Ultralytics' DDP launcher uses
    except ImportError:  # pragma: no cover
        import pickle as pickler
    keep = []
    for sink in sinks:
        try:
            pickler.dumps(sink)
            keep.append(sink)
        except Exception as e:  # noqa: BLE001
            LOGGER.warning(
                f"{PREFIX}extra sink {getattr(sink, 'name', type(sink).__name__)!r} cannot be pickled into DDP "
                f"workers ({type(e).__name__}: {e}); it receives nothing there."
            )
    return keep


def _warmup_iterations(trainer, nb: int) -> int:
    fn = getattr(trainer, "_get_warmup_iterations", None)
    if callable(fn):
        try:
            return int(fn(nb))
        except Exception:  # noqa: BLE001
            pass
    w = float(getattr(trainer.args, "warmup_epochs", 0) or 0)
    return max(round(w * nb), 100) if w > 0 else 0


def _model_name(trainer) -> str:
    m = getattr(trainer.args, "model", None)
    return str(m) if m is not None else type(unwrap_model(trainer.model)).__name__
