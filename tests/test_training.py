"""Real Ultralytics trainings on COCO8: every optimizer step and module is logged, and the logged norms equal
an independent per-parameter computation made inside the same optimizer step."""

import json
import math
import subprocess
import sys
from collections import defaultdict

import numpy as np
import polars as pl
import pytest
from conftest import requires_coco8
from ultralytics import YOLO
from ultralytics.utils.torch_utils import unwrap_model

from yolo_gradmon import GradientMonitor, read_log

pytestmark = requires_coco8

TRAIN = dict(data="coco8.yaml", imgsz=320, batch=2, nbs=2, workers=0, device="cpu", plots=False, val=False, exist_ok=True)


def reference_hook(model):
    """Wrap trainer.optimizer_step *inside* the monitor's wrapper and record, with a plain per-parameter
    loop in float64, what the optimizer is about to receive (grads / AMP scale) and the weight update."""
    ref = []

    def on_train_start(trainer):
        net = unwrap_model(trainer.model)
        layers = net.model
        keys = {}
        for name, p in net.named_parameters():
            idx = int(name.split(".")[1])
            keys[name] = f"{idx:02d}.{type(layers[idx]).__name__}"
        original = trainer.optimizer_step

        def optimizer_step():
            scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
            g2, w2, before = defaultdict(float), defaultdict(float), {}
            for name, p in net.named_parameters():
                w2[keys[name]] += float(p.detach().double().norm()) ** 2
                if p.grad is not None:
                    g2[keys[name]] += (float(p.grad.double().norm()) / scale) ** 2
                    before[name] = p.detach().double().clone()
            original()
            d2 = defaultdict(float)
            for name, p in net.named_parameters():
                if name in before:
                    d2[keys[name]] += float((p.detach().double() - before[name]).norm()) ** 2
            ref.append(
                {
                    "epoch": trainer.epoch + 1,
                    "grad": {k: math.sqrt(v) for k, v in g2.items()},
                    "weight": {k: math.sqrt(v) for k, v in w2.items()},
                    "update": {k: math.sqrt(v) for k, v in d2.items()},
                }
            )

        trainer.optimizer_step = optimizer_step

    model.add_callback("on_train_start", on_train_start)
    return ref


@pytest.fixture(scope="module", params=["yolo26n.yaml", "yolo11n.yaml"])
def trained(request, tmp_path_factory):
    model = YOLO(request.param)
    ref = reference_hook(model)  # registered first: runs inside the monitor's wrapper
    mon = GradientMonitor(wandb=False, update_every=1).attach(model)
    project = tmp_path_factory.mktemp("train")
    model.train(epochs=3, project=str(project), name="run", **TRAIN)
    return request.param, mon, ref


def test_every_step_and_module_logged_with_reference_norms(trained):
    name, mon, ref = trained
    log = read_log(mon.out_dir)
    assert log.ended
    assert len(ref) >= 4, "the run should take several optimizer steps"
    assert [r["step"] for r in log.steps] == list(range(1, len(ref) + 1))
    assert [r["epoch"] for r in log.steps] == [r["epoch"] for r in ref]
    with_params = [m for m in log.modules]
    assert set(ref[0]["grad"]) == set(with_params)  # every top-level layer with parameters, nothing else
    for rec, r in zip(log.steps, ref):
        assert all(rec["has_grad"])
        for i, m in enumerate(log.modules):
            assert rec["grad_norm"][i] == pytest.approx(r["grad"][m], rel=1e-4)
            assert rec["weight_norm"][i] == pytest.approx(r["weight"][m], rel=1e-4)
            assert rec["update_to_weight"][i] == pytest.approx(r["update"][m] / r["weight"][m], rel=1e-4, abs=1e-12)
        total = math.sqrt(sum(v * v for v in r["grad"].values()))
        assert rec["total_norm"] == pytest.approx(total, rel=1e-4)
        assert rec["clip_active"] == (total > 10.0)


