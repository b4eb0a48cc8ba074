"""What the W&B sink logs, built as plain Python (no wandb import, testable without it): the run-level row of a logged
step, the per-layer scalars on request, the data of the native charts, the flags table, alert texts and the run
summary. The key reference is docs/wandb.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..fields import BY_NAME, CHART_FAMILIES, FAMILIES, MODULE, as_float
from ..judge.rules import KINDS, Flag
from ..record.depth import layer_profile, step_depth
from ..record.logfile import dumps

STEP_KEY = "gradients/step"
# the run-level depth curves: W&B key -> step_depth field
DEPTH_KEYS = {
    "gradients/depth/early_flow_rel_head": "early_flow",
    "gradients/depth/weakest_flow_rel_head": "weakest_flow",
    "gradients/depth/early_grad_to_weight": "early_grad_to_weight",
}
WEAKEST_LAYER_KEY = "gradients/depth/weakest_layer_index"
FLAG_COLUMNS = ["kind", "module", "first_step", "last_step", "active", "evidence"]
PROFILE_COLUMNS = ["epoch", "index", "layer", "median", "min", "max", "log10_median", "n"]
MAX_CHART_ROWS = 10_000  # wandb.Table.MAX_ROWS: a longer run's chart thins its logged steps evenly (the last kept)


def is_module_family(family: str) -> bool:
    return BY_NAME[family].per == MODULE


def chart_title(family: str, unit: str) -> str:
    """``log10 ‖grad‖ per layer``, ``dead-channel fraction per layer``, with ``(sampled steps)`` for sampled ones."""
    f = BY_NAME[family]
    per = unit if f.per == MODULE else "layer"
    sampled = " (sampled steps)" if f.sampled and family == "update_to_weight" else ""
    if f.log10:
        return f"log10 {f.label} per {per}{sampled}"
    return f"{f.label[0].upper()}{f.label[1:]} per {per}{sampled}"


# ---------------------------------------------------------------------------------------------- one logged step
def step_row(record: dict, n_flagged: int, header: dict) -> dict:
    """The run-level row of one logged step (a few keys whatever the model's size)."""
    row: dict[str, Any] = {
        STEP_KEY: int(record["step"]),
        "gradients/epoch": int(record["epoch"]),
        "gradients/total_norm": as_float(record.get("total_norm")),
        "gradients/clip_active": int(bool(record.get("clip_active"))),
        "gradients/flagged_modules": int(n_flagged),
    }
    lr = record.get("lr") or []
    if lr:
        row["gradients/lr"] = as_float(lr[0])
    if record.get("amp_scale") is not None:
        row["gradients/amp_scale"] = float(record["amp_scale"])
    if record.get("amp_skipped") is not None:
        row["gradients/amp_skipped"] = int(bool(record["amp_skipped"]))
    depth = step_depth(record, header)
    for key, field in DEPTH_KEYS.items():
        if depth[field] is not None:  # flow not sampled at this step / no early module with a gradient: no key
            row[key] = depth[field]
    if depth["weakest_layer"] is not None:
        row[WEAKEST_LAYER_KEY] = list(header.get("layers") or []).index(depth["weakest_layer"])
    return row


class LayerScalars:
    """The per-layer scalars of ``wandb_layer_scalars`` (``gradients/<family>/<module or layer>``).

    A family is held back while every value it had is one constant (``act_dead`` on a SiLU model: always 0), so it
    never makes a wall of flat panels; once it varies, its held values are logged at their own ``gradients/step``
    and it streams from then on.
    """

    def __init__(self, families: Sequence[str], modules: Sequence[str], layers: Sequence[str]):
        self.keys = {f: [f"gradients/{f}/{n}" for n in (modules if is_module_family(f) else layers)] for f in families}
        self._held: dict[str, tuple[list, list]] = {f: ([], []) for f in families}  # family -> ([value], held cells)

    def add(self, record: dict, row: dict) -> list[dict]:
        """Add this step's scalars to ``row``; return the backfill rows (earlier steps) to log first."""
        step = int(record["step"])
        has = record.get("has_grad")
        backfill: dict[int, dict] = {}
        for family, keys in self.keys.items():
            values = record.get(family)
            if values is None:
                continue
            module = is_module_family(family)
            cells = [(key, as_float(v)) for i, (key, v) in enumerate(zip(keys, values))
                     if (not module or has is None or has[i]) and (module or v is not None)]
            if family == "update_to_weight" and all(math.isnan(v) for _, v in cells):
                continue  # not a sampled step of the update ratio (update_every): no keys
            held = self._held.get(family)
            if held is None:  # streamed: it has varied
                row.update(cells)
                continue
            seen, waiting = held
            if not seen and cells:
                seen.append(cells[0][1])
            if all(v == seen[0] for _, v in cells):  # NaN never equals: a non-finite value is streamed
                if cells:
                    waiting.append((step, cells))
                continue
            for s, old in waiting:
                backfill.setdefault(s, {STEP_KEY: s}).update(old)
            del self._held[family]
            row.update(cells)
        return [backfill[s] for s in sorted(backfill)]


# ---------------------------------------------------------------------------------------------- charts and tables
def family_state(records: Sequence[dict], family: str) -> tuple[str, float | None]:
    """``("varied", None)``; ``("constant", value)`` (every value of the run is that one); ``("sparse", None)`` (varied,
    but at fewer than 2 logged steps, e.g. ``update_to_weight`` sampled every ``update_every`` steps in a short run: a
    chart of it would be single dots); or ``("unmeasured", None)`` (no value at all, e.g. act_saturated without
    Sigmoid/Tanh-like units)."""
    module = is_module_family(family)
    first, varied, steps = None, False, 0
    for rec in records:
        has = rec.get("has_grad") if module else None
        here = [v for i, v in enumerate(rec.get(family) or []) if v is not None and (has is None or has[i])]
        if not here:
            continue
        steps += 1
        first = here[0] if first is None else first
        varied = varied or any(v != first for v in here)
    if first is None:
        return "unmeasured", None
    if not varied:
        return "constant", first
    return ("sparse", None) if steps < 2 else ("varied", None)


def series(records: Sequence[dict], family: str, n: int) -> tuple[list[list], list[list]]:
    """Per module/layer: the logged steps with a value of ``family`` (positive where it is charted on a log scale)
    and the values (log10 there), over at most :data:`MAX_CHART_ROWS` points in all (evenly thinned steps, the last
    kept)."""
    log, module = BY_NAME[family].log10, is_module_family(family)
    recs = [r for r in records if r.get(family) is not None]
    k = max(1, math.ceil(len(recs) * n / MAX_CHART_ROWS))
    if k > 1:
        recs = recs[::-1][::k][::-1]  # keeps the last step
    xs: list[list] = [[] for _ in range(n)]
    ys: list[list] = [[] for _ in range(n)]
    for rec in recs:
        step = int(rec["step"])
        has = rec.get("has_grad") if module else None
        for i, v in enumerate(rec[family][:n]):
            if v is None or (has is not None and not has[i]) or (log and v <= 0):
                continue
            xs[i].append(step)
            ys[i].append(math.log10(v) if log else v)
    return xs, ys


def line_charts(records: Sequence[dict], header: dict) -> dict[str, dict]:
    """``gradmon/layers/<family>`` -> the arguments of ``wandb.plot.line_series`` (``xs``, ``ys``, ``keys``,
    ``title``): every layer (module) with a value a line over the steps where it was measured, in depth order;
    families that are constant, unmeasured or sampled at fewer than 2 steps over the run are left out."""
    unit = header.get("granularity") or "layer"  # a module family per layer, module or param
    modules, layers = list(header["modules"]), list(header.get("layers") or [])
    out = {}
    for family in CHART_FAMILIES:
        if family_state(records, family)[0] != "varied":
            continue
        names = modules if is_module_family(family) else layers
        xs, ys = series(records, family, len(names))
        keep = [i for i, x in enumerate(xs) if x]
        if keep:
            out[f"gradmon/layers/{family}"] = {"xs": [xs[i] for i in keep], "ys": [ys[i] for i in keep],
                                               "keys": [names[i] for i in keep], "title": chart_title(family, unit)}
    return out


def profile_rows(records: Sequence[dict], header: dict, epoch: int) -> list[list]:
    """The rows (:data:`PROFILE_COLUMNS`) of ``gradmon/depth_profile``: flow relative to the head by layer over the
    epoch's logged steps; ``[]`` without a flow value in the epoch."""
    recs = [r for r in records if r.get("epoch") == epoch and r.get("flow_attenuation") is not None]
    rows = [[int(epoch), p["index"], p["layer"], p["median"], p["min"], p["max"],
             math.log10(p["median"]) if p["median"] else None, p["n"]] for p in layer_profile(recs, header)]
    return rows if any(r[3] is not None for r in rows) else []


def flag_rows(flags: Sequence[dict]) -> list[list]:
    """The rows (:data:`FLAG_COLUMNS`) of the ``gradmon/flags`` table (``flags``: ``Flag.to_dict()`` rows)."""
    return [[f["kind"], f["module"], int(f["first_step"]), int(f["last_step"]), bool(f.get("active", True)),
             dumps(f.get("evidence") or {})] for f in flags]


def alert_text(flag: Flag) -> str:
    """The text of a W&B alert for a new flag."""
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in flag.evidence.items()]
    what = {
        "nonfinite": "non-finite (NaN/Inf) gradient values",
        "exploding": "gradient norm far above its running median",
        "vanishing": "gradient flow relative to the head (or grad/weight) far below its healthy range",
    }.get(flag.kind, flag.kind)
    return (f"Layer {flag.module}: {what} at optimizer step {flag.first_step}. " + ", ".join(parts)
            + ". Further steps of this flag are in the run's gradmon/flags table and the local summary.json.")


