"""The ablation runner: train every variant of a grid with the GradientMonitor, then compare them.

``yolo-gradmon ablate configs/ablation-activations.yaml epochs=1 imgsz=160 project=runs/abl name=quick``

- the ablation lives in ``<project>/<name>/``, a relative ``project`` taken from the current working directory
  (:func:`ablation_dir`; the trainer gets the absolute path, so Ultralytics does not nest it under
  ``runs/<task>/``); each variant trains in ``<project>/<name>/<variant>/`` with the same seed, its gradient log in
  ``<variant>/gradmon/``; a ``variant.json`` there records status (``done``/``failed`` + error), the varied
  values, metrics, wall time and where the trainer really wrote the run (``save_dir``, ``gradmon_dir``: the
  comparison reads the logs from there), so a re-run skips completed variants (an interrupted ablation resumes);
- a failing variant is recorded as failed and the runner goes on;
- at the end (and after each variant, so partial results are always on disk): ``ablation.csv`` and
  ``ablation.parquet`` (one row per variant, every column), ``ablation.md`` and ``ablation.html`` (the finding,
  a short table, the flow profile of every variant on one chart, heatmaps on one colour scale); the finding is
  printed too, and a variant whose log is missing is named on the page and in the console;
- W&B (when the monitor's ``wandb`` option is on and wandb is importable): one run per variant in one
  ``group``, the varied values in each run's config, and a final ``summary`` run with the comparison table.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import polars as pl
from ultralytics.utils import LOGGER

from ..config import CLI_PREFIX, GradmonConfig
from ..config import PREFIX
from ..monitor import GradientMonitor
from ..fields import finite_or_none
from ..record.outputs import load_summary, rebuild
from ..show.wandb_run import import_wandb, open_run
from .compare import gradient_columns
from .grid import Grid, GridError, Variant, load_grid, sweep_config, variant_from_sweep_config
from .swaps import apply_variant

STATUS_NAME = "variant.json"


def _metrics_of(trainer) -> dict[str, float | None]:
    """Final mAP and losses from the trainer (validation runs at the final epoch even with val=False)."""
    out: dict[str, float | None] = {}
    metrics = dict(getattr(trainer, "metrics", None) or {})
    for key, col in (("metrics/mAP50(B)", "map50"), ("metrics/mAP50-95(B)", "map50_95")):
        v = metrics.get(key)
        out[col] = float(v) if v is not None else None
    try:
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        out.update({k.replace("/", "_"): float(v) for k, v in losses.items()})
    except Exception:  # noqa: BLE001
        pass
    for k, v in metrics.items():
        if k.startswith("val/"):
            out[k.replace("/", "_")] = float(v)
    return out


def ablation_dir(grid: Grid) -> Path:
    """Where the ablation lives: ``<project>/<name>``, absolute; a relative ``project`` is taken from the current
    working directory (not nested under Ultralytics' ``runs/<task>/``, which only applies to relative paths)."""
    return (Path.cwd() / Path(grid.project).expanduser()).resolve() / grid.name


def train_variant(grid: Grid, variant: Variant, out_dir: Path, own_wandb_run: bool = False) -> dict:
    """Train one variant with the monitor attached; return its result row (raises on failure). ``own_wandb_run``:
    open the variant's W&B run in the grid's group (a sweep agent's run is opened by the agent instead)."""
    model, report = apply_variant(variant.trainer_args["model"], **variant.modifications)
    cfg = GradmonConfig.from_dict(grid.gradmon)
    monitor = GradientMonitor(cfg).attach(model)
    args = {k: v for k, v in variant.trainer_args.items() if k != "model"}
    args.update(project=str(Path(out_dir).resolve()), name=variant.name, exist_ok=True)  # absolute: never nested
    run = _start_wandb_run(cfg, grid, variant, report) if own_wandb_run else None
    t0 = time.time()
    try:
        model.train(**args)
    finally:
        if run is not None:
            run.finish()
    wall = time.time() - t0
    trainer = getattr(model, "trainer", None)
    save_dir = Path(getattr(trainer, "save_dir", None) or Path(out_dir) / variant.name).resolve()
    gradmon_dir = Path(monitor.out_dir or save_dir / "gradmon").resolve()
    summary = monitor.summary or load_summary(gradmon_dir)
    if "depth" not in summary:  # a log from before the summary carried its depth block
        summary = rebuild(gradmon_dir)
    row = {"variant": variant.name, **variant.values, "status": "done", "error": None, "wall_time_s": wall,
           "save_dir": str(save_dir), "gradmon_dir": str(gradmon_dir)}
    row.update(_metrics_of(model.trainer))
    row.update(gradient_columns(summary))
    row["swap_report"] = json.dumps(report, default=str)
    return row


def _start_wandb_run(cfg: GradmonConfig, grid: Grid, variant: Variant, report: dict):
    """The variant's W&B run (None without W&B): in the grid's group, named by the variant, its axes' values at the top
    of its config (W&B's grouping and parallel-coordinates panels read them), in the project the grid's ``project``
    names, as Ultralytics names a training's project; the monitor's sink then logs into it."""
    if not cfg.wandb:
        return None
    wb = import_wandb()
    if wb is None:
        return None
    try:
        config = {**variant.trainer_args, **variant.values, "ablation": variant.values, "swap_report": report,
                  "gradmon": cfg.to_dict()}
        return open_run(wb, project=grid.project, name=variant.name, group=grid.name, job_type="ablation",
                        config=config, save_dir=ablation_dir(grid) / variant.name)
    except Exception as e:  # noqa: BLE001 - W&B never blocks an ablation
        LOGGER.warning(f"{PREFIX}ablation: no W&B run for {variant.name} ({type(e).__name__}: {e})")
        return None


def run_grid(grid: Grid, resume: bool = True) -> Path:
    """Train every variant of ``grid`` (skipping completed ones) and write the comparison; return its dir."""
    variants = grid.variants()
    out_dir = ablation_dir(grid)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grid.json").write_text(json.dumps(grid.to_dict(), indent=2, default=str))
    group = f"{grid.name}"
    rows: list[dict] = []
    done_seconds, done_count = 0.0, 0  # the ETA comes from completed variants only (a failure takes no time)
    for k, variant in enumerate(variants, 1):
        status_path = out_dir / variant.name / STATUS_NAME
        if resume and status_path.is_file():
            prev = json.loads(status_path.read_text())
            if prev.get("status") == "done":
                LOGGER.info(f"{PREFIX}ablation: variant {k}/{len(variants)} {variant.name}: already complete, skipped")
                rows.append(prev)
                continue
        eta = f", ETA {_fmt_s(done_seconds / done_count * (len(variants) - k + 1))}" if done_count else ""
        LOGGER.info(f"{PREFIX}ablation: variant {k}/{len(variants)} {variant.name} {variant.values}{eta}")
        t0 = time.time()
        try:
            row = train_variant(grid, variant, out_dir, own_wandb_run=True)
            done_seconds, done_count = done_seconds + time.time() - t0, done_count + 1
        except Exception as e:  # noqa: BLE001 - one failing variant never stops the grid
            LOGGER.error(f"{PREFIX}ablation: variant {variant.name} failed: {type(e).__name__}: {e}")
            row = {"variant": variant.name, **variant.values, "status": "failed",
                   "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        status_path.parent.mkdir(parents=True, exist_ok=True)
        status_path.write_text(json.dumps(row, indent=2, default=str))
        rows.append(row)
        write_comparison(out_dir, rows, grid)
    _, comparison = write_comparison(out_dir, rows, grid)
    _log_wandb_summary(grid, rows, group)
    done = sum(r.get("status") == "done" for r in rows)
    for r in rows:
        if r.get("status") != "done":
            LOGGER.warning(f"{PREFIX}ablation: variant {r['variant']} failed ({r.get('error')}); "
                           f"its traceback is in {out_dir / r['variant'] / STATUS_NAME}")
    for name, why in comparison.missing.items():
        LOGGER.warning(f"{PREFIX}ablation: variant {name}: {why}; it is missing from the charts")
    for line in comparison.finding_lines():
        LOGGER.info(f"{PREFIX}ablation: {line}")
    LOGGER.info(f"{PREFIX}ablation: {done}/{len(variants)} variants done; comparison: {comparison.html}")
    return out_dir


def grid_rows(out_dir: Path, grid: Grid) -> list[dict]:
    """The recorded ``variant.json`` of every variant of ``grid`` that has one, in grid order."""
    paths = [Path(out_dir) / v.name / STATUS_NAME for v in grid.variants()]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def failure_line(rows: list[dict], total: int, out_dir: Path) -> str | None:
    """One line when a variant failed: how many completed, the first failure's cause and what to do about it."""
    failed = [r for r in rows if r.get("status") != "done"]
    if not failed:
        return None
    done = len(rows) - len(failed)
    first = failed[0]
    cause = " ".join(str(first.get("error") or "unknown error").split())
    head = "nothing trained: no variant completed" if not done else f"{done} of {total} variants completed"
    return (f"{head} ({len(failed)} failed); the first failure, {first['variant']}: {cause}. "
            f"{failure_fix(cause, Path(out_dir) / first['variant'] / STATUS_NAME)}")


def failure_fix(cause: str, status_path: Path) -> str:
    """What to try for a variant's error message (a dataset that cannot be read or had: ``data=``)."""
    low = cause.lower()
    if any(w in low for w in ("dataset", "images not found", "download", "no labels found")):
        return "Pass data=<a dataset on this machine> (e.g. data=coco8.yaml, which Ultralytics downloads when online)"
    return f"Its traceback is in {status_path}"


def exit_status(out_dir: Path, grid: Grid) -> int:
    """``yolo-gradmon ablate``'s exit status: 1 when no variant completed, else 0; a failure is one line on stderr."""
    import sys

    rows = grid_rows(out_dir, grid)
    line = failure_line(rows, len(grid), out_dir)
    if line:
        print(f"yolo-gradmon ablate: {line}", file=sys.stderr)
    return 0 if any(r.get("status") == "done" for r in rows) else 1


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def comparison_frame(rows: list[dict], grid: Grid) -> pl.DataFrame:
    """One row per variant, flat columns (lists joined) for CSV."""
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("traceback", "swap_report")}
        g = f.pop("median_grad_to_weight_first3", None) or []
        for i in range(3):
            f[f"median_grad_to_weight_L{i}"] = g[i] if i < len(g) else None
        flat.append({k: finite_or_none(v) if isinstance(v, float) else v for k, v in f.items()})
    df = pl.DataFrame(flat, infer_schema_length=None)
    first = ["variant", *grid.axes, "status", "early_flow_vs_baseline", "early_flow", "weakest_layer", "weakest_flow",
             "flagged_count", "flagged_modules", "map50_95", "map50", "wall_time_s"]
    first = [c for c in dict.fromkeys(first) if c in df.columns]
    return df.select(first + [c for c in df.columns if c not in first])


def write_comparison(out_dir: Path, rows: list[dict], grid: Grid):
    """``ablation.csv``/``.parquet``/``.md``/``.html`` from the rows so far; returns the frame and the
    :class:`~.compare.Comparison` (finding, missing variants, page paths)."""
    from .compare import compare_rows, write_pages

    comparison = compare_rows(out_dir, rows, grid)
    df = comparison_frame(comparison.rows, grid)
    df.write_csv(out_dir / "ablation.csv")
    df.write_parquet(out_dir / "ablation.parquet")
    write_pages(comparison, df)
    return df, comparison


def _log_wandb_summary(grid: Grid, rows: list[dict], group: str) -> None:
    """One more run in the grid's group holding the comparison table."""
    if not GradmonConfig.from_dict(grid.gradmon).wandb:
        return
    wb = import_wandb()
    if wb is None:
        return
    try:
        df = comparison_frame(rows, grid)
        run = open_run(wb, project=grid.project, name=f"{group}-summary", group=group, job_type="ablation-summary",
                       config={"grid": grid.to_dict()}, save_dir=ablation_dir(grid))
        run.log({"ablation/comparison": wb.Table(columns=df.columns, data=[list(r) for r in df.rows()])})
        run.summary["ablation/variants"] = df.height
        run.finish()
    except Exception as e:  # noqa: BLE001
        LOGGER.warning(f"{PREFIX}ablation: W&B summary run skipped ({type(e).__name__}: {e})")


def sweep_train(config: dict | None = None, grid_path: str | None = None, start_run: bool | None = None) -> dict:
    """Train the variant a W&B sweep run describes: the ``wandb agent`` entry point.

    ``config`` holds the axes' values, the constants written by :func:`sweep_config` and ``grid`` (the
    grid YAML's path); with ``config=None`` it is read from ``wandb.config`` of a run started here. Used
    by ``wandb.agent(sweep_id, function=sweep_train)`` and by ``yolo-gradmon sweep-run key=value ...``,
    the command the sweep config names. ``project``/``name``/``gradmon_*`` keys in the config apply too.
    """
    run = None
    if start_run is None:
        start_run = config is None
    if start_run:
        import wandb  # a sweep agent's run: W&B sets its project and name

        run = open_run(wandb, project=None, name=None, config=config or {}, job_type="sweep")
        config = {**(config or {}), **dict(run.config)}
    config = dict(config or {})
    path = grid_path or config.get("grid")
    if not path:
        raise GridError("sweep config: no 'grid' (path of the ablation grid YAML)")
    overrides = {k: v for k, v in config.items() if k.startswith(CLI_PREFIX) or k in ("project", "name")}
    grid = load_grid(path, overrides)
    variant = variant_from_sweep_config(grid, config)
    out_dir = ablation_dir(grid)
    row: dict = {"variant": variant.name, **variant.values, "status": "failed"}
    try:
        row = train_variant(grid, variant, out_dir, own_wandb_run=False)
    except Exception as e:  # noqa: BLE001 - record, then let the agent see the failure
        row["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        (out_dir / variant.name).mkdir(parents=True, exist_ok=True)
        (out_dir / variant.name / STATUS_NAME).write_text(json.dumps(row, indent=2, default=str))
        if run is not None:
            run.finish()
    return row


def write_sweep(grid: Grid, grid_path: str | Path) -> Path:
    """Write ``<project>/<name>/sweep.yaml``: W&B's grid search over the same axes, run by ``yolo-gradmon sweep-run``."""
    import yaml

    cfg = sweep_config(grid)
    cfg["parameters"]["grid"] = {"value": str(Path(grid_path).resolve())}
    cfg["parameters"]["project"] = {"value": str(ablation_dir(grid).parent)}  # agents may run from any directory
    cfg["program"] = "yolo-gradmon"
    cfg["command"] = ["yolo-gradmon", "sweep-run", "${args_no_hyphens}"]
    path = ablation_dir(grid) / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(grid_path: str, overrides: dict, sweep: bool = False) -> int:
    """CLI body of ``yolo-gradmon ablate``."""
    grid = load_grid(grid_path, overrides)  # validates the whole grid before any training
    if sweep:
        path = write_sweep(grid, grid_path)
        print(f"gradmon: W&B sweep config written to {path}\n  wandb sweep {path}\n  wandb agent <entity/project/sweep_id>")
        return 0
    check_grid_inputs(grid)  # InputError (one line, exit 2) before the ablation's folder exists
    out_dir = run_grid(grid)
    return exit_status(out_dir, grid)


def check_grid_inputs(grid: Grid) -> None:
    """Check the model, weights and dataset of every distinct variant set-up, as ``yolo-gradmon train`` does."""
    from ..preflight import check_inputs

    seen = set()
    for variant in grid.variants():
        args = variant.trainer_args
        key = tuple(str(args.get(k)) for k in ("model", "data", "pretrained", "task"))
        if key not in seen:
            seen.add(key)
            check_inputs(str(args["model"]), args)
