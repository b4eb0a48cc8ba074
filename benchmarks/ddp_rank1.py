"""Rank 1's step time in a real 2-process CPU DDP training, with and without the monitor attached.

    OMP_NUM_THREADS=1 python benchmarks/ddp_rank1.py --out /tmp/ddp-bench [--datasets DIR --pairs 3 --imgsz 160 --epochs 10]

Launches ``tests/ddp_harness.py --bench`` (YOLO26n, COCO8, gloo, 2 processes, 1 image per rank, nbs=batch: one
optimizer step per batch) alternately without and with ``GradientMonitor(wandb=False)`` (defaults otherwise), so
both conditions share the machine's state. The harness' probe only time-stamps ``on_train_batch_start`` /
``on_train_batch_end`` on each rank (``--bench``: no reference norms, no call trace, no hook scan). The first
``--skip`` batches of each run are dropped (warm-up). Rank 1 never runs monitor code; its time includes waiting in
the gradient all-reduce for rank 0, which is where rank 0's monitor cost would show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "tests" / "ddp_harness.py"


def one(out: Path, monitor: bool, a) -> dict:
    cmd = [sys.executable, str(HARNESS), "--out", str(out), "--datasets", str(a.datasets), "--bench", "--imgsz", str(a.imgsz),
           "--epochs", str(a.epochs), "--batch", "2"] + ([] if monitor else ["--no-monitor"])
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    wall = time.monotonic() - t0
    times = {r: json.loads((out / "facts" / f"rank{r}.json").read_text())["batch_times"][a.skip:] for r in (0, 1)}
    return {"monitor": monitor, "wall_s": wall, "rank0": times[0], "rank1": times[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", type=Path, default=HARNESS.parents[2] / "shared" / "datasets",
                    help="the directory holding coco8/ (default: ../shared/datasets beside the repository)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2)
    a = ap.parse_args()
    runs = []
    for i in range(a.pairs):
        for monitor in (False, True):
            r = one(a.out / f"{i}-{'on' if monitor else 'off'}", monitor, a)
            print(f"pair {i} monitor={monitor}: rank-1 mean step {1e3 * statistics.mean(r['rank1']):.1f} ms "
                  f"({len(r['rank1'])} steps), rank-0 {1e3 * statistics.mean(r['rank0']):.1f} ms, wall {r['wall_s']:.1f} s",
                  flush=True)
            runs.append(r)
    summary = {}
    for monitor in (False, True):
        for rank in ("rank0", "rank1"):
            pooled = [t for r in runs if r["monitor"] == monitor for t in r[rank]]
            per_run = [statistics.mean(r[rank]) for r in runs if r["monitor"] == monitor]
            summary[f"{rank}_{'with' if monitor else 'without'}"] = {
                "mean_ms": 1e3 * statistics.mean(pooled), "median_ms": 1e3 * statistics.median(pooled),
                "run_means_ms": [round(1e3 * m, 1) for m in per_run], "steps": len(pooled)}
    for rank in ("rank0", "rank1"):
        off, on = summary[f"{rank}_without"]["mean_ms"], summary[f"{rank}_with"]["mean_ms"]
        summary[f"{rank}_overhead_pct"] = 100 * (on - off) / off
    summary["config"] = {"imgsz": a.imgsz, "epochs": a.epochs, "batch_global": 2, "pairs": a.pairs, "skip": a.skip,
                         "processes": 2, "backend": "gloo", "model": "yolo26n.yaml", "data": "coco8"}
    print(json.dumps(summary, indent=1))
    (a.out / "ddp_rank1.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
