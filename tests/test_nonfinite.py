"""A NaN is one event with an origin: the judge over synthetic records (forward, backward, the loss itself, what
followed), real trainings with a NaN planted in a forward output and in a backward pass at two depths of YOLO26n and
YOLO11n, and a training that raises still getting its summary, tables and report, marked incomplete."""

from __future__ import annotations

import json
import math

import pytest
from conftest import requires_coco8
from ultralytics import YOLO

from yolo_gradmon import GradientMonitor
from yolo_gradmon.fields import plain_values
from yolo_gradmon.judge.nonfinite import locate_origin, nonfinite_event
from yolo_gradmon.judge.rules import RuleEngine, StepView
from yolo_gradmon import GradmonConfig
from yolo_gradmon.testing import GradientPlant

NAN = float("nan")
HEADER = {"layers": ["00.Conv", "01.Conv", "02.Conv", "03.Concat", "04.Detect"], "layer_index": [0, 1, 2, 4],
          "modules": ["00.Conv", "01.Conv", "02.Conv", "04.Detect"], "trainable": [True] * 4,
          "layer_from": [[], [0], [1], [1, 2], [3]]}


def rec(step, g=None, w=None, out=None, gout=None, **kw):
    """A plain step record, as the monitor makes it (NaN written here becomes None)."""
    g = g or [1.0] * 4
    return plain_values({"step": step, "epoch": 1, "has_grad": [True] * 4, "grad_norm": g, "weight_norm": w or [1.0] * 4,
            "nonfinite": [int(v is None or not math.isfinite(v)) for v in g], "out_nonfinite": out,
            "grad_out_nonfinite": gout, "grad_to_weight": [1e-3] * 4, "update_to_weight": [None] * 4, **kw})


def test_origin_forward_backward_and_the_loss():
    all_bad = [NAN] * 4
    fwd = rec(3, all_bad, out=[0, 1, 1, 1, 1], gout=[1] * 5)
    assert locate_origin(fwd, HEADER) | {} == {**locate_origin(fwd, HEADER), "direction": "forward", "origin": "01.Conv"}
    bwd = rec(3, [NAN, NAN, 1.0, 1.0], out=[0] * 5, gout=[1, 1, 0, 0, 0])
    assert locate_origin(bwd, HEADER)["origin"] == "01.Conv" and locate_origin(bwd, HEADER)["direction"] == "backward"
    no_flow = rec(3, [NAN, NAN, 1.0, 1.0], out=[0] * 5)  # output gradient not sampled: the parameter gradients
    assert locate_origin(no_flow, HEADER)["origin"] == "01.Conv"
    loss = rec(3, all_bad, out=[0] * 5, gout=[1] * 5)
    assert locate_origin(loss, HEADER)["direction"] == "loss"
    unknown = rec(3, all_bad)  # outputs not checked on that step: never named "the loss" on no evidence
    assert locate_origin(unknown, HEADER)["direction"] == "unknown"


def test_event_tells_what_followed_and_healthy_runs_have_none():
    recs = [rec(1), rec(2), rec(3, [NAN, NAN, 1.0, 1.0], out=[0] * 5, gout=[1, 1, 0, 0, 0]),
            rec(4, [NAN] * 4, w=[NAN] * 4, out=[1] * 5), rec(5, reloaded=True), rec(6)]
    ev = nonfinite_event(HEADER, recs)
    assert ev["step"] == 3 and ev["origin"] == "01.Conv" and ev["reached"] == ["00.Conv", "01.Conv"]
    line = ev["line"]
    assert line.startswith("Non-finite gradients first at step 3") and "01.Conv's output gradient" in line
    assert "non-finite at step 4" in line and "reloaded last.pt before step 5" in line and "finite again from step 5" in line
    assert ev["alarm"] and ev["nonfinite_steps"] == [3, 4]
    assert nonfinite_event(HEADER, [rec(s) for s in range(1, 9)]) is None
    amp = [rec(1), rec(2, [NAN] * 4, amp_skipped=True), rec(3)]  # one fp16 overflow the scaler skipped: no alarm
    ev = nonfinite_event(HEADER, amp)
    assert not ev["alarm"] and "AMP skipped the step" in ev["line"] and ev["line"].startswith("AMP overflow")
    amp2 = [rec(1), rec(2, [NAN] * 4, amp_skipped=True), rec(3, [NAN] * 4, amp_skipped=True), rec(4)]
    assert nonfinite_event(HEADER, amp2)["alarm"]  # it repeats


