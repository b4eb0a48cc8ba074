"""Fault injection: the monitor never breaks, stalls or corrupts a training run, loses no logged step, and survives
DDP pickling, resume and bad input (the matrix with results is docs/faults.md).

Real Ultralytics trainings on COCO8 at imgsz=160 (1-3 epochs, about 2 s each), shared through module-scoped fixtures.
Statistics are checked against an independent reference that patches ``torch.nn.utils.clip_grad_norm_``:
Ultralytics' ``optimizer_step`` calls it right after unscaling, so it sees exactly the unscaled, accumulated,
pre-clip gradients whatever wraps ``trainer.optimizer_step``; each step's weight update is measured around
``optimizer.step`` with a global optimizer step hook. Neither depends on the monitor's own hook.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from conftest import logged_records, requires_coco8
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import unwrap_model

import yolo_gradmon.monitor as monitor_mod
from yolo_gradmon import GradientMonitor, GradmonConfigError, read_log, rebuild
from yolo_gradmon.measure.params import GradientCapture
from yolo_gradmon.cli import main as cli_main
from yolo_gradmon.structure.layout import build_layout
from yolo_gradmon.record.logfile import SCHEMA_VERSION, LogSchemaError, LogWriter
from yolo_gradmon.record.outputs import TrainEnd
from yolo_gradmon.judge.rules import RuleEngine, StepView
from yolo_gradmon.show.sink import Sink

TRAIN = dict(
    data="coco8.yaml", imgsz=160, batch=2, nbs=2, workers=0, device="cpu", plots=False, val=False, exist_ok=True,
    seed=0, deterministic=True,
)
TRAIN_B1 = {**TRAIN, "batch": 1, "nbs": 1}  # COCO8 has 4 training images: 4 optimizer steps per epoch


# ---------------------------------------------------------------------------------------------------- helpers
class RecordingSink(Sink):
    """An extra sink standing in for W&B: records what it receives (picklable, so it survives DDP pickling)."""

    name = "recording"

    def __init__(self):
        self.started = False
        self.steps: list[int] = []
        self.finished: dict | None = None

    def start(self, ctx):
        self.started = True

    def log_step(self, record, n_flagged):
        self.steps.append(record["step"])

    def finish(self, end):
        self.finished = end.summary


def _layer_key(net, name: str) -> str:
    idx = int(name.split(".")[1])
    return f"{idx:02d}.{type(net.model[idx]).__name__}"


class ClipReference:
    """Per optimizer step, per top-level layer: unscaled pre-clip grad norm, weight norm, and ‖Δw‖ (float64 loops)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.trainer = None
        self._before: dict[str, torch.Tensor] = {}

    def install(self, model, mp: pytest.MonkeyPatch):
        model.add_callback("on_train_start", self._on_train_start)
        real = torch.nn.utils.clip_grad_norm_

        def clip_grad_norm_(parameters, *args, **kwargs):
            parameters = list(parameters)
            self._record()
            return real(parameters, *args, **kwargs)

        mp.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)
        return register_optimizer_step_post_hook(self._after_step)  # removed by the caller

    def _on_train_start(self, trainer):
        self.trainer = trainer

    def _record(self):
        tr = self.trainer
        net = unwrap_model(tr.model)
        g2, w2 = defaultdict(float), defaultdict(float)
        self._before = {}
        for name, p in net.named_parameters():
            key = _layer_key(net, name)
            w2[key] += float(p.detach().double().norm()) ** 2
            if p.grad is not None:
                g2[key] += float(p.grad.double().norm()) ** 2
                self._before[name] = p.detach().double().clone()
        self.steps.append(
            {
                "epoch": int(tr.epoch) + 1,
                "grad": {k: math.sqrt(v) for k, v in g2.items()},
                "weight": {k: math.sqrt(v) for k, v in w2.items()},
                "update": {k: 0.0 for k in g2},  # stays 0 when the GradScaler skips optimizer.step
            }
        )

    def _after_step(self, optimizer, args, kwargs):
        if self.trainer is None or not self.steps or optimizer is not self.trainer.optimizer:
            return
        net = unwrap_model(self.trainer.model)
        d2 = defaultdict(float)
        for name, p in net.named_parameters():
            if name in self._before:
                d2[_layer_key(net, name)] += float((p.detach().double() - self._before[name]).norm()) ** 2
        self.steps[-1]["update"] = {k: math.sqrt(v) for k, v in d2.items()}


@contextlib.contextmanager
def reference(model):
    ref = ClipReference()
    with pytest.MonkeyPatch.context() as mp:
        handle = ref.install(model, mp)
        try:
            yield ref
        finally:
            handle.remove()


def _close(value, expected, rel=1e-4, abs_=1e-12) -> bool:
    if expected is None or not math.isfinite(expected):
        return value is None  # non-finite: stored as null
    return value is not None and math.isclose(value, expected, rel_tol=rel, abs_tol=abs_)


def assert_matches_reference(log, ref: ClipReference):
    """Every optimizer step logged once, in order, with the reference's statistics."""
    assert [r["step"] for r in log.steps] == list(range(1, len(ref.steps) + 1))
    for rec, r in zip(log.steps, ref.steps):
        assert rec["epoch"] == r["epoch"], rec["step"]
        for i, m in enumerate(log.modules):
            if m not in r["grad"]:
                assert not rec["has_grad"][i]
                continue
            assert _close(rec["grad_norm"][i], r["grad"][m]), (rec["step"], m, rec["grad_norm"][i], r["grad"][m])
            assert _close(rec["weight_norm"][i], r["weight"][m]), (rec["step"], m)
            ratio = r["update"][m] / r["weight"][m]
            # rel 1e-3: ‖Δw‖ is a float32 reduction; AdamW's first step moves ~300k weights of a layer by the same
            # ±lr, the worst case for float32 summation (measured 1.4e-4 on 07.Conv vs the float64 reference)
            assert _close(rec["update_to_weight"][i], ratio, rel=1e-3, abs_=1e-9), (rec["step"], m, rec["update_to_weight"][i], ratio)


