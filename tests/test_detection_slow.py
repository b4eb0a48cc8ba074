"""Long validations of the vanishing/exploding detector (opt-in: ``pytest -m slow``, about 25 minutes on 2 CPU cores).

(a) no false alarm on healthy YOLO26n/YOLO11n runs on COCO8 (Ultralytics defaults) and COCO128; (b) planted chokes at
ten layers of each model flagged with precision = recall = 1.0, also where optimizer steps are scarce (nbs=64 on
COCO8: one step per 16 backward passes); (d) Sigmoid attenuates the flow to the first layers on COCO128.
``benchmarks/validate_detection.py`` prints the same experiments as tables.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import have_dataset, requires_coco8
from ultralytics import YOLO

from yolo_gradmon import GradientMonitor, read_log
from yolo_gradmon.testing import GradientPlant, calibration_stats, expected_vanishing, flow_profile, precision_recall

pytestmark = [pytest.mark.slow, requires_coco8]
requires_coco128 = pytest.mark.skipif(not have_dataset("coco128"), reason="../shared/datasets/coco128 not found")
BASE = dict(workers=0, device="cpu", plots=False, val=False, exist_ok=True, seed=0, deterministic=True)
MODELS = ["yolo26n.yaml", "yolo11n.yaml"]


def run(cfg, tmp_path, name, plant=None, model=None, **train):
    model = model or YOLO(cfg)
    if plant is not None:
        plant.attach(model)
    mon = GradientMonitor(wandb=False).attach(model)
    model.train(project=str(tmp_path), name=name, **BASE, **train)
    return mon


def assert_healthy(mon):
    bad = [f.describe() for f in mon.flags if f.kind in ("vanishing", "exploding")]
    assert not bad, bad
    st = calibration_stats(mon.records, read_log(mon.out_dir).header)
    cfg = mon.cfg
    # measured margins on these runs: flow >= 170x, cut >= 56x, grad/w >= 7300x, clip >= 45x, spike >= 15x
    assert st["min_flow_attenuation"] > 10 * cfg.vanish_flow_attenuation
    assert st["min_local_flow_ratio"] > 10 * cfg.vanish_flow_cut
    assert st["min_grad_to_weight"] > 10 * cfg.vanish_grad_to_weight
    assert st["max_grad_norm_over_clip"] < cfg.explode_clip_factor / 10
    assert st["max_spike_factor"] < cfg.explode_factor / 10
    return st


@pytest.mark.parametrize("cfg", MODELS)
def test_healthy_coco8_ultralytics_defaults(cfg, tmp_path):
    """imgsz 640, batch 16, nbs 64: after the 3-iteration warm-up an optimizer step every 4 epochs (4 passes)."""
    mon = run(cfg, tmp_path, "c8", data="coco8.yaml", epochs=100)
    # 100 backward passes, the flow measured on every 2nd (flow_every=2); the few after the last optimizer step
    # belong to no logged step
    assert mon.summary["steps_logged"] >= 20 and mon.summary["backward_passes"] >= 48
    assert_healthy(mon)


@requires_coco128
@pytest.mark.parametrize("cfg", MODELS)
def test_healthy_coco128(cfg, tmp_path):
    mon = run(cfg, tmp_path, "c128", data="coco128.yaml", epochs=20, imgsz=320)
    assert not mon.summary["too_few_steps"]
    assert_healthy(mon)


def test_short_run_says_too_few_steps(tmp_path):
    mon = run("yolo26n.yaml", tmp_path, "short", data="coco8.yaml", epochs=3, imgsz=320)
    assert mon.summary["too_few_steps"] and mon.summary["verdict"].startswith("too few steps to judge")
    assert not mon.flags


@pytest.mark.parametrize("cfg", MODELS)
def test_planted_chokes_at_ten_layers(cfg, tmp_path):
    results = {}
    for k in (0, 2, 4, 6, 8, 10, 13, 16, 19, 22):
        plant = GradientPlant(k, 1e-6)
        mon = run(cfg, tmp_path, f"choke{k}", plant=plant, data="coco8.yaml", epochs=3, imgsz=160, batch=1, nbs=1)
        flagged = {f.module for f in mon.flags if f.kind == "vanishing"}
        results[k] = precision_recall(flagged, expected_vanishing(plant.model, k))
        assert not [f for f in mon.flags if f.kind != "vanishing"]
        assert min(f.first_step for f in mon.flags) <= 10
    assert all(pr == (1.0, 1.0) for pr in results.values()), results


@pytest.mark.parametrize("cfg", MODELS)
def test_planted_choke_where_optimizer_steps_are_scarce(cfg, tmp_path):
    """nbs=64, batch=4 on COCO8: fewer logged optimizer steps than the window, but 16 backward passes per step."""
    plant = GradientPlant(6, 1e-6)
    mon = run(cfg, tmp_path, "scarce", plant=plant, data="coco8.yaml", epochs=24, imgsz=320, batch=4)
    assert mon.summary["steps_logged"] < mon.cfg.vanish_window < mon.summary["backward_passes"]
    flagged = {f.module for f in mon.flags if f.kind == "vanishing"}
    assert precision_recall(flagged, expected_vanishing(plant.model, 6)) == (1.0, 1.0)
    assert all(f.evidence["low_backward_passes"] >= 5 for f in mon.flags if f.kind == "vanishing")


@requires_coco128
def test_sigmoid_attenuates_flow_on_coco128(tmp_path):
    from yolo_gradmon.ablate.swaps import build_model_with_activation

    first = {}
    for act in ("silu", "relu", "sigmoid"):
        model = None if act == "silu" else build_model_with_activation("yolo26n.yaml", act)[0]
        mon = run("yolo26n.yaml", tmp_path, act, model=model, data="coco128.yaml", epochs=5, imgsz=320)
        first[act] = float(np.mean(flow_profile(mon.records)[:3]))
    assert first["sigmoid"] < first["silu"] / 3 and first["sigmoid"] < first["relu"] / 3, first
