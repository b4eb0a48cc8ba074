"""Validation of the vanishing/exploding detector on ground truth, and the cost of its depth signals.

    python benchmarks/validate_detection.py cost      # step time: no depth signals vs flow vs activation health
    python benchmarks/validate_detection.py healthy   # no false alarms: YOLO26n/YOLO11n on COCO8 and COCO128
    python benchmarks/validate_detection.py planted   # planted chokes: precision/recall of vanishing flags
    python benchmarks/validate_detection.py explode   # planted amplification / NaN: flagged within one logged step
    python benchmarks/validate_detection.py sigmoid   # head-to-first-layers flow attenuation: Sigmoid vs SiLU vs ReLU
    python benchmarks/validate_detection.py all

Runs offline: COCO8/COCO128 are copied from ``../shared/datasets`` (or ``--datasets``) into a temporary Ultralytics
``datasets_dir``. Every table printed here is also written as JSON to ``benchmarks/results/validate-<part>.json``.
Each training uses ``seed=0, deterministic=True`` and ``device=cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def setup_env(datasets: Path) -> Path:
    """An isolated Ultralytics settings dir whose datasets_dir holds copies of COCO8/COCO128 (before importing it)."""
    work = Path(tempfile.mkdtemp(prefix="gradmon-validate-"))
    (work / "cfg" / "Ultralytics").mkdir(parents=True)
    settings = {"settings_version": "0.0.8", "datasets_dir": str(work / "datasets"), "weights_dir": str(work / "w"),
                "runs_dir": str(work / "runs"), "sync": False, "wandb": False, "tensorboard": False, "mlflow": False,
                "clearml": False, "comet": False, "dvc": False, "raytune": False, "vscode_msg": False}
    (work / "cfg" / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    os.environ["YOLO_CONFIG_DIR"] = str(work / "cfg")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    for name in ("coco8", "coco128"):
        if (datasets / name).is_dir():
            shutil.copytree(datasets / name, work / "datasets" / name)
    return work


# ------------------------------------------------------------------------------------------------------ cost
def part_cost(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overhead import build_trainer, fixed_batch, train_step

    from yolo_gradmon import GradientMonitor

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rows = {}
    for model in args.models:
        tr = build_trainer(model, "coco8.yaml", args.batch, args.imgsz, "cpu", str(WORK / "cost"))
        batch = fixed_batch(tr, args.batch)
        variants = {
            "none": None,
            "params only": dict(flow=False, activation_health=False),
            "+flow": dict(flow=True, activation_health=False),
            "+health": dict(flow=False, activation_health=True),
            "+flow+health": dict(flow=True, activation_health=True),
        }
        times = {v: [] for v in variants}
        for _ in range(2):
            train_step(tr, batch)
        for rep in range(args.reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for v in order:
                opts = variants[v]
                mon = None
                if opts is not None:
                    mon = GradientMonitor(wandb=False, console=False, log_every=1, **opts)
                    tr.save_dir = WORK / "cost" / v.replace("+", "p").replace(" ", "_")
                    mon.on_train_start(tr)
                    mon.on_train_epoch_start(tr)
                for k in range(args.steps + 1):
                    if mon is not None:
                        mon.on_train_batch_start(tr)
                    t0 = time.perf_counter()
                    train_step(tr, batch)
                    if k:  # the first step of a variant is untimed
                        times[v].append(time.perf_counter() - t0)
                if mon is not None:
                    mon.on_train_end(tr)
                    tr.__dict__.pop("optimizer_step", None)
            print(f"{model} rep {rep + 1}/{args.reps}: "
                  + ", ".join(f"{v}={statistics.median(t) * 1e3:.0f}ms" for v, t in times.items()), flush=True)
        base = statistics.median(times["none"])
        rows[model] = {v: {"median_step_ms": statistics.median(t) * 1e3,
                           "vs_none_pct": (statistics.median(t) / base - 1) * 100} for v, t in times.items()}
    print(f"\nStep time (forward+backward+optimizer_step, batch={args.batch}, imgsz={args.imgsz}, CPU, log_every=1):")
    print("| model | variant | median step (ms) | vs no monitor |")
    print("| --- | --- | ---: | ---: |")
    for model, r in rows.items():
        for v, x in r.items():
            print(f"| {model} | {v} | {x['median_step_ms']:.0f} | {x['vs_none_pct']:+.1f}% |")
    return rows


# ------------------------------------------------------------------------------------------------------ trainings
def train(model_cfg, data, tag, *, act=None, plant=None, monitor_opts=None, **train_args):
    """One monitored training; returns (monitor, plant, header, seconds)."""
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor, read_log

    if act in (None, "silu"):
        model = YOLO(model_cfg)
    else:
        try:
            from yolo_gradmon.ablate.swaps import build_model_with_activation

            model, _ = build_model_with_activation(model_cfg, act)
        except ImportError:  # the ablation module is absent: the model YAML's activation key does the same for Conv
            import yaml
            from ultralytics.nn.tasks import yaml_model_load

            d = yaml_model_load(model_cfg)
            d["activation"] = {"relu": "nn.ReLU()", "sigmoid": "nn.Sigmoid()", "tanh": "nn.Tanh()"}[act]
            path = WORK / f"{Path(model_cfg).stem}-{act}.yaml"
            path.write_text(yaml.safe_dump(d))
            model = YOLO(str(path))
    if plant is not None:
        plant.attach(model)
    mon = GradientMonitor(wandb=False, console=False, **(monitor_opts or {})).attach(model)
    args = dict(data=data, workers=0, device="cpu", plots=False, val=False, exist_ok=True, seed=0, deterministic=True,
                verbose=False, project=str(WORK / "runs"), name=tag)
    args.update(train_args)
    t0 = time.time()
    model.train(**args)
    return mon, plant, read_log(mon.out_dir).header, time.time() - t0


def _g(v, fmt=".2g"):
    return "-" if v is None else format(v, fmt)


HEALTHY = [  # (data, label, train args)
    ("coco8.yaml", "COCO8 defaults (640, batch 16, nbs 64), 100 ep", dict(epochs=100)),
    ("coco8.yaml", "COCO8 320, batch 2, nbs 2, 30 ep", dict(epochs=30, imgsz=320, batch=2, nbs=2)),
    ("coco8.yaml", "COCO8 defaults, 3 ep", dict(epochs=3)),
    ("coco128.yaml", "COCO128 640, batch 16, 10 ep", dict(epochs=10)),
    ("coco128.yaml", "COCO128 320, batch 16, 20 ep", dict(epochs=20, imgsz=320)),
]


def part_healthy(args) -> dict:
    from yolo_gradmon.testing import calibration_stats

    rows = []
    for model in args.models:
        for data, label, targs in HEALTHY:
            if args.quick and targs.get("epochs", 0) > 20:
                targs = {**targs, "epochs": 20}
            mon, _, header, secs = train(model, data, f"healthy-{Path(model).stem}-{len(rows)}", **targs)
            s = mon.summary
            st = calibration_stats(mon.records, header)
            kinds = [f["kind"] for f in s["flags"]]
            row = {"model": model, "run": label, "steps": s["steps_logged"], "backward_passes": s["backward_passes"],
                   "verdict": s["verdict"], "too_few_steps": s["too_few_steps"],
                   "vanishing": kinds.count("vanishing"), "exploding": kinds.count("exploding"),
                   "other_flags": len(kinds) - kinds.count("vanishing") - kinds.count("exploding"),
                   "seconds": secs, **st}
            rows.append(row)
            print(f"{model} | {label}: {row['steps']} steps, {row['backward_passes']} passes, flags "
                  f"v={row['vanishing']} e={row['exploding']} o={row['other_flags']} ({secs:.0f}s)", flush=True)
    print("\n(a) No false alarms on healthy runs (seed 0, CPU). Closest approach to each threshold:")
    print("| model | run | logged steps | backward passes | vanishing / exploding flags | min flow att. | "
          "min local flow ratio | min grad/w | max grad norm / clip | max spike factor | max dead units | verdict |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['run']} | {r['steps']} | {r['backward_passes']} | {r['vanishing']} / {r['exploding']} | "
              f"{_g(r.get('min_flow_attenuation'))} ({r.get('min_flow_attenuation_layer')}) | "
              f"{_g(r.get('min_local_flow_ratio'))} | {_g(r.get('min_grad_to_weight'))} | "
              f"{_g(r.get('max_grad_norm_over_clip'), '.0f')} | {_g(r.get('max_spike_factor'), '.1f')} | "
              f"{_g(r.get('max_act_dead'))} | {'too few steps' if r['too_few_steps'] else 'judged'} |")
    return {"rows": rows}


CHOKES = {"yolo26n.yaml": [0, 2, 4, 6, 8, 10, 13, 16, 19, 22], "yolo11n.yaml": [0, 2, 4, 6, 8, 10, 13, 16, 19, 22]}
PLANT_RUNS = [  # (label, data, train args)
    ("COCO8 160, batch 1 (4 steps/epoch), 3 ep", "coco8.yaml", dict(epochs=3, imgsz=160, batch=1, nbs=1)),
    ("COCO8 320, batch 4, nbs 64 (scarce steps), 24 ep", "coco8.yaml", dict(epochs=24, imgsz=320, batch=4)),
]


def part_planted(args) -> dict:
    from yolo_gradmon.testing import GradientPlant, calibration_stats, expected_vanishing, precision_recall

    rows = []
    runs = PLANT_RUNS[: 1 if args.quick else None]
    for model in args.models:
        for label, data, targs in runs:
            chokes = CHOKES[model] if label == runs[0][0] else CHOKES[model][1::3]
            for k in chokes:
                plant = GradientPlant(k, args.factor)
                mon, plant, header, secs = train(model, data, f"plant-{Path(model).stem}-{k}", plant=plant, **targs)
                exp = expected_vanishing(plant.model, k)
                van = {f.module for f in mon.flags if f.kind == "vanishing"}
                p, r = precision_recall(van, exp)
                first = min((f.first_step for f in mon.flags if f.kind == "vanishing"), default=None)
                st = calibration_stats(mon.records, header)
                other = sorted({(f.kind, f.module) for f in mon.flags if f.kind != "vanishing"})
                cause = next((f.evidence.get("cause") for f in mon.flags if f.kind == "vanishing"), None)
                rows.append({"model": model, "run": label, "choke": header["layers"][k], "expected": sorted(exp),
                             "flagged": sorted(van), "precision": p, "recall": r, "first_flag_step": first,
                             "steps": mon.summary["steps_logged"], "backward_passes": mon.summary["backward_passes"],
                             "other_flags": other, "cause": cause, "seconds": secs,
                             "min_flow_attenuation": st.get("min_flow_attenuation")})
                print(f"{model} {label} choke {k}: P={p:.2f} R={r:.2f} expected={sorted(exp)} flagged={sorted(van)} "
                      f"first step {first} ({secs:.0f}s)", flush=True)
    print(f"\n(b) Planted chokes (dL/d out x {args.factor:g} from the first backward pass):")
    print("| model | run | choke at | expected (upstream-only, with params) | flagged | precision | recall | "
          "first flag (logged step) | logged steps / backward passes | other flags |")
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['run']} | {r['choke']} | {len(r['expected'])}: {', '.join(e[:2] for e in r['expected'])} | "
              f"{len(r['flagged'])} | {r['precision']:.2f} | {r['recall']:.2f} | {r['first_flag_step']} | "
              f"{r['steps']} / {r['backward_passes']} | {len(r['other_flags'])} |")
    tot = len(rows)
    print(f"\n{sum(r['precision'] == 1.0 and r['recall'] == 1.0 for r in rows)}/{tot} planted runs with precision = recall = 1.0")
    return {"rows": rows}


def part_explode(args) -> dict:
    import math

    from yolo_gradmon.testing import GradientPlant

    rows = []
    for model in args.models:
        for layer in (4, 9, 16):
            for what, factor in (("x1e4", 1e4), ("NaN", math.nan)):
                plant = GradientPlant(layer, factor, start=10, stop=11)  # backward pass 10 = optimizer step 11
                mon, plant, header, secs = train(model, "coco8.yaml", f"explode-{Path(model).stem}-{layer}", plant=plant,
                                                 epochs=4, imgsz=160, batch=1, nbs=1)
                kind = "exploding" if what == "x1e4" else "nonfinite"
                hits = [f for f in mon.flags if f.kind == kind]
                first = min((f.first_step for f in hits), default=None)
                at = sorted(f.module for f in hits if f.first_step == 11)
                rows.append({"model": model, "layer": header["layers"][layer], "plant": what, "planted_step": 11,
                             "first_flag_step": first, "modules_flagged_at_step": at, "ended": bool(mon.summary),
                             "false_vanishing": sum(f.kind == "vanishing" for f in mon.flags), "seconds": secs})
                print(f"{model} {what} at {layer}: first {kind} flag at step {first}, {len(at)} modules", flush=True)
    print("\n(c) Planted amplification / NaN at one backward pass (optimizer step 11 of 16):")
    print("| model | at layer output | plant | flagged at step | modules flagged at that step | training completed | "
          "vanishing flags |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['layer']} | {r['plant']} | {r['first_flag_step']} | {len(r['modules_flagged_at_step'])} | "
              f"{'yes' if r['ended'] else 'NO'} | {r['false_vanishing']} |")
    return {"rows": rows}


def part_sigmoid(args) -> dict:
    import numpy as np

    from yolo_gradmon.testing import calibration_stats, flow_profile

    rows = []
    runs = [("COCO8 320, batch 2, nbs 2, 10 ep", "coco8.yaml", dict(epochs=10, imgsz=320, batch=2, nbs=2))]
    if not args.quick:
        runs.append(("COCO128 320, batch 16, 5 ep", "coco128.yaml", dict(epochs=5, imgsz=320)))
    for model in args.models:
        for label, data, targs in runs:
            prof = {}
            for act in ("silu", "relu", "sigmoid"):
                mon, _, header, secs = train(model, data, f"act-{Path(model).stem}-{act}", act=act, **targs)
                prof[act] = flow_profile(mon.records)
                st = calibration_stats(mon.records, header)
                rows.append({"model": model, "run": label, "activation": act, "profile": prof[act],
                             "first3": float(np.mean(prof[act][:3])), "flags": sorted({(f.kind, f.module) for f in mon.flags}),
                             "max_act_saturated": st.get("max_act_saturated"), "max_act_dead": st.get("max_act_dead"),
                             "min_flow_attenuation": st.get("min_flow_attenuation"), "seconds": secs})
                print(f"{model} {label} {act}: layers 0-2 flow/head = {prof[act][:3]}", flush=True)
    print("\n(d) Gradient flow reaching the first layers (median over logged steps of ||dL/d out|| / ||dL/d out_head||, "
          "mean of layers 0-2), same seed and data:")
    print("| model | run | SiLU | ReLU | Sigmoid | Sigmoid / SiLU | Sigmoid / ReLU | Sigmoid max saturated | flags (Sigmoid) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["run"]), {})[r["activation"]] = r
    for (model, run), d in by.items():
        s, re_, sg = d["silu"]["first3"], d["relu"]["first3"], d["sigmoid"]["first3"]
        print(f"| {model} | {run} | {s:.3g} | {re_:.3g} | {sg:.3g} | {sg / s:.3g} | {sg / re_:.3g} | "
              f"{_g(d['sigmoid']['max_act_saturated'])} | {len(d['sigmoid']['flags'])} |")
    return {"rows": rows}


PARTS = {"cost": part_cost, "healthy": part_healthy, "planted": part_planted, "explode": part_explode,
         "sigmoid": part_sigmoid}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=[*PARTS, "all"])
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--models", nargs="+", default=["yolo26n.yaml", "yolo11n.yaml"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--factor", type=float, default=1e-6, help="planted choke factor")
    ap.add_argument("--quick", action="store_true", help="shorter runs (fewer epochs and configurations)")
    args = ap.parse_args(argv)
    global WORK
    WORK = setup_env(Path(args.datasets))
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        for part in (PARTS if args.part == "all" else [args.part]):
            t0 = time.time()
            out = PARTS[part](args)
            out["seconds"] = time.time() - t0
            print(f"[{part}: {out['seconds']:.0f} s]", flush=True)
            (RESULTS / f"validate-{part}.json").write_text(json.dumps(out, indent=2, default=str))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