def inject(model, step: int, value: float, n: int, layer: int = 2):
    """Make ``n`` gradient values of ``model.model[layer]``'s first parameter ``value`` during optimizer step ``step``
    (every batch is an optimizer step here: nbs == batch), with a tensor hook: before any optimizer_step wrapper."""
    state = {"batches": 0, "handle": None}

    def on_batch_start(trainer):
        state["batches"] += 1
        if state["batches"] == step:
            p = next(unwrap_model(trainer.model).model[layer].parameters())

            def hook(g):
                g = g.clone()
                g.view(-1)[:n] = value
                return g

            state["handle"] = p.register_hook(hook)

    def on_batch_end(trainer):
        if state["handle"] is not None:
            state["handle"].remove()
            state["handle"] = None

    model.add_callback("on_train_batch_start", on_batch_start)
    model.add_callback("on_train_batch_end", on_batch_end)


def gradmon_messages(records, level=logging.ERROR) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == level and "gradmon" in r.getMessage()]


def strict_json_lines(path: Path) -> list[dict]:
    """Parse every line as strict JSON (NaN/Infinity tokens are an error)."""

    def no_constants(token):
        raise AssertionError(f"non-strict JSON token {token} in {path}")

    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def state_of(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)


# ---------------------------------------------------------------------------------------------------- NaN / Inf
def _nan_run(project: Path, mode: str, monitored: bool):
    model = YOLO("yolo26n.yaml")
    if mode == "amp":  # AMP's GradScaler path on CPU (CUDA is unavailable here): the scaler skips the Inf step
        model.add_callback("on_train_start", lambda tr: setattr(tr, "scaler", torch.amp.GradScaler("cpu", init_scale=2.0**12)))
        inject(model, step=3, value=float("inf"), n=3)
        epochs = 2
    else:  # fp32: NaN weights after the step, then Ultralytics' own NaN recovery reloads last.pt mid-run
        inject(model, step=3, value=float("nan"), n=5)
        epochs = 3
    losses = []
    model.add_callback("on_train_batch_end", lambda tr: losses.append(float(tr.loss.detach())))
    with reference(model) as ref, logged_records() as records:
        mon = GradientMonitor(wandb=False, update_every=1).attach(model) if monitored else None
        model.train(epochs=epochs, project=str(project), name=f"{mode}-{'mon' if monitored else 'plain'}", **TRAIN)
    tr = model.trainer
    return SimpleNamespace(mon=mon, ref=ref, losses=losses, model=state_of(unwrap_model(tr.model)),
                           ema=state_of(tr.ema.ema), records=records, save_dir=Path(tr.save_dir))


@pytest.fixture(scope="module", params=["fp32", "amp"])
def nan_runs(request, tmp_path_factory):
    project = tmp_path_factory.mktemp(f"nan-{request.param}")
    return request.param, _nan_run(project, request.param, True), _nan_run(project, request.param, False)


@requires_coco8
def test_nonfinite_flagged_at_step_and_stored_as_null(nan_runs):
    mode, run, _ = nan_runs
    log = read_log(run.mon.out_dir)
    i = log.modules.index("02.C3k2")
    rec = log.steps[2]
    assert rec["step"] == 3 and rec["grad_norm"][i] is None and rec["max_abs_grad"][i] is None
    assert rec["nonfinite"][i] == (3 if mode == "amp" else 5)
    assert all(v is not None for j, v in enumerate(rec["grad_norm"]) if j != i)  # only the injected layer
    assert all(sum(r["nonfinite"]) == 0 for r in log.steps[:2])
    flags = run.mon.summary["flags"]
    first = [f for f in flags if f["kind"] == "nonfinite" and f["module"] == "02.C3k2"]
    assert first and first[0]["first_step"] == 3
    assert min(f["first_step"] for f in flags if f["kind"] == "nonfinite") == 3
    # strict JSON everywhere, Parquet nulls
    lines = strict_json_lines(run.mon.out_dir / "gradients.jsonl")
    assert not any(tok in (run.mon.out_dir / "gradients.jsonl").read_text() for tok in ("NaN", "Infinity"))
    json.loads((run.mon.out_dir / "summary.json").read_text(), parse_constant=lambda t: pytest.fail(t))
    assert sum(1 for line in lines if line["type"] == "step") == len(run.ref.steps)
    df = pl.read_parquet(run.mon.out_dir / "gradients.parquet")
    row = df.filter((pl.col("step") == 3) & (pl.col("module") == "02.C3k2"))
    assert row["grad_norm"].null_count() == 1 and row["nonfinite"].item() == rec["nonfinite"][i]
    assert df["grad_norm"].is_nan().sum() == 0  # nulls, never NaN
    if mode == "amp":
        steps = pl.read_parquet(run.mon.out_dir / "steps.parquet")
        assert steps["amp_skipped"].to_list() == [s == 3 for s in range(1, steps.height + 1)]
        assert steps["amp_scale"].to_list()[:3] == [4096.0] * 3 and set(steps["amp_scale"].to_list()[3:]) == {2048.0}
        assert all(u == 0.0 for u in rec["update_to_weight"] if u is not None)  # the skipped step changed nothing
        assert np.isfinite(run.losses).all()


