"""``yolo-gradmon``: train | demo | report | ablate.

Arguments follow ``yolo train``: ``key=value`` pairs go to Ultralytics unchanged, except those prefixed
``gradmon_`` (``gradmon_log_every=5``, ``gradmon_granularity=module``, ``gradmon_config=my.yaml``),
which configure the monitor and are validated before anything trains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import GradmonConfigError, config_from_cli, split_cli_args
from .logfile import LogSchemaError

USAGE = """yolo-gradmon train  model=yolo26n.yaml data=coco8.yaml epochs=10 imgsz=320 [gradmon_<option>=value ...]
yolo-gradmon demo   [key=value ...]            # YOLO26n on COCO8 (or generated data offline), then a report
yolo-gradmon report <save_dir>                 # rebuild parquet/summary/PNGs/HTML from gradmon/gradients.jsonl
yolo-gradmon ablate <grid.yaml> [key=value ...] [--sweep]
yolo-gradmon sweep-run grid=<grid.yaml> <axis>=<value> ...   # one sweep run (what `wandb agent` calls)"""


def parse_pairs(pairs: list[str]) -> dict:
    """Parse ``key=value`` pairs with Ultralytics' own value parsing."""
    from ultralytics.cfg import smart_value

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise GradmonConfigError(f"argument {pair!r} is not key=value")
        k, v = pair.split("=", 1)
        if not k or not v:
            raise GradmonConfigError(f"argument {pair!r} is missing a key or value")
        out[k.strip()] = smart_value(v.strip())
    return out


def train(pairs: list[str], demo: bool = False) -> int:
    """Train with the monitor attached; returns a process exit code."""
    gradmon_args, trainer_args = split_cli_args(parse_pairs(pairs))
    cfg = config_from_cli(gradmon_args)  # validated before Ultralytics starts
    from ultralytics import YOLO

    from .monitor import GradientMonitor

    if demo:
        from .demo import demo_data

        project = Path(trainer_args.get("project", "runs/gradmon"))
        trainer_args.setdefault("data", demo_data(project))
        # nbs=batch: every batch is an optimizer step, so a short demo still logs a readable history
        defaults = {"epochs": 10, "imgsz": 320, "batch": 8, "nbs": 8, "project": str(project), "name": "demo",
                    "plots": False}
        for k, v in defaults.items():
            trainer_args.setdefault(k, v)
    model = YOLO(str(trainer_args.pop("model", "yolo26n.yaml")))
    monitor = GradientMonitor(cfg).attach(model)
    model.train(**trainer_args)
    if demo and monitor.out_dir is not None:
        from .report import render_report

        html = render_report(monitor.out_dir)
        print(f"gradmon: report {html}")
    return 0


def report(path: str) -> int:
    from .report import render_report

    html = render_report(path)
    print(f"gradmon: report {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolo-gradmon", usage=USAGE, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "demo"):
        p = sub.add_parser(name)
        p.add_argument("pairs", nargs="*", metavar="key=value")
    p = sub.add_parser("report")
    p.add_argument("path")
    p = sub.add_parser("ablate")
    p.add_argument("grid")
    p.add_argument("pairs", nargs="*", metavar="key=value")
    p.add_argument("--sweep", action="store_true", help="write a W&B Sweep config for the grid instead of training")
    p = sub.add_parser("sweep-run", help="train one variant of a W&B sweep (the command a sweep config names)")
    p.add_argument("pairs", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "demo"):
            return train(args.pairs, demo=args.command == "demo")
        if args.command == "report":
            return report(args.path)
        if args.command == "sweep-run":
            from .ablate.runner import sweep_train

            sweep_train(parse_pairs(args.pairs), start_run=True)
            return 0
        from .ablate.runner import main as ablate_main

        return ablate_main(args.grid, parse_pairs(args.pairs), sweep=args.sweep)
    except (GradmonConfigError, LogSchemaError, FileNotFoundError) as e:
        print(f"yolo-gradmon: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
