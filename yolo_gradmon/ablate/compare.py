"""The comparison of an ablation: its finding, ``ablation.md`` and a self-contained ``ablation.html``.

Both pages are rebuilt from the variants' own ``gradmon/`` logs, read from where the trainer really wrote each one
(the ``gradmon_dir`` recorded in its ``variant.json``), so they can be regenerated at any time. A variant whose log
is missing is named on the page (and by the runner in the console), never skipped in silence.

The page opens with the finding, computed from the logs: the variants ranked by how much gradient reaches the first
layers (the early layers' median flow relative to the head, :func:`yolo_gradmon.record.depth.run_depth`) relative
to the baseline variant (the first ``silu`` variant, else the grid's first), the flagged modules per variant, and a
note where a metric cannot tell the variants apart yet (mAP after a few epochs). Then a short table, the flow
profile of every variant on one chart, the parameter-gradient norms by depth, and the heatmaps on one colour scale.
The HTML uses the run report's building blocks (:mod:`yolo_gradmon.show.html`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import polars as pl

from ..record.depth import early_layers
from ..record.logfile import LOG_NAME, read_log
from ..record.outputs import load_summary, rebuild
from ..record.tables import layer_frame, module_frame
from ..show.depth_figures import depth_profile_png
from ..show.figures import colorbar_png, column_label, curves_png, heatmap_png, shared_norm, shared_ylim
from ..show.html import data_uri, esc, figure, grid as html_grid, num, page, table

HTML_NAME = "ablation.html"
MD_NAME = "ablation.md"
MAP_EPOCHS = 30  # fewer epochs than this on a small dataset: mAP is not expected to separate variants yet


def gradient_columns(summary: dict) -> dict[str, Any]:
    """Per-variant gradient facts from a run's ``summary.json`` (its ``depth`` block: record/depth.run_depth)."""
    stats = summary.get("module_stats") or []
    flags = summary.get("flags") or []
    depth = summary.get("depth") or {}
    med = [s.get("median_grad_norm") for s in stats]
    g2w = [s.get("median_grad_to_weight") for s in stats]
    head = med[-1] if med else None
    first = med[0] if med else None
    return {
        "early_flow": depth.get("early_flow"),  # early layers' median flow relative to the head
        "weakest_layer": depth.get("weakest_layer"),
        "weakest_flow": depth.get("weakest_flow"),
        "early_grad_to_weight": depth.get("early_grad_to_weight"),
        "grad_norm_first_over_head": (first / head) if first and head else None,
        "median_grad_to_weight_first3": [x for x in g2w[:3]],
        "flagged_count": len({f["module"] for f in flags}),
        "flagged_modules": ",".join(sorted({f["module"] for f in flags})),
        "flag_kinds": ",".join(sorted({f["kind"] for f in flags})),
        "steps_logged": summary.get("steps_logged"),
        "too_few_steps": bool(summary.get("too_few_steps")),
        "epochs": summary.get("epochs"),
        "verdict": summary.get("verdict"),
        **noise_columns(summary),
    }


def noise_columns(summary: dict) -> dict[str, Any]:
    """The variant's gradient noise scale (record/noise.noise_summary): ``noise_scale`` (B_simple, images; None when
    only a bound is known) and ``noise_scale_lower95`` (its one-sided 95% lower bound)."""
    s = summary.get("noise_scale") or {}
    f = s.get("final") or {}
    bound = bool(f.get("bound_only")) or s.get("median_last_epoch") is None
    return {"noise_scale": None if bound else s.get("median_last_epoch"),
            "noise_scale_lower95": f.get("lower95") if s.get("measured") else None}


def gradmon_dir_of(row: dict, out_dir: Path) -> Path:
    """Where a variant's gradient log is: the ``gradmon_dir`` its trainer reported, else ``<variant>/gradmon``."""
    for key, sub in (("gradmon_dir", ""), ("save_dir", "gradmon")):
        if row.get(key):
            return Path(row[key]) / sub if sub else Path(row[key])
    return Path(out_dir) / row["variant"] / "gradmon"