@requires_coco8
def test_nonfinite_stats_match_reference(nan_runs):
    """Unscaled (AMP) statistics and, for fp32, continuity through Ultralytics' NaN recovery (epoch 2 is redone
    from last.pt after the NaN step: the step count goes on, the epoch number repeats)."""
    mode, run, _ = nan_runs
    log = read_log(run.mon.out_dir)
    assert_matches_reference(log, run.ref)
    if mode == "fp32":
        assert [r["epoch"] for r in log.steps] == [1, 1, 2, 2, 2, 2, 3, 3]
        assert any("recovering from last.pt" in r.getMessage() for r in run.records)
        assert all(math.isfinite(v) for v in run.losses[-4:])  # recovered
        assert log.steps[3]["grad_norm"][0] is None  # step 4: every layer non-finite (NaN weights)
        assert all(v is not None for v in log.steps[4]["grad_norm"])  # step 5: after the reload
    assert not gradmon_messages(run.records)


@requires_coco8
def test_training_identical_with_and_without_monitor(nan_runs):
    mode, run, plain = nan_runs
    assert len(run.losses) == len(plain.losses)
    np.testing.assert_array_equal(np.array(run.losses), np.array(plain.losses))  # NaN == NaN here
    assert_same_state(run.model, plain.model)
    assert_same_state(run.ema, plain.ema)
    assert len(run.ref.steps) == len(plain.ref.steps)


# ---------------------------------------------------------------------------------------------------- SIGKILL, resume
CHILD = textwrap.dedent(
    """
    import sys, time
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from ultralytics import YOLO
    from yolo_gradmon import GradientMonitor

    project, name, side = sys.argv[1:4]
    done = open(side, "a")

    def count(optimizer, args, kwargs):  # every optimizer.step that completed, flushed at once
        done.write("1\\n")
        done.flush()

    register_optimizer_step_post_hook(count)
    if len(sys.argv) > 4:  # a slow local sink: the worker holds a record most of the time
        import yolo_gradmon.show.local as local
        write = local.LocalSink.log_step
        local.LocalSink.log_step = lambda self, record, n: (time.sleep(float(sys.argv[4])), write(self, record, n))
    model = YOLO("yolo26n.yaml")
    GradientMonitor(wandb=False).attach(model)
    # from epoch 2 on, slow down so the parent's kill lands mid-epoch
    model.add_callback("on_train_batch_end", lambda tr: time.sleep(0.5) if tr.epoch >= 1 else None)
    model.train(epochs=3, project=project, name=name, **TRAIN)
    """
)
KILL_AT = 6  # step lines in the log (epoch 2 has steps 5-8)


def _kill_mid_epoch(tmp: Path, sink_delay: float | None = None) -> SimpleNamespace:
    script = tmp / "child.py"
    script.write_text(f"TRAIN = {TRAIN_B1!r}\n" + CHILD)
    side = tmp / "optimizer_steps.txt"
    log = tmp / "runs" / "killed" / "gradmon" / "gradients.jsonl"
    extra = [str(sink_delay)] if sink_delay is not None else []
    with open(tmp / "child.out", "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp / "runs"), "killed", str(side), *extra],
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        n = 0
        while time.time() < deadline and proc.poll() is None:
            if log.is_file():
                n = log.read_text().count('"type":"step"')
                if n >= KILL_AT:
                    break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert n >= KILL_AT, (tmp / "child.out").read_text()[-3000:]
    copy_dir = tmp / "copy"
    shutil.copytree(log.parent, copy_dir / "gradmon")  # the SIGKILL test works on a copy; the resume test continues
    return SimpleNamespace(proc=proc, run=log.parent.parent, copy=copy_dir, done=len(side.read_text().split()))


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    return _kill_mid_epoch(tmp_path_factory.mktemp("kill"))


IN_FLIGHT = 2  # records a SIGKILL can take: the one the host worker holds, and the last step's (its ‖Δw‖ on the device)


def _surviving_steps(killed) -> list[int]:
    path = killed.copy / "gradmon" / "gradients.jsonl"
    lines = path.read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # only the very last line may be torn
    steps = [r["step"] for r in read_log(killed.copy).steps]
    assert steps == list(range(1, len(steps) + 1))  # no gaps, no duplicates
    return steps


@requires_coco8
def test_sigkill_loses_at_most_the_records_in_flight_and_report_rebuilds(killed):
    assert killed.proc.returncode == -signal.SIGKILL
    log = read_log(killed.copy)
    steps = _surviving_steps(killed)
    print(f"\nSIGKILL after {killed.done} optimizer steps: {len(steps)} records in the log")
    assert len(steps) >= KILL_AT and len(steps) >= killed.done - IN_FLIGHT  # every completed step but those in flight
    assert not log.ended and 2 not in log.epoch_ends and log.epoch_ends[1] == 4  # killed mid-epoch 2
    summary = rebuild(killed.copy)  # what `yolo-gradmon report` starts from
    assert summary["steps_logged"] == len(steps) and summary["complete"] is False
    df = pl.read_parquet(killed.copy / "gradmon" / "gradients.parquet")
    assert df.height == len(steps) * len(log.modules)
    assert sorted(df["step"].unique().to_list()) == steps


@requires_coco8
def test_sigkill_with_a_slow_sink_still_loses_at_most_two(tmp_path):
    """A local sink taking 0.3 s per record (longer than a training step here): the training thread waits for the
    worker (one record in flight, never a backlog), so a kill still takes at most the two records in flight."""
    killed = _kill_mid_epoch(tmp_path, sink_delay=0.3)
    assert killed.proc.returncode == -signal.SIGKILL
    steps = _surviving_steps(killed)
    print(f"\nSIGKILL (sink 0.3 s per record) after {killed.done} optimizer steps: {len(steps)} records in the log")
    assert len(steps) >= KILL_AT and 0 <= killed.done - len(steps) <= IN_FLIGHT, (killed.done, steps)


@requires_coco8
def test_report_cli_after_sigkill(killed):
    pytest.importorskip("yolo_gradmon.show.report")
    assert cli_main(["report", str(killed.copy)]) == 0
    assert (killed.copy / "gradmon" / "gradients.parquet").is_file()


@requires_coco8
def test_resume_after_sigkill_continues_log(killed):
    path = killed.run / "gradmon" / "gradients.jsonl"
    with open(path, "a") as fh:
        fh.write('{"type":"step","step":99,"epo')  # the kill landed mid-write: a torn last line
    assert read_log(path).truncated
    model = YOLO(str(killed.run / "weights" / "last.pt"))  # saved after epoch 1
    mon = GradientMonitor(wandb=False).attach(model)
    with logged_records() as records:
        model.train(resume=True)
    assert not gradmon_messages(records)
    log = read_log(path)
    assert not log.truncated and log.ended
    assert [r["step"] for r in log.steps] == list(range(1, 13))  # 3 epochs x 4 steps: no duplicates, no gaps
    assert [r["epoch"] for r in log.steps] == [1] * 4 + [2] * 4 + [3] * 4
    raw = strict_json_lines(path)
    resumes = [r for r in raw if r["type"] == "resume"]
    assert resumes == [{"type": "resume", "step": 4, "epoch": 2}]
    df = pl.read_parquet(mon.out_dir / "gradients.parquet")
    assert df.height == 12 * len(log.modules) and df.select(["step", "module"]).is_unique().all()
    assert mon.summary["steps_logged"] == 12 and mon.summary["first_step"] == 1


# ---------------------------------------------------------------------------------------------------- disk failures
def _disk_run(project: Path, how: str):
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False)
    sink = RecordingSink()
    mon.extra_sinks.append(sink)
    mon.attach(model)
    save_dir = project / how
    with contextlib.ExitStack() as stack:
        if how == "gradmon-is-a-file":
            save_dir.mkdir(parents=True)
            (save_dir / "gradmon").write_text("not a directory")
        else:  # disk full at the third line (header, step 1, step 2)
            calls = {"n": 0}
            real = LogWriter.write

            def write(self, record):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise OSError(28, "No space left on device")
                return real(self, record)

            stack.enter_context(pytest.MonkeyPatch.context()).setattr(LogWriter, "write", write)
        records = stack.enter_context(logged_records())
        model.train(epochs=1, project=str(project), name=how, **TRAIN_B1)
    return SimpleNamespace(mon=mon, sink=sink, records=records, save_dir=save_dir)


