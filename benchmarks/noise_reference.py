"""The gradient noise scale's window estimator against a brute-force reference, at one fixed model state.

At fixed weights (no optimizer step anywhere), with augmentation off:

- **reference**: the gradients of ``M`` independent micro-batches of ``b`` images drawn (with replacement) from an
  image pool give the sample mean gradient and the trace of the batch-``b`` covariance directly:
  ``tr(Σ) = b · Σ_i |g_i − ḡ|² / (M − 1)`` (per image), ``|G|² = |ḡ|² − tr(Σ_b)/M`` (unbiased),
  ``B_ref = tr(Σ)/|G|²``, with a delete-one-group jackknife standard error over 8 groups;
- **estimate**: ``W`` windows of ``k`` micro-batches each, accumulated in ``p.grad`` exactly as Ultralytics does, read
  by the monitor's own code (``measure.noise.NoiseProbe`` after the first backward, ``GradientCapture`` at the
  step, one sync each) and estimated by ``record.noise`` (pooled windows, bootstrap, lower bound).

Pools: a few images (small noise scale, measurable) up to COCO128 (large). Run (takes minutes on 2 CPU cores):

    PYTHONPATH=$PWD python benchmarks/noise_reference.py --data /path/to/datasets --out docs/noise_reference.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from yolo_gradmon.fields import plain_values
from yolo_gradmon.record.noise import _arrays, pooled, windows
from yolo_gradmon.testing import noise_windows

GROUPS = 8


def build_model(cfg: str, seed: int = 0):
    """A YOLO detection model from its YAML with Ultralytics' default loss settings, in training mode."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=80, verbose=False)
    model.args = get_cfg()
    model.train()
    return model


def image_pool(images_dir: Path, n: int | None, imgsz: int) -> list[dict]:
    """Letterboxed samples (no augmentation) of the first ``n`` images of ``images_dir``."""
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(img_path=str(images_dir), imgsz=imgsz, augment=False, rect=False, data={"names": {i: str(i) for i in range(80)},
                     "nc": 80, "channels": 3}, task="detect", batch_size=1, prefix="")
    idx = range(len(ds) if n is None else min(n, len(ds)))
    return [ds[i] for i in idx]


def collate(pool: list[dict], idx) -> dict:
    from ultralytics.data.dataset import YOLODataset

    # copies: collate_fn offsets each sample's batch_idx in place
    batch = YOLODataset.collate_fn([{**pool[i], "batch_idx": pool[i]["batch_idx"].clone()} for i in idx])
    batch["img"] = batch["img"].float() / 255
    return batch


def backward(model, batch) -> None:
    loss, _ = model.loss(batch)
    loss.sum().backward()


def reference(model, pool, b: int, m: int, seed: int) -> dict:
    """Brute force: ``m`` micro-batch gradients at the current weights; per-image tr(Σ), unbiased |G|², B, jackknife."""
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    gsum = torch.zeros(GROUPS, n, dtype=torch.float64)
    gsq = np.zeros(GROUPS)
    cnt = np.zeros(GROUPS)
    for i in range(m):
        model.zero_grad(set_to_none=True)
        backward(model, collate(pool, rng.integers(0, len(pool), b)))
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).double() / b
        k = i % GROUPS
        gsum[k] += g
        gsq[k] += float(g.square().sum())
        cnt[k] += 1
    model.zero_grad(set_to_none=True)

    def est(keep) -> tuple[float, float, float]:
        mm = cnt[keep].sum()
        mean = gsum[keep].sum(0) / mm
        mean_sq = float(mean.square().sum())
        tr_b = (gsq[keep].sum() - mm * mean_sq) / (mm - 1)
        g2 = mean_sq - tr_b / mm
        tr = b * tr_b
        return g2, tr, (tr / g2 if g2 > 0 else math.inf)

    full = est(np.arange(GROUPS))
    jack = [est(np.array([j for j in range(GROUPS) if j != k])) for k in range(GROUPS)]
    out = {"m": m, "b": b, "g2": full[0], "trace": full[1], "b_simple": full[2]}
    for i, key in enumerate(("g2", "trace", "b_simple")):
        vals = np.array([j[i] for j in jack])
        out[f"{key}_se"] = float(math.sqrt((GROUPS - 1) / GROUPS * ((vals - vals.mean()) ** 2).sum())) \
            if np.all(np.isfinite(vals)) else math.inf
    return out