def test_parquet_and_summary(trained):
    name, mon, ref = trained
    df = pl.read_parquet(mon.out_dir / "gradients.parquet")
    for col in ("step", "epoch", "module", "grad_norm", "weight_norm", "grad_to_weight", "update_to_weight",
                "max_abs_grad", "nonfinite"):
        assert col in df.columns
    log = read_log(mon.out_dir)
    assert df.height == len(ref) * len(log.modules)
    assert df["step"].min() == 1 and df["epoch"].min() == 1
    np.testing.assert_allclose(
        df["grad_to_weight"].to_numpy(), (df["grad_norm"] / df["weight_norm"]).to_numpy(), rtol=1e-9
    )
    summary = json.loads((mon.out_dir / "summary.json").read_text())
    assert summary["model"] == name and summary["granularity"] == "layer"
    assert summary["modules"] == log.modules and summary["steps_logged"] == len(ref)
    assert isinstance(summary["flags"], list)
    assert not [f for f in summary["flags"] if f["kind"] in ("vanishing", "exploding")]
    for png in ("heatmap.png", "curves.png"):  # local media even without W&B
        assert (mon.out_dir / png).stat().st_size > 10_000


def test_module_granularity_and_frozen_layers(tmp_path):
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(granularity="module", log_every=2, wandb=False).attach(model)
    model.train(epochs=2, freeze=2, project=str(tmp_path), name="frozen", **TRAIN)
    log = read_log(mon.out_dir)
    frozen = [m for m, t in zip(log.modules, log.header["trainable"]) if not t]
    assert frozen and all(m.startswith(("00.", "01.")) or m.endswith(".dfl.conv") for m in frozen)
    assert any(m.startswith("02.C3k2.m.0") for m in log.modules)
    assert [r["step"] for r in log.steps] == list(range(1, 2 * len(log.steps), 2))  # log_every=2
    df = pl.read_parquet(mon.out_dir / "gradients.parquet")
    assert not set(frozen) & set(df["module"].unique().to_list())  # frozen modules never logged
    summary = json.loads((mon.out_dir / "summary.json").read_text())
    assert not {f["module"] for f in summary["flags"]} & set(frozen)


class Interrupt(Exception):
    pass


def test_resume_continues_log_without_gaps_or_duplicates(tmp_path):
    def stop_after_second_epoch(trainer):
        if trainer.epoch == 1:
            raise Interrupt

    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False).attach(model)
    model.add_callback("on_fit_epoch_end", stop_after_second_epoch)
    with pytest.raises(Interrupt):
        model.train(epochs=4, project=str(tmp_path), name="res", save_period=1, **TRAIN)
    steps_before = [r["step"] for r in read_log(mon.out_dir).steps]

    resumed = YOLO(str(tmp_path / "res" / "weights" / "last.pt"))
    mon2 = GradientMonitor(wandb=False).attach(resumed)
    resumed.train(resume=True)
    log = read_log(mon2.out_dir)
    steps = [r["step"] for r in log.steps]
    assert steps == list(range(1, len(steps) + 1))  # no duplicates, no gaps
    assert len(steps) > len(steps_before)
    assert sorted({r["epoch"] for r in log.steps}) == [1, 2, 3, 4]
    assert log.ended


def test_cli_train_and_invalid_option(tmp_path):
    cmd = [sys.executable, "-m", "yolo_gradmon.cli", "train", "model=yolo26n.yaml", "data=coco8.yaml", "epochs=1",
           "imgsz=160", "batch=2", "workers=0", "device=cpu", "plots=False", "val=False", f"project={tmp_path}",
           "name=cli", "gradmon_log_every=1", "gradmon_wandb=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gradmon: watching gradients of" in out.stdout + out.stderr
    assert (tmp_path / "cli" / "gradmon" / "summary.json").is_file()

    bad = cmd[:-2] + ["name=bad", "gradmon_log_every=-1"]
    out = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "'log_every' must be >= 1" in out.stderr
    assert not (tmp_path / "bad").exists()  # nothing written