@pytest.fixture(scope="module", params=["gradmon-is-a-file", "write-raises-oserror"])
def disk_run(request, tmp_path_factory):
    return request.param, _disk_run(tmp_path_factory.mktemp("disk"), request.param)


@requires_coco8
def test_local_write_failure_one_error_training_completes_sinks_stream(disk_run):
    how, run = disk_run
    assert (run.save_dir / "weights" / "last.pt").is_file()  # training completed
    errors = gradmon_messages(run.records)
    assert len(errors) == 1, errors
    assert "local sink disabled" in errors[0] and "Training continues" in errors[0]
    assert str(run.save_dir / "gradmon") in errors[0]  # names the path
    assert ("No space left on device" in errors[0]) if how == "write-raises-oserror" else ("File exists" in errors[0])
    assert run.sink.steps == [1, 2, 3, 4]  # the other sink (W&B's place) still streams every step
    assert run.sink.finished is not None and run.sink.finished["steps_logged"] == 4
    assert run.mon.summary["steps_logged"] == 4
    if how == "gradmon-is-a-file":
        assert (run.save_dir / "gradmon").read_text() == "not a directory"
    else:
        log = read_log(run.save_dir)
        assert [r["step"] for r in log.steps] == [1]  # what was written before the failure stays readable
        assert not (run.save_dir / "gradmon" / "gradients.parquet").exists()


class StuckSink(RecordingSink):
    """A sink whose third step hangs (a W&B call that never returns) far longer than the monitor waits."""

    name = "stuck"

    def __init__(self, release: threading.Event):
        super().__init__()
        self.release = release

    def log_step(self, record, n_flagged):
        super().log_step(record, n_flagged)
        if record["step"] == 3:
            self.release.wait(60)


@requires_coco8
def test_stuck_sink_switches_the_monitor_off_training_completes(tmp_path, monkeypatch):
    import yolo_gradmon.host_worker as host_worker

    monkeypatch.setattr(host_worker, "STALL_SECONDS", 1.0)
    release = threading.Event()
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False)
    sink = StuckSink(release)
    mon.extra_sinks.append(sink)
    mon.attach(model)
    t0 = time.perf_counter()
    try:
        with logged_records() as records:
            model.train(epochs=2, project=str(tmp_path), name="stuck", **TRAIN_B1)
    finally:
        release.set()
    assert (tmp_path / "stuck" / "weights" / "last.pt").is_file()  # training completed, all 8 steps
    errors = gradmon_messages(records)
    assert len(errors) == 1 and "did not finish within 1 s" in errors[0] and "Training continues" in errors[0], errors
    assert time.perf_counter() - t0 < 50  # waited about one stall limit, not the sink's 60 s
    log = read_log(mon.out_dir)
    assert [r["step"] for r in log.steps][:2] == [1, 2]  # written before the stuck record: readable
    assert mon.summary is not None and mon.summary["complete"] is True


