"""Vanishing/exploding detection that tells the truth: the depth signals (gradient flow, activation health) equal an
independent autograd reference, the rules are responsive without false flags (synthetic histories), and on real
COCO8 trainings a planted choke is flagged with precision and recall 1.0 on YOLO26n and YOLO11n, a planted
amplification or NaN within one logged step.

The long validations (COCO128, several choke points per model, Sigmoid vs SiLU/ReLU) are in
``tests/test_detection_slow.py`` (``pytest -m slow``) and ``benchmarks/validate_detection.py``.
"""

from __future__ import annotations

import dataclasses

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from conftest import requires_coco8
from torch import nn
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_gradmon import GradientMonitor, GradmonConfig, read_log, rebuild
from yolo_gradmon.flow import FlowHooks, layer_sources, output_tensors, upstream_only
from yolo_gradmon.health import ActivationHealth, flat_regions, likely_cause
from yolo_gradmon.logfile import layer_frame, module_frame
from yolo_gradmon.outputs import judgement
from yolo_gradmon.rules import RuleEngine, StepView
from yolo_gradmon.signals import DepthSignals
from yolo_gradmon.testing import GradientPlant, expected_vanishing, precision_recall

TRAIN = dict(data="coco8.yaml", imgsz=160, batch=1, nbs=1, workers=0, device="cpu", plots=False, val=False,
             exist_ok=True, seed=0, deterministic=True)  # 4 optimizer steps per epoch


# ---------------------------------------------------------------------------------------------------- helpers
def fake_batch(n=2, imgsz=160):
    g = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(n, 3, imgsz, imgsz, generator=g),
        "cls": torch.tensor([[0.0], [1.0], [2.0], [5.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2], [0.6, 0.4, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9]]),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]),
    }


def detection_model(cfg):
    torch.manual_seed(0)
    m = DetectionModel(cfg, verbose=False)
    m.args = get_cfg()
    return m.train()


def sync(*sources):
    """What GradientCapture does at a logged step: one transfer of every source's device parts, then host fields."""
    parts = {k: v for s in sources for k, v in s.device_parts().items()}
    host = {k: v.detach().cpu().double().numpy() for k, v in parts.items()}
    out = {}
    for s in sources:
        out.update(s.host_fields(host))
    return out


# ---------------------------------------------------------------------------------------------------- flow
@pytest.mark.parametrize("cfg", ["yolo26n.yaml", "yolo11n.yaml"])
def test_flow_equals_autograd_reference_and_divides_amp_scale(cfg):
    """flow_norm = ‖dL/d out‖ per layer (retain_grad reference), RMS over backward passes, the AMP scale divided out."""
    m = detection_model(cfg)
    scale = torch.tensor(1024.0)
    flow = FlowHooks(m, scale_fn=lambda: scale)
    refs: dict[int, list] = {}

    def keep(i):
        def hook(mod, inp, out):
            refs.setdefault(i, []).append(output_tensors(inp, out))
            for t in refs[i][-1]:
                t.retain_grad()
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(m.model)]
    flow.arm(True)
    for k in range(2):  # two micro-batches of one optimizer step, the loss scaled like a GradScaler does
        loss, _ = m(fake_batch(imgsz=128 + 32 * k))
        (loss.sum() * scale).backward()
    out = sync(flow)
    flow.arm(False)
    for h in handles:
        h.remove()
    assert out["flow_backwards"] == 2
    head = len(m.model) - 1
    per_pass = np.zeros((2, len(m.model)))
    for i, passes in refs.items():
        for k, ts in enumerate(passes):
            per_pass[k, i] = math.sqrt(sum(float(t.grad.double().norm()) ** 2 for t in ts if t.grad is not None)) / 1024
    rms = np.sqrt((per_pass ** 2).mean(0))
    att = (per_pass / per_pass[:, head : head + 1]).max(0)
    for i in range(len(m.model)):
        assert out["flow_norm"][i] == pytest.approx(rms[i], rel=1e-4), i
        assert out["flow_attenuation"][i] == pytest.approx(att[i], rel=1e-4), i
    assert out["flow_attenuation"][head] == pytest.approx(1.0)
    # disarmed: no hook left on the model, and nothing accumulates
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in m.model)
    loss, _ = m(fake_batch())
    loss.sum().backward()
    assert sync(flow)["flow_backwards"] == 0


