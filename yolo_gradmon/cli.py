"""``yolo-gradmon``: train | demo | report | ablate | sweep-run.

Arguments follow ``yolo train``: ``key=value`` pairs go to Ultralytics unchanged, except those prefixed
``gradmon_`` (``gradmon_log_every=5``, ``gradmon_granularity=module``, ``gradmon_config=my.yaml``),
which configure the monitor. Every argument is validated before anything trains; a user mistake is
ONE line on stderr and exit status 2 (never a traceback). ``yolo-gradmon <command> --help`` lists every
monitor option with its default and meaning, built from :mod:`yolo_gradmon.config` (the same source as
``configs/default.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import (
    CLI_PREFIX,
    GradmonConfig,
    GradmonConfigError,
    config_from_cli,
    did_you_mean,
    options_help,
    split_cli_args,
)
from .preflight import InputError
from .record.logfile import LogSchemaError
from .trainer import TrainerArgError, trainer_keys
from .trainer import check_trainer_args as check_ultralytics_args

PROG = "yolo-gradmon"
DEMO_PROJECT = "runs/gradmon"  # the demo's project, relative to the working directory
COMMANDS: dict[str, str] = {  # command -> its one line in `yolo-gradmon --help`
    "train": "train a YOLO model with the gradient monitor attached",
    "demo": "YOLO26n on COCO8 (or generated data offline) for 10 epochs, then an HTML report",
    "report": "rebuild a run's parquet/summary/PNGs/HTML from its gradmon/gradients.jsonl",
    "ablate": "train every variant of an ablation grid (activation, shortcut, norm, ...) and compare them",
    "sweep-run": "train one variant of a W&B sweep (the command 'wandb agent' runs)",
}
USAGES: dict[str, str] = {
    "train": f"{PROG} train model=yolo26n.yaml data=coco8.yaml epochs=10 imgsz=320 [key=value ...] "
             f"[{CLI_PREFIX}<option>=value ...]",
    "demo": f"{PROG} demo [key=value ...] [{CLI_PREFIX}<option>=value ...]",
    "report": f"{PROG} report <save_dir>",
    "ablate": f"{PROG} ablate <grid.yaml> [key=value ...] [{CLI_PREFIX}<option>=value ...] [--sweep]",
    "sweep-run": f"{PROG} sweep-run grid=<grid.yaml> <axis>=<value> ... [{CLI_PREFIX}<option>=value ...]",
}
USAGE = "\n".join(USAGES.values())

_MONITOR_OPTIONS = f"""monitor options ({CLI_PREFIX}<option>=<default>; the defaults of configs/default.yaml):
{options_help(CLI_PREFIX)}"""

_EPILOGS: dict[str, str] = {
    "train": f"""trainer arguments: any key 'yolo cfg' lists (model, data, epochs, imgsz, batch, device, project, name, ...),
  passed to Ultralytics unchanged; model defaults to yolo26n.yaml.

{_MONITOR_OPTIONS}""",
    "demo": f"""trainer arguments default to: data=coco8.yaml (a generated 2-class dataset when COCO8 is not in the
  Ultralytics datasets dir), epochs=10 imgsz=320 batch=8 nbs=8 project=runs/gradmon name=demo plots=False; a relative project is
  taken from the working directory, so the run is ./runs/gradmon/demo/ (its report: gradmon/report.html there).

{_MONITOR_OPTIONS}""",
    "report": """<save_dir> is a training run's directory (holding gradmon/), its gradmon/ directory or the
gradients.jsonl itself; the report works for a run killed mid-training too.""",
    "ablate": f"""key=value overrides: a trainer argument replaces the grid's base (epochs=1), project=/name= place the
  ablation, an axis collapses to the given value (activation=relu). In the grid file the monitor options go in
  its 'gradmon' section WITHOUT the prefix; on the command line they carry it and override that section.

{_MONITOR_OPTIONS}""",
    "sweep-run": f"""Written by '{PROG} ablate <grid.yaml> --sweep' into sweep.yaml and run by 'wandb agent': the pairs are
grid=<grid.yaml>, one <axis>=<value> per axis of the grid, and optionally project=, name= and
{CLI_PREFIX}<option>= (see '{PROG} train --help' for every monitor option).""",
}

_TOP_DESCRIPTION = f"""Gradient monitoring for Ultralytics YOLO training: per-layer gradient statistics,
vanishing/exploding flags with their cause, W&B streaming and activation ablations.

commands:
{chr(10).join(f'  {name:<11}{line}' for name, line in COMMANDS.items())}"""
_TOP_EPILOG = f"""key=value pairs follow 'yolo train': they go to Ultralytics unchanged, except the monitor options,
written {CLI_PREFIX}<option>=value ({CLI_PREFIX}log_every=5, {CLI_PREFIX}config=my.yaml).
Run '{PROG} <command> --help' for a command's arguments and every monitor option."""