# ---------------------------------------------------------------------------------------------------- mid-run reloads
@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """A user callback, after optimizer step 2: reloads the initial state dict in place; after 5: replaces
    trainer.model by a copy (optimizer moved onto it); after 7: wraps trainer.optimizer_step (halving the gradients);
    after 9: drops every wrapper (restores the class method)."""
    model = YOLO("yolo26n.yaml")
    user_calls = []
    initial = {}

    def on_train_start(tr):
        initial.update(state_of(unwrap_model(tr.model)))

    def mess_with(tr):
        n = len(ref.steps)
        if n == 2:
            unwrap_model(tr.model).load_state_dict(initial)
        elif n == 5:
            old = unwrap_model(tr.model)
            new = copy.deepcopy(old)
            moved = {id(p): q for p, q in zip(old.parameters(), new.parameters())}
            for group in tr.optimizer.param_groups:
                group["params"] = [moved[id(p)] for p in group["params"]]
            tr.optimizer.state = defaultdict(dict, {moved[id(p)]: s for p, s in tr.optimizer.state.items()})
            tr.model = new
        elif n == 7:
            inner = tr.optimizer_step

            def user_step():  # a user's gradient tweak: the monitor, innermost, must see what the optimizer gets
                user_calls.append(len(ref.steps) + 1)
                for p in unwrap_model(tr.model).parameters():
                    if p.grad is not None:
                        p.grad.mul_(0.5)
                return inner()

            tr.optimizer_step = user_step
        elif n == 9:
            del tr.optimizer_step  # back to BaseTrainer.optimizer_step: no wrapper left at all

    model.add_callback("on_train_start", on_train_start)
    with reference(model) as ref:
        mon = GradientMonitor(wandb=False, update_every=1).attach(model)
        model.add_callback("on_train_batch_end", mess_with)
        with logged_records() as records:
            model.train(epochs=3, project=str(tmp_path_factory.mktemp("reload")), name="run", **TRAIN_B1)
    return SimpleNamespace(mon=mon, ref=ref, user_calls=user_calls, records=records)


@requires_coco8
def test_reload_replace_model_and_rehook_keep_stats_consistent(reloaded):
    log = read_log(reloaded.mon.out_dir)
    assert len(reloaded.ref.steps) == 12
    assert_matches_reference(log, reloaded.ref)  # steps 1..12 exactly once, same numbers as the reference
    assert reloaded.user_calls == [8, 9]  # the user's wrapper ran, around ours, until it was dropped
    assert not gradmon_messages(reloaded.records)
    assert not [w for w in gradmon_messages(reloaded.records, logging.WARNING) if "disabled" in w or "attach" in w]
    assert log.ended and reloaded.mon.summary["steps_logged"] == 12


def test_model_replaced_by_other_layout_disables_cleanly(tmp_path):
    """A replacement model with different modules cannot share the log: one error, training continues."""
    trainer = FakeTrainer(Tiny(), tmp_path)
    mon = GradientMonitor(wandb=False, console=False)
    trainer.add(mon)

    def swap(tr):
        if tr.steps == 2:
            tr.model = nn.Sequential(nn.Conv2d(3, 2, 3))

    trainer.callbacks["on_train_batch_end"].append(swap)
    with logged_records() as records:
        trainer.train(epochs=2)
    assert trainer.steps == 6
    errors = gradmon_messages(records)
    assert len(errors) == 1 and "replaced mid-run" in errors[0]
    assert [r["step"] for r in read_log(tmp_path).steps] == [1, 2]


# ---------------------------------------------------------------------------------------------------- attach twice
@requires_coco8
def test_attach_twice_and_two_monitors_log_once(tmp_path):
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False)
    with logged_records() as records:
        assert mon.attach(model) is mon
        assert mon.attach(model) is mon  # no-op
        other = GradientMonitor(wandb=False, log_every=2)
        assert other.attach(model) is mon  # a second monitor through attach: no-op, the first one keeps going
        assert sum(getattr(f, "__self__", None) is mon for f in model.callbacks["on_train_start"]) == 1
        third = GradientMonitor(wandb=False)
        for event, fn in third.callbacks().items():  # bypassing attach(): refused at train start
            model.add_callback(event, fn)
        for event, fn in mon.callbacks().items():  # the same monitor registered again by hand: deduplicated
            model.add_callback(event, fn)
        model.train(epochs=1, project=str(tmp_path), name="twice", **TRAIN_B1)
    warnings = gradmon_messages(records, logging.WARNING)
    assert sum("already attached" in w for w in warnings) == 2
    assert sum("another GradientMonitor already watches" in w for w in warnings) == 1
    assert sum("registered more than once" in w for w in warnings) == 1
    log = read_log(mon.out_dir)
    assert [r["step"] for r in log.steps] == [1, 2, 3, 4]
    assert len(strict_json_lines(mon.out_dir / "gradients.jsonl")) == 1 + 4 + 1 + 1  # header, steps, epoch_end, end
    assert other.out_dir is None and third.out_dir is None and third.summary is None


# ---------------------------------------------------------------------------------------------------- frozen models
class Tiny(nn.Module):
    """Ultralytics-shaped: ``model`` holds the layers; layer 1 has no parameters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU()),
            nn.Upsample(scale_factor=1),
            nn.Sequential(nn.Conv2d(4, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
        )

    def forward(self, x):
        return self.model(x)


class FakeTrainer:
    """The parts of Ultralytics' BaseTrainer the monitor uses, for models Ultralytics itself will not train."""

    def __init__(self, model, save_dir: Path, nb: int = 3, resume: bool = False, start_epoch: int = 0):
        self.model = model
        self.save_dir = save_dir
        self.args = SimpleNamespace(resume=resume, model="tiny.yaml", task="detect", warmup_epochs=0.0)
        self.train_loader = [None] * nb
        self.epoch = self.start_epoch = start_epoch
        self.accumulate = 1
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.callbacks = defaultdict(list)
        self.steps = 0

    def add(self, monitor):
        for event, fn in monitor.callbacks().items():
            self.callbacks[event].append(fn)

    def run_callbacks(self, event):
        for fn in self.callbacks.get(event, []):
            fn(self)

    def _get_warmup_iterations(self, nb):
        return 0

    def optimizer_step(self):
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1

    def train(self, epochs: int = 2):
        self._do_train(epochs)

    def _do_train(self, epochs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params or [nn.Parameter(torch.zeros(1))], lr=0.01)
        self.run_callbacks("on_train_start")
        for epoch in range(self.start_epoch, epochs):
            self.epoch = epoch
            self.run_callbacks("on_train_epoch_start")
            for _ in self.train_loader:
                self.run_callbacks("on_train_batch_start")
                out = self.model(torch.randn(2, 3, 8, 8))
                if out.requires_grad:
                    out.pow(2).mean().backward()
                self.optimizer_step()
                self.run_callbacks("on_train_batch_end")
            self.run_callbacks("on_train_epoch_end")
        self.run_callbacks("on_train_end")


