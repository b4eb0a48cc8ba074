"""Cost of the forward non-finite check (measure/finite.py) on a real forward/backward pass: the pass with and
without the check, interleaved, and the check's own time (its hooks and the end-of-pass fold, timed inside).

    PYTHONPATH=$PWD python benchmarks/finite_check_cost.py --model yolo26n.yaml --batch 8 --imgsz 320 --reps 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_gradmon.measure.finite import FiniteWatch


def batch(n, imgsz):
    g = torch.Generator().manual_seed(0)
    k = 4 * n
    return {"img": torch.rand(n, 3, imgsz, imgsz, generator=g), "cls": torch.randint(0, 80, (k, 1), generator=g).float(),
            "bboxes": torch.rand(k, 4, generator=g) * 0.5 + 0.25,
            "batch_idx": torch.arange(n).repeat_interleave(4).float()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = DetectionModel(a.model, verbose=False)
    m.args = get_cfg()
    m.train()
    b = batch(a.batch, a.imgsz)
    w = FiniteWatch(m)
    own = []
    hook, fold = w._forward_hook, w._fold

    def timed(fn):
        def inner(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                own.append(time.perf_counter() - t)
        return inner

    w._forward_hook = lambda i: timed(hook(i))
    w._fold = timed(fold)

    def one(check: bool) -> tuple[float, float]:
        own.clear()
        w.arm(check)
        t = time.perf_counter()
        loss, _ = m(b)
        loss.sum().backward()
        if check:
            w.device_parts()
        dt = time.perf_counter() - t
        w.arm(False)
        m.zero_grad(set_to_none=True)
        return dt, sum(own)

    one(False), one(True)  # warm-up
    plain, checked, own_t = [], [], []
    for _ in range(a.reps):
        plain.append(one(False)[0])
        dt, o = one(True)
        checked.append(dt)
        own_t.append(o)
    res = {"model": a.model, "batch": a.batch, "imgsz": a.imgsz, "reps": a.reps,
           "pass_ms_without": 1e3 * statistics.median(plain), "pass_ms_with": 1e3 * statistics.median(checked),
           "check_own_ms": 1e3 * statistics.median(own_t)}
    res["check_own_pct_of_pass"] = 100 * res["check_own_ms"] / res["pass_ms_without"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
