"""Unit tests of the capture against hand-made models: AMP unscaling, accumulation, clipping, frozen layers."""

import numpy as np
import pytest
import torch
from torch import nn

from yolo_gradmon.measure.params import GradientCapture
from yolo_gradmon.record.logfile import step_record
from yolo_gradmon.structure.layout import build_layout


class Tiny(nn.Module):
    """Ultralytics-shaped: a ``model`` Sequential of layers."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU()),
            nn.Upsample(scale_factor=1),  # no parameters
            nn.Sequential(nn.Conv2d(4, 8, 3), nn.SiLU()),
            nn.Sequential(nn.Flatten(), nn.LazyLinear(5)),
        )

    def forward(self, x):
        return self.model(x)


def make(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    m(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    return m


def ultralytics_step(model, opt, scaler, max_norm=10.0):
    """The body of Ultralytics' BaseTrainer.optimizer_step."""
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


def reference(layout):
    """Independent per-parameter loop: per-module grad norms (float64) of the current .grad."""
    out = np.zeros(layout.n_groups)
    for p, g in zip(layout.params, layout.group_of):
        if p.grad is not None:
            out[g] += float(p.grad.double().norm()) ** 2
    return np.sqrt(out)


def run(model, layout, cap, opt, scaler, step=1, logged=True, batches=1, scale_loss=1.0, seed=1):
    torch.manual_seed(seed)
    for _ in range(batches):
        x = torch.randn(4, 3, 8, 8)
        loss = model(x).pow(2).mean() * scale_loss
        scaler.scale(loss).backward()
    done = cap.step(lambda: ultralytics_step(model, opt, scaler), step=step, epoch=1, logged=logged, lr=[0.1], scaler=scaler)
    return done


def test_layer_keys_and_param_free_layers():
    layout = build_layout(make(), "layer")
    assert layout.names == ["00.Sequential", "02.Sequential", "03.Sequential"]  # 01 has no parameters
    assert build_layout(make(), "module").names[:2] == ["00.Sequential.0", "00.Sequential.1"]
    assert build_layout(make(), "param").names[0] == "00.Sequential.0.weight"


def test_amp_unscaling_accumulation_and_preclip_norm():
    """Logged norm = accumulated gradient / GradScaler scale, before clipping, for a huge scale."""
    model = make()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout, update_ratio=True, clip_norm=10.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)

    # independent reference on a copy: same data, no scaler, same accumulation
    ref_model = make()
    torch.manual_seed(1)
    for _ in range(3):
        ref_model(torch.randn(4, 3, 8, 8)).pow(2).mean().mul(1000.0).backward()
    ref = reference(build_layout(ref_model, "layer"))
    assert np.sqrt((ref**2).sum()) > 10.0  # clipping will be active

    run(model, layout, cap, opt, scaler, batches=3, scale_loss=1000.0)
    (stats,) = cap.flush()
    np.testing.assert_allclose(stats.grad_norm, ref, rtol=1e-4)
    assert stats.amp_scale == 2.0**20
    assert stats.clip_active is True
    assert stats.total_norm == pytest.approx(np.sqrt((ref**2).sum()), rel=1e-4)
    assert stats.amp_skipped is False
    assert np.all(stats.update_to_weight > 0)


