"""Figures of a run's gradient log (PNG files), shared by the run report, the W&B sink and the ablation comparison.

- :func:`heatmap_png`: module x logged step, colour = log10 of a column (parameter-gradient norm by default).
- :func:`curves_png`: one line per module over the logged steps (log y), coloured by depth; with more than
  50 modules, one line per top-level layer (:func:`pool_layers`).
- depth charts (median per layer, several runs overlaid; flow and activation health by layer): :mod:`.depth_figures`.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects with the Agg canvas: pyplot is never
imported, so no global figure state is created or leaked and the caller's backend is left alone.

Cell colours in the heatmap: a viridis value of log10(value); **grey** where a module has no value at that
step (no gradient reached it, or the column was not recorded); **red** where the gradient was non-finite
(NaN/Inf; the log stores those as ``null`` with a ``nonfinite`` count); **white** where the value is exactly
zero (or negative), which log10 cannot show. Steps with any non-finite gradient get a red marker above the map.
Rows (and the curves' colour bar) run from the input at the top to the head at the bottom.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..fields import BY_NAME

HEATMAP_NAME = "heatmap.png"
CURVES_NAME = "curves.png"

# cell categories of the heatmap
_MISSING, _VALUE, _NONFINITE, _ZERO = 0, 1, 2, 3
_MISSING_RGBA = (0.66, 0.66, 0.66, 1.0)  # grey
NONFINITE_RGBA = (0.89, 0.10, 0.11, 1.0)  # red: not in viridis
_ZERO_RGBA = (1.0, 1.0, 1.0, 1.0)  # white: not in viridis
_MAX_COLS = 1000  # more logged steps than this are binned (median per bin; non-finite wins)
_MAX_CURVE_POINTS = 1500
_LABEL_EVERY_ROW = 50  # up to this many modules every row is labelled; beyond, one label per top-level layer
_DPI = 110
_LAYER_RE = re.compile(r"^(\d+\.[^.]+)")

def column_label(column: str) -> str:
    """Human label of a log column (``grad_norm`` → ``‖grad‖``), from :mod:`yolo_gradmon.fields`."""
    field = BY_NAME.get(column)
    return field.label if field is not None and field.label else column


# ---------------------------------------------------------------------------------------------- helpers
def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=_DPI, facecolor="white")
    finally:
        fig.clear()  # no pyplot: nothing else holds the figure
    return path


def empty_png(path: str | Path, title: str, message: str) -> Path:
    fig = new_figure(8, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.35")
    return save_figure(fig, path)


def layer_of(name: str) -> str:
    """``"02.C3k2.m.0.cv1.conv.weight"`` → ``"02.C3k2"`` (the top-level layer key); other names unchanged."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else name


def _prefix(name: str, level: int) -> str:
    """The first ``level`` dot-separated parts of ``name`` (the layer key ``"02.C3k2"`` is level 2)."""
    return ".".join(name.split(".")[:level])


def _runs(modules: Sequence[str], first: int, last: int, level: int) -> list[tuple[str, int, int]]:
    """Contiguous runs of equal ``_prefix(level)`` among ``modules[first:last + 1]``: (prefix, first, last)."""
    out: list[tuple[str, int, int]] = []
    for i in range(first, last + 1):
        p = _prefix(modules[i], level)
        if out and out[-1][0] == p:
            out[-1] = (p, out[-1][1], i)
        else:
            out.append((p, i, i))
    return out


def _row_labels(modules: Sequence[str], axis_inches: float, fontsize: float = 7.0) -> tuple[list[float], list[str], list[int]]:
    """Tick positions and labels for ``modules`` in depth order, plus the rows where a new top-level layer starts.

    Up to 50 modules every row is labelled with its full name. Beyond that (``module``/``param`` granularity)
    rows are labelled per top-level layer (``"02.C3k2"``) at the centre of its rows; a layer tall enough for
    more labels is labelled by its sub-modules instead (``"23.Detect.cv2"``). Labels closer than a line of
    text are dropped, so none overlap.
    """
    n = len(modules)
    if n <= _LABEL_EVERY_ROW:
        return list(range(n)), list(modules), []
    base = 2 if all(re.match(r"^\d+\.", m) for m in modules) else 1
    rows_per_pt = n / max(axis_inches * 72.0, 1.0)
    min_gap = fontsize * 1.25 * rows_per_pt  # rows one label needs
    found: list[tuple[float, str]] = []

    def visit(first: int, last: int, level: int) -> None:
        for prefix, a, b in _runs(modules, first, last, level):
            deeper = level < base + 3 and b - a + 1 >= 4 * min_gap and len(_runs(modules, a, b, level + 1)) > 1
            if deeper:
                visit(a, b, level + 1)
            else:
                found.append(((a + b) / 2, prefix))

    visit(0, n - 1, base)
    positions: list[float] = []
    labels: list[str] = []
    for pos, lab in found:
        if not positions or pos - positions[-1] >= min_gap:
            positions.append(pos)
            labels.append(lab)
    starts = [a for _, a, _ in _runs(modules, 0, n - 1, base)[1:]] if base == 2 else []
    return positions, labels, starts