@requires_coco8
def test_ultralytics_refuses_an_all_frozen_model(tmp_path):
    """What Ultralytics does: it raises in its own setup, before on_train_start; the monitor writes nothing and the
    trainer's exception reaches the caller unchanged."""
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False).attach(model)
    with pytest.raises(RuntimeError, match="froze the entire model"):
        model.train(epochs=1, freeze=100, project=str(tmp_path), name="frozen", **TRAIN)
    assert mon.out_dir is None and not list(tmp_path.rglob("gradmon"))


def test_all_frozen_yolo_layout_capture_rules(tmp_path):
    net = DetectionModel("yolo26n.yaml", verbose=False)
    for p in net.parameters():
        p.requires_grad = False
    layout = build_layout(net, "layer")
    assert layout.n_groups > 10 and not any(layout.trainable)
    assert "11.Upsample" not in layout.names and "12.Concat" not in layout.names  # no parameters: nothing to watch
    cap = GradientCapture(layout)
    engine = RuleEngine(layout.names, layout.trainable, GradientMonitor(wandb=False).cfg)
    from yolo_gradmon.record.logfile import step_record

    records = []
    for step in range(1, 9):
        for stats in cap.step(lambda: None, step=step, epoch=1, logged=True, lr=[0.01]) + (cap.flush() if step == 8 else []):
            rec = step_record(stats, False)
            records.append(rec)
            assert engine.update(StepView.from_record(rec)) == []
    assert len(records) == 8 and not any(any(r["has_grad"]) for r in records)
    assert all(r["total_norm"] == 0.0 and r["clip_active"] is False for r in records)
    summary = TrainEnd.build({"modules": layout.names, "trainable": layout.trainable}, records, engine.flags, True,
                             tmp_path / "gradients.jsonl").summary
    assert summary["flags"] == [] and summary["module_stats"] == []


def test_frozen_and_parameterless_modules_through_the_monitor(tmp_path):
    model = Tiny()
    for p in model.model[0].parameters():
        p.requires_grad = False
    trainer = FakeTrainer(model, tmp_path)
    mon = GradientMonitor(wandb=False, min_steps=1, dead_window=2, vanish_window=2)
    trainer.add(mon)
    with logged_records() as records:
        trainer.train(epochs=2)
    assert not gradmon_messages(records)
    log = read_log(tmp_path)
    assert log.modules == ["00.Sequential", "02.Sequential"]  # the parameter-free Upsample is not a module to watch
    assert log.header["trainable"] == [False, True]
    assert [r["step"] for r in log.steps] == list(range(1, 7))
    assert all(r["has_grad"] == [False, True] for r in log.steps)
    assert all(f["module"] != "00.Sequential" for f in mon.summary["flags"])
    df = pl.read_parquet(tmp_path / "gradmon" / "gradients.parquet")
    assert df["module"].unique().to_list() == ["02.Sequential"]

    # nothing trainable at all and no parameters at all: runs, logs steps without module rows, never flags
    for net in (_frozen(Tiny()), nn.Sequential(nn.Flatten())):
        sub = tmp_path / f"none-{len(list(net.parameters()))}"
        trainer = FakeTrainer(net, sub)
        mon = GradientMonitor(wandb=False)
        trainer.add(mon)
        with logged_records() as records:
            trainer.train(epochs=1)
        assert not gradmon_messages(records) and trainer.steps == 3
        assert mon.summary["steps_logged"] == 3 and mon.summary["flags"] == []
        assert not any(read_log(sub).header["trainable"])


def _frozen(model):
    for p in model.parameters():
        p.requires_grad = False
    return model


# ---------------------------------------------------------------------------------------------------- DDP pickling
class UnpicklableSink(Sink):
    name = "unpicklable"

    def __init__(self):
        self.lock = threading.Lock()


def test_monitor_cloudpickle_round_trip():
    mon = GradientMonitor(wandb=False, log_every=3, granularity="module")
    mon.extra_sinks += [RecordingSink(), UnpicklableSink()]
    with logged_records() as records:
        copy_ = cloudpickle.loads(cloudpickle.dumps(mon))
    assert copy_.cfg == mon.cfg and copy_.out_dir is None and copy_._probe is None and not copy_._active
    assert [type(s) for s in copy_.extra_sinks] == [RecordingSink]
    assert sum("cannot be pickled" in w for w in gradmon_messages(records, logging.WARNING)) == 1


def test_active_monitor_pickles_mid_run(tmp_path):
    """Live state (trainer, tensors, the open log file) never travels; the copy starts clean."""
    trainer = FakeTrainer(Tiny(), tmp_path)
    mon = GradientMonitor(wandb=False)
    trainer.add(mon)
    blobs = []
    trainer.callbacks["on_train_batch_end"].append(lambda tr: blobs.append(cloudpickle.dumps(tr.callbacks)))
    trainer.train(epochs=1)
    callbacks = cloudpickle.loads(blobs[1])
    copies = {id(fn.__self__) for fns in callbacks.values() for fn in fns if isinstance(getattr(fn, "__self__", None), GradientMonitor)}
    assert len(copies) == 1  # one monitor in the worker, shared by all its callbacks
    clone = callbacks["on_train_start"][0].__self__
    assert clone.cfg == mon.cfg and clone._trainer is None and clone.records == []
    assert [r["step"] for r in read_log(tmp_path).steps] == [1, 2, 3]  # the original was not disturbed