# ---------------------------------------------------------------------------------------------- the run summary
def summary_fields(summary: dict, alerts_sent: int, records: Sequence[dict] = ()) -> dict:
    """The W&B run summary: counts, the verdict and the run-level numbers of ``summary.json``, each key naming its
    statistic (``_median`` over the run's logged steps, ``_mode`` the most frequent)."""
    flags = summary.get("flags") or []
    flagged = list(summary.get("flagged_modules") or [])
    out: dict[str, Any] = {
        "gradmon/steps_logged": int(summary.get("steps_logged") or 0),
        "gradmon/flagged_modules": len(flagged),
        "gradmon/flagged_module_names": ", ".join(flagged),
        "gradmon/n_flags": len(flags),
        "gradmon/alerts_sent": int(alerts_sent),
        "gradmon/complete": bool(summary.get("complete")),
    }
    if summary.get("verdict") is not None:
        out["gradmon/verdict"] = str(summary["verdict"])
    lead = summary.get("lead") or []
    if lead:
        out["gradmon/lead"] = str(lead[0])  # the report's first line: the non-finite event first
    out["gradmon/frozen_modules"] = ", ".join(summary.get("frozen_modules") or [])  # frozen, not judged
    event = summary.get("nonfinite_event") or {}
    if event:
        out["gradmon/nonfinite_origin"] = str(event.get("origin") or event.get("direction") or "")
    for kind in KINDS:
        out[f"gradmon/n_{kind}"] = sum(1 for f in flags if f.get("kind") == kind)
    low = summary.get("lowest_grad_to_weight") or {}
    if low:
        out["gradmon/lowest_grad_to_weight_module"] = low["module"]
        out["gradmon/lowest_grad_to_weight_median"] = float(low["median"])
        out["gradmon/lowest_grad_to_weight_vs_median_module"] = float(low["vs_median_module"])
    if summary.get("grad_norm_range_decades") is not None:
        out["gradmon/grad_norm_range_decades"] = float(summary["grad_norm_range_decades"])
    depth = summary.get("depth") or {}  # run_depth: medians over the run's logged steps, for the runs table
    for key, field in DEPTH_KEYS.items():
        if depth.get(field) is not None:
            out[f"gradmon/{key.rsplit('/', 1)[-1]}_median"] = float(depth[field])
    if depth.get("weakest_layer") is not None:
        out["gradmon/weakest_flow_layer_mode"] = str(depth["weakest_layer"])
    if records:
        states = {f: family_state(records, f) for f in FAMILIES if any(r.get(f) is not None for r in records)}
        out["gradmon/constant_families"] = ", ".join(f"{f}={v:g}" for f, (s, v) in states.items() if s == "constant")
        out["gradmon/unmeasured_families"] = ", ".join(f for f, (s, _) in states.items() if s == "unmeasured")
        out["gradmon/sparse_families"] = ", ".join(f for f, (s, _) in states.items() if s == "sparse")
    return out


__all__ = ["CHART_FAMILIES", "DEPTH_KEYS", "FLAG_COLUMNS", "LayerScalars", "MAX_CHART_ROWS", "PROFILE_COLUMNS",
           "STEP_KEY", "WEAKEST_LAYER_KEY", "alert_text", "family_state", "flag_rows", "line_charts",
           "profile_rows", "series", "step_row", "summary_fields"]