def _flagged_label(label: str, flagged: set[str]) -> bool:
    return label in flagged or any(m.startswith(label + ".") for m in flagged)


def _label_fontsize(n_labels: int, axis_inches: float) -> float:
    if n_labels <= 0:
        return 8.0
    per_label_pt = axis_inches * 72 / n_labels
    return float(np.clip(per_label_pt * 0.72, 4.0, 9.0))


def module_order(frame: pl.DataFrame, modules: Sequence[str] | None) -> list[str]:
    if modules is not None:
        return list(modules)
    return list(dict.fromkeys(frame["module"].to_list())) if frame.height else []


def _grid(frame: pl.DataFrame, modules: Sequence[str], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, epochs, values[module, step], category[module, step]) from a long frame.

    Rows of the frame for modules not in ``modules`` are ignored.
    """
    index = {m: i for i, m in enumerate(modules)}
    if frame.height == 0 or not index:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((len(modules), 0)),
                np.zeros((len(modules), 0), np.int8))
    if column not in frame.columns:
        raise ValueError(f"column {column!r} not in the frame (columns: {', '.join(frame.columns)})")
    sub = frame.filter(pl.col("module").is_in(list(index)))
    steps_all = sub["step"].to_numpy()
    steps = np.unique(steps_all)
    epochs = np.zeros(len(steps), dtype=np.int64)
    if "epoch" in sub.columns and sub.height:
        ep = sub.group_by("step").agg(pl.col("epoch").max()).sort("step")
        epochs = ep["epoch"].fill_null(0).to_numpy().astype(np.int64)
    rows = sub["module"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    cols = np.searchsorted(steps, steps_all)
    vals = sub[column].cast(pl.Float64).fill_nan(None).to_numpy().astype(float)  # null → nan
    if "nonfinite" in sub.columns:
        nonfin = sub["nonfinite"].fill_null(0).to_numpy() > 0
    else:
        nonfin = np.zeros(sub.height, dtype=bool)
    if column in ("grad_norm", "max_abs_grad"):
        nonfin |= ~np.isfinite(vals)  # a gradient norm is null only when it was NaN/Inf
    values = np.full((len(modules), len(steps)), np.nan)
    cat = np.full((len(modules), len(steps)), _MISSING, dtype=np.int8)
    finite = np.isfinite(vals)
    c = np.where(nonfin, _NONFINITE, np.where(~finite, _MISSING, np.where(vals > 0, _VALUE, _ZERO)))
    values[rows, cols] = np.where(finite & (vals > 0), vals, np.nan)
    cat[rows, cols] = c
    return steps, epochs, values, cat


def _bin_columns(values: np.ndarray, cat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge every ``k`` consecutive steps: median of the log values; non-finite > value > zero > missing."""
    n_rows, n_cols = values.shape
    n_bins = math.ceil(n_cols / k)
    pad = n_bins * k - n_cols
    v = np.pad(np.log10(values), ((0, 0), (0, pad)), constant_values=np.nan).reshape(n_rows, n_bins, k)
    c = np.pad(cat, ((0, 0), (0, pad)), constant_values=_MISSING).reshape(n_rows, n_bins, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(v, axis=2)
    out = np.full((n_rows, n_bins), _MISSING, dtype=np.int8)
    out[(c == _ZERO).any(axis=2)] = _ZERO
    out[(c == _VALUE).any(axis=2)] = _VALUE
    out[(c == _NONFINITE).any(axis=2)] = _NONFINITE
    return 10.0**med, out


def _value_norm(logv: np.ndarray) -> tuple[Normalize, str]:
    """Colour range of the log values and the colour bar's ``extend``.

    The full range when it spans at most 6 decades; beyond, the 1st–99.9th percentile, so one outlier cell
    does not wash out the map (clipped cells take the end colours; the colour bar shows arrows).
    """
    finite = logv[np.isfinite(logv)]
    if finite.size == 0:
        return Normalize(-1.0, 1.0), "neither"
    lo, hi = float(finite.min()), float(finite.max())
    extend = "neither"
    if hi - lo > 6.0:
        plo, phi = (float(v) for v in np.percentile(finite, [1.0, 99.9]))
        if plo > lo:
            lo, extend = plo, "min"
        if phi < hi:
            hi, extend = phi, ("both" if extend == "min" else "max")
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi), extend