@dataclasses.dataclass
class VariantLog:
    name: str
    header: dict
    summary: dict
    frame: pl.DataFrame  # per module (parameter-gradient norms)
    layers: pl.DataFrame  # per top-level layer (flow, activation health); may be empty


@dataclasses.dataclass
class Comparison:
    """What the pages show: the rows (with ``early_flow_vs_baseline``), the variants' logs, the baseline, the
    variants whose log is missing (name -> why) and the finding."""

    out_dir: Path
    grid: Any
    rows: list[dict]
    logs: dict[str, VariantLog]
    baseline: str | None
    missing: dict[str, str]
    early: str = ""  # "00.Conv–05.Conv": the early layers, for the text

    @property
    def html(self) -> Path:
        return self.out_dir / HTML_NAME

    @property
    def md(self) -> Path:
        return self.out_dir / MD_NAME

    # -------------------------------------------------------------------------------- the finding
    def ranked(self) -> list[dict]:
        """Completed rows with an early-layer flow, most gradient reaching the first layers first."""
        rows = [r for r in self.rows if r.get("status") == "done" and r.get("early_flow_vs_baseline") is not None]
        return sorted(rows, key=lambda r: -r["early_flow_vs_baseline"])

    def finding_lines(self) -> list[str]:
        """The finding as plain sentences (printed by the runner; the page shows the same)."""
        if self.rows and not self.done():  # headline: nothing here is a result
            first = self.rows[0]
            cause = " ".join(str(first.get("error") or "unknown error").split())
            return [f"nothing trained: none of the {len(self.rows)} variant(s) completed; the first failure, "
                    f"{first['variant']}: {cause}"]
        lines = []
        ranked = self.ranked()
        if self.baseline and ranked:
            others = [r for r in ranked if r["variant"] != self.baseline]
            parts = [f"{r['variant']} {_x(r['early_flow_vs_baseline'])}" for r in others]
            weakest = min(others, key=lambda r: r["early_flow_vs_baseline"]) if others else None
            if weakest is not None:
                lines.append(f"{weakest['variant']}: first layers receive {_x(weakest['early_flow_vs_baseline'])} "
                             f"the flow of {self.baseline}")
            lines.append(f"flow reaching the first layers ({self.early}) relative to {self.baseline}, ranked: "
                         + (", ".join(parts) if parts else "no other variant"))
        elif self.rows and not ranked:
            lines.append("no variant has a gradient-flow measurement yet (flow option off, or no completed variant)")
        flagged = [r for r in self.rows if r.get("status") == "done" and r.get("flagged_count")]
        if flagged:
            lines.append("flagged: " + "; ".join(
                f"{r['variant']} {r['flagged_count']} module(s) {r.get('flag_kinds') or ''} ({_short(r['flagged_modules'])})"
                for r in flagged))
        else:
            judged = [r for r in self.rows if r.get("status") == "done" and not r.get("too_few_steps")]
            lines.append("no variant has a flagged module" + ("" if judged or not self.done() else
                         " (every variant logged too few steps to judge: see the note below)"))
        lines += self.notes()
        return lines

    def done(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "done"]

    def notes(self) -> list[str]:
        """Where a metric cannot say anything yet."""
        done = self.done()
        out = []
        maps = [r.get("map50_95") for r in done]
        epochs = max((int(r.get("epochs") or 0) for r in done), default=0)
        if done and (all(not m for m in maps) or epochs < MAP_EPOCHS):
            why = (f"every mAP50-95 is 0 after {epochs} epoch(s)" if all(not m for m in maps)
                   else f"only {epochs} epoch(s) of training")
            out.append(f"mAP needs more epochs to separate variants ({why}); the gradient signals above do not")
        few = [r for r in done if r.get("too_few_steps")]
        if few:
            steps = sorted({int(r.get("steps_logged") or 0) for r in few})
            how = str(few[0].get("verdict") or "")
            how = how[how.index("To log"):] if "To log" in how else "more epochs or a smaller nbs"
            out.append(f"{len(few)} of {len(done)} variant(s) logged {'/'.join(map(str, steps))} optimizer step(s), "
                       f"too few for the vanishing/exploding rules: no flag there means not judged, not healthy. {how}")
        return out


