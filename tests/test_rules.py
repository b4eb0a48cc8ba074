"""The judging layer on synthetic histories: the detection rules (vanishing with hysteresis, cuts, exploding,
non-finite), the cause diagnosis and the "too few steps" verdict, as plain Python over logged numbers (no model, no
training)."""

from __future__ import annotations

import dataclasses

import pytest

from yolo_gradmon import GradmonConfig
from yolo_gradmon.judge.cause import likely_cause
from yolo_gradmon.judge.rules import RuleEngine, StepView
from yolo_gradmon.record.summary import judgement
from yolo_gradmon.record.tables import layer_frame, module_frame

LAYERS = {  # a 5-layer chain with one skip: 0 -> 1 -> 2 -> 3 -> head(4), and 1 -> 3 (concat)
    "layers": ["00.Conv", "01.Conv", "02.Conv", "03.Concat", "04.Detect"],
    "layer_from": [[], [0], [1], [1, 2], [3]],
    "layer_acts": [["SiLU"], ["SiLU"], ["SiLU"], [], ["SiLU"]],
}
MODULES = ["00.Conv", "01.Conv", "02.Conv", "04.Detect"]
LAYER_INDEX = [0, 1, 2, 4]


def view(step, att=None, flow=None, gw=None, g=None, warmup=False, backwards=1, nonfinite=None, sat=None):
    n = len(MODULES)
    gw = gw or [1.0] * n
    g = g or [5.0] * n
    return StepView(
        step=step, has_grad=[True] * n, grad_norm=g, grad_to_weight=gw, update_to_weight=[1e-4] * n,
        nonfinite=nonfinite or [0] * n, warmup=warmup,
        flow_attenuation=att if att is not None else [2.0, 1.5, 1.0, 1.2, 1.0],
        flow_norm=flow if flow is not None else [2.0, 1.5, 1.0, 1.2, 1.0], flow_backwards=backwards,
        act_saturated=sat, act_dead=[0.0] * 5,
    )


def engine(**cfg):
    return RuleEngine(MODULES, [True] * 4, GradmonConfig(**cfg), LAYER_INDEX, LAYERS)


def test_vanishing_from_the_start_flagged_within_window_and_warmup_creates_nothing():
    e = engine()
    low = [1e-7, 1.5, 1.0, 1.2, 1.0]  # layer 0's gradient 1e-7 of the head's from the first step (warm-up)
    raised = []
    for s in range(1, 11):
        raised += [(s, f.module) for f in e.update(view(s, att=low, warmup=s <= 6))]
    assert raised == [(5, "00.Conv")]  # window 5 logged steps <= 10
    f = e.flags[0]
    ev = f.evidence
    assert ev["signals"] == "flow_attenuation" and ev["threshold_flow_attenuation"] == GradmonConfig.vanish_flow_attenuation
    assert ev["window"] == 5 and ev["flow_attenuation"] == pytest.approx(1e-7) and "cause" in ev
    assert "00.Conv" in f.describe() and "flow_attenuation=1e-07" in f.describe()
    e2 = engine()  # healthy values inside and after warm-up: nothing
    assert not any(e2.update(view(s, warmup=s <= 6)) for s in range(1, 30))


def test_backward_passes_count_where_steps_are_scarce_and_hysteresis():
    e = engine()
    low = [1e-7, 1.5, 1.0, 1.2, 1.0]
    assert not e.update(view(1, att=low, backwards=4))
    assert [f.module for f in e.update(view(2, att=low, backwards=4))] == ["00.Conv"]  # 8 low passes >= 5
    e.update(view(3))  # one healthy step neither clears the flag ...
    assert e.flags[0].active
    e.update(view(4, att=low))  # ... nor does one low step re-raise a new flag
    for s in range(5, 10):
        e.update(view(s))
    assert not e.flags[0].active and len(e.flags) == 1 and e.flags[0].last_step == 4
    e3 = engine()  # a low step between healthy ones never flags
    for s in range(1, 40):
        e3.update(view(s, att=[1e-7, 1.5, 1.0, 1.2, 1.0] if s % 5 == 0 else None))
    assert not e3.flags


def test_cut_flags_exactly_the_layers_behind_it():
    # gradient cut at layer 2's output (1e-6 of its consumer 3): 2 is behind it, 0/1 also reach 3 directly
    e = engine()
    flow = [2.0, 1.5, 1.5e-6, 1.2, 1.0]
    for s in range(1, 7):
        e.update(view(s, att=[2.0, 1.5, 1.5e-6, 1.2, 1.0], flow=flow))
    assert {f.module for f in e.flags} == {"02.Conv"}
    assert e.flags[0].evidence["cut_at"] == "02.Conv" and "gradient cut at 02.Conv" in e.flags[0].evidence["cause"]
    # same profile at a milder, healthy-looking drop (0.5x): nothing
    e = engine()
    for s in range(1, 10):
        e.update(view(s, flow=[2.0, 1.5, 0.6, 1.2, 1.0]))
    assert not e.flags