def _extend_of(logv: np.ndarray, norm: Normalize) -> str:
    finite = logv[np.isfinite(logv)]
    low, high = bool((finite < norm.vmin).any()), bool((finite > norm.vmax).any())
    return "both" if low and high else "min" if low else "max" if high else "neither"


def shared_norm(frames: Iterable[pl.DataFrame], column: str = "grad_norm") -> tuple[Normalize, str]:
    """One colour range of log10(``column``) over several long frames (the heatmaps of an ablation), chosen as
    :func:`heatmap_png` chooses one map's, and the colour bar's ``extend``."""
    parts = []
    for f in frames:
        if column in f.columns and f.height:
            v = f[column].cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
            v = v[np.isfinite(v) & (v > 0)]
            parts.append(np.log10(v))
    return _value_norm(np.concatenate(parts) if parts else np.zeros(0))


def colorbar_png(path: str | Path, norm: Normalize, label: str, extend: str = "neither", cmap: str = "viridis",
                 title: str | None = None) -> Path:
    """A standalone horizontal colour bar (one for several maps drawn with ``colorbar=False``)."""
    fig = new_figure(6.5, 0.95 if title is None else 1.2)
    ax = fig.add_subplot()
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=matplotlib.colormaps[cmap]), cax=ax, orientation="horizontal",
                        extend=extend)
    cbar.set_label(label)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def shared_ylim(frames: Iterable[pl.DataFrame], column: str = "grad_norm") -> tuple[float, float] | None:
    """One log-scale y range covering ``column`` in several frames (per-variant curves drawn alike)."""
    lo, hi = math.inf, -math.inf
    for f in frames:
        if column in f.columns and f.height:
            v = f[column].cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
            v = v[np.isfinite(v) & (v > 0)]
            if v.size:
                lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not math.isfinite(lo):
        return None
    return lo / 1.5, hi * 1.5


def _step_formatter(steps: np.ndarray, per_col: int) -> FuncFormatter:
    def fmt(x, _pos):
        j = int(round(x))
        if 0 <= j * per_col < len(steps):
            return str(int(steps[j * per_col]))
        return ""

    return FuncFormatter(fmt)


def _epoch_starts(epochs: np.ndarray) -> list[int]:
    """Column indices (in steps) where a new epoch begins."""
    if epochs.size < 2:
        return []
    return [int(i) for i in np.flatnonzero(np.diff(epochs) != 0) + 1]