def _x(v: float) -> str:
    return f"{v:.2g}x" if v < 10 else f"{v:.0f}x"


def _short(modules: str, n: int = 4) -> str:
    mods = [m for m in (modules or "").split(",") if m]
    return ", ".join(mods[:n]) + (f", … {len(mods) - n} more" if len(mods) > n else "")


def _pick_baseline(rows: list[dict]) -> str | None:
    """The first ``silu`` variant with a flow measurement, else the grid's first such variant."""
    usable = [r for r in rows if r.get("status") == "done" and r.get("early_flow")]
    for r in usable:
        if str(r.get("activation") or "").lower() == "silu":
            return r["variant"]
    return usable[0]["variant"] if usable else None


def _load(row: dict, out_dir: Path) -> tuple[VariantLog | None, str | None, dict]:
    """The variant's log and gradient columns, or why it has none."""
    gdir = gradmon_dir_of(row, out_dir)
    if not (gdir / LOG_NAME).is_file():
        return None, f"no gradient log at {gdir / LOG_NAME}", {}
    try:
        log = read_log(gdir)
        try:
            summary = load_summary(gdir)
        except (FileNotFoundError, ValueError):
            summary = {}
        if "depth" not in summary:  # older summary (or none): rebuild it from the log
            summary = rebuild(gdir)
    except (OSError, ValueError) as e:
        return None, f"unreadable gradient log {gdir / LOG_NAME} ({type(e).__name__}: {e})", {}
    layers = list(log.header.get("layers") or [])
    frame = module_frame(log.steps, log.modules)
    lframe = layer_frame(log.steps, layers) if layers else pl.DataFrame()
    return VariantLog(row["variant"], log.header, summary, frame, lframe), None, gradient_columns(summary)


def compare_rows(out_dir: Path, rows: list[dict], grid) -> Comparison:
    """Read every completed variant's log (from its recorded ``gradmon_dir``), fill its gradient columns from its
    summary, pick the baseline and add ``early_flow_vs_baseline`` to every row."""
    out_dir = Path(out_dir)
    logs: dict[str, VariantLog] = {}
    missing: dict[str, str] = {}
    new_rows = []
    for r in rows:
        r = dict(r)
        if r.get("status") == "done":
            log, why, cols = _load(r, out_dir)
            if log is None:
                missing[r["variant"]] = why
            else:
                logs[r["variant"]] = log
                for k, v in cols.items():
                    if r.get(k) is None:
                        r[k] = v
        new_rows.append(r)
    baseline = _pick_baseline(new_rows)
    base = next((r["early_flow"] for r in new_rows if r["variant"] == baseline), None)
    for r in new_rows:
        ef = r.get("early_flow")
        r["early_flow_vs_baseline"] = (ef / base) if (ef is not None and base) else None
        r["baseline"] = baseline
    early = ""
    for log in logs.values():
        names = list(log.header.get("layers") or [])
        idx = early_layers(len(names))
        if idx:
            early = f"layers {names[idx[0]]}–{names[idx[-1]]}" if len(idx) > 1 else f"layer {names[idx[0]]}"
            break
    return Comparison(out_dir, grid, new_rows, logs, baseline, missing, early)


# ------------------------------------------------------------------------------------------------ pages
_PAGE_COLUMNS = (  # (header, row key, format)
    ("variant", "variant", "text"),
    ("first-layer flow vs baseline", "early_flow_vs_baseline", "x"),
    ("first-layer flow / head", "early_flow", "num"),
    ("weakest layer (flow / head)", "weakest_layer", "weakest"),
    ("flagged modules", "flagged_modules", "flags"),
    ("noise scale B_simple (images)", "noise_scale", "noise"),
    ("mAP50-95", "map50_95", "num"),
    ("time", "wall_time_s", "time"),
)


