"""``summary.json``: the verdict (what the logged evidence could decide), the flags, the per-module and per-layer
medians and the run-level numbers, built once at train end (or from the log alone) as plain Python.

Every output that shows a run-level number (console, report, W&B summary, ablation page) reads it from here.
"""

from __future__ import annotations

import math
import statistics

import polars as pl

from ..config import GradmonConfig
from ..judge.nonfinite import nonfinite_event
from ..judge.rules import Flag
from ..judge.verdict import evidence_gaps, frozen_modules, gap_line, lead_lines
from .depth import run_depth
from .logfile import SCHEMA_VERSION
from .noise import noise_summary
from .tables import layer_table, module_table


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


def lowest_grad_to_weight(module_stats: list[dict]) -> dict:
    """The module with the lowest median ‖grad‖/‖w‖ over the run, that median, and its ratio to the median over all
    modules of their medians (how far below a typical module it sits); ``{}`` without a positive median."""
    g2w = [(s["median_grad_to_weight"], s["module"]) for s in module_stats
           if s.get("median_grad_to_weight") is not None and s["median_grad_to_weight"] > 0]
    if not g2w:
        return {}
    value, module = min(g2w)
    typical = statistics.median(v for v, _ in g2w)
    return {"module": module, "median": value, "vs_median_module": value / typical}


def grad_norm_range_decades(module_stats: list[dict]) -> float | None:
    """log10 of the largest over the smallest module median ‖grad‖ (how many decades the gradients span by depth)."""
    norms = [s["median_grad_norm"] for s in module_stats if s.get("median_grad_norm") and s["median_grad_norm"] > 0]
    return math.log10(max(norms) / min(norms)) if norms else None


def build_summary(header: dict, records: list[dict], flags: list[Flag], complete: bool,
                  modules_frame: pl.DataFrame, layers_frame: pl.DataFrame | None, stopped_by: str | None = None) -> dict:
    """The ``summary.json`` content (pure: no file access), from the tables built once at train end
    (:mod:`yolo_gradmon.record.outputs`). ``lead`` holds the verdict's lines in reading order
    (:func:`yolo_gradmon.judge.verdict.lead_lines`: the non-finite event first)."""
    modules = list(header["modules"])
    steps = [r["step"] for r in records]
    cfg = header.get("config", {})
    few, verdict = judgement(header, records)
    gaps = evidence_gaps(header, records, cfg)
    flow_gap = [g for g in gaps if g["rule"].startswith("vanishing")]
    if not few and flow_gap and not any(f.kind == "vanishing" for f in flags):
        few = True  # nothing flagged on a window that could not fill is no clean bill
        verdict = f"cannot tell yet: {verdict.removeprefix('judged on ')}; {gap_line(flow_gap[0])}"
    layers = list(header.get("layers") or [])
    module_stats = module_table(modules_frame, modules)
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
        "module_stats": module_stats,
        "lowest_grad_to_weight": lowest_grad_to_weight(module_stats),
        "grad_norm_range_decades": grad_norm_range_decades(module_stats),
        "flow": bool(header.get("flow")),
        "activation_health": bool(header.get("activation_health")),
        "layers": layers,
        "layer_stats": layer_table(layers_frame, layers) if layers and layers_frame is not None else [],
        "depth": run_depth(records, header) if layers else {},
        "train": header.get("train") or {},
        "data": header.get("data") or {},
        "noise_scale": noise_summary(header, records),
        "config": cfg,
        "stopped_by": stopped_by,
        "nonfinite_event": nonfinite_event(header, records, complete),
        "evidence_gaps": gaps,
        "frozen": frozen_modules(header),
    }
    summary["frozen_modules"] = summary["frozen"]["modules"]  # a flat list (e.g. for the W&B summary)
    summary["lead"] = lead_lines(summary, records)
    return summary