def test_flow_sees_gradient_before_a_later_inplace_change():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleList([nn.Linear(3, 3), InplaceDouble(), nn.Linear(3, 1)])

        def forward(self, x):
            for m in self.model:
                x = m(x)
            return x

    class InplaceDouble(nn.Module):
        def forward(self, x):
            return x.mul_(2)  # in place on the previous layer's output

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(5, 3)
    y0 = net.model[0](x)
    y0.retain_grad()
    net.model[2](y0 * 2).sum().backward()  # the same function, out of place
    expected = float(y0.grad.norm())
    net.zero_grad()
    flow = FlowHooks(net)
    flow.arm(True)
    net(x).sum().backward()
    out = sync(flow)
    assert out["flow_norm"][0] == pytest.approx(expected, rel=1e-5)
    assert out["flow_norm"][1] is None  # returns its input object: no output of its own


# ---------------------------------------------------------------------------------------------------- health
def test_flat_regions_of_common_activations():
    eps = 1e-3
    sig = flat_regions(nn.Sigmoid(), eps)
    assert sig.saturating and sig.left == pytest.approx(-6.9, abs=0.05) and sig.right == pytest.approx(6.9, abs=0.05)
    tanh = flat_regions(nn.Tanh(), eps)
    assert tanh.saturating and tanh.right == pytest.approx(4.15, abs=0.05)
    relu = flat_regions(nn.ReLU(inplace=True), eps)
    assert not relu.saturating and relu.left == 0.0 and relu.right is None
    silu = flat_regions(nn.SiLU(), eps)
    assert not silu.saturating and -10 < silu.left < -8.5
    assert not flat_regions(nn.LeakyReLU(0.1), eps).can_die


class TinyNet(nn.Module):
    """Ultralytics-like: ``model`` is the layer list; one shared activation module, as Conv.default_act is."""

    def __init__(self, act):
        super().__init__()
        self.model = nn.ModuleList([nn.Sequential(nn.Identity(), act), nn.Sequential(nn.Identity(), act)])

    def forward(self, x):
        for m in self.model:
            x = m(x)
        return x


def test_health_counts_saturated_and_dead_units_per_layer():
    x = torch.zeros(2, 4, 3, 3)
    x[:, 0] = 10.0  # channel 0: every value saturated (sigmoid'(10) = 4.5e-5)
    x[0, 1, 0, 0] = -8.0  # one more saturated value
    net = TinyNet(nn.Sigmoid()).train()
    h = ActivationHealth(net, eps=1e-3)
    h.arm(True)
    with torch.enable_grad():
        net(x.requires_grad_())
    out = sync(h)
    # layer 0 sees x; layer 1 sees sigmoid(x) in (0, 1): nothing saturated there
    assert out["act_saturated"][0] == pytest.approx((18 + 1) / 72)
    assert out["act_dead"][0] == pytest.approx(1 / 4)
    assert out["act_saturated"][1] == 0.0 and out["act_dead"][1] == 0.0

    net = TinyNet(nn.ReLU()).train()
    h = ActivationHealth(net, eps=1e-3)
    h.arm(True)
    x = torch.randn(3, 5, 4, 4).abs()
    x[:, 2] = -x[:, 2]  # channel 2 negative over the whole batch: dead
    x[1, 3] = -1.0  # channel 3 negative in one image only: alive
    with torch.enable_grad():
        net(x.requires_grad_())
    out = sync(h)
    assert out["act_dead"][0] == pytest.approx(1 / 5)
    assert out["act_saturated"][0] is None  # ReLU is not a saturating kind
    h.arm(False)
    assert not any(m._forward_hooks for m in net.modules())


def test_signals_off_under_compile(caplog):
    class Args:
        compile = True

    class Trainer:
        args = Args()

    from ultralytics.utils import LOGGER

    LOGGER.propagate = True
    try:
        with caplog.at_level("WARNING"):
            s = DepthSignals(detection_model("yolo11n.yaml"), GradmonConfig(), Trainer())
    finally:
        LOGGER.propagate = False
    assert s.flow is None and s.health is None and s.sources_for_capture == []
    assert "off under compile=True" in caplog.text
    assert s.header()["flow"] is False and len(s.header()["layers"]) == 24


# ---------------------------------------------------------------------------------------------------- graph truth
def test_upstream_only_respects_skip_and_concat_routes():
    src = layer_sources(detection_model("yolo11n.yaml"))
    assert upstream_only(src, 6) == [5, 6]  # layer 4 also feeds the neck's Concat (15): keeps its gradient
    assert upstream_only(src, 4) == [0, 1, 2, 3, 4]
    assert upstream_only(src, 10) == [7, 8, 9, 10]  # 6 feeds Concat 12
    assert upstream_only(src, 22) == [20, 21, 22]  # 19 also feeds the head
    assert upstream_only(src, 23) == list(range(24))
    m = detection_model("yolo26n.yaml")
    assert expected_vanishing(m, 8) == ["07.Conv", "08.C3k2"]
    assert upstream_only(layer_sources(m), 12) == [11, 12]
    assert expected_vanishing(m, 12) == []  # Upsample/Concat have no parameters: never monitored modules
    assert precision_recall({"a", "b"}, {"a", "b"}) == (1.0, 1.0)
    assert precision_recall({"a", "c"}, {"a", "b"}) == (0.5, 0.5)