class _UsageError(Exception):
    """A command-line mistake argparse found (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message over several lines; one line instead
        message = message.replace(", key=value", "")  # an optional `key=value ...` is never missing
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, usage=f"{PROG} <command> [key=value ...]", formatter_class=raw,
                     description=_TOP_DESCRIPTION, epilog=_TOP_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, help=argparse.SUPPRESS, parser_class=_Parser)

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, prog=f"{PROG} {name}", usage=USAGES[name], description=COMMANDS[name][:1].upper()
                              + COMMANDS[name][1:] + ".", epilog=_EPILOGS[name], formatter_class=raw)

    for name in ("train", "demo"):
        add(name).add_argument("pairs", nargs="*", metavar="key=value",
                               help="trainer arguments and monitor options (below)")
    add("report").add_argument("path", metavar="save_dir", help="the training run to report on")
    p = add("ablate")
    p.add_argument("grid", metavar="grid.yaml", help="the ablation grid (base trainer args, axes, gradmon options)")
    p.add_argument("pairs", nargs="*", metavar="key=value", help="overrides of the grid (below)")
    p.add_argument("--sweep", action="store_true", help="write a W&B Sweep config for the grid instead of training")
    add("sweep-run").add_argument("pairs", nargs="*", metavar="key=value", help="the run's sweep parameters")
    return parser


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


def _raw_values(pairs: list[str]) -> dict[str, str]:
    """``key -> value`` as typed (for messages that tell the user what to write instead)."""
    return {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in pairs if "=" in p}


def _check_unprefixed(args: dict, raw: dict[str, str], also_valid: set[str] = frozenset()) -> None:
    """A monitor option written without ``gradmon_``: say how to write it."""
    options = {f.name for f in _config_fields()}
    for key in args:
        if key in options and key not in also_valid and key not in trainer_keys():
            raise GradmonConfigError(f"{key} is a gradmon option: write {CLI_PREFIX}{key}={raw.get(key, args[key])}")


def _config_fields():
    import dataclasses

    return dataclasses.fields(GradmonConfig)


def check_trainer_args(args: dict, raw: dict[str, str]) -> None:
    """Trainer arguments as Ultralytics will check them (:func:`yolo_gradmon.trainer.check_trainer_args`), and a
    monitor option written without its ``gradmon_`` prefix; raises :class:`GradmonConfigError` with one line."""
    _check_unprefixed(args, raw)
    try:
        check_ultralytics_args(args, also_valid=[f"{CLI_PREFIX}{f.name}" for f in _config_fields()])
    except TrainerArgError as e:
        raise GradmonConfigError(str(e)) from None


def train(pairs: list[str], demo: bool = False) -> int:
    """Train with the monitor attached; returns a process exit code."""
    gradmon_args, trainer_args = split_cli_args(parse_pairs(pairs))
    cfg = config_from_cli(gradmon_args)  # validated before Ultralytics starts
    check_trainer_args(trainer_args, _raw_values(pairs))
    from .monitor import GradientMonitor
    from .preflight import check_model, check_run_data, check_weights

    model = check_model(str(trainer_args.pop("model", "yolo26n.yaml")))  # before anything is written
    check_weights(trainer_args.get("pretrained"))
    if demo:
        from .demo import demo_data

        # the demo's folder is taken from the working directory (Ultralytics would nest a relative one in runs/detect/)
        project = (Path.cwd() / Path(str(trainer_args.get("project", DEMO_PROJECT))).expanduser()).resolve()
        if "data" not in trainer_args:
            trainer_args["data"] = demo_data(project)
        # nbs=batch: every batch is an optimizer step, so a short demo still logs a readable history
        defaults = {"epochs": 10, "imgsz": 320, "batch": 8, "nbs": 8, "name": "demo", "plots": False}
        trainer_args.update(project=str(project))
        for k, v in defaults.items():
            trainer_args.setdefault(k, v)
    check_run_data(model, trainer_args)  # Ultralytics' own check (and download), before the trainer makes its folder
    GradientMonitor(cfg).attach(model)
    model.train(**trainer_args)  # the monitor writes report.html at train end and prints its path
    return 0


def report(path: str) -> int:
    from .show.report import render_report

    html = render_report(path)
    print(f"gradmon: report: {html}")
    return 0


def _ablate_extra_keys() -> set[str]:
    """Override keys of ``ablate``/``sweep-run`` that are not trainer arguments (axes, grid placement)."""
    from .ablate.grid import AXES, MODIFICATION_KEYS, SWEEP_AXES_KEY

    return set(AXES) | set(MODIFICATION_KEYS) | {"project", "name", "grid", SWEEP_AXES_KEY}


def main(argv: list[str] | None = None) -> int:
    """Run ``yolo-gradmon``; returns the exit status (2 for a user mistake, reported as one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    try:
        if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
            raise _UsageError(f"{PROG}: unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}; "
                              f"commands: {', '.join(COMMANDS)}")
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 0
        if args.command in ("train", "demo"):
            return train(args.pairs, demo=args.command == "demo")
        if args.command == "report":
            return report(args.path)
        overrides = parse_pairs(args.pairs)
        _check_unprefixed(overrides, _raw_values(args.pairs), also_valid=_ablate_extra_keys())
        config_from_cli(split_cli_args(overrides)[0])  # gradmon_* overrides, named as typed in any error
        if args.command == "sweep-run":
            from .ablate.runner import sweep_train

            sweep_train(overrides, start_run=True)
            return 0
        from .ablate.runner import main as ablate_main

        return ablate_main(args.grid, overrides, sweep=args.sweep)
    except (_UsageError, GradmonConfigError, InputError, LogSchemaError, FileNotFoundError) as e:
        print(str(e).strip().replace("\n", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
