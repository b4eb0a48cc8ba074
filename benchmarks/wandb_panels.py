"""Pictures of the W&B panels the monitor makes, drawn with matplotlib from an offline W&B run (read with W&B's own
reader, ``wandb leet inspect --json``), and the run's key list: the figures of ``docs/wandb.md`` and the README's
"What you see in W&B".

    # train YOLO26n on COCO8 with W&B offline (the monitor's defaults), then draw and list
    python benchmarks/wandb_panels.py --train --model yolo26n.yaml --epochs 30 --imgsz 320 --project runs/wandb-panels
    # an existing offline run (a directory holding run-<id>.wandb)
    python benchmarks/wandb_panels.py --run-dir runs/wandb-panels/yolo26n/wandb/offline-run-...

Writes ``<out>/wandb_<panel>.png`` (default ``docs/images``) and ``<out>/wandb_keys.json`` (the history keys of the
run grouped as the monitor's, Ultralytics' and W&B's own, the summary fields, and the values of the run-level curves).
Needs COCO8 in the Ultralytics datasets dir for ``--train``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

RUN_LEVEL = [  # (key, title, log10 y axis)
    ("gradients/total_norm", "Total ‖grad‖ (before clipping)", True),
    ("gradients/clip_active", "Clip active (0/1)", False),
    ("gradients/flagged_modules", "Flagged modules", False),
    ("gradients/depth/early_flow_rel_head", "Early layers' flow relative to the head", True),
    ("gradients/depth/weakest_flow_rel_head", "Weakest layer's flow relative to the head", True),
    ("gradients/depth/early_grad_to_weight", "Early layers' median ‖grad‖/‖w‖", True),
]


def leet(run_dir: Path, summary: bool = False):
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"] + (["--summary"] if summary else []) + [str(run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    if summary:
        return json.loads(out.stdout)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def logical_key(key: str) -> str:
    """``gradmon/heatmap._type`` -> ``gradmon/heatmap``: media and tables arrive as several history fields."""
    head, _, tail = key.rpartition("/")
    return f"{head}/{tail.split('.', 1)[0]}" if head else key.split(".", 1)[0]


def read_run(run_dir: Path) -> dict:
    records = leet(run_dir)
    hist = [r["history"]["item"] for r in records if r["type"] == "history"]
    visualize = {}
    for r in records:
        if r["type"] == "config":
            for k, v in (r["config"].get("update") or {}).items():
                if k.startswith("_wandb.visualize."):
                    visualize[k[len("_wandb.visualize."):]] = v
    keys = sorted({logical_key(k) for h in hist for k in h})
    return {"hist": hist, "keys": keys, "visualize": visualize, "summary": leet(run_dir, summary=True)}


def last_table(run_dir: Path, hist: list[dict], key: str) -> dict | None:
    """The newest logged wandb.Table under ``key`` (its JSON: columns, data)."""
    rows = [h for h in hist if f"{key}.path" in h]
    if not rows:
        return None
    return json.loads((run_dir / "files" / rows[-1][f"{key}.path"]).read_text())


def key_groups(keys: list[str]) -> dict:
    mine = [k for k in keys if k.startswith(("gradients/", "gradmon/"))]
    wandb_own = [k for k in keys if k.startswith("_")]
    return {"monitor": mine, "ultralytics": [k for k in keys if k not in mine and k not in wandb_own], "wandb": wandb_own}


def draw(run_dir: Path, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = read_run(run_dir)
    hist = run["hist"]
    out.mkdir(parents=True, exist_ok=True)
    written = []

    # run-level curves: one small panel each, as W&B draws them on the gradients/step axis
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.6), dpi=80)
    curves = {}
    for ax, (key, title, log) in zip(axes.flat, RUN_LEVEL):
        pts = [(h["gradients/step"], float(h[key])) for h in hist if key in h and "gradients/step" in h]
        curves[key] = pts
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="." if len(x) < 40 else None, lw=1.4, color="#1f77b4")
        if log and pts and all(v > 0 for _, v in pts):
            ax.set_yscale("log")
        ax.set_title(f"{title}\n{key}", fontsize=8)
        ax.set_xlabel("gradients/step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(out / "wandb_run_level.png")
    fig.savefig(written[-1])
    plt.close(fig)

    # native per-layer line charts (wandb.plot.line_series tables: step, lineKey, lineVal)
    for key, vis in run["visualize"].items():
        if not key.startswith("gradmon/layers/"):
            continue
        table = last_table(run_dir, hist, f"{key}_table")
        if table is None:
            continue
        cols = table["columns"]
        si, ki, vi = cols.index("step"), cols.index("lineKey"), cols.index("lineVal")
        lines: dict[str, list] = {}
        for row in table["data"]:
            lines.setdefault(row[ki], []).append((row[si], row[vi]))
        fig, ax = plt.subplots(figsize=(9, 4.6), dpi=80)
        cmap = plt.get_cmap("viridis")
        for j, (name, pts) in enumerate(sorted(lines.items())):
            x, y = zip(*sorted(pts))
            ax.plot(x, y, lw=1.1, color=cmap(j / max(1, len(lines) - 1)), label=name)
        title = vis["panel_config"]["stringSettings"].get("title", key)
        ax.set_title(f"{title}\n{key} (wandb.plot.line_series, one line per layer, depth = colour)", fontsize=9)
        ax.set_xlabel("gradients/step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        written.append(out / f"wandb_{key.rsplit('/', 1)[-1]}.png")
        fig.savefig(written[-1])
        plt.close(fig)

    # depth profile (wandb.Table + wandb.plot.line over the layer index; newest epoch)
    table = last_table(run_dir, hist, "gradmon/depth_profile_table")
    profile = None
    if table is not None:
        cols = table["columns"]
        rows = [dict(zip(cols, r)) for r in table["data"]]
        profile = rows
        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=80)
        ok = [r for r in rows if r["median"]]
        ax.plot([r["index"] for r in ok], [r["log10_median"] for r in ok], marker="o", lw=1.4, label="median")
        ax.fill_between([r["index"] for r in ok], [math.log10(r["min"]) for r in ok], [math.log10(r["max"]) for r in ok],
                        alpha=0.2, label="min..max over the epoch")
        ax.set_xticks([r["index"] for r in rows])
        ax.set_xticklabels([r["layer"] for r in rows], rotation=90, fontsize=7)
        ax.set_ylabel("log10 flow relative to the head")
        ax.set_title(f"gradmon/depth_profile (epoch {rows[0]['epoch']}): log10 flow relative to the head by layer",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "wandb_depth_profile.png")
        fig.savefig(written[-1])
        plt.close(fig)

    summary = run["summary"].get("summary", {})
    facts = {
        "run_dir": str(run_dir),
        "history_keys": key_groups(run["keys"]),
        "n_monitor_keys": len(key_groups(run["keys"])["monitor"]),
        "custom_charts": sorted(run["visualize"]),
        "summary": {k: v for k, v in summary.items() if k.startswith("gradmon/")},
        "run_level": {k: {"n": len(v), "min": min((y for _, y in v), default=None), "max": max((y for _, y in v), default=None),
                          "last": v[-1][1] if v else None} for k, v in curves.items()},
        "depth_profile": profile,
        "images": [str(p) for p in written],
    }
    (out / "wandb_keys.json").write_text(json.dumps(facts, indent=1))
    return facts


def train(args) -> Path:
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor

    model = YOLO(args.model)
    mon = GradientMonitor(**json.loads(args.options)).attach(model)
    model.train(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.nbs or args.batch,
                workers=0, device="cpu", plots=False,
                project=str(Path(args.project).resolve()), name=Path(args.model).stem, exist_ok=True, seed=0)
    runs = sorted((mon.out_dir.parent / "wandb").glob("*run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="an offline W&B run directory (holding run-<id>.wandb)")
    ap.add_argument("--train", action="store_true", help="train first (W&B offline), then draw that run")
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--data", default="coco8.yaml")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--nbs", type=int, default=None, help="Ultralytics' nominal batch size (default: --batch, so every "
                    "batch is an optimizer step; Ultralytics' own default 64 accumulates 32 batches of 2 per step)")
    ap.add_argument("--options", default="{}", help="monitor options as JSON, e.g. '{\"wandb_layer_scalars\": \"all\"}'")
    ap.add_argument("--project", default="runs/wandb-panels")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images"))
    args = ap.parse_args()
    if not args.train and not args.run_dir:
        ap.error("give --run-dir or --train")
    run_dir = train(args) if args.train else Path(args.run_dir)
    facts = draw(run_dir, Path(args.out))
    print(json.dumps({k: facts[k] for k in ("run_dir", "n_monitor_keys", "history_keys", "custom_charts", "images")}, indent=1))


if __name__ == "__main__":
    main()
