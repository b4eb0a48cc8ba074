"""Spike-rule calibration on several data shapes: healthy runs and a planted x1e4, per module and logged step, the
norm over the exploding rule's running median and the module's share of the step's total norm.

    PYTHONPATH=$PWD python benchmarks/spike_calibration.py --out /tmp/spikes.json [--only NAME ...]

Datasets: the generated 2-class data (yolo_gradmon.demo.synthetic_dataset), a generated crowded variant (25-40
objects per image), COCO8 and COCO128 (copied from ../shared/datasets into a temp dir).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def crowded_dataset(root: Path, n_train=8, n_val=4, imgsz=320, seed=1) -> Path:
    """The generated 2-class data, crowded: 25-40 small objects per image."""
    from yolo_gradmon.demo import synthetic_dataset

    return synthetic_dataset(root, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, objects=(25, 41), size=(40, 8))


def real_dataset(name: str, tmp: Path) -> Path | None:
    for base in (ROOT.parent / "shared" / "datasets",):
        if (base / name / "images").is_dir():
            dst = tmp / name
            if not dst.exists():
                shutil.copytree(base / name, dst, ignore=shutil.ignore_patterns("*.cache"))
            split = "train2017" if (dst / "images" / "train2017").is_dir() else "train"
            path = tmp / f"{name}.yaml"
            names = yaml.safe_load((Path(__import__("ultralytics").__file__).parent / "cfg/datasets" /
                                    f"{name}.yaml").read_text())["names"]
            val = "val2017" if (dst / "images" / "val2017").is_dir() else split
            path.write_text(yaml.safe_dump({"path": str(dst), "train": f"images/{split}", "val": f"images/{val}",
                                            "names": names}))
            return path
    return None


def spikes(records, modules, min_steps=3):
    """Per module: the largest norm/running-median factor (skipping non-finite) and that step's share of the total."""
    from yolo_gradmon.judge.rules import running_median

    g = np.array([[np.nan if v is None else float(v) for v in r["grad_norm"]] for r in records])
    total = np.sqrt(np.nansum(g * g, axis=1))
    best = []
    totals = [float(np.median(total[max(0, t - 50):t])) if t >= min_steps else None for t in range(len(total))]
    for j in range(g.shape[1]):
        hist = []
        for t, v in enumerate(g[:, j]):
            if not math.isfinite(v):
                continue
            med = running_median(hist, min_steps)
            if med is not None and med > 0:
                best.append({"module": modules[j], "step": int(records[t]["step"]), "factor": v / med,
                             "share": v / total[t], "over_total_median": v / totals[t], "grad_norm": v})
            hist.append(v)
    best.sort(key=lambda d: -d["factor"])
    return best


def run(name, data, cfg="yolo26n.yaml", plant=None, epochs=3, imgsz=160, batch=1, nbs=1, project=None):
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor
    from yolo_gradmon.testing import GradientPlant

    model = YOLO(cfg)
    if plant:
        GradientPlant(*plant).attach(model)
    mon = GradientMonitor(wandb=False, console=False).attach(model)
    model.train(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, nbs=nbs, workers=0, device="cpu",
                plots=False, val=False, exist_ok=True, seed=0, deterministic=True, project=str(project), name=name)
    recs = list(mon.records)  # plain step records, as in the log
    sp = spikes(recs, mon.summary["modules"])
    return {"name": name, "cfg": cfg, "data": str(data), "plant": plant, "steps": len(recs),
            "flags": sorted({(f.kind, f.module) for f in mon.flags}), "top_spikes": sp[:5],
            "max_share_at_factor_over_100": max((s["share"] for s in sp if s["factor"] > 100), default=None),
            "max_over_total_median_at_factor_over_100": max((s["over_total_median"] for s in sp if s["factor"] > 100),
                                                            default=None)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/spikes.json")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gradmon-spikes-"))
    from yolo_gradmon.demo import synthetic_dataset

    gen = synthetic_dataset(tmp / "generated", n_train=4, n_val=4, imgsz=640)
    crowd = crowded_dataset(tmp / "crowded")
    plans = [
        ("generated-choke8", gen, "yolo26n.yaml", (8, 1e-6)),
        ("generated", gen, "yolo26n.yaml", None),
        ("generated-11n", gen, "yolo11n.yaml", None),
        ("crowded", crowd, "yolo26n.yaml", None),
        ("crowded-11n", crowd, "yolo11n.yaml", None),
        ("generated-x1e4", gen, "yolo26n.yaml", (9, 1e4, 6, 7)),
    ]
    for nm in ("coco8", "coco128"):
        p = real_dataset(nm, tmp)
        if p:
            plans += [(nm, p, "yolo26n.yaml", None), (f"{nm}-11n", p, "yolo11n.yaml", None)]
    out = []
    for name, data, cfg, plant in plans:
        if a.only and name not in a.only:
            continue
        kw = dict(epochs=1, batch=4, nbs=4) if name.startswith("coco128") else {}
        out.append(run(name, data, cfg, plant, project=tmp / "runs", **kw))
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
        print(json.dumps({k: out[-1][k] for k in ("name", "flags", "max_share_at_factor_over_100",
                                                 "max_over_total_median_at_factor_over_100")}, default=str),
              json.dumps(out[-1]["top_spikes"][:2]), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