def test_cause_names_saturated_units():
    e = engine()
    sat = [0.0, 0.8, 0.9, None, 0.0]
    for s in range(1, 6):
        e.update(view(s, att=[1e-7, 1.5, 1.0, 1.2, 1.0], sat=sat))
    cause = e.flags[0].evidence["cause"]
    assert "saturated" in cause and "90% in 02.Conv" in cause and "80% in 01.Conv" in cause
    assert likely_cause(0, view(1), LAYERS, GradmonConfig()).startswith("no saturated or dead units")
    weak = likely_cause(2, view(1, att=[2.0, 1.5, 1.0, 5e-7, 1.0]), LAYERS, GradmonConfig())
    assert weak == "03.Concat feeds only the head and receives 5.0e-07x the head's output gradient"


def test_cause_uses_the_last_activation_health_sample_between_samples():
    """Activation health is sampled every ``health_every`` logged steps; a step without a sample names the cause
    from the last sample and says which step that was."""
    e = engine()
    low = [1e-7, 1.5, 1.0, 1.2, 1.0]
    e.update(view(1, att=low, sat=[0.0, 0.8, 0.9, None, 0.0]))
    for s in range(2, 6):
        e.update(dataclasses.replace(view(s, att=low), act_saturated=None, act_dead=[None] * 5))
    f = e.flags[0]
    assert f.first_step == 5 and f.evidence["health_step"] == 1 and "90% in 02.Conv" in f.evidence["cause"]
    e.update(view(6, att=low, sat=[0.0, 0.0, 0.0, None, 0.0]))  # a newer sample replaces it
    assert f.evidence["health_step"] == 6 and "90% in" not in f.evidence["cause"]
    e2 = engine()  # no sample yet: no health_step, the cause is judged without health
    for s in range(1, 6):
        e2.update(dataclasses.replace(view(s, att=low), act_saturated=None, act_dead=None))
    assert "health_step" not in e2.flags[0].evidence and "cause" in e2.flags[0].evidence


def test_flow_sampled_every_other_step_flags_on_the_fifth_sample_and_unsampled_steps_never_clear():
    """flow_every=2: the steps without a flow sample (grad/weight healthy, as for a real choke) neither reset the
    count nor clear an open flag; the cause is named from the last flow profile."""
    e = engine()
    low = [1e-7, 1.5, 1.0, 1.2, 1.0]
    unsampled = lambda s: dataclasses.replace(view(s), flow_attenuation=[None] * 5, flow_norm=[None] * 5,  # noqa: E731
                                              flow_backwards=0)
    raised = []
    for s in range(1, 12):
        raised += [(s, f.module) for f in e.update(view(s, att=low) if s % 2 else unsampled(s))]
    assert raised == [(9, "00.Conv")]  # the 5th sample: steps 1, 3, 5, 7, 9
    for s in range(12, 30, 2):  # only unsampled steps: the flag stays open
        e.update(unsampled(s))
    assert e.flags[0].active
    for s in range(31, 41, 2):  # five healthy samples clear it
        e.update(view(s))
    assert not e.flags[0].active
    e2 = engine(vanish_window=1)  # grad/weight low on an unsampled step: the cause uses the last flow profile
    e2.update(view(1, att=[2.0, 1e-3, 1.0, 1.2, 1.0]))  # the last profile: a cut 00.Conv must pass
    flags = e2.update(dataclasses.replace(unsampled(2), grad_to_weight=[1e-9, 1.0, 1.0, 1.0]))
    assert [f.module for f in flags] == ["00.Conv"] and "gradient cut at 01.Conv" in flags[0].evidence["cause"]


def test_exploding_spike_immediately_and_nonfinite_at_once():
    e = engine()
    for s in range(1, 6):
        assert not e.update(view(s))
    new = e.update(view(6, g=[5.0, 5.0, 5e4, 5.0]))  # 1e4 x the running median of 02.Conv
    assert [(f.kind, f.module) for f in new] == [("exploding", "02.Conv")]
    assert new[0].evidence["factor"] == pytest.approx(1e4) and new[0].evidence["threshold"] == 1000.0
    new = e.update(view(7, g=[5.0, float("nan"), 5.0, 5.0], nonfinite=[0, 12, 0, 0]))
    assert [(f.kind, f.module) for f in new] == [("nonfinite", "01.Conv")]


def test_too_few_steps_to_judge_and_old_logs_without_depth_signals():
    header = {"config": GradmonConfig().to_dict(), "modules": MODULES}
    rec = {"step": 1, "epoch": 1, "grad_norm": [1.0] * 4, "grad_to_weight": [1.0] * 4,
           "update_to_weight": [1e-4] * 4, "nonfinite": [0] * 4, "weight_norm": [1.0] * 4, "max_abs_grad": [1.0] * 4}
    few, verdict = judgement(header, [dict(rec, step=k) for k in (1, 2, 3)])
    assert few and verdict.startswith("too few steps to judge: 3 logged optimizer step(s)")
    few, verdict = judgement(header, [dict(rec, step=k, flow_backwards=4) for k in (1, 2, 3)])
    assert not few and "12 backward pass(es)" in verdict  # per-backward flow makes 3 steps judgeable
    # a log line without any flow/health field (older logs): frames and rules still work
    assert module_frame([rec], MODULES, LAYER_INDEX)["flow_attenuation"].null_count() == 4
    assert layer_frame([rec], LAYERS["layers"]).height == 0
    assert not engine().update(StepView.from_record(rec))


