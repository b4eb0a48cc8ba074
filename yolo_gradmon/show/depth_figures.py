"""Figures by depth (PNG files): a column's median per layer for several runs overlaid (the ablation comparison), the
flow relative to the head by layer, and the activation health by layer (the run report). Drawn like every figure of
:mod:`.figures`: bare Agg figures, no pyplot.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import polars as pl
from matplotlib.ticker import FuncFormatter

from .figures import NONFINITE_RGBA, column_label, empty_png, layer_of, module_order, new_figure, save_figure


def _profile(frame: pl.DataFrame, modules: Sequence[str], column: str) -> tuple[list[float], list[str], np.ndarray]:
    """(x, tick labels, [median, q25, q75] per x) of one run.

    x is the top-level layer index when every module name starts with one (``"02.C3k2..."``): modules of a
    layer are pooled, so runs at different granularities or with swapped blocks line up by depth.
    Otherwise x is the module's position in ``modules``.
    """
    modules = list(modules)
    layered = bool(modules) and all(re.match(r"^\d+\.", m) for m in modules)
    key = {m: (int(m.split(".", 1)[0]) if layered else i) for i, m in enumerate(modules)}
    names: dict[float, str] = {}
    for m in modules:
        names.setdefault(key[m], layer_of(m) if layered else m)
    sub = frame.filter(pl.col("module").is_in(modules)).select("module", pl.col(column).cast(pl.Float64))
    sub = sub.filter(pl.col(column).is_finite() & (pl.col(column) > 0))
    sub = sub.with_columns(pl.col("module").replace_strict(key, return_dtype=pl.Float64).alias("x"))
    agg = (
        sub.group_by("x")
        .agg(
            pl.col(column).median().alias("median"),
            pl.col(column).quantile(0.25).alias("q25"),
            pl.col(column).quantile(0.75).alias("q75"),
        )
        .sort("x")
    )
    xs = agg["x"].to_list()
    stats = agg.select("median", "q25", "q75").to_numpy() if agg.height else np.zeros((0, 3))
    return xs, [names[x] for x in xs], stats


def depth_profile_png(
    runs: Mapping[str, pl.DataFrame] | pl.DataFrame,
    modules: Sequence[str] | Mapping[str, Sequence[str]] | None,
    path: str | Path,
    column: str = "grad_norm",
    title: str | None = None,
    ylabel: str | None = None,
    hlines: Sequence[tuple[float, str]] = (),
) -> Path:
    """Draw the median of ``column`` by depth (one line per run, shaded 25–75 % band) and save it as a PNG.

    Meant for ablations: pass ``{label: frame}`` to overlay several runs on one chart. When module names
    start with the top-level layer index (``"02.C3k2"``, always the case for Ultralytics models), x is that
    index and a layer's modules are pooled, so variants whose layers have other classes or other module
    counts still line up by depth; tick labels show the layer (``"02.C3k2"``, or ``"02.C3k2/A2C2f"`` when
    the runs differ). Otherwise x is the position in the module list.

    Args:
        runs: one long frame (as :func:`yolo_gradmon.record.tables.module_frame` returns) or ``{label: frame}``.
        modules: depth-ordered module names shared by all runs, ``{label: modules}`` per run, or ``None``
            to use each frame's own order.
        path: the PNG file to write.
        column: the value column to profile.
        title: figure title; a default names the column.
        ylabel: y axis label; a default names the column.
        hlines: (y, label) reference lines, e.g. ``(1.0, "head")`` for flow relative to the head.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(runs, pl.DataFrame):
        runs = {"run": runs}
    label = column_label(column)
    title = title if title is not None else f"Median {label} by depth"
    profiles = []
    for name, frame in runs.items():
        mods = modules.get(name) if isinstance(modules, Mapping) else modules
        mods = module_order(frame, mods)
        if frame.height == 0 or not mods or column not in frame.columns:
            continue
        xs, names, stats = _profile(frame, mods, column)
        if xs:
            profiles.append((str(name), xs, names, stats))
    if not profiles:
        return empty_png(path, title, f"no finite positive {label} values")
    ticks: dict[float, list[str]] = {}
    for _, xs, names, _ in profiles:
        for x, nm in zip(xs, names):
            lst = ticks.setdefault(x, [])
            if nm not in lst:
                lst.append(nm)
    n_ticks = len(ticks)
    width = float(np.clip(4 + 0.32 * n_ticks, 8, 16))
    fig = new_figure(width, 5.2)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"] if len(profiles) <= 10 else matplotlib.colormaps["turbo"]
    for k, (name, xs, _, stats) in enumerate(profiles):
        c = colours(k) if len(profiles) <= 10 else colours(k / max(1, len(profiles) - 1))
        ax.plot(xs, stats[:, 0], color=c, lw=1.6, marker="o", ms=3.5, label=name)
        ax.fill_between(xs, stats[:, 1], stats[:, 2], color=c, alpha=0.15, lw=0)
    ax.set_yscale("log")
    xs_sorted = sorted(ticks)
    if n_ticks > 40:
        stride = math.ceil(n_ticks / 40)
        xs_sorted = xs_sorted[::stride]
    ax.set_xticks(xs_sorted)
    ax.set_xticklabels(["/".join(ticks[x]) if len(ticks[x]) <= 2 else ticks[x][0] + "/…" for x in xs_sorted],
                       rotation=60, ha="right", fontsize=7, fontfamily="monospace")
    ax.set_xlabel("depth: input (left) → head (right)")
    ax.set_ylabel(ylabel or f"median {label} over logged steps (log scale)")
    for y, text in hlines:
        ax.axhline(y, color="0.3", lw=0.9, ls=(0, (4, 3)))
        ax.annotate(text, (0.0, y), xycoords=("axes fraction", "data"), xytext=(3, 3), textcoords="offset points",
                    fontsize=7, color="0.3")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, title="25–75 % band shaded", title_fontsize=7)
    return save_figure(fig, path)


