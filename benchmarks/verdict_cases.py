"""Real trainings whose verdict must name what went wrong; prints each run's first report line (summary["lead"][0])
and the verdict. Small runs (YOLO26n, 160 px unless said, CPU):

    PYTHONPATH=$PWD python benchmarks/verdict_cases.py [--only NAME ...] [--out results.json]

Cases: forward NaN (layer 5's output, one pass), backward NaN (layer 5's output gradient, one pass), a persistent
backward NaN at 08.C3k2 (Ultralytics gives up: "NaN persisted"), the dying-ReLU recipe (ReLU, BatchNorm removed,
SGD lr0=1.0, no warm-up, health on every step), a freeze=10 fine-tune, the README's Python example on COCO8 and
the generated dataset (healthy), plus healthy ReLU+BatchNorm runs (the dying rule's calibration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(imgsz=160, batch=1, nbs=1, workers=0, device="cpu", plots=False, val=False, exist_ok=True, seed=0,
             deterministic=True)


def coco8(tmp: Path) -> str:
    for base in (ROOT.parent / "shared" / "datasets",):
        if (base / "coco8" / "images").is_dir():
            dst = tmp / "coco8"
            if not dst.exists():
                shutil.copytree(base / "coco8", dst, ignore=shutil.ignore_patterns("*.cache"))
            import yaml

            names = yaml.safe_load((Path(__import__("ultralytics").__file__).parent / "cfg/datasets/coco8.yaml")
                                   .read_text())["names"]
            p = tmp / "coco8.yaml"
            p.write_text(yaml.safe_dump({"path": str(dst), "train": "images/train", "val": "images/val",
                                         "names": names}))
            return str(p)
    raise SystemExit("COCO8 not found")


def train(name, tmp, data, model="yolo26n.yaml", plant=None, variant=None, gradmon=None, **args):
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor
    from yolo_gradmon.testing import GradientPlant

    if variant:
        from yolo_gradmon.ablate.swaps import apply_variant

        yolo, _ = apply_variant(model, **variant)
    else:
        yolo = YOLO(model)
    if plant:
        GradientPlant(**plant).attach(yolo)
    mon = GradientMonitor(wandb=False, **(gradmon or {})).attach(yolo)
    error = None
    try:
        yolo.train(data=data, project=str(tmp / "runs"), name=name, **{**SMALL, **args})
    except BaseException as e:  # noqa: BLE001 - the case of a training that raises
        error = f"{type(e).__name__}: {e}"
    s = mon.summary or {}
    out = {"name": name, "error": error, "complete": s.get("complete"), "verdict": s.get("verdict"),
           "lead": s.get("lead"), "flags": sorted({(f["kind"], f["module"]) for f in s.get("flags") or []}),
           "event": s.get("nonfinite_event"), "files": sorted(p.name for p in (mon.out_dir or Path()).glob("*"))}
    if s.get("layer_stats"):
        out["max_act_dead"] = max((x.get("max_act_dead") or 0) for x in s["layer_stats"])
    return out


def cases(tmp: Path) -> dict:
    data = coco8(tmp)
    from yolo_gradmon.demo import synthetic_dataset

    gen = str(synthetic_dataset(tmp / "generated"))
    relu_nobn = dict(activation="relu", norm=False)
    return {
        # one forward NaN at layer 5's output on pass 5 (optimizer step 6, epoch 2)
        "forward-nan": lambda: train("fwd", tmp, data, plant=dict(layer=5, factor=math.nan, start=5, stop=6,
                                                                  forward=True), epochs=3),
        "forward-nan-11n": lambda: train("fwd11", tmp, data, "yolo11n.yaml",
                                         plant=dict(layer=9, factor=math.nan, start=5, stop=6, forward=True), epochs=3),
        # one backward NaN entering at layer 5's output gradient on pass 5
        "backward-nan": lambda: train("bwd", tmp, data, plant=dict(layer=5, factor=math.nan, start=5, stop=6),
                                      epochs=3),
        # a NaN entering every backward pass at 08.C3k2 from pass 5 on: Ultralytics gives up
        "backward-nan-persists": lambda: train("bwdp", tmp, data, plant=dict(layer=8, factor=math.nan, start=5),
                                               epochs=8),
        "dying-relu": lambda: train("dying", tmp, data, variant=relu_nobn, gradmon=dict(health_every=1),
                                    optimizer="SGD", lr0=1.0, warmup_epochs=0, epochs=5, batch=2, nbs=2),
        "relu-bn-healthy": lambda: train("relubn", tmp, data, variant=dict(activation="relu"),
                                         gradmon=dict(health_every=1), epochs=5, batch=2, nbs=2),
        "relu-bn-healthy-11n": lambda: train("relubn11", tmp, data, "yolo11n.yaml", variant=dict(activation="relu"),
                                             gradmon=dict(health_every=1), epochs=5, batch=2, nbs=2),
        "relu-bn-healthy-320": lambda: train("relubn320", tmp, data, variant=dict(activation="relu"),
                                             gradmon=dict(health_every=1), epochs=10, batch=2, nbs=2, imgsz=320),
        "freeze10": lambda: train("freeze", tmp, data, freeze=10, epochs=3),
        "readme": lambda: train("readme", tmp, data, **{**dict(epochs=10, imgsz=320, batch=2, nbs=2),
                                                        **dict(seed=0)}),
        "generated": lambda: train("gen", tmp, gen, epochs=3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="/tmp/verdict_cases.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gradmon-cases-"))
    results = []
    for name, fn in cases(tmp).items():
        if a.only and name not in a.only:
            continue
        r = fn()
        results.append(r)
        Path(a.out).write_text(json.dumps(results, indent=1, default=str))
        print(f"=== {name}: error={r['error']} complete={r['complete']}\n  first line: {(r['lead'] or ['-'])[0]}\n"
              f"  verdict: {r['verdict']}\n  flags: {r['flags'][:8]}{' ...' if len(r['flags']) > 8 else ''}"
              + (f"\n  max act_dead: {r.get('max_act_dead')}" if "max_act_dead" in r else ""), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
