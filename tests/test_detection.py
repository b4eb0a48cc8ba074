"""Vanishing/exploding detection that tells the truth: the depth signals (gradient flow, activation health) equal an
independent autograd reference, and on real COCO8 trainings a planted choke is flagged with precision and recall 1.0
on YOLO26n and YOLO11n, a planted amplification or NaN within one logged step. The rules on synthetic histories are in ``tests/test_rules.py``.

The long validations (COCO128, several choke points per model, Sigmoid vs SiLU/ReLU) are in
``tests/test_detection_slow.py`` (``pytest -m slow``) and ``benchmarks/validate_detection.py``.
"""

from __future__ import annotations


import json
import math
import threading

import numpy as np
import polars as pl
import pytest
import torch
from conftest import requires_coco8
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_gradmon import GradientMonitor, GradmonConfig, read_log, rebuild
from yolo_gradmon.trainer import compiled
from yolo_gradmon.measure.flow import FlowHooks, output_tensors
from yolo_gradmon.measure.health import ActivationHealth, flat_regions
from yolo_gradmon.structure.graph import upstream_only
from yolo_gradmon.structure.layout import layer_sources
from yolo_gradmon.record.tables import layer_frame
from yolo_gradmon.measure.layer_signals import DepthSignals
from yolo_gradmon.show.sink import Sink
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
            s = DepthSignals(detection_model("yolo11n.yaml"), GradmonConfig(), compiled=compiled(Trainer()))
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


# ---------------------------------------------------------------------------------------------------- real training
def planted_run(cfg, layer, tmp_path, factor=1e-6, start=0, stop=None, epochs=3, sinks=(), **opts):
    model = YOLO(cfg)
    plant = GradientPlant(layer, factor, start=start, stop=stop).attach(model)
    mon = GradientMonitor(wandb=False, **opts)
    mon.extra_sinks += list(sinks)
    mon.attach(model)
    model.train(epochs=epochs, project=str(tmp_path), name=f"plant{layer}", **TRAIN)
    return plant, mon


class FlagClock(Sink):
    """An extra sink noting each flag, and which thread delivers the monitor's per-step events."""

    name = "flag-clock"

    def __init__(self):
        self.flags: list[tuple[str, str, int]] = []
        self.threads: set[int] = set()

    def log_step(self, record, n_flagged):
        self.threads.add(threading.get_ident())

    def on_flag(self, flag):
        self.threads.add(threading.get_ident())
        self.flags.append((flag.kind, flag.module, flag.first_step))


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
    clock, seen_at = FlagClock(), {}

    def before_optimizer_step(optimizer, args, kwargs):  # the trainer's own step: what the sinks have by then
        n = len(seen_at) + 1
        seen_at[n] = {step for k, _, step in clock.flags if k == kind}

    handle = register_optimizer_step_pre_hook(before_optimizer_step)
    try:
        plant, mon = planted_run("yolo11n.yaml", 9, tmp_path, factor=factor, start=6, stop=7, sinks=[clock])
    finally:
        handle.remove()
    # backward pass 6 (0-based) is optimizer step 7 (batch=nbs=1): flagged at that step, training completed
    # (after the NaN step Ultralytics' own NaN recovery reloads last.pt and redoes the epoch)
    assert read_log(mon.out_dir).ended and plant.applied == 1
    hit = sorted({f.first_step for f in mon.flags if f.kind == kind})
    assert hit and hit[0] == 7, [(f.kind, f.module, f.first_step) for f in mon.flags]
    # the record of step 7 completes when step 8 starts (its update ratio is synced then); judged and shown on the
    # host worker's thread while step 8 runs, its flag is with every sink before the trainer's step 9 runs
    assert 7 in seen_at[9], seen_at
    assert clock.threads and threading.get_ident() not in clock.threads  # never on the training thread
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
        layer = layer_frame(log.steps, log.layers).filter((pl.col("layer") == "02.C3k2") & (pl.col("step") == step))
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
    import yolo_gradmon.measure.flow as flow_mod

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
