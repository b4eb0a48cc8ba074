"""The one schedule: which optimizer steps and forward/backward passes measure which signal."""

import numpy as np
import torch
from torch import nn

from yolo_gradmon.config import GradmonConfig
from yolo_gradmon.measure.params import GradientCapture
from yolo_gradmon.measure.schedule import Schedule
from yolo_gradmon.structure.layout import build_layout


def plans(cfg: GradmonConfig, steps: int, passes_per_step: int = 1):
    s = Schedule(cfg)
    s.start_epoch(0, batches=steps * passes_per_step, warmup_iterations=0)
    out = []
    for _ in range(steps):
        passes = [s.next_pass() for _ in range(passes_per_step)]
        out.append((s.next_step(), passes))
    return out


def test_log_update_health_and_flow_cadences():
    cfg = GradmonConfig(log_every=2, update_every=3, health_every=2, flow_every=2)
    got = plans(cfg, 12)
    logged = [p.step for p, _ in got if p.logged]
    assert logged == [1, 3, 5, 7, 9, 11]  # every 2nd optimizer step, from the first
    # update/weight and health count logged steps k = 0, 1, 2...: k % 3 == 0 and k % 2 == 0
    assert [p.step for p, _ in got if p.update] == [1, 7]
    assert [p.step for p, passes in got if passes[0].health] == [1, 5, 9]
    # flow counts the passes of logged steps (one per step here): every 2nd of them
    assert [p.step for p, passes in got if passes[0].flow] == [1, 5, 9]
    assert all(not passes[0].flow and not passes[0].health for p, passes in got if not p.logged)
    assert all(not p.update for p, _ in got if not p.logged)


def test_flow_with_accumulation_keeps_passes_in_every_logged_step():
    got = plans(GradmonConfig(flow_every=2), 3, passes_per_step=4)
    assert [[q.flow for q in passes] for _, passes in got] == [[True, False, True, False]] * 3


def test_update_ratio_off_measures_no_update():
    assert not any(p.update for p, _ in plans(GradmonConfig(update_ratio=False, update_every=1), 5))


def test_warmup_and_resumed_step_count():
    s = Schedule(GradmonConfig(), start_step=10)
    s.start_epoch(2, batches=4, warmup_iterations=9)
    s.next_pass()
    p = s.next_step()
    assert p.step == 11 and p.logged and p.warmup is True  # batch 2*4+0 = 8 <= 9
    for _ in range(2):
        s.next_pass()
    assert s.next_step().warmup is False  # batch 2*4+2 = 10 > 9


def test_capture_without_update_sample_logs_null_update_ratio():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    cap = GradientCapture(build_layout(net, "module"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    done = []
    for step, update in ((1, True), (2, False), (3, True)):
        opt.zero_grad()
        net(torch.randn(3, 4)).sum().backward()
        done += cap.step(opt.step, step=step, epoch=1, logged=True, update=update, lr=[0.1])
    done += cap.flush()
    by_step = {s.step: s for s in done}
    assert np.all(by_step[1].update_to_weight > 0) and np.all(by_step[3].update_to_weight > 0)
    assert np.isnan(by_step[2].update_to_weight).all()
    assert np.all(by_step[2].grad_norm > 0)  # the parameter statistics themselves are unaffected