def _cell(r: dict, key: str, fmt: str) -> str:
    v = r.get(key)
    if r.get("status") != "done" and key != "variant":
        return "failed" if key == "early_flow_vs_baseline" else ""
    if fmt == "x":
        return "–" if v is None else _x(v)
    if fmt == "weakest":
        return "–" if v is None else f"{v} ({num(r.get('weakest_flow'), 2)})"
    if fmt == "flags":
        n = r.get("flagged_count") or 0
        if not n:
            return "not judged (too few steps)" if r.get("too_few_steps") else "none"
        return f"{n} {r.get('flag_kinds') or ''}: {_short(v)}"
    if fmt == "time":
        return "–" if v is None else (f"{v / 60:.1f} min" if v >= 90 else f"{v:.0f} s")
    if fmt == "num":
        return num(v, 3)
    if fmt == "noise":
        low = r.get("noise_scale_lower95")
        return f"≈ {num(v, 3)}" if v is not None else (f"≥ {num(low, 3)}" if low is not None else "–")
    return "" if v is None else str(v)


def _ordered(c: Comparison) -> list[dict]:
    ranked = c.ranked()
    seen = {r["variant"] for r in ranked}
    return ranked + [r for r in c.rows if r["variant"] not in seen]


def _figures(c: Comparison) -> dict[str, Any]:
    """Draw the comparison's PNGs into the ablation dir."""
    out, logs = c.out_dir, c.logs
    figs: dict[str, Any] = {}
    if not logs:
        return figs
    layer_frames = {n: v.layers.rename({"layer": "module"}) for n, v in logs.items() if v.layers.height}
    if layer_frames:
        figs["flow"] = depth_profile_png(
            layer_frames, {n: logs[n].header.get("layers") for n in layer_frames}, out / "flow_by_depth.png",
            column="flow_attenuation", title="Flow relative to the head by depth, per variant",
            ylabel="flow / head flow (median, log scale)", hlines=[(1.0, "head = 1")])
    frames = {n: v.frame for n, v in logs.items()}
    figs["grad"] = depth_profile_png(frames, {n: list(v.header["modules"]) for n, v in logs.items()},
                                     out / "grad_norm_by_depth.png", column="grad_norm",
                                     title="Parameter-gradient norm ‖grad‖ by depth, per variant")
    norm, extend = shared_norm(frames.values(), "grad_norm")
    figs["colorbar"] = colorbar_png(out / "heatmap-colorbar.png", norm, f"log10 {column_label('grad_norm')} "
                                    "(one scale for every heatmap below)", extend=extend)
    figs["heatmaps"] = {
        n: heatmap_png(v.frame, list(v.header["modules"]), out / f"heatmap-{n}.png", norm=norm, colorbar=False,
                       flagged=v.summary.get("flagged_modules") or [], title=n)
        for n, v in logs.items()
    }
    ylim = shared_ylim(frames.values(), "grad_norm")
    figs["curves"] = {
        n: curves_png(v.frame, list(v.header["modules"]), out / f"curves-{n}.png", ylim=ylim,
                      title=f"{n}: parameter-gradient norm ‖grad‖ per module over training")
        for n, v in logs.items()
    }
    return figs


