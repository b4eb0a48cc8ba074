"""The golden comparison for a refactor: the same seeded training, deterministic, before and after a change, must log
the same step records field for field and raise the same flags.

    # record with the checkout to compare (run it from each checkout, e.g. a `git worktree` at the old commit)
    PYTHONPATH=$PWD python benchmarks/golden_records.py record --datasets ../shared/datasets --out /tmp/golden/after
    # compare two recordings
    python benchmarks/golden_records.py compare /tmp/golden/before /tmp/golden/after

Three variants: the monitor's defaults, every signal on every step (``update_every=flow_every=health_every=1``) and a
planted 1e-6 choke at layer 4. YOLO26n, COCO8, 160 px, batch 1, nbs 1, 3 epochs (12 logged steps), seed 0,
``deterministic=True``, on the CPU. Fields a newer version adds to a record are listed, not counted as differences.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

VARIANTS = ("default", "all", "choke")


def record(datasets: Path, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gradmon-golden-"))
    cfg = tmp / "config" / "Ultralytics"
    cfg.mkdir(parents=True)
    shutil.copytree(datasets / "coco8", tmp / "datasets" / "coco8")
    cfg.joinpath("settings.json").write_text(json.dumps({
        "settings_version": "0.0.8", "datasets_dir": str(tmp / "datasets"), "runs_dir": str(tmp / "runs"),
        "weights_dir": str(tmp / "weights"), "wandb": False, "sync": False}))
    os.environ["YOLO_CONFIG_DIR"] = str(tmp / "config")
    os.environ["WANDB_MODE"] = "disabled"
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor
    from yolo_gradmon.testing import GradientPlant

    out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        model = YOLO("yolo26n.yaml")
        opts = dict(update_every=1, flow_every=1, health_every=1) if variant == "all" else {}
        mon = GradientMonitor(wandb=False, console=False, **opts).attach(model)
        if variant == "choke":
            GradientPlant(layer=4, factor=1e-6).attach(model)
        model.train(data="coco8.yaml", epochs=3, imgsz=160, batch=1, nbs=1, seed=0, deterministic=True, workers=0,
                    project=str(tmp / "runs"), name=variant, plots=False, val=False, amp=False, device="cpu")
        log = [json.loads(line) for line in (mon.out_dir / "gradients.jsonl").read_text().splitlines()]
        (out / f"{variant}.json").write_text(json.dumps({"log": log, "flags": mon.summary["flags"]}, indent=1))
        print(variant, "steps", sum(r["type"] == "step" for r in log), "flags", len(mon.summary["flags"]))


def compare(before: Path, after: Path) -> int:
    differ = 0
    for variant in VARIANTS:
        a, b = (json.loads((d / f"{variant}.json").read_text()) for d in (before, after))
        sa, sb = ([r for r in x["log"] if r["type"] == "step"] for x in (a, b))
        added = sorted({k for r in sb for k in r} - {k for r in sa for k in r})
        diffs = [(x["step"], k) for x, y in zip(sa, sb) for k in x if x.get(k) != y.get(k)]
        flags_equal = [{k: v for k, v in f.items() if k != "active"} for f in a["flags"]] == \
                      [{k: v for k, v in f.items() if k != "active"} for f in b["flags"]]
        print(f"{variant}: {len(sa)} vs {len(sb)} records, {len(diffs)} differing fields {diffs[:5]}, "
              f"flags equal: {flags_equal} ({len(a['flags'])}), fields added: {added}")
        differ += len(sa) != len(sb) or bool(diffs) or not flags_equal
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--datasets", type=Path, required=True, help="folder holding coco8/")
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.datasets.resolve(), args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
