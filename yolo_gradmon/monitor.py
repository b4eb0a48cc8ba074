"""GradientMonitor: options, ``attach(model)``, the Ultralytics callbacks, and the fan-out to the sinks.

One way through the layers at each optimizer step: the :class:`~yolo_gradmon.hook.StepHook` hands the trainer's
step to :mod:`~yolo_gradmon.measure` (the :class:`~yolo_gradmon.measure.schedule.Schedule` says what to measure, the
probe measures it on the device with one host sync). That is all the training thread does: the synced values go to
the :class:`~yolo_gradmon.host_worker.HostWorker`, whose thread makes the record, judges it
(:mod:`~yolo_gradmon.judge`) and hands it to every sink of :mod:`~yolo_gradmon.show` (local files, W&B, console).
Epoch and train end wait for that thread, so every sink sees every event in order.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from . import hook
from .config import PREFIX, GradmonConfig
from .hook import HookError, StepHook  # noqa: F401 - HookError is part of the monitor's API
from .host_worker import HostWorker
from .judge.rules import RuleEngine, StepView
from .measure.params import StepStats, SyncedStep, amp_scale_tensor
from .measure.probe import ModelProbe
from .measure.schedule import Schedule
from .record.logfile import LOG_NAME, header_record, resume_log, step_record
from .record.outputs import TrainEnd
from .show.fanout import Fanout
from .show.sink import History, RunInfo
from .trainer import compiled, dataset_facts, model_name, remember_data_arg, train_facts, warmup_iterations

OUT_DIRNAME = "gradmon"

__all__ = ["GradientMonitor", "HookError", "OUT_DIRNAME"]


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
    output directory. ``monitor.extra_sinks`` takes more :class:`~yolo_gradmon.show.sink.Sink` objects.
    During training, records reach ``monitor.records`` and the sinks on the monitor's host thread, a logged step
    behind the trainer; :meth:`drain_host_work` waits until they are all there (epoch and train end do).
    """

    def __init__(self, config: GradmonConfig | dict | str | Path | None = None, **options: Any):
        self.cfg = GradmonConfig.coerce(config, **options)
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
            "on_pretrain_routine_start": self.on_pretrain_routine_start,
            "on_train_start": self.on_train_start,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_epoch_end": self.on_train_epoch_end,
            "on_train_end": self.on_train_end,
            "teardown": self.teardown,
        }

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.summary: dict | None = None
        self.out_dir: Path | None = None
        self.records: list[dict] = []
        self.flags = []
        self._active = self._finished = False
        self._trainer = None
        self._hook: StepHook | None = None
        self._probe: ModelProbe | None = None
        self._schedule: Schedule | None = None
        self._engine: RuleEngine | None = None
        self._run: RunInfo | None = None
        self._fan_out: Fanout | None = None
        self._worker: HostWorker | None = None  # the host work of logged steps, off the training thread
        self._unhook_epoch_end = None
        self._warmup: dict[int, bool | None] = {}  # logged step -> in warm-up, until its record completes
        self._recoveries = 0  # Ultralytics' nan_recovery_attempts last seen
        self._reloaded_at: int | None = None  # first optimizer step after Ultralytics reloaded last.pt

    def __getstate__(self):
        # DDP: Ultralytics pickles callbacks (cloudpickle) into worker processes; ship the options and the extra
        # sinks that can travel, never live state (tensors, open files, the trainer).
        return {"cfg": self.cfg, "extra_sinks": _picklable(self.extra_sinks)}

    def __setstate__(self, state):
        self.cfg = state["cfg"]
        self.extra_sinks = state.get("extra_sinks", [])
        self._reset()

    # ------------------------------------------------------------------ callbacks
    def on_pretrain_routine_start(self, trainer) -> None:
        try:
            remember_data_arg(trainer)  # the dataset as given, before Ultralytics resolves it
        except Exception:  # noqa: BLE001 - a fact for the header only; never a failure
            pass

    def on_train_start(self, trainer) -> None:
        if self._active and self._trainer is trainer:
            return  # this callback was registered twice: already watching this trainer
        self._reset()
        if RANK not in {-1, 0}:
            return  # gradients are all-reduced: rank 0 sees the global ones and is the only writer
        hook.check_trainer(trainer)  # HookError: loud by design, before anything is written
        owner = trainer.__dict__.get("_gradmon_owner")
        if owner is not None and owner is not self:
            LOGGER.warning(f"{PREFIX}another GradientMonitor already watches this training; this one stays inactive "
                           "(gradients are never logged twice).")
            return
        hook.dedupe_callbacks(trainer, self)
        try:
            self._start(trainer)
        except Exception as e:  # noqa: BLE001 - a monitor that cannot start never stops training
            self._disable(e)

    def _start(self, trainer) -> None:
        self._trainer = trainer
        trainer._gradmon_owner = self
        self._probe = self._make_probe(trainer)
        L = self._probe.layout
        self._engine = RuleEngine(L.names, L.trainable, self.cfg, L.layer_index, self._probe.depth.header())
        save_dir = Path(trainer.save_dir)
        self.out_dir = save_dir / OUT_DIRNAME
        resumed, start_step = self._resume(trainer)
        self._schedule = Schedule(self.cfg, start_step)
        header = header_record(model_name(trainer), getattr(trainer.args, "task", None), self.cfg.granularity,
                               self._probe.header_fields(), self.cfg.to_dict(), train=train_facts(trainer),
                               data=dataset_facts(trainer))
        self._run = RunInfo(header=header, cfg=self.cfg, save_dir=save_dir, out_dir=self.out_dir, resumed=resumed,
                            start_step=start_step, start_epoch=int(getattr(trainer, "start_epoch", 0)),
                            epochs=getattr(trainer, "epochs", None), trainer_args=dict(vars(trainer.args)),
                            callbacks=getattr(trainer, "callbacks", None))
        self._fan_out = Fanout(self.cfg, self.extra_sinks)
        self._fan_out.start(self._run)
        self._worker = HostWorker(self._host_work)
        # before every other on_train_epoch_end callback (Ultralytics' W&B one opens its epoch row there)
        self._unhook_epoch_end = hook.run_first(trainer, "on_train_epoch_end", self._host_work_done)
        self._hook = StepHook(trainer, self._on_optimizer_step, on_error=self._disable, active=lambda: self._active,
                              owner=self)
        self._active = True

    def on_train_epoch_start(self, trainer) -> None:
        if not self._active:
            return
        try:
            attempts = int(getattr(trainer, "nan_recovery_attempts", 0) or 0)
            if attempts > self._recoveries:  # Ultralytics' NaN recovery reloaded last.pt after the last epoch
                self._reloaded_at = self._schedule.step + 1
            self._recoveries = attempts
            nb = max(1, len(trainer.train_loader))
            self._schedule.start_epoch(int(trainer.epoch), nb, warmup_iterations(trainer, nb))
            self._hook.ensure()
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def on_train_batch_start(self, trainer) -> None:
        if not self._active:
            return
        try:
            self._hook.ensure()  # a callback may have replaced trainer.optimizer_step
            self._probe.arm(self._schedule.next_pass())
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def _host_work_done(self, trainer) -> None:
        """First of the ``on_train_epoch_end`` callbacks: the epoch's records are judged and with every sink."""
        if not self._active:
            return
        try:
            self.drain_host_work()
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def drain_host_work(self) -> None:
        """Wait until every completed record of a logged step has been judged and handed to every sink."""
        if self._worker is not None:
            self._worker.drain()

    def on_train_epoch_end(self, trainer) -> None:
        if not self._active:
            return
        try:
            # no hook of ours on the model between epochs: Ultralytics deep-copies it there (NaN recovery's new EMA),
            # and a copy carrying our hooks could not be saved; the next batch re-arms them
            self._probe.disarm()
            self._flush()
        except Exception as e:  # noqa: BLE001
            self._disable(e)
            return
        sched = self._schedule
        self._fan_out.epoch_end(int(trainer.epoch) + 1, sched.step, History(self.records, self.flags))
        if trainer.epoch == self._run.start_epoch:
            hook.check_steps_reached(trainer, steps=sched.steps_this_run, batches=sched.batch + 1)  # HookError: loud

    def on_train_end(self, trainer) -> None:
        self._finish(trainer, complete=True)

    def teardown(self, trainer) -> None:
        """Ultralytics' ``teardown`` runs in ``train()``'s ``finally``: after a training that raised (NaN persisted,
        an error in user code, Ctrl-C) the summary, tables and report are still written, marked incomplete."""
        if self._run is None or self._finished:
            return
        err = sys.exc_info()[1]
        self._finish(trainer, complete=False,
                     stopped_by=f"{type(err).__name__}: {err}" if err is not None else "training stopped before train end")

    def _finish(self, trainer, complete: bool, stopped_by: str | None = None) -> None:
        if self._run is None or self._finished:
            return
        self._finished = True
        try:
            if self._fan_out is not None:  # else the monitor failed to start (already reported)
                if self._active:
                    try:
                        self._probe.disarm()
                        self._flush()
                    except Exception as e:  # noqa: BLE001 - the records so far still make the outputs
                        self._disable(e)
                if self._worker is not None:  # the record in flight (a disabled monitor's too) reaches the sinks first
                    self._worker.close()
                self._active = False
                end = TrainEnd.build(self._run.header, self.records, self.flags, complete=complete,
                                     log_path=self.out_dir / LOG_NAME, stopped_by=stopped_by)
                self.summary = end.summary
                self._fan_out.finish(end)
        except Exception as e:  # noqa: BLE001 - never stop the trainer at its very end
            LOGGER.error(f"{PREFIX}could not finish the gradient outputs ({type(e).__name__}: {e}); "
                         f"the log up to here is in {self.out_dir}.")
        finally:
            self._active = False
            if self._worker is not None:
                self._worker.close()
            if self._unhook_epoch_end is not None:
                self._unhook_epoch_end()
            if self._hook is not None:
                self._hook.remove()
            if trainer.__dict__.get("_gradmon_owner") is self:
                del trainer._gradmon_owner
            if self._probe is not None:
                self._probe.remove()

    # ------------------------------------------------------------------ the optimizer step
    def _on_optimizer_step(self, run) -> None:
        """Measure around one optimizer step (``run`` is the trainer's own step, called exactly once)."""
        trainer = self._trainer
        plan = self._schedule.next_step()
        if plan.logged:
            self._warmup[plan.step] = plan.warmup
        if unwrap_model(trainer.model) is not self._probe.model:
            self._model_replaced(trainer)  # a callback rebuilt the model: re-establish the layout
        capture = self._probe.capture
        capture.step(
            run, step=plan.step, epoch=int(trainer.epoch) + 1, logged=plan.logged, update=plan.update,
            slow=plan.slow, lr=[g["lr"] for g in trainer.optimizer.param_groups], scaler=getattr(trainer, "scaler", None),
            on_synced=lambda synced: self._worker.put((capture, synced)),  # handed over before this step runs
        )

    def _host_work(self, item: tuple) -> None:
        """The worker thread's part of a logged step: decode the synced values, then :meth:`_emit`."""
        capture, synced = item
        self._emit(capture.decode(synced))

    def _emit(self, done: list[StepStats]) -> None:
        """Judge each completed record and hand it to every sink (on the worker thread)."""
        for stats in done:
            record = step_record(stats, self._warmup.pop(stats.step, None))
            if self._reloaded_at is not None and stats.step >= self._reloaded_at:
                record["reloaded"] = True  # the first logged step after Ultralytics' NaN recovery
                self._reloaded_at = None
            self.records.append(record)
            new = self._engine.update(StepView.from_record(record))
            self.flags = self._engine.flags
            for flag in new:
                self._fan_out.on_flag(flag)
            n_flagged = len({f.module for f in self._engine.flags if f.active})
            self._fan_out.log_step(record, n_flagged)

    def _flush(self) -> None:
        """Complete the pending record and wait until the worker has handed everything to the sinks."""
        if self._probe is None or self._worker is None:
            return
        capture = self._probe.capture
        synced: SyncedStep | None = capture.flush_synced()
        if synced is not None:
            self._worker.put((capture, synced))
        self._worker.drain()

    # ------------------------------------------------------------------ building and rebuilding
    def _make_probe(self, trainer) -> ModelProbe:
        if self._probe is not None:
            self._probe.remove()
        scale = lambda: amp_scale_tensor(getattr(trainer, "scaler", None))  # noqa: E731 - AMP scale of each backward
        return ModelProbe(unwrap_model(trainer.model), self.cfg, compiled=compiled(trainer), scale_fn=scale,
                          world_size=int(getattr(trainer, "world_size", 1) or 1))

    def _model_replaced(self, trainer) -> None:
        """A callback replaced ``trainer.model`` mid-run: finish the old model's record, re-hook the new one."""
        self._flush()
        old = self._probe.layout.names
        self._probe = self._make_probe(trainer)
        if self._probe.layout.names != old:
            raise RuntimeError(
                f"trainer.model was replaced mid-run by a model with other {self.cfg.granularity}s "
                f"({len(old)} -> {self._probe.layout.n_groups}); the log cannot mix the two layouts"
            )
        self._engine.trainable = list(self._probe.layout.trainable)  # same modules: the rule state carries over

    def _resume(self, trainer) -> tuple[bool, int]:
        """On ``resume=True``, continue the existing log: restore the step count and the rule state."""
        log_path, start_epoch = self.out_dir / LOG_NAME, int(getattr(trainer, "start_epoch", 0))
        if not (getattr(trainer.args, "resume", False) and start_epoch > 0 and log_path.is_file()):
            return False, 0
        step, kept = resume_log(log_path, self._probe.layout.names, self.cfg.granularity, start_epoch)
        self.records += kept
        self._engine.replay(kept)
        self.flags = list(self._engine.flags)
        LOGGER.info(f"{PREFIX}resuming {log_path} after optimizer step {step} (epoch {start_epoch})")
        return True, step

    def _disable(self, e: Exception) -> None:
        self._active = False
        if self._probe is not None:
            self._probe.remove()
        where = f"; the log up to here is in {self.out_dir}" if self.out_dir is not None else ""
        LOGGER.error(
            f"{PREFIX}gradient capture disabled after {type(e).__name__}: {e}. Training continues unmonitored{where}."
        )


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