@requires_coco8
def test_ddp_launcher_pickles_attached_monitor(monkeypatch):
    """Ultralytics' own DDP path: generate_ddp_file cloudpickles trainer.callbacks (model.callbacks) into a .pt."""
    from ultralytics.utils import dist
    from ultralytics.utils.patches import torch_load

    monkeypatch.setattr("ultralytics.utils.checks.check_requirements", lambda *a, **k: True)  # no pip upgrade
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False, log_every=4)
    mon.extra_sinks.append(RecordingSink())
    mon.attach(model)
    trainer = SimpleNamespace(args=SimpleNamespace(epochs=1), model=model.model, callbacks=model.callbacks)
    file = dist.generate_ddp_file(trainer)
    try:
        state = torch_load(str(Path(file).with_suffix(".pt")), map_location="cpu")
    finally:
        dist.ddp_cleanup(trainer, file)
    ours = [fn for fns in state["callbacks"].values() for fn in fns if isinstance(getattr(fn, "__self__", None), GradientMonitor)]
    assert {fn.__func__.__name__ for fn in ours} == set(mon.callbacks())
    worker = ours[0].__self__
    assert all(fn.__self__ is worker for fn in ours) and worker is not mon
    assert worker.cfg.log_every == 4 and isinstance(worker.extra_sinks[0], RecordingSink)


def test_only_rank_zero_writes_and_streams(tmp_path, monkeypatch):
    sink = RecordingSink()
    for rank, sub in ((1, "rank1"), (0, "rank0")):
        monkeypatch.setattr(monitor_mod, "RANK", rank)
        trainer = FakeTrainer(Tiny(), tmp_path / sub)
        mon = GradientMonitor(wandb=False)
        sink = RecordingSink()
        mon.extra_sinks.append(sink)
        trainer.add(mon)
        trainer.train(epochs=1)
        assert trainer.steps == 3
        if rank == 1:
            assert not (tmp_path / sub).exists() and not sink.started and sink.steps == []
            assert "optimizer_step" not in trainer.__dict__ and mon.summary is None
        else:
            assert read_log(tmp_path / sub).ended and sink.steps == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------- W&B disabled
@requires_coco8
def test_wandb_mode_disabled_trains_and_logs_locally(tmp_path, monkeypatch):
    """WANDB_MODE=disabled (the other W&B faults are in tests/test_wandb.py)."""
    pytest.importorskip("yolo_gradmon.show.wandb", reason="yolo_gradmon/sinks/wandb.py not written yet")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=True).attach(model)
    with logged_records() as records:
        model.train(epochs=1, project=str(tmp_path), name="wandb-disabled", **TRAIN_B1)
    assert not gradmon_messages(records)
    log = read_log(mon.out_dir)
    assert log.ended and [r["step"] for r in log.steps] == [1, 2, 3, 4]
    assert mon.summary["steps_logged"] == 4


# ---------------------------------------------------------------------------------------------------- invalid options
INVALID = [
    ({"log_evry": 1}, "unknown gradmon option 'log_evry'", "valid options: "),
    ({"log_every": -1}, "'log_every' must be >= 1", "got -1"),
    ({"vanish_grad_to_weight": float("nan")}, "'vanish_grad_to_weight' must be a finite number > 0", "got nan"),
    ({"explode_factor": float("inf")}, "'explode_factor' must be a finite number > 0", "got inf"),
    ({"granularity": "block"}, "'granularity' got 'block'", "valid values: layer, module, param"),
]