# ---------------------------------------------------------------------------------------------------- rules
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
    e2.update(view(1, flow=[2.0, 1.5, 1e-3, 1.2, 1.0], att=[2.0, 1.5, 1e-3, 1.2, 1.0]))
    flags = e2.update(dataclasses.replace(unsampled(2), grad_to_weight=[1e-9, 1.0, 1.0, 1.0]))
    assert [f.module for f in flags] == ["00.Conv"] and "gradient cut at 02.Conv" in flags[0].evidence["cause"]


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


# ---------------------------------------------------------------------------------------------------- real training
def planted_run(cfg, layer, tmp_path, factor=1e-6, start=0, stop=None, epochs=3, **opts):
    model = YOLO(cfg)
    plant = GradientPlant(layer, factor, start=start, stop=stop).attach(model)
    mon = GradientMonitor(wandb=False, **opts).attach(model)
    model.train(epochs=epochs, project=str(tmp_path), name=f"plant{layer}", **TRAIN)
    return plant, mon


@requires_coco8
@pytest.mark.parametrize("cfg, layer", [("yolo26n.yaml", 8), ("yolo11n.yaml", 6)])
def test_planted_choke_flagged_with_precision_and_recall_one(cfg, layer, tmp_path):
    plant, mon = planted_run(cfg, layer, tmp_path)
    expected = expected_vanishing(plant.model, layer)
    vanishing = {f.module for f in mon.flags if f.kind == "vanishing"}
    assert precision_recall(vanishing, expected) == (1.0, 1.0), (vanishing, expected)
    assert not [f for f in mon.flags if f.kind == "exploding"]
    first = min(f.first_step for f in mon.flags if f.kind == "vanishing")
    assert first <= 10  # responsive: the choke holds from the first step
    ev = next(f for f in mon.flags if f.module == expected[0]).evidence
    assert ev["cause"].startswith(f"gradient cut at {plant.model.model[layer].i:02d}.")

    # the evidence and the signals reach summary.json, the Parquet files and a rebuild from the log alone
    summary = json.loads((mon.out_dir / "summary.json").read_text())
    assert {f["module"] for f in summary["flags"] if f["kind"] == "vanishing"} == set(expected)
    assert summary["flow"] and summary["activation_health"] and not summary["too_few_steps"]
    assert [s["layer"] for s in summary["layer_stats"]] == summary["layers"]
    df = pl.read_parquet(mon.out_dir / "gradients.parquet")
    assert {"flow_norm", "flow_attenuation", "act_saturated", "act_dead"} <= set(df.columns)
    low = df.filter(pl.col("module") == expected[0])["flow_attenuation"]
    assert low.max() < 1e-4
    layers = pl.read_parquet(mon.out_dir / "layers.parquet")
    assert layers.height == len(summary["layers"]) * summary["steps_logged"]
    rebuilt = rebuild(mon.out_dir)
    assert [(f["kind"], f["module"], f["first_step"]) for f in rebuilt["flags"]] == \
        [(f["kind"], f["module"], f["first_step"]) for f in summary["flags"]]
    # no hook of the monitor or the plant is left on the model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plant.model.modules())


@requires_coco8
@pytest.mark.parametrize("factor, kind", [(1e4, "exploding"), (math.nan, "nonfinite")])
def test_planted_amplification_or_nan_flagged_within_one_logged_step(factor, kind, tmp_path):
    plant, mon = planted_run("yolo11n.yaml", 9, tmp_path, factor=factor, start=6, stop=7)
    # backward pass 6 (0-based) is optimizer step 7 (batch=nbs=1): flagged at that step, training completed
    # (after the NaN step Ultralytics' own NaN recovery reloads last.pt and redoes the epoch)
    assert read_log(mon.out_dir).ended and plant.applied == 1
    hit = sorted({f.first_step for f in mon.flags if f.kind == kind})
    assert hit and hit[0] == 7, [(f.kind, f.module, f.first_step) for f in mon.flags]
    assert {f.module for f in mon.flags if f.kind == kind and f.first_step == 7} >= {"07.Conv", "08.C3k2", "09.SPPF"}
    assert not [f for f in mon.flags if f.kind == "vanishing"]