def window_estimate(model, pool, b: int, k: int, w: int, seed: int) -> dict:
    """``w`` windows of ``k`` micro-batches through the monitor's measurement code, then the record-layer estimator."""
    rng = np.random.default_rng(10_000 + seed)
    records = noise_windows(model, w, k, lambda: backward(model, collate(pool, rng.integers(0, len(pool), b))))
    model.zero_grad(set_to_none=True)
    wins = windows(records)
    g2, tr = _arrays(wins)
    p = pooled(g2, tr, seed=seed)
    return {"seed": seed, **p, "window_g2": g2.tolist(), "window_trace": tr.tolist()}


def _g(v) -> str:
    return "–" if v is None or not math.isfinite(v) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")


def markdown(rows: list[dict]) -> str:
    """The comparison table: one line per (model, pool, seed)."""
    out = ["| model | pool (images) | reference B_simple ± s.e. (M micro-batches) | seed | estimate | 95% interval | "
           "95% lower bound | estimate / reference | bound <= reference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["reference"]
        for e in r["estimates"]:
            shown = f"≥ {_g(e['lower95'])}" if e["bound_only"] else _g(e["b_simple"])
            ratio = "–" if e["bound_only"] or not e["b_simple"] else f"{e['b_simple'] / ref['b_simple']:.2f}"
            ok = "yes" if (e["lower95"] or 0) <= ref["b_simple"] else "NO"
            out.append(f"| {Path(r['model']).stem} | {r['pool']} | {_g(ref['b_simple'])} ± {_g(ref['b_simple_se'])} "
                       f"({ref['m']}) | {e['seed']} | {shown} | {_g(e['ci95'][0]) if e['ci95'][0] else '∞'}–{_g(e['ci95'][1]) if e['ci95'][1] else '∞'} | "
                       f"{_g(e['lower95'])} | {ratio} | {ok} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/datasets", help="directory holding coco8/ and coco128/")
    ap.add_argument("--models", default="yolo26n.yaml,yolo11n.yaml")
    ap.add_argument("--pools", default="coco8:2,coco8:8,coco128:128", help="dataset:number of images, comma-separated")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--b", type=int, default=4, help="images per micro-batch")
    ap.add_argument("--k", type=int, default=4, help="micro-batches per window (accumulate)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--m", type=int, default=64, help="micro-batches of the reference")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="noise_reference.json")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the markdown table of a result file")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = []
    for cfg in args.models.split(","):
        for spec in args.pools.split(","):
            name, n = spec.split(":")
            sub = "images/train2017" if name == "coco128" else "images/train"
            pool = image_pool(Path(args.data) / name / sub, int(n), args.imgsz)
            if name == "coco8" and int(n) > len(pool):  # COCO8: its 4 val images join the 4 train ones
                pool += image_pool(Path(args.data) / name / "images/val", int(n) - len(pool), args.imgsz)
            model = build_model(cfg)
            t0 = time.time()
            ref = reference(model, pool, args.b, args.m, seed=0)
            ests = [window_estimate(model, pool, args.b, args.k, args.windows, s) for s in range(args.seeds)]
            row = {"model": cfg, "pool": f"{name}:{len(pool)}", "imgsz": args.imgsz, "k": args.k,
                   "windows": args.windows, "reference": ref, "estimates": ests, "seconds": round(time.time() - t0)}
            rows.append(row)
            print(json.dumps(plain_values(row)), flush=True)
    Path(args.out).write_text(json.dumps(plain_values(rows), indent=1))
    print(markdown(json.loads(Path(args.out).read_text())))


if __name__ == "__main__":
    main()