@pytest.mark.parametrize("opts, needle, valid", INVALID, ids=[next(iter(o)) for o, _, _ in INVALID])
def test_invalid_options_rejected_before_training(opts, needle, valid, tmp_path, capsys):
    with pytest.raises(GradmonConfigError) as e:  # Python keywords
        GradientMonitor(**opts)
    assert needle in str(e.value) and valid in str(e.value)
    if "log_evry" in opts:
        assert "log_every" in str(e.value)
    p = tmp_path / "opts.yaml"  # YAML file (.nan / .inf are YAML floats)
    p.write_text(yaml.safe_dump(opts))
    with pytest.raises(GradmonConfigError) as e:
        GradientMonitor(p)
    assert needle in str(e.value) and valid in str(e.value)
    key, value = next(iter(opts.items()))  # CLI, before Ultralytics is even asked
    rc = cli_main(["train", "model=yolo26n.yaml", "data=coco8.yaml", f"project={tmp_path / 'cli'}", f"gradmon_{key}={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{key}" in err or f"'gradmon_{key}'" in err, err
    assert not (tmp_path / "cli").exists()  # nothing written


def test_unknown_activation_rejected():
    """The ablation runner's concern; exercised here once yolo_gradmon/ablate/swaps.py exists (API guessed: adapt)."""
    swaps = pytest.importorskip("yolo_gradmon.ablate.swaps", reason="ablate/swaps.py not written yet")
    names = ("make_activation", "get_activation", "activation")
    fn = next((getattr(swaps, n) for n in names if callable(getattr(swaps, n, None))), None)
    if fn is None:
        pytest.skip("ablate.swaps has no activation factory under a known name")
    with pytest.raises((ValueError, KeyError)) as e:
        fn("NotAnActivation")
    assert "NotAnActivation" in str(e.value)


# ---------------------------------------------------------------------------------------------------- schema versions
def _write_log(path: Path, schema) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    log = path / "gradients.jsonl"
    header = {"type": "header", "schema": schema, "modules": ["00.Conv"], "trainable": [True], "config": {}}
    step = {"type": "step", "step": 1, "epoch": 1, "has_grad": [True], "grad_norm": [1.0], "weight_norm": [2.0],
            "grad_to_weight": [0.5], "update_to_weight": [0.01], "max_abs_grad": [0.3], "nonfinite": [0]}
    log.write_text(json.dumps(header) + "\n" + json.dumps(step) + "\n")
    return log


@pytest.mark.parametrize("schema, hint", [(SCHEMA_VERSION + 1, "newer yolo_gradmon wrote it: upgrade"),
                                           (SCHEMA_VERSION - 1, "older yolo_gradmon wrote it"),
                                           (None, "missing or not an integer")])
def test_other_schema_versions_rejected_clearly(tmp_path, schema, hint):
    log = _write_log(tmp_path / "gradmon", schema)
    for reader in (read_log, rebuild):
        with pytest.raises(LogSchemaError) as e:
            reader(tmp_path)
        msg = str(e.value)
        assert f"schema {schema!r}" in msg and f"reads schema {SCHEMA_VERSION}" in msg and hint in msg and str(log) in msg
    assert read_log(_write_log(tmp_path / "ok", SCHEMA_VERSION)).steps[0]["grad_norm"] == [1.0]  # current: read


def test_resume_onto_other_schema_log_disables_monitor_not_training(tmp_path):
    log = _write_log(tmp_path / "gradmon", SCHEMA_VERSION + 1)
    before = log.read_bytes()
    trainer = FakeTrainer(Tiny(), tmp_path, resume=True, start_epoch=1)
    mon = GradientMonitor(wandb=False)
    trainer.add(mon)
    with logged_records() as records:
        trainer.train(epochs=3)
    assert trainer.steps == 6  # training ran
    errors = gradmon_messages(records)
    assert len(errors) == 1 and "schema 2" in errors[0] and "Training continues unmonitored" in errors[0]
    assert log.read_bytes() == before  # the other version's log is untouched


def test_resume_with_other_granularity_disables_monitor_not_training(tmp_path):
    trainer = FakeTrainer(Tiny(), tmp_path)
    trainer.add(GradientMonitor(wandb=False, console=False))
    trainer.train(epochs=1)
    log = tmp_path / "gradmon" / "gradients.jsonl"
    before = log.read_bytes()
    trainer = FakeTrainer(Tiny(), tmp_path, resume=True, start_epoch=1)
    trainer.add(GradientMonitor(wandb=False, granularity="module"))
    with logged_records() as records:
        trainer.train(epochs=2)
    assert trainer.steps == 3
    errors = gradmon_messages(records)
    assert len(errors) == 1 and "granularity 'layer'" in errors[0] and "now 'module'" in errors[0]
    assert log.read_bytes() == before and [r["step"] for r in read_log(log).steps] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_norms_in_float32(dtype):
    """Decision: half/bfloat16 weights are measured, with norms reduced and returned in float32. A float16 norm
    overflows to inf above 65504, which would report a healthy layer as non-finite."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 100), nn.Linear(100, 10)).to(dtype)
    layout = build_layout(net, "param")
    cap = GradientCapture(layout)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.full_like(p, 1000.0)  # ‖g‖ of the 1000x100 weight: 316228 > 65504
    before = [p.detach().double().clone() for p in net.parameters()]
    ref_g = [float(p.grad.double().norm()) for p in net.parameters()]
    ref_w = [float(b.norm()) for b in before]

    def step():
        opt.step()
        opt.zero_grad()

    cap.step(step, step=1, epoch=1, logged=True, lr=[1e-3])
    (stats,) = cap.flush()
    ref_u = [float((p.detach().double() - b).norm()) / float(b.norm()) for p, b in zip(net.parameters(), before)]
    assert stats.nonfinite.tolist() == [0] * 4 and np.isfinite(stats.grad_norm).all()
    np.testing.assert_allclose(stats.grad_norm, ref_g, rtol=1e-4)  # float32 accumulation, as for float32 weights
    np.testing.assert_allclose(stats.weight_norm, ref_w, rtol=1e-4)
    np.testing.assert_allclose(stats.update_to_weight, ref_u, rtol=1e-4)
    assert stats.max_abs_grad.tolist() == [1000.0] * 4
    engine = RuleEngine(layout.names, layout.trainable, GradientMonitor(wandb=False).cfg)
    from yolo_gradmon.record.logfile import step_record

    assert engine.update(StepView.from_record(step_record(stats, False))) == []


def test_amp_skip_attributed_to_its_own_step_with_log_every():
    """GradScaler path on CPU with log_every=2: an overflow on an unlogged step (4) is not blamed on logged step 3."""
    model = Tiny()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    done = []
    for step in range(1, 7):
        scaler.scale(model(torch.randn(2, 3, 8, 8)).pow(2).mean()).backward()
        if step == 4:
            next(model.parameters()).grad.view(-1)[0] = float("inf")

        def run():
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()

        done += cap.step(run, step=step, epoch=1, logged=step % 2 == 1, lr=[0.01], scaler=scaler)
    done += cap.flush()
    assert [s.step for s in done] == [1, 3, 5]
    assert [s.amp_skipped for s in done] == [False, False, False]
    assert [s.amp_scale for s in done] == [1024.0, 1024.0, 512.0]


@pytest.mark.compile
@requires_coco8
def test_compile_true_stats_match_reference(tmp_path):
    """compile=True (about 7 minutes on CPU; opt-in: pytest -m compile): the monitor hooks the compiled model's
    original module, whose parameters the compiled graph trains: same numbers as the reference."""
    model = YOLO("yolo26n.yaml")
    with reference(model) as ref:
        mon = GradientMonitor(wandb=False, update_every=1).attach(model)
        model.train(epochs=1, compile=True, project=str(tmp_path), name="compiled", **TRAIN)
    log = read_log(mon.out_dir)
    assert len(ref.steps) == 2 and log.ended
    assert_matches_reference(log, ref)