def test_update_to_weight_matches_reference():
    model = make()
    layout = build_layout(model, "param")
    cap = GradientCapture(layout, update_ratio=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = [p.detach().clone() for p in layout.params]
    run(model, layout, cap, opt, scaler)
    after = [p.detach().clone() for p in layout.params]
    run(model, layout, cap, opt, scaler, step=2, logged=False, seed=2)  # Δw of step 1 measured here
    (stats,) = cap.flush()
    ref = np.array([float((a - b).double().norm() / b.double().norm()) for a, b in zip(after, before)])
    defined = np.isfinite(ref)  # a zero-initialised bias has ||w|| = 0: the ratio is undefined, logged as null
    assert not defined.all()
    np.testing.assert_allclose(stats.update_to_weight[defined], ref[defined], rtol=1e-4)
    assert np.isnan(stats.update_to_weight[~defined]).all()
    assert stats.amp_scale is None and stats.amp_skipped is None


def test_frozen_layer_and_missing_grads():
    model = make()
    for p in model.model[0].parameters():
        p.requires_grad = False
    layout = build_layout(model, "layer")
    assert layout.trainable == [False, True, True]
    cap = GradientCapture(layout)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run(model, layout, cap, opt, scaler)
    (stats,) = cap.flush()
    assert stats.has_grad.tolist() == [False, True, True]
    assert np.isnan(stats.grad_norm[0]) and np.isnan(stats.update_to_weight[0])
    assert stats.weight_norm[0] > 0


def test_nonfinite_counted_exactly_and_amp_overflow_skip():
    model = make()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(1)
    scaler.scale(model(torch.randn(2, 3, 8, 8)).pow(2).mean()).backward()
    g = model.model[2][0].weight.grad
    g.view(-1)[:3] = float("nan")
    g.view(-1)[3] = float("inf")
    cap.step(lambda: ultralytics_step(model, opt, scaler), step=1, epoch=1, logged=True, lr=[0.1], scaler=scaler)
    (stats,) = cap.flush()
    assert stats.nonfinite.tolist() == [0, 4, 0]
    assert stats.amp_skipped is True  # the GradScaler skipped the step and lowered its scale
    record = step_record(stats, warmup=False)  # plain: the non-finite norm is None, as in the log
    assert record["grad_norm"][1] is None and record["grad_norm"][0] is not None


def test_one_sync_per_logged_step(monkeypatch):
    """Exactly one device-to-host transfer per logged step, none on unlogged steps."""
    import yolo_gradmon.measure.params as capmod

    calls = []
    real = capmod._sync
    monkeypatch.setattr(capmod, "_sync", lambda parts: calls.append(1) or real(parts))
    model = make()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for step in range(1, 7):
        n_before = len(calls)
        run(model, layout, cap, opt, scaler, step=step, logged=step % 2 == 1, seed=step)
        assert len(calls) - n_before == (1 if step % 2 == 1 else 0)


def _weight_norms(layout):
    out = np.zeros(layout.n_groups)
    for p, g in zip(layout.params, layout.group_of):
        out[g] += float(p.detach().double().norm()) ** 2
    return np.sqrt(out)


def test_weight_norms_and_max_grad_sampled_grad_to_weight_from_the_last_measured_weights():
    """Between slow steps (every update_every-th logged one) the weight norms and max |grad| are not read: they are
    NaN (null in the log), grad/weight divides by the last measured weight norms, and the records say which is which."""
    model = make()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout, update_ratio=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    records, weights_before = [], []

    def one(step, slow):
        torch.manual_seed(step)
        model(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
        weights_before.append(_weight_norms(layout))
        grads = reference(layout)
        done = cap.step(lambda: ultralytics_step(model, opt, scaler), step=step, epoch=1, logged=True, slow=slow,
                        lr=[0.1], scaler=scaler)
        records.extend(done)
        return grads

    grads = [one(1, True), one(2, False), one(3, False), one(4, True)]
    records += cap.flush()
    assert [r.weights_measured for r in records] == [True, False, False, True]
    for k in (1, 2):  # weights from step 1 (the weights before step 1's update), gradients of their own step
        assert np.isnan(records[k].weight_norm).all() and np.isnan(records[k].max_abs_grad).all()
        np.testing.assert_allclose(records[k].grad_norm, grads[k], rtol=1e-5)
        np.testing.assert_allclose(records[k].grad_to_weight, grads[k] / weights_before[0], rtol=1e-5)
    np.testing.assert_allclose(records[3].weight_norm, weights_before[3], rtol=1e-5)
    np.testing.assert_allclose(records[3].grad_to_weight, grads[3] / weights_before[3], rtol=1e-5)
    assert (records[3].max_abs_grad > 0).all()
    line = step_record(records[1], None)
    assert line["weights_measured"] is False and line["weight_norm"] == [None] * layout.n_groups
    assert line["max_abs_grad"] == [None] * layout.n_groups and None not in line["grad_to_weight"]


def test_weights_measured_on_the_step_after_a_nonfinite_one():
    """A NaN gradient makes the next logged step read the weight norms whatever the schedule says (are the weights
    still finite?), so the non-finite event can say when the weights went bad."""
    model = make()
    layout = build_layout(model, "layer")
    cap = GradientCapture(layout, update_ratio=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    records = []
    for step, slow in ((1, True), (2, False), (3, False), (4, False)):
        torch.manual_seed(step)
        model(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
        if step == 2:
            next(model.parameters()).grad[0] = float("nan")
        records += cap.step(lambda: opt.step() or opt.zero_grad(), step=step, epoch=1, logged=True, slow=slow,
                            lr=[0.1], scaler=scaler)
    records += cap.flush()
    assert [r.weights_measured for r in records] == [True, False, True, True]  # 3: after the NaN; 4: still NaN
    assert np.isnan(records[2].weight_norm[0]) and np.isfinite(records[0].weight_norm).all()  # NaN since step 2's update
