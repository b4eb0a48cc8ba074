"""What the verdict can decide, on synthetic histories: the dying rule (fires on planted dead fractions of ReLU
layers, silent on healthy and on SiLU layers), the spike rule scaled by the total norm (a module waking up from a tiny
gradient is no explosion, a planted x1e4 still is), the evidence gaps ("cannot tell yet" on a flow window that could
not fill), frozen modules, the weakest layer and an always-active clip."""

from __future__ import annotations

from pathlib import Path

from yolo_gradmon import GradmonConfig
from yolo_gradmon.judge.rules import RuleEngine, StepView
from yolo_gradmon.judge.verdict import clip_line, evidence_gaps, frozen_line, frozen_modules, weakest_line
from yolo_gradmon.record.outputs import TrainEnd




def build_summary(header, records, flags, complete):
    """The summary train end builds (the tables once, then the summary)."""
    return TrainEnd.build(header, records, flags, complete, log_path=Path("gradmon/gradients.jsonl")).summary


LAYERS = {"layers": ["00.Conv", "01.Conv", "02.Conv", "03.Concat", "04.Detect"],
          "layer_from": [[], [0], [1], [1, 2], [3]],
          "layer_acts": [["ReLU"], ["ReLU"], ["SiLU"], [], ["SiLU"]]}
MODULES = ["00.Conv", "01.Conv", "02.Conv", "04.Detect"]
LAYER_INDEX = [0, 1, 2, 4]


def view(step, dead=None, g=None):
    return StepView(step=step, has_grad=[True] * 4, grad_norm=g or [5.0] * 4, grad_to_weight=[1e-3] * 4,
                    update_to_weight=[1e-4] * 4, nonfinite=[0] * 4, flow_attenuation=[2.0, 1.5, 1.0, 1.2, 1.0],
                    flow_norm=[2.0, 1.5, 1.0, 1.2, 1.0], flow_backwards=1, act_saturated=[0.0] * 5,
                    act_dead=dead)


def engine(**cfg):
    return RuleEngine(MODULES, [True] * 4, GradmonConfig(**cfg), LAYER_INDEX, LAYERS)


def test_dying_fires_on_consecutive_samples_of_a_relu_layer_and_clears():
    e = engine()
    raised = []
    for s, d1 in enumerate([0.02, 0.10, 0.15, 0.20, 0.22], start=1):  # 01.Conv: dead fraction rising past 5%
        raised += [(s, f.kind, f.module) for f in e.update(view(s, dead=[0.0, d1, 0.3, 0.0, 0.0]))]
    assert raised == [(4, "dying", "01.Conv")]  # 3 samples in a row >= 5%; 02.Conv (SiLU, 30%) is not judged
    ev = e.flags[0].evidence
    assert ev["activation"] == "ReLU" and ev["dead_fraction"] == 0.22 and ev["trend_per_sample"] > 0
    e.update(view(6, dead=[0.0, 0.01, 0.0, 0.0, 0.0]))
    assert not e.flags[0].active
    healthy = engine()
    assert not any(healthy.update(view(s, dead=[0.0, 0.01, 0.0, 0.0, 0.0])) for s in range(1, 30))
    unsampled = engine()  # steps without a health sample carry the last one but never count as a new sample
    unsampled.update(view(1, dead=[0.0, 0.2, 0.0, 0.0, 0.0]))
    assert not any(unsampled.update(view(s)) for s in range(2, 12))


def test_spike_of_a_module_waking_from_a_tiny_gradient_is_no_explosion_but_a_planted_x1e4_is():
    e = engine()
    g = lambda tiny: [100.0, 200.0, tiny, 300.0]  # noqa: E731 - 02.Conv almost without gradient, then a normal one
    for s in range(1, 6):
        e.update(view(s, g=g(0.02)))
    assert not e.update(view(6, g=g(30.0)))  # 1500x its median, but 0.1x the model's total: a transient
    e2 = engine()
    for s in range(1, 6):
        e2.update(view(s, g=g(20.0)))
    new = e2.update(view(6, g=[100.0, 200.0, 2e5, 300.0]))  # x1e4
    assert [(f.kind, f.module) for f in new] == [("exploding", "02.Conv")]
    e2.update(view(7, g=g(20.0)))
    assert not e2.flags[0].active  # the spike ended