def layer_ticks(ax, layers: Sequence[str], flagged: set[str]) -> None:
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7, fontfamily="monospace")
    for tick, name in zip(ax.get_xticklabels(), layers):
        if name in flagged:
            tick.set_color(NONFINITE_RGBA)
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(layers) - 0.4)


def flow_profile_png(
    frame: pl.DataFrame,
    layers: Sequence[str],
    path: str | Path,
    title: str | None = None,
    threshold: float | None = None,
    flagged: Iterable[str] = (),
) -> Path:
    """The flow profile of one run: per top-level layer, the median over logged steps of the flow relative to the
    head (``flow_attenuation`` = ‖dL/d out‖ of the layer / that of the head's output), with its min–max range shaded,
    log y axis; input on the left, head on the right (1 by definition).

    Args:
        frame: the per-layer long frame (:func:`yolo_gradmon.record.tables.layer_frame`: ``step``, ``layer``,
            ``flow_attenuation``).
        layers: every top-level layer in depth order (the header's ``layers``).
        path: the PNG file to write.
        title: figure title.
        threshold: the vanishing rule's ``vanish_flow_attenuation``, drawn as a dashed line.
        flagged: layers whose tick labels are drawn in red.
    """
    title = title or "Flow relative to the head, by layer"
    sub = (frame.filter(pl.col("flow_attenuation").is_not_null() & (pl.col("flow_attenuation") > 0))
           if frame.height and "flow_attenuation" in frame.columns else frame.clear())
    if sub.height == 0:
        return empty_png(path, title, "no gradient flow measured (flow option off, or no logged step yet)")
    agg = {r["layer"]: r for r in sub.group_by("layer").agg(
        pl.col("flow_attenuation").median().alias("med"), pl.col("flow_attenuation").min().alias("lo"),
        pl.col("flow_attenuation").max().alias("hi"), pl.col("step").n_unique().alias("n")).to_dicts()}
    layers = list(layers)
    xs = [i for i, name in enumerate(layers) if name in agg]
    med = np.array([agg[layers[i]]["med"] for i in xs])
    lo = np.array([agg[layers[i]]["lo"] for i in xs])
    hi = np.array([agg[layers[i]]["hi"] for i in xs])
    fig = new_figure(float(np.clip(4 + 0.32 * len(layers), 8, 16)), 4.8)
    ax = fig.add_subplot()
    ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.18, lw=0, label="min–max over logged steps")
    ax.plot(xs, med, color="tab:blue", lw=1.6, marker="o", ms=3.5, label="median over logged steps")
    ax.axhline(1.0, color="0.3", lw=0.9, ls=(0, (4, 3)))
    ax.annotate("head = 1", (0.0, 1.0), xycoords=("axes fraction", "data"), xytext=(3, 3), textcoords="offset points",
                fontsize=7, color="0.3")
    if threshold:
        ax.axhline(threshold, color=NONFINITE_RGBA, lw=0.9, ls=(0, (4, 3)))
        ax.annotate(f"vanishing below {threshold:g}", (0.0, threshold), xycoords=("axes fraction", "data"),
                    xytext=(3, 3), textcoords="offset points", fontsize=7, color=NONFINITE_RGBA)
    ax.set_yscale("log")
    layer_ticks(ax, layers, set(flagged))
    ax.set_xlabel("top-level layer: input (left) → head (right); no point: no flow measured there")
    ax.set_ylabel("‖dL/d out‖ / ‖dL/d out_head‖ (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def health_png(frame: pl.DataFrame, layers: Sequence[str], path: str | Path, title: str | None = None,
               flagged: Iterable[str] = ()) -> Path | None:
    """Activation health per top-level layer: the fraction of saturated units (two-tailed Sigmoid/Tanh-like
    activations) and of dead channels (no gradient over a whole batch, ReLU-like), median over logged steps as bars and the maximum as a tick. ``None`` when the log has no
    activation-health values (option off, or no measurable activation)."""
    title = title or "Activation health by layer: saturated and dead units"
    cols = [c for c in ("act_saturated", "act_dead") if c in frame.columns]
    if not frame.height or not cols:
        return None
    sub = frame.filter(pl.any_horizontal(pl.col(c).is_not_null() for c in cols))
    if sub.height == 0:
        return None
    agg = {r["layer"]: r for r in sub.group_by("layer").agg(
        *[pl.col(c).median().alias(f"{c}_med") for c in cols], *[pl.col(c).max().alias(f"{c}_max") for c in cols]
    ).to_dicts()}
    layers = list(layers)
    fig = new_figure(float(np.clip(4 + 0.32 * len(layers), 8, 16)), 4.2)
    ax = fig.add_subplot()
    style = {"act_saturated": ("tab:orange", "saturated units (Sigmoid/Tanh-like: |f'(x)| < eps)"),
             "act_dead": ("tab:purple", "dead channels (|f'(x)| < eps over a whole batch)")}
    width = 0.8 / len(cols)
    top = 0.0
    for k, c in enumerate(cols):
        xs = [i for i, name in enumerate(layers) if name in agg and agg[name][f"{c}_med"] is not None]
        if not xs:
            continue
        off = (k - (len(cols) - 1) / 2) * width
        colour, text = style[c]
        ax.bar([x + off for x in xs], [agg[layers[x]][f"{c}_med"] for x in xs], width=width, color=colour, alpha=0.8,
               label=f"{text}: median")
        highs = [agg[layers[x]][f"{c}_max"] or 0.0 for x in xs]
        top = max(top, *highs)
        ax.plot([x + off for x in xs], highs, ls="none", marker="_", ms=9, mew=1.6, color=colour,
                label=f"{text.split(' (')[0]}: max over logged steps")
    ax.set_ylim(0, min(1.02, max(0.05, top * 1.25)))
    if top == 0:
        ax.text(0.5, 0.5, "no saturated unit and no dead channel in any measured layer (all 0 %)",
                transform=ax.transAxes, ha="center", va="center", fontsize=10,
                bbox={"facecolor": "white", "edgecolor": "0.6"})
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0%}"))
    layer_ticks(ax, layers, set(flagged))
    ax.set_xlabel("top-level layer: input (left) → head (right); no bar: nothing measured there")
    ax.set_ylabel("fraction of the layer's units")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=7, loc="upper right", ncols=len(cols))
    return save_figure(fig, path)