@requires_coco8
def test_sigmoid_attenuates_the_flow_to_the_first_layers(tmp_path):
    """Same seed and data: with Sigmoid the gradient reaching layers 0-2 (relative to the head) is several times
    weaker than with SiLU (benchmarks/validate_detection.py sigmoid: about 10x on YOLO11n)."""
    from yolo_gradmon.ablate.swaps import build_model_with_activation
    from yolo_gradmon.testing import flow_profile

    first = {}
    for act in ("silu", "sigmoid"):
        model = YOLO("yolo11n.yaml") if act == "silu" else build_model_with_activation("yolo11n.yaml", act)[0]
        mon = GradientMonitor(wandb=False).attach(model)
        model.train(epochs=2, project=str(tmp_path), name=act, **TRAIN)
        first[act] = float(np.mean(flow_profile(mon.records)[:3]))
        assert not [f for f in mon.flags if f.kind in ("vanishing", "exploding")]
        if act == "sigmoid":
            assert read_log(mon.out_dir).header["layer_acts"][0] == ["Sigmoid"]
            assert mon.summary["layer_stats"][0]["max_act_saturated"] is not None  # a saturating kind is measured
    assert first["sigmoid"] < first["silu"] / 3, first


@requires_coco8
def test_log_every_and_module_granularity_carry_the_layer_signals(tmp_path):
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False, log_every=2, flow_every=1, health_every=2, granularity="module").attach(model)
    model.train(epochs=2, project=str(tmp_path), name="le2", **TRAIN)
    log = read_log(mon.out_dir)
    assert [r["step"] for r in log.steps] == [1, 3, 5, 7]
    # activation health on every 2nd logged step (the 1st, 3rd, ...): optimizer steps 1 and 5
    assert [r["step"] for r in log.steps if any(v is not None for v in r["act_dead"])] == [1, 5]
    assert all(r["flow_backwards"] == 1 for r in log.steps)  # only the logged steps' backward passes are hooked
    assert all(len(r["flow_norm"]) == len(log.layers) == 24 for r in log.steps)
    df = pl.read_parquet(mon.out_dir / "gradients.parquet")
    for step in (3, 5):
        row = df.filter((pl.col("module") == "02.C3k2.m.0.cv1.conv") & (pl.col("step") == step))
        layer = log.layer_frame().filter((pl.col("layer") == "02.C3k2") & (pl.col("step") == step))
        assert row["flow_attenuation"][0] == pytest.approx(layer["flow_attenuation"][0])
        assert row["act_dead"][0] == layer["act_dead"][0]
        assert (row["act_dead"][0] is None) == (step == 3)
    assert df.filter(pl.col("module").str.starts_with("23."))["flow_attenuation"].unique().to_list() == [1.0]


@requires_coco8
def test_flow_every_counts_passes_so_accumulated_steps_all_keep_flow(tmp_path):
    """flow_every=2 samples every 2nd forward/backward pass of logged steps: with one pass per step that is every
    2nd logged step; with 2 passes per optimizer step (nbs=2 x batch 1, no warm-up) every logged step keeps one."""
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False, flow_every=2).attach(model)
    model.train(epochs=1, project=str(tmp_path), name="one", **TRAIN)
    assert [r["flow_backwards"] for r in read_log(mon.out_dir).steps] == [1, 0, 1, 0]
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False, flow_every=2).attach(model)
    model.train(epochs=1, project=str(tmp_path), name="acc", **{**TRAIN, "nbs": 2, "warmup_epochs": 0})
    steps = read_log(mon.out_dir).steps
    assert len(steps) == 2 and [r["flow_backwards"] for r in steps] == [1, 1]
    assert all(v is not None for v in steps[1]["flow_norm"][:3])


def test_a_failing_hook_never_stops_the_forward_or_backward(monkeypatch):
    import yolo_gradmon.flow as flow_mod

    m = detection_model("yolo11n.yaml")
    flow, health = FlowHooks(m), ActivationHealth(m)
    flow.arm(True)
    health.arm(True)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(flow_mod, "output_tensors", boom)
    monkeypatch.setattr(health, "_measure", boom)
    loss, _ = m(fake_batch())
    loss.sum().backward()  # trains on
    assert flow.failed and health.failed
    out = sync(flow, health)
    assert out["flow_backwards"] == 0 and set(out["act_dead"]) == {None}
    flow.arm(False)
    health.arm(False)