def header(flow=True, trainable=None, **train):
    return {"modules": MODULES, "trainable": trainable or [True] * 4, "layer_index": LAYER_INDEX, **LAYERS,
            "flow": flow, "activation_health": True, "train": train,
            "config": GradmonConfig().to_dict()}


def rec(step, backwards=1, total=300.0, clip=True):
    return {"step": step, "epoch": 1, "has_grad": [True] * 4, "grad_norm": [5.0] * 4, "weight_norm": [1.0] * 4,
            "grad_to_weight": [1e-3] * 4, "update_to_weight": [None] * 4, "max_abs_grad": [1.0] * 4,
            "nonfinite": [0] * 4, "flow_backwards": backwards, "flow_attenuation": [2.0, 1e-3, 1.0, 1.2, 1.0],
            "act_dead": [0.0] * 5, "total_norm": total, "clip_active": clip}


def test_a_flow_window_that_could_not_fill_cannot_tell_yet_even_with_enough_steps():
    recs = [rec(s, backwards=1 if s % 2 else 0) for s in range(1, 9)]  # 8 steps, 4 flow passes, window 5
    s = build_summary(header(), recs, [], complete=True)
    assert s["too_few_steps"] and s["verdict"].startswith("cannot tell yet")
    assert "4 of 5 backward passes" in s["verdict"] and "gradmon_flow_every=1" in s["verdict"]
    assert not s["lead"][0].startswith("No module flagged")
    full = build_summary(header(), [rec(s) for s in range(1, 9)], [], complete=True)  # 8 passes: judged
    assert not full["too_few_steps"] and full["lead"][0].startswith("No module flagged, judged on 8")
    assert evidence_gaps(header(), [rec(s) for s in range(1, 9)], GradmonConfig().to_dict()) == []
    gaps = evidence_gaps(header(), [rec(1), rec(2)], {**GradmonConfig().to_dict(), "health_every": 10})
    assert [g["rule"] for g in gaps] == ["vanishing (gradient flow)", "exploding (spike over the running median)",
                                         "dying"]


def test_frozen_modules_named_and_weakest_layer_and_always_active_clip_explained():
    fr = frozen_modules(header(trainable=[False, False, True, True], freeze=2))
    assert fr["modules"] == ["00.Conv", "01.Conv"]
    assert frozen_line(fr) == "2 module(s) frozen, not judged: 00.Conv–01.Conv (freeze=2)"
    assert frozen_line(frozen_modules(header())) is None
    dfl = frozen_modules({"modules": ["22.C3k2.cv1.conv", "23.Detect.dfl.conv"], "trainable": [True, False]})
    assert "DFL" in frozen_line(dfl) and "23.Detect.dfl.conv" in frozen_line(dfl)
    line = weakest_line({"weakest_flow": 1e-3, "weakest_layer": "01.Conv"}, {"vanish_flow_attenuation": 1e-5})
    assert "01.Conv" in line and "2.0 decades above" in line
    assert "sums its loss over the batch" in clip_line([rec(s) for s in range(1, 4)], {"clip_norm": 10.0})
    assert clip_line([rec(1), rec(2, clip=False)], {}) is None
    s = build_summary(header(trainable=[False, False, True, True], freeze=2), [rec(s) for s in range(1, 9)], [],
                      complete=True)
    assert s["frozen_modules"] == ["00.Conv", "01.Conv"] and any("frozen, not judged" in x for x in s["lead"])


def test_the_cause_of_a_vanishing_flag_names_only_layers_on_its_own_path():
    from yolo_gradmon.judge.cause import likely_cause

    layers = {**LAYERS, "layer_acts": [["SiLU"]] * 3 + [[]] + [["SiLU"]]}
    v = view(1)
    v.flow_attenuation = [2.0, 1.5, 1e-3, 1.2, 1.0]  # 02.Conv's output: a cut (1e-3 of its consumer's)
    assert likely_cause(2, v, layers, GradmonConfig()).startswith("gradient cut at 02.Conv")
    other = likely_cause(0, v, layers, GradmonConfig())  # 00.Conv reaches the head by 01 -> 03, past 02
    assert "02.Conv" not in other and other.startswith("no saturated or dead units")
    relu = {**LAYERS}
    v.act_dead = [0.0, 0.2, 0.0, 0.0, 0.0]  # 20% dead in 01.Conv (ReLU): under cause_dead, over dying_dead
    assert "dying ReLU units on its path: 20% in 01.Conv" in likely_cause(0, v, relu, GradmonConfig())
