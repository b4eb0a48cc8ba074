"""How wrong grad/weight gets when the weight norm is sampled: the error of dividing by a weight norm measured up to
``update_every - 1`` logged steps earlier (the monitor's default since the weight norms ride the update ratio's
cadence).

Trains each case with every statistic on every step (``update_every=1``: the exact weight norm at every logged step),
then replays the sampled schedule on the log: at logged step ``t`` the monitor divides by the weight norm of the last
logged step ``s <= t`` with ``s`` a multiple of ``--every`` (counted from 0), so grad/weight is off by
``‖w_t‖ / ‖w_s‖ - 1``. Reports that error's maximum and 99th percentile over every module and logged step, inside and
after Ultralytics' warm-up (its bias learning rate starts at 0.1), and how it compares with the vanishing threshold's
margin (a healthy grad/weight is at least 280x above ``vanish_grad_to_weight``).

    python benchmarks/weight_norm_drift.py --datasets ../shared/datasets --out benchmarks/results/weight-norm-drift.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from healthy_depth import _settings, train_case, write_json  # isolated Ultralytics settings with copied datasets; one training

CASES = {  # name -> (model, data, trainer args); short runs: the first steps (warm-up) change the weights most
    "yolo26n-coco8": ("yolo26n.yaml", "coco8", dict(epochs=10, imgsz=320, batch=2, nbs=2)),
    "yolo11n-coco8": ("yolo11n.yaml", "coco8", dict(epochs=10, imgsz=320, batch=2, nbs=2)),
    "yolo26n-coco128": ("yolo26n.yaml", "coco128", dict(epochs=2, imgsz=160, batch=8, nbs=8)),
    "yolo26n-generated": ("yolo26n.yaml", "generated", dict(epochs=10, imgsz=160, batch=4, nbs=4)),
    # what optimizer=auto picks for a long training (>10k iterations): SGD at lr0=0.01, the larger steps
    "yolo26n-coco8-sgd": ("yolo26n.yaml", "coco8", dict(epochs=10, imgsz=320, batch=2, nbs=2, optimizer="SGD", lr0=0.01)),
    "yolo11n-coco8-sgd": ("yolo11n.yaml", "coco8", dict(epochs=10, imgsz=320, batch=2, nbs=2, optimizer="SGD", lr0=0.01)),
}


def sampled_error(steps: list[dict], every: int) -> dict:
    """``|‖w_t‖/‖w_s‖ - 1|`` over modules and logged steps, ``s`` the last sampled logged step (index % every == 0)."""
    errors = {"warmup": [], "after": []}
    worst = None
    last = None
    for k, rec in enumerate(steps):
        w = rec["weight_norm"]
        if k % every == 0:
            last = (rec["step"], w)
            continue
        for m, (now, then) in enumerate(zip(w, last[1])):
            if now is None or then is None or then <= 0 or not rec["has_grad"][m]:
                continue
            e = abs(now / then - 1.0)
            errors["warmup" if rec.get("warmup") else "after"].append(e)
            if worst is None or e > worst[0]:
                worst = (e, m, rec["step"], last[0])
    out = {}
    for phase, vals in errors.items():
        vals.sort()
        out[phase] = {"n": len(vals), "max": vals[-1] if vals else None,
                      "p99": vals[int(0.99 * (len(vals) - 1))] if vals else None,
                      "median": vals[len(vals) // 2] if vals else None}
    out["worst"] = worst
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=Path, default=None, help="folder with coco8/ and coco128/")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--every", type=int, default=10, help="the sampling to replay (update_every)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/weight-norm-drift.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gradmon-drift-"))
    _settings(tmp, args.datasets.resolve() if args.datasets else None)
    from yolo_gradmon.record.logfile import read_log

    results = {"every": args.every, "cases": {}}
    for name in args.cases:
        model_yaml, data, train = CASES[name]
        mon = train_case(tmp, name, model_yaml, data, train, update_every=1, flow=False, activation_health=False)
        if mon is None:
            continue
        log = read_log(mon.out_dir)
        res = sampled_error(log.steps, args.every)
        if res["worst"] is not None:
            e, m, step, sampled = res["worst"]
            res["worst"] = {"error": e, "module": log.modules[m], "step": step, "weight_norm_from_step": sampled}
        g2w = [v for r in log.steps for v in r["grad_to_weight"] if v is not None]
        res.update(model=model_yaml, data=data, train=train, steps=len(log.steps),
                   min_grad_to_weight=min(g2w) if g2w else None)
        results["cases"][name] = res
        print(json.dumps({name: res}, indent=1), flush=True)
    worst = [c["worst"]["error"] for c in results["cases"].values() if c.get("worst")]
    results["max_error"] = max(worst) if worst else None
    if results["max_error"] is not None:  # grad/weight off by at most this many decades, against a 280x healthy margin
        results["max_error_decades"] = -math.log10(1 - results["max_error"]) if results["max_error"] < 1 else None
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
