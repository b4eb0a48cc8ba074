"""How the run-level depth curves move in healthy trainings: the numbers behind the healthy ranges of docs/wandb.md and
the README's "What you see in W&B".

Trains each case with the monitor's defaults (no planted fault, no flag expected), then reads its ``gradients.jsonl``
and reports, per run, the range of each depth curve (``gradients/depth/*`` in W&B) and how the early layers' flow
relative to the head moves from the first to the last epoch (median per epoch).

    python benchmarks/healthy_depth.py --datasets ../shared/datasets --out benchmarks/results/healthy-depth.json

``--datasets`` holds ``coco8`` and ``coco128`` in Ultralytics layout (copied to a temporary datasets dir first: Ultralytics
writes ``.cache`` files beside the labels); the generated 2-class case needs nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

CASES = {  # name -> (model, data, trainer args)
    "yolo26n-coco8": ("yolo26n.yaml", "coco8", dict(epochs=20, imgsz=160, batch=2, nbs=2)),
    "yolo11n-coco8": ("yolo11n.yaml", "coco8", dict(epochs=20, imgsz=160, batch=2, nbs=2)),
    "yolo26n-coco128": ("yolo26n.yaml", "coco128", dict(epochs=2, imgsz=160, batch=8, nbs=8)),
    "yolo26n-generated": ("yolo26n.yaml", "generated", dict(epochs=10, imgsz=160, batch=4, nbs=4)),
}


def _settings(tmp: Path, datasets: Path | None) -> None:
    """An isolated Ultralytics settings dir (set before Ultralytics is imported) whose datasets dir holds copies."""
    ds = tmp / "datasets"
    ds.mkdir(parents=True)
    for name in ("coco8", "coco128"):
        if datasets is not None and (datasets / name).is_dir():
            shutil.copytree(datasets / name, ds / name)
    cfg = tmp / "config" / "Ultralytics"
    cfg.mkdir(parents=True)
    cfg.joinpath("settings.json").write_text(json.dumps({
        "settings_version": "0.0.8", "datasets_dir": str(ds), "runs_dir": str(tmp / "runs"),
        "weights_dir": str(tmp / "weights"), "wandb": False, "sync": False}))
    os.environ["YOLO_CONFIG_DIR"] = str(tmp / "config")


def _spread(values) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def describe(log) -> dict:
    """The depth curves of one run: their ranges over the logged steps, and the early flow's first/last epoch medians."""
    from yolo_gradmon.record.depth import step_depth

    per_step = [(r["epoch"], step_depth(r, log.header)) for r in log.steps]
    early_by_epoch: dict[int, list[float]] = {}
    for epoch, d in per_step:
        if d["early_flow"] is not None:
            early_by_epoch.setdefault(epoch, []).append(d["early_flow"])
    epochs = sorted(early_by_epoch)
    first = statistics.median(early_by_epoch[epochs[0]]) if epochs else None
    last = statistics.median(early_by_epoch[epochs[-1]]) if epochs else None
    weakest = [d["weakest_layer"] for _, d in per_step if d["weakest_layer"]]
    return {
        "steps": len(log.steps),
        "early_flow_rel_head": _spread(d["early_flow"] for _, d in per_step),
        "early_flow_first_epoch_median": first,
        "early_flow_last_epoch_median": last,
        "early_flow_decades_fallen": math.log10(first / last) if first and last else None,
        "weakest_flow_rel_head": _spread(d["weakest_flow"] for _, d in per_step),
        "weakest_layer_mode": max(set(weakest), key=weakest.count) if weakest else None,
        "early_grad_to_weight": _spread(d["early_grad_to_weight"] for _, d in per_step),
    }


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def train_case(tmp: Path, name: str, model_yaml: str, data: str, train: dict, **options):
    """Train one case with a monitor (the defaults, or ``options``) on CPU, seed 0, without validation; returns the
    monitor, or None when its dataset is not in the datasets dir (``data="generated"`` is made here)."""
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor
    from yolo_gradmon.demo import synthetic_dataset

    if data == "generated":
        data_yaml = str(synthetic_dataset(tmp / "generated", imgsz=train["imgsz"]))
    elif (tmp / "datasets" / data).is_dir():
        data_yaml = f"{data}.yaml"
    else:
        print(f"{name}: skipped ({data} not in --datasets)", file=sys.stderr)
        return None
    model = YOLO(model_yaml)
    mon = GradientMonitor(wandb=False, console=False, **options).attach(model)
    model.train(data=data_yaml, workers=0, device="cpu", seed=0, plots=False, val=False, project=str(tmp / "runs"),
                name=name, exist_ok=True, **train)
    return mon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=Path, default=None, help="folder with coco8/ and coco128/")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/healthy-depth.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gradmon-healthy-"))
    _settings(tmp, args.datasets.resolve() if args.datasets else None)
    from yolo_gradmon.record.logfile import read_log

    results = {}
    for name in args.cases:
        model_yaml, data, train = CASES[name]
        mon = train_case(tmp, name, model_yaml, data, train)
        if mon is None:
            continue
        results[name] = {"model": model_yaml, "data": data, "train": train,
                         "flagged_modules": mon.summary["flagged_modules"], **describe(read_log(mon.out_dir))}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
