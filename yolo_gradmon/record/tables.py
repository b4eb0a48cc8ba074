"""The tables derived from the log, as polars frames: per module (``gradients.parquet``), per top-level layer
(``layers.parquet``) and per step (``steps.parquet``), and the per-module / per-layer medians of ``summary.json``.

Their columns are the fields of :mod:`yolo_gradmon.fields`; records are plain (lists, ``None`` for non-finite), so a
live record and the same record read back from the log give the same rows.
"""

from __future__ import annotations

import polars as pl

from ..fields import BY_NAME, LAYER_FIELDS, MODULE_FIELDS, STEP_FIELDS

LAYERS_PARQUET_NAME = "layers.parquet"
PARQUET_NAME = "gradients.parquet"
STEPS_PARQUET_NAME = "steps.parquet"
_POLARS = {"float": pl.Float64, "int": pl.Int64, "bool": pl.Boolean}


def _dtype(name: str):
    return _POLARS[BY_NAME[name].kind]


def module_frame(records: list[dict], modules: list[str], layer_index: list[int] | None = None) -> pl.DataFrame:
    """Long format of ``step`` records: one row per (step, module that received a gradient).

    With ``layer_index`` (the header's: each module's top-level layer), the per-layer fields are added too,
    each module carrying its layer's value (null where the log has none).
    """
    extra = LAYER_FIELDS if layer_index is not None else ()
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "module", *MODULE_FIELDS, *extra)}
    for rec in records:
        has = rec.get("has_grad")
        for i, name in enumerate(modules):
            if has is not None and not has[i]:
                continue
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["module"].append(name)
            for c in MODULE_FIELDS:
                cols[c].append(rec[c][i])
            for c in extra:
                arr, li = rec.get(c), layer_index[i]
                cols[c].append(arr[li] if arr is not None and 0 <= li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "module": pl.Utf8}
    schema.update({c: _dtype(c) for c in (*MODULE_FIELDS, *extra)})
    return pl.DataFrame(cols, schema=schema)


def layer_frame(records: list[dict], layers: list[str]) -> pl.DataFrame:
    """The depth signals of ``step`` records: one row per (step, top-level layer), for records that carry them.

    Columns: ``step, epoch, layer, flow_backwards`` and the per-layer fields (null where not measured).
    """
    cols: dict[str, list] = {k: [] for k in ("step", "epoch", "layer", "flow_backwards", *LAYER_FIELDS)}
    for rec in records:
        if not any(rec.get(c) is not None for c in LAYER_FIELDS):
            continue
        for li, name in enumerate(layers):
            cols["step"].append(rec["step"])
            cols["epoch"].append(rec["epoch"])
            cols["layer"].append(name)
            cols["flow_backwards"].append(rec.get("flow_backwards"))
            for c in LAYER_FIELDS:
                arr = rec.get(c)
                cols[c].append(arr[li] if arr is not None and li < len(arr) else None)
    schema = {"step": pl.Int64, "epoch": pl.Int64, "layer": pl.Utf8, "flow_backwards": pl.Int64}
    schema.update({c: _dtype(c) for c in LAYER_FIELDS})
    return pl.DataFrame(cols, schema=schema)


def step_frame(records: list[dict]) -> pl.DataFrame:
    """Whole-model columns of ``step`` records: one row per logged step (``lr``: the first param group's)."""
    names = [n for n in STEP_FIELDS if n != "flow_backwards"]
    schema = {n: _dtype(n) for n in names}
    rows = [{**{k: r.get(k) for k in names}, "lr": (r.get("lr") or [None])[0]} for r in records]
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


def layer_table(frame: pl.DataFrame, layers: list[str]) -> list[dict]:
    """Per top-level layer: gradient-flow and activation-health medians/extremes over the logged steps (``frame``:
    :func:`layer_frame`)."""
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