def _finding_html(c: Comparison) -> str:
    lines = c.finding_lines()
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    return (f'<div class="finding"><strong>{esc(head)}</strong>'
            + ("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in rest) + "</ul>" if rest else "") + "</div>")


def write_pages(c: Comparison, df: pl.DataFrame) -> tuple[Path, Path]:
    """Write the comparison's PNGs, ``ablation.md`` and ``ablation.html``; return (md, html)."""
    grid = c.grid
    figs = _figures(c)
    axes = ", ".join(grid.axes)
    done = len(c.done())
    intro = (f"{len(c.rows)} variant(s) of {len(grid)}, {done} done; varied: {axes}; baseline: "
             f"{c.baseline or '–'}. Flow = ‖dL/d out‖ at a layer's output relative to the head's; first layers = "
             f"{c.early or 'the first quarter of the layers'}. Every column: ablation.csv.")
    problems = [f"{n}: {why} (not in the charts)" for n, why in c.missing.items()]
    problems += [f"{r['variant']}: failed ({r.get('error')})" for r in c.rows if r.get("status") != "done"]
    pending = len(grid) - len(c.rows)
    if pending > 0:
        problems.append(f"{pending} variant(s) not trained yet")

    # ---- markdown
    md = [f"# Ablation `{grid.name}`", "", intro, ""]
    md += [f"- {x}" for x in c.finding_lines()] + [""]
    md += [f"- **{p}**" for p in problems] + ([""] if problems else [])
    md += ["| " + " | ".join(h for h, _, _ in _PAGE_COLUMNS) + " |", "|" + "---|" * len(_PAGE_COLUMNS)]
    md += ["| " + " | ".join(_cell(r, k, f).replace("|", "\\|") for _, k, f in _PAGE_COLUMNS) + " |"
           for r in _ordered(c)]
    md.append("")
    if "flow" in figs:
        md += ["## Flow relative to the head by depth", "", f"![flow by depth]({figs['flow'].name})", ""]
    if "grad" in figs:
        md += ["## Parameter-gradient norm by depth", "", f"![parameter-gradient norm by depth]({figs['grad'].name})",
               "", "## Parameter-gradient norm heatmaps (one colour scale)", "", f"![colour scale]({figs['colorbar'].name})", ""]
        md += [f"![{n}]({p.name})" for n, p in figs["heatmaps"].items()]
    c.md.write_text("\n".join(md) + "\n", encoding="utf-8")

    # ---- html
    rows = _ordered(c)
    body_rows = [[(esc(_cell(r, k, f)), "num" if f in ("x", "num", "time") else ("mono" if k == "variant" else ""))
                  for _, k, f in _PAGE_COLUMNS] for r in rows]
    classes = ["flagged" if (r.get("flagged_count") or r.get("status") != "done") else "" for r in rows]
    parts = [f"<h1>Ablation {esc(grid.name)}</h1>", f'<p class="muted">{esc(intro)}</p>', _finding_html(c)]
    if problems:
        parts.append('<div class="verdict bad"><ul>' + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul></div>")
    parts.append("<h2>Variants</h2>" + table([h for h, _, _ in _PAGE_COLUMNS], body_rows, row_classes=classes))
    if "flow" in figs:
        parts.append(figure(
            "Flow relative to the head by depth, per variant", "Median over logged steps of each top-level layer's "
            "output gradient ‖dL/d out‖ divided by the head's (1 at the head), one line per variant, 25–75 % band "
            "shaded, log scale. Lower on the left = less gradient reaches the first layers.", figs["flow"]))
    if "grad" in figs:
        parts.append(figure(
            "Parameter-gradient norm ‖grad‖ by depth, per variant", "Median over logged steps of each layer's "
            "parameter-gradient norm, one line per variant, log scale.", figs["grad"]))
        parts.append("<h2>Parameter-gradient norm ‖grad‖ per module and logged step, per variant</h2>"
                     '<p class="muted">One colour scale for every map (below), so equal colours are equal norms '
                     "across variants. Grey: no gradient; red: non-finite; red row labels: flagged modules.</p>")
        parts.append(f'<img class="scale" alt="colour scale" src="{data_uri(figs["colorbar"])}">')
        parts.append(html_grid([(n, p) for n, p in figs["heatmaps"].items()], captions=False))
        parts.append("<details><summary>Parameter-gradient norm ‖grad‖ over training, per variant (one y range)"
                     "</summary>" + html_grid([(n, p) for n, p in figs["curves"].items()], captions=False)
                     + "</details>")
    elif c.rows:
        parts.append('<p class="muted">No chart yet: no completed variant has a readable gradient log.</p>')
    c.html.write_text(page(f"ablation {grid.name}", "".join(parts)), encoding="utf-8")
    return c.md, c.html


def markdown_table(df: pl.DataFrame) -> str:
    """Every column of ``df`` as a Markdown table (floats to 4 significant digits)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cols = [c for c in df.columns if c != "traceback"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.select(cols).iter_rows():
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)
