"""The tables derived from the log: per-module, per-layer and per-step frames, ``gradients.parquet``,
``layers.parquet``, ``steps.parquet`` and ``summary.json``.

Written at train end from the monitor's history, and rebuilt from the append-only log alone by
:func:`rebuild` (``yolo-gradmon report``), e.g. for a run that was killed before train end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from ..config import GradmonConfig
from ..judge.nonfinite import nonfinite_event
from ..judge.rules import Flag, evaluate
from ..judge.verdict import evidence_gaps, frozen_modules, gap_line, lead_lines
from .depth import run_depth
from .logfile import (LAYER_COLUMNS, LOG_NAME, MODULE_COLUMNS, SCHEMA_VERSION, dumps, find_in_run, finite_or_none,
                      plain, read_log)

LAYERS_PARQUET_NAME = "layers.parquet"
PARQUET_NAME = "gradients.parquet"
STEPS_PARQUET_NAME = "steps.parquet"
SUMMARY_NAME = "summary.json"


def module_frame(records: list[dict], modules: list[str], layer_index: list[int] | None = None) -> pl.DataFrame:
    """Long format of ``step`` records: one row per (step, module that received a gradient).

    With ``layer_index`` (the header's: each module's top-level layer), the optional ``LAYER_COLUMNS`` are added too,
    each module carrying its layer's value (null where the log has none).
    """
    extra = LAYER_COLUMNS if layer_index is not None else ()
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "module", *MODULE_COLUMNS, *extra)}
    for rec in records:
        has = rec.get("has_grad")
        for i, name in enumerate(modules):
            if has is not None and not has[i]:
                continue
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["module"].append(name)
            for c in MODULE_COLUMNS:
                v = rec[c][i]
                cols[c].append(finite_or_none(v) if isinstance(v, float) else v)
            for c in extra:
                arr, li = rec.get(c), layer_index[i]
                cols[c].append(finite_or_none(arr[li]) if arr is not None and 0 <= li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "module": pl.Utf8}
    schema.update({c: pl.Float64 for c in (*MODULE_COLUMNS, *extra)})
    schema["nonfinite"] = pl.Int64
    return pl.DataFrame(cols, schema=schema)


def layer_frame(records: list[dict], layers: list[str]) -> pl.DataFrame:
    """The depth signals of ``step`` records: one row per (step, top-level layer), for records that carry them.

    Columns: ``step, epoch, layer, flow_backwards`` and ``LAYER_COLUMNS`` (null where not measured).
    """
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "layer", "flow_backwards", *LAYER_COLUMNS)}
    for rec in records:
        if not any(rec.get(c) is not None for c in LAYER_COLUMNS):
            continue
        for li, name in enumerate(layers):
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["layer"].append(name)
            cols["flow_backwards"].append(rec.get("flow_backwards"))
            for c in LAYER_COLUMNS:
                arr = rec.get(c)
                cols[c].append(finite_or_none(arr[li]) if arr is not None and li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "layer": pl.Utf8, "flow_backwards": pl.Int64}
    schema.update({c: pl.Float64 for c in LAYER_COLUMNS})
    return pl.DataFrame(cols, schema=schema)


def step_frame(records: list[dict]) -> pl.DataFrame:
    """Whole-model columns of ``step`` records: one row per logged step."""
    schema = {
        "step": pl.Int64,
        "epoch": pl.Int64,
        "lr": pl.Float64,
        "amp_scale": pl.Float64,
        "amp_skipped": pl.Boolean,
        "total_norm": pl.Float64,
        "clip_active": pl.Boolean,
        "warmup": pl.Boolean,
    }
    rows = []
    for r in records:
        row = {k: plain(r.get(k)) for k in schema}
        row["lr"] = (r.get("lr") or [None])[0]
        rows.append(row)
    return pl.DataFrame(rows, schema=schema)


def module_table(frame: pl.DataFrame, modules: list[str]) -> list[dict]:
    """Per-module medians over the logged steps, in depth order."""
    if frame.height == 0:
        return []
    agg = frame.group_by("module").agg(
        pl.len().alias("steps"),
        pl.col("grad_norm").median().alias("median_grad_norm"),
        pl.col("grad_to_weight").median().alias("median_grad_to_weight"),
        pl.col("update_to_weight").median().alias("median_update_to_weight"),
        pl.col("max_abs_grad").max().alias("max_abs_grad"),
        pl.col("nonfinite").sum().alias("nonfinite"),
    )
    by_name = {r["module"]: r for r in agg.to_dicts()}
    return [by_name[m] for m in modules if m in by_name]


def layer_table(records: list[dict], layers: list[str]) -> list[dict]:
    """Per top-level layer: gradient-flow and activation-health medians/extremes over the logged steps."""
    frame = layer_frame(records, layers)
    if frame.height == 0:
        return []
    agg = frame.group_by("layer").agg(
        pl.col("flow_norm").median().alias("median_flow_norm"),
        pl.col("flow_attenuation").median().alias("median_flow_attenuation"),
        pl.col("flow_attenuation").min().alias("min_flow_attenuation"),
        pl.col("flow_attenuation").max().alias("max_flow_attenuation"),
        pl.col("act_saturated").median().alias("median_act_saturated"),
        pl.col("act_saturated").max().alias("max_act_saturated"),
        pl.col("act_dead").median().alias("median_act_dead"),
        pl.col("act_dead").max().alias("max_act_dead"),
    )
    by_name = {r["layer"]: r for r in agg.to_dicts()}
    return [by_name[m] for m in layers if m in by_name]


def judgement(header: dict, records: list[dict]) -> tuple[bool, str]:
    """Whether the run had enough logged evidence for the rules to judge, and a one-line verdict on it.

    A vanishing flag needs ``vanish_window`` low observations (logged steps for grad/weight, backward passes for the
    gradient flow), the exploding spike rule ``min_steps`` logged steps of history: fewer means "too few steps to
    judge", never "healthy". The verdict then says what would make the run judgeable, from its own numbers (the
    header's ``train`` facts: batch, nbs, batches per epoch; see :func:`what_would_judge`).
    """
    cfg = header.get("config", {})
    window = int(cfg.get("vanish_window", GradmonConfig.vanish_window))
    min_steps = int(cfg.get("min_steps", GradmonConfig.min_steps))
    steps = len(records)
    passes = sum(int(r.get("flow_backwards") or 0) for r in records)
    seen = max(steps, passes)
    few = steps < min_steps or seen < window
    what = f"{steps} logged optimizer step(s)" + (f", {passes} backward pass(es) with gradient flow" if passes else "")
    if few:
        hint = what_would_judge(header, max(window, min_steps), records)
        return True, (f"too few steps to judge: {what}; a vanishing flag needs {window} observations and the "
                      f"exploding rule {min_steps} steps of history" + (f". {hint}" if hint else ""))
    return False, f"judged on {what}"


def what_would_judge(header: dict, need: int, records: list[dict] = ()) -> str:
    """One or two sentences: this run's optimizer steps (from batch, nbs and batches per epoch in the header's
    ``train`` facts) and the smaller ``nbs`` or the number of epochs that would log ``need`` steps; "" without facts.

    ``accumulate = max(round(nbs / batch), 1)``, ``steps/epoch = ceil(batches / accumulate)``; Ultralytics caps
    accumulate at the run's total batch count and ramps it up from 1 during warm-up, so the counts are nominal.
    """
    t = header.get("train") or {}
    cfg = header.get("config", {})
    log_every = max(1, int(cfg.get("log_every") or 1))
    batch, nbs, batches = t.get("batch"), t.get("nbs"), t.get("batches_per_epoch")
    epochs = t.get("epochs") or max((r.get("epoch") or 0 for r in records), default=0) or None
    if not (batch and nbs and batches):
        return ""
    acc = max(round(nbs / batch), 1)
    rate = (f"{math.ceil(batches / acc)} optimizer step(s) per epoch" if acc <= batches
            else f"one optimizer step per {acc / batches:.3g} epochs")
    run = f"This run: batch {batch}, nbs {nbs} → accumulate {acc}; {batches} batch(es) per epoch → {rate}"
    if epochs:
        total = batches * epochs // min(acc, batches * epochs) // log_every
        capped = f", accumulate capped at its {batches * epochs} batches" if acc > batches * epochs else ""
        run += f" (about {total} logged in {epochs} epoch(s){capped})"
        if total >= need:
            return f"{run}: enough once every epoch has run"
    options = []
    if acc > 1:
        enough = epochs and batches * epochs // log_every >= need
        options.append(f"nbs={batch} ({batches} step(s) per epoch"
                       + ("" if enough else f", with epochs={math.ceil(need * log_every / batches)}") + ")")
    options.append(f"epochs={math.ceil(need * log_every * acc / batches)}" + (f" at nbs={nbs}" if acc > 1 else ""))
    if log_every > 1:
        options.append("gradmon_log_every=1")
    return f"{run}. To log {need} steps: " + " or ".join(options)


def build_summary(header: dict, records: list[dict], flags: list[Flag], complete: bool,
                  stopped_by: str | None = None) -> dict:
    """The ``summary.json`` content (pure: no file access). ``lead`` holds the verdict's lines in reading order
    (:func:`yolo_gradmon.judge.verdict.lead_lines`: the non-finite event first)."""
    modules = list(header["modules"])
    frame = module_frame(records, modules)
    steps = [r["step"] for r in records]
    cfg = header.get("config", {})
    few, verdict = judgement(header, records)
    gaps = evidence_gaps(header, records, cfg)
    flow_gap = [g for g in gaps if g["rule"].startswith("vanishing")]
    if not few and flow_gap and not any(f.kind == "vanishing" for f in flags):
        few = True  # nothing flagged on a window that could not fill is no clean bill
        verdict = f"cannot tell yet: {verdict.removeprefix('judged on ')}; {gap_line(flow_gap[0])}"
    layers = list(header.get("layers") or [])
    summary = {
        "schema": SCHEMA_VERSION,
        "model": header.get("model"),
        "task": header.get("task"),
        "granularity": header.get("granularity"),
        "log_every": cfg.get("log_every"),
        "modules": modules,
        "trainable": header.get("trainable"),
        "numel": header.get("numel"),
        "steps_logged": len(records),
        "first_step": min(steps) if steps else None,
        "last_step": max(steps) if steps else None,
        "epochs": max((r["epoch"] for r in records), default=0),
        "complete": complete,
        "too_few_steps": few,
        "verdict": verdict,
        "backward_passes": sum(int(r.get("flow_backwards") or 0) for r in records),
        "flags": [f.to_dict() for f in flags],
        "flagged_modules": sorted({f.module for f in flags}),
        "module_stats": module_table(frame, modules),
        "flow": bool(header.get("flow")),
        "activation_health": bool(header.get("activation_health")),
        "layers": layers,
        "layer_stats": layer_table(records, layers) if layers else [],
        "depth": run_depth(records, header) if layers else {},
        "train": header.get("train") or {},
        "config": cfg,
        "stopped_by": stopped_by,
        "nonfinite_event": nonfinite_event(header, records, complete),
        "evidence_gaps": gaps,
        "frozen": frozen_modules(header),
    }
    summary["frozen_modules"] = summary["frozen"]["modules"]  # a flat list (e.g. for the W&B summary)
    summary["lead"] = lead_lines(summary, records)
    return summary


def write_outputs(out_dir: Path, header: dict, records: list[dict], flags: list[Flag], complete: bool,
                  stopped_by: str | None = None) -> dict:
    """Write the Parquet files and ``summary.json`` into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    modules = list(header["modules"])
    layers = list(header.get("layers") or [])
    module_frame(records, modules, header.get("layer_index") if layers else None).write_parquet(out_dir / PARQUET_NAME)
    step_frame(records).write_parquet(out_dir / STEPS_PARQUET_NAME)
    if layers:
        layer_frame(records, layers).write_parquet(out_dir / LAYERS_PARQUET_NAME)
    summary = build_summary(header, records, flags, complete, stopped_by)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(json.loads(dumps(summary)), indent=2))
    return summary


def rebuild(path: str | Path) -> dict:
    """Rebuild Parquet and ``summary.json`` from ``gradients.jsonl`` alone (``path``: run dir, gradmon dir or log)."""
    log_path = find_in_run(path, LOG_NAME)
    log = read_log(log_path)
    cfg = GradmonConfig.from_dict(log.header.get("config", {}))
    flags = evaluate(log.modules, log.header["trainable"], log.steps, cfg, log.header.get("layer_index"), log.header)
    return write_outputs(log_path.parent, log.header, log.steps, flags, complete=log.ended)


def load_summary(path: str | Path) -> dict:
    """The ``summary.json`` of ``path`` (the file, its ``gradmon/`` dir or the run's ``save_dir``)."""
    return json.loads(find_in_run(path, SUMMARY_NAME).read_text())