# ---------------------------------------------------------------------------------------------- figures
def heatmap_png(
    frame: pl.DataFrame,
    modules: list[str],
    path: str | Path,
    column: str = "grad_norm",
    title: str | None = None,
    flagged: Iterable[str] = (),
    norm: Normalize | None = None,
    colorbar: bool = True,
) -> Path:
    """Draw the heatmap of ``column`` (module x logged step) and save it as a PNG.

    Rows are ``modules`` in depth order, the input layer at the top and the head at the bottom; columns are
    the logged optimizer steps (more than 1000 steps are binned: the median per bin, a non-finite step always
    stays visible). Colour is log10 of the value over its full range up to 6 decades; beyond, over the
    1st–99.9th percentile (the colour bar then shows arrows). Grey cells have no value (no gradient reached
    the module, or the column was not recorded), red cells had a non-finite gradient (the step is also marked
    by a red triangle above the map), white cells are exactly zero; the legend lists the kinds present.
    Dashed lines mark epoch starts when they are at least ~4 columns apart. With more than 50 modules
    (``module``/``param`` granularity) rows are labelled per top-level layer (or sub-module, where a layer
    has room), non-overlapping, with thin lines between layers.

    Args:
        frame: long format, one row per (step, module) as :func:`yolo_gradmon.record.tables.module_frame` returns
            (columns ``step``, ``module``, ``column`` and optionally ``epoch`` and ``nonfinite``).
        modules: module names in depth order (``header["modules"]``); ``None`` uses the frame's order.
        path: the PNG file to write.
        column: the value column to show (``grad_norm``, ``grad_to_weight``, ``update_to_weight``, ...).
        title: figure title; a default names the column.
        flagged: modules whose row labels are drawn in red (e.g. ``summary["flagged_modules"]``).
        norm: the colour range of log10(value), shared by several maps (:func:`shared_norm`); ``None`` fits
            this map's own values. Cells outside a shared range take the end colours.
        colorbar: draw the colour bar; ``False`` for maps shown beside one :func:`colorbar_png`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    modules = module_order(frame, modules)
    label = column_label(column)
    title = title if title is not None else f"{label} per module and logged step"
    steps, epochs, values, cat = _grid(frame, modules, column)
    if steps.size == 0 or not modules:
        return empty_png(path, title, "no logged optimizer steps yet")
    per_col = max(1, math.ceil(steps.size / _MAX_COLS))
    if per_col > 1:
        values, cat = _bin_columns(values, cat, per_col)
    n_rows, n_cols = values.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.log10(values)
    if norm is None:
        norm, extend = _value_norm(logv)
    else:
        extend = _extend_of(logv, norm)
    cmap = matplotlib.colormaps["viridis"]
    rgba = cmap(norm(np.nan_to_num(logv, nan=norm.vmin)).clip(0.0, 1.0))
    rgba[cat == _MISSING] = _MISSING_RGBA
    rgba[cat == _ZERO] = _ZERO_RGBA
    rgba[cat == _NONFINITE] = NONFINITE_RGBA

    height = float(np.clip(1.9 + 0.2 * n_rows, 3.4, 13.0)) if n_rows <= _LABEL_EVERY_ROW else 13.0
    axis_inches = height - 1.6
    grouped = n_rows > _LABEL_EVERY_ROW
    fs = 7.0 if grouped else _label_fontsize(n_rows, axis_inches)
    positions, labels, layer_starts = _row_labels(modules, axis_inches, fs)
    max_label = max((len(s) for s in labels), default=4)
    width = float(np.clip(8.5 + 0.055 * max_label, 9.0, 13.0))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    ax.imshow(rgba, aspect="auto", interpolation="nearest", origin="upper",
              extent=(-0.5, n_cols - 0.5, n_rows - 0.5, -0.5))
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=fs, fontfamily="monospace")
    flagged = set(flagged)
    for tick, text in zip(ax.get_yticklabels(), labels):
        if flagged and _flagged_label(text, flagged):
            tick.set_color(NONFINITE_RGBA)
            tick.set_fontweight("bold")
    if grouped:
        ax.tick_params(axis="y", length=2, width=0.5)
        for r in layer_starts if len(layer_starts) <= 60 else ():  # more would hide the cells
            ax.axhline(r - 0.5, color="black", lw=0.5, alpha=0.55)
    ax.set_ylabel("module in depth order\ninput (top) → head (bottom)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, min_n_ticks=1))
    ax.xaxis.set_major_formatter(_step_formatter(steps, per_col))
    xlabel = "logged optimizer step"
    if per_col > 1:
        xlabel += f" ({per_col} logged steps per column: median; non-finite shown if any)"
    ax.set_xlabel(xlabel)
    starts = _epoch_starts(epochs)
    show_epochs = 0 < len(starts) and n_cols / (len(starts) + 1) >= 4  # lines at least ~4 columns apart
    if show_epochs:
        for s in starts:
            ax.axvline(s / per_col - 0.5, color="black", lw=0.7, ls=(0, (4, 3)), alpha=0.45)
    bad_cols = np.flatnonzero((cat == _NONFINITE).any(axis=0))
    if bad_cols.size:
        ax.plot(bad_cols, np.full(bad_cols.size, 1.0), transform=ax.get_xaxis_transform(), ls="none",
                marker="v", ms=6, color=NONFINITE_RGBA, clip_on=False)
    if not (cat == _VALUE).any():
        ax.text(0.5, 0.5, f"no finite positive {label} values", transform=ax.transAxes, ha="center", va="center",
                fontsize=11, bbox={"facecolor": "white", "edgecolor": "0.6"})
    ax.set_title(title, fontsize=11, pad=12 if bad_cols.size else 6)
    if colorbar:
        sm = ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.01, aspect=30, extend=extend)
        cbar.set_label(f"log10 {label}")
    handles = [  # only what the map shows
        Patch(facecolor=rgba_, edgecolor="0.4", lw=0.5, label=text)
        for kind, rgba_, text in (
            (_MISSING, _MISSING_RGBA, "no value (no gradient)"),
            (_ZERO, _ZERO_RGBA, "zero"),
            (_NONFINITE, NONFINITE_RGBA, "non-finite (NaN/Inf), ▼ = step"),
        )
        if (cat == kind).any()
    ]
    if show_epochs:
        handles.append(Line2D([], [], color="black", lw=0.8, ls=(0, (4, 3)), alpha=0.6, label="epoch start"))
    if handles:
        fig.legend(handles=handles, loc="outside lower right", ncols=len(handles), fontsize=8, frameon=False)
    return save_figure(fig, path)


def _depth_colours(n: int):
    # turbo tells ~25 neighbouring depths apart better than viridis; its darkest ends are trimmed
    cmap = ListedColormap(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, max(n, 1))))
    return cmap, BoundaryNorm(np.arange(-0.5, max(n, 1) + 0.5), cmap.N)


def pool_layers(frame: pl.DataFrame, modules: Sequence[str]) -> tuple[pl.DataFrame, list[str]]:
    """Pool a ``module``/``param``-granularity frame into top-level layers (``"02.C3k2"``).

    ``grad_norm`` and ``weight_norm`` combine exactly (square root of the sum of squares: the layer's own
    L2 norm), ``grad_to_weight`` is the ratio of those (with each module's last measured weight norm: it is sampled), ``max_abs_grad`` the max, ``nonfinite`` the sum and
    ``update_to_weight`` the median over the layer's modules. A non-finite module makes its layer's norms
    non-finite (null). Returns the pooled long frame and the layer keys in depth order.
    """
    layers = list(dict.fromkeys(layer_of(m) for m in modules))
    if frame.height == 0:
        return frame, layers
    f = frame.filter(pl.col("module").is_in(list(modules)))
    if "weight_norm" in f.columns:  # sampled (update_every): grad/weight uses the last measured weight norm
        f = f.sort("step").with_columns(pl.col("weight_norm").forward_fill().over("module").alias("_w_used"))
    f = f.with_columns(pl.col("module").str.extract(_LAYER_RE.pattern, 1).fill_null(pl.col("module")).alias("module"))

    def l2(c: str) -> pl.Expr:
        return pl.when(pl.col(c).is_null().any()).then(None).otherwise((pl.col(c) ** 2).sum().sqrt()).alias(c)

    aggs = [pl.col("epoch").max()] if "epoch" in f.columns else []
    for c in f.columns:
        if c in ("step", "epoch", "module"):
            continue
        if c in ("grad_norm", "weight_norm", "_w_used"):
            aggs.append(l2(c))
        elif c == "max_abs_grad":
            aggs.append(pl.col(c).max())
        elif c == "nonfinite":
            aggs.append(pl.col(c).sum())
        elif c != "grad_to_weight":
            aggs.append(pl.col(c).median())
    pooled = f.group_by("step", "module").agg(aggs)
    if {"grad_norm", "_w_used", "grad_to_weight"} <= set(f.columns):
        pooled = pooled.with_columns(
            pl.when(pl.col("_w_used") > 0).then(pl.col("grad_norm") / pl.col("_w_used")).alias("grad_to_weight")
        )
    return pooled.drop("_w_used", strict=False).sort("step"), layers


def _auto_pool(modules: Sequence[str]) -> bool:
    """Whether :func:`curves_png` pools by default: more than 50 modules that carry a layer index."""
    return len(modules) > _LABEL_EVERY_ROW and all(re.match(r"^\d+\.", m) for m in modules)


def curves_title(modules: Sequence[str], what: str) -> str:
    return f"Parameter-gradient norm ‖grad‖ per {'layer' if _auto_pool(modules) else 'module'} over training — {what}"


def curves_png(
    frame: pl.DataFrame,
    modules: list[str],
    path: str | Path,
    column: str = "grad_norm",
    title: str | None = None,
    pool: bool | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Draw one line per module of ``column`` over the logged steps (log y axis) and save it as a PNG.

    Lines are coloured by depth (blue = input, red = head) with a colour bar that names the modules. Gaps
    are steps without a finite positive value; steps with a non-finite gradient are marked by black crosses
    at the top. More than 1500 logged steps are binned (median per bin).

    Args:
        frame: long format as :func:`yolo_gradmon.record.tables.module_frame` returns.
        modules: module names in depth order; ``None`` uses the frame's order.
        path: the PNG file to write.
        column: the value column to plot.
        title: figure title; a default names the column.
        pool: draw one line per top-level layer (see :func:`pool_layers`) instead of one per module.
            ``None`` (default) pools when there are more than 50 modules whose names carry the layer index
            (``module``/``param`` granularity), which keeps ~25 readable lines.
        ylim: the y range (log scale), shared by several runs' curves (:func:`shared_ylim`); ``None`` fits.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    modules = module_order(frame, modules)
    label = column_label(column)
    if pool is None:
        pool = _auto_pool(modules)
    pooled_note = ""
    if pool:
        frame, pooled_mods = pool_layers(frame, modules)
        if len(pooled_mods) < len(modules):
            pooled_note = " (modules pooled per layer)"
        modules = pooled_mods
    title = title if title is not None else f"{label} per {'layer' if pool else 'module'} over training"
    steps, _epochs, values, cat = _grid(frame, modules, column)
    if steps.size == 0 or not modules or not np.isfinite(values).any():
        msg = "no logged optimizer steps yet" if steps.size == 0 else f"no finite positive {label} values"
        return empty_png(path, title, msg)
    per = max(1, math.ceil(steps.size / _MAX_CURVE_POINTS))
    x = steps.astype(float)
    if per > 1:
        values, cat = _bin_columns(values, cat, per)
        x = steps[::per].astype(float)
    n = len(modules)
    cmap, norm = _depth_colours(n)
    fig = new_figure(11.0, 6.0 if n <= _LABEL_EVERY_ROW else 7.0)
    ax = fig.add_subplot()
    lw = 1.3 if n <= 30 else (0.9 if n <= 100 else 0.6)
    alpha = 0.9 if n <= 30 else 0.6
    marker = "o" if x.size <= 2 or (x.size <= 30 and n <= 30) else None
    for i in range(n):
        y = values[i]
        if not np.isfinite(y).any():
            continue
        ax.plot(x, y, color=cmap(i), lw=lw, alpha=alpha, marker=marker, ms=(5 if x.size == 1 else 3) if marker else 0)
    ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    bad = np.flatnonzero((cat == _NONFINITE).any(axis=0))
    if bad.size:
        ax.plot(x[bad], np.full(bad.size, 1.0), transform=ax.get_xaxis_transform(), ls="none", marker="x",
                ms=6, mew=1.5, color="black", clip_on=False, label="non-finite gradient")
        ax.legend(loc="upper right", fontsize=8)
    if x.size == 1:
        ax.set_xlim(x[0] - 1, x[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.set_xlabel("logged optimizer step" + (f" ({per} steps per point: median)" if per > 1 else ""))
    ax.set_ylabel(f"{label}{pooled_note} (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=11, pad=12 if bad.size else 6)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.01, aspect=40)
    cbar_inches = (6.0 if n <= _LABEL_EVERY_ROW else 7.0) - 1.3
    fs = _label_fontsize(n, cbar_inches) if n <= _LABEL_EVERY_ROW else 7.0
    positions, labels, _ = _row_labels(modules, cbar_inches, fs)
    cbar.set_ticks(positions)
    cbar.set_ticklabels(labels)
    cbar.ax.tick_params(labelsize=fs, length=2)
    cbar.ax.minorticks_off()
    for t in cbar.ax.get_yticklabels():
        t.set_fontfamily("monospace")
    cbar.ax.invert_yaxis()  # input at the top, like the heatmap
    cbar.set_label("depth: input (top) → head (bottom)")
    return save_figure(fig, path)


def run_label(info: Mapping) -> str:
    model = info.get("model") or "model"
    gran = info.get("granularity")
    return f"{Path(str(model)).name}" + (f", {gran} granularity" if gran else "")