def test_nonfinite_flag_is_not_active_once_the_gradient_is_finite_again():
    e = RuleEngine(HEADER["modules"], [True] * 4, GradmonConfig(), HEADER["layer_index"], HEADER)
    for r in (rec(1), rec(2, [NAN] * 4)):
        e.update(StepView.from_record(r))
    assert all(f.active for f in e.flags) and len(e.flags) == 4
    e.update(StepView.from_record(rec(3)))
    assert not any(f.active for f in e.flags) and len(e.flags) == 4  # kept in the record, no longer active


TRAIN = dict(data="coco8.yaml", imgsz=160, batch=1, nbs=1, workers=0, device="cpu", plots=False, val=False,
             exist_ok=True, seed=0, deterministic=True, epochs=1)


@requires_coco8
@pytest.mark.parametrize("cfg, layer", [("yolo26n.yaml", 2), ("yolo26n.yaml", 8), ("yolo11n.yaml", 4),
                                        ("yolo11n.yaml", 9)])
@pytest.mark.parametrize("forward", [True, False], ids=["forward", "backward"])
def test_planted_nan_names_the_planted_layer_as_origin(cfg, layer, forward, tmp_path):
    model = YOLO(cfg)
    start = 2 if layer in (8, 9) else 1  # pass 2 has a flow sample (flow_every=2): located by the output gradient;
    # pass 1 has none: by the parameter gradients (backward) - the forward check runs on every pass of logged steps
    plant = GradientPlant(layer, math.nan, start=start, stop=start + 1, forward=forward).attach(model)
    mon = GradientMonitor(wandb=False).attach(model)
    model.train(project=str(tmp_path), name="nan", **TRAIN)
    assert plant.applied == 1
    ev = mon.summary["nonfinite_event"]
    name = f"{layer:02d}.{type(plant.model.model[layer]).__name__}"
    assert ev["step"] == start + 1 and ev["origin"] == name, ev
    if not forward:
        assert ev["how"].startswith("non-finite output gradient" if start == 2 else "non-finite parameter gradients")
    assert ev["direction"] == ("forward" if forward else "backward")
    assert mon.summary["lead"][0] == ev["line"]
    assert json.loads((mon.out_dir / "summary.json").read_text())["nonfinite_event"]["origin"] == name
    if not forward:  # a backward NaN reaches only the layers whose gradient passes through the planted one
        assert name == ev["reached"][-1] and "23.Detect" not in ev["reached"]


@requires_coco8
def test_a_training_that_raises_still_gets_summary_tables_and_report(tmp_path):
    model = YOLO("yolo26n.yaml")

    def user_bug(trainer):
        if trainer.epoch == 1:
            raise ValueError("a bug in the user's callback")

    model.add_callback("on_train_epoch_end", user_bug)
    mon = GradientMonitor(wandb=False).attach(model)
    with pytest.raises(ValueError, match="user's callback"):
        model.train(project=str(tmp_path), name="raises", **{**TRAIN, "epochs": 3})
    out = mon.out_dir
    for f in ("summary.json", "gradients.parquet", "steps.parquet", "layers.parquet", "report.html"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and "ValueError: a bug in the user's callback" in summary["stopped_by"]
    assert summary["steps_logged"] == 8 and any("stopped before its end" in line for line in summary["lead"])
    assert "Training stopped before its end" in (out / "report.html").read_text()


def test_forward_check_option_off_leaves_outputs_unchecked():
    """forward_check=false: no forward hook of the check; the records' out_nonfinite is null, so a NaN that entered in
    the forward pass is said to be not located instead of being blamed on the backward pass."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_gradmon.config import GradmonConfig
    from yolo_gradmon.measure.layer_signals import DepthSignals

    model = DetectionModel("yolo26n.yaml", verbose=False)
    assert DepthSignals(model, GradmonConfig()).finite is not None
    off = DepthSignals(model, GradmonConfig(forward_check=False))
    assert off.finite is None and all(type(s).__name__ != "FiniteWatch" for s in off.sources_for_capture)
    unchecked = rec(3, [NAN] * 4, out=None, gout=[1] * 5)  # every gradient non-finite, no forward bits
    where = locate_origin(unchecked, HEADER)
    assert where["direction"] == "unknown" and "not checked" in where["how"]
