"""The run report: a self-contained ``report.html`` next to a run's PNGs, written at train end by the local sink
(:func:`write_report`, from the results built once) and rebuilt from the gradient log alone by
``yolo-gradmon report <dir>`` (:func:`render_report`).

The page opens with the verdict, then the flags with their evidence and likely cause, then the charts that decide a
vanishing flag (the flow relative to the head by layer, the activation health by layer) and the parameter-gradient
norms (heatmap and curves), then the per-module and per-layer tables.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Mapping

import polars as pl

from ..config import GradmonConfig
from ..record.dataset import describe_data
from ..record.outputs import TrainEnd
from .depth_figures import flow_profile_png, health_png
from .figures import CURVES_NAME, HEATMAP_NAME, curves_png, curves_title, heatmap_png, run_label
from .html import REPORT_NAME, esc, figure, num, page, table
from .noise import SNR_NAME, noise_box_html, snr_png

FLOW_NAME = "flow_by_layer.png"
HEALTH_NAME = "activation_health.png"


def render_report(path: str | Path) -> Path:
    """Rebuild a run's outputs from its gradient log and write ``report.html`` with embedded figures.

    ``path`` is the run's ``save_dir``, its ``gradmon/`` dir, or ``gradients.jsonl``. The log is read once
    (:meth:`~yolo_gradmon.record.outputs.TrainEnd.from_log`: a run killed before train end works, a torn last line
    included); Parquet and ``summary.json`` are rewritten, then :func:`write_report` draws the page.

    Returns:
        The path of ``report.html``.
    """
    end = TrainEnd.from_log(path)
    end.write_tables()
    return write_report(end)


def write_report(end: TrainEnd) -> Path:
    """Draw the run's PNGs beside its log (``heatmap.png``, ``curves.png``, ``flow_by_layer.png`` and, where
    activation health was measured, ``activation_health.png``) and write the self-contained ``report.html`` there
    (images as base64 data URIs, no external CSS/JS). Returns the path of ``report.html``."""
    out_dir, summary = end.out_dir, end.summary
    modules = list(summary.get("modules") or [])
    layers = list(summary.get("layers") or [])
    what = run_label(summary)
    flagged = summary.get("flagged_modules") or []
    images: dict[str, Path] = {}
    if layers and end.layers is not None:
        threshold = (summary.get("config") or {}).get("vanish_flow_attenuation", GradmonConfig.vanish_flow_attenuation)
        images["flow"] = flow_profile_png(end.layers, layers, out_dir / FLOW_NAME, threshold=threshold,
                                          flagged=flagged, title=f"Flow relative to the head, by layer — {what}")
        health = health_png(end.layers, layers, out_dir / HEALTH_NAME, flagged=flagged,
                            title=f"Activation health by layer: saturated units and dead channels — {what}")
        if health is not None:
            images["health"] = health
        snr = snr_png(summary, layers, out_dir / SNR_NAME, title=f"Gradient signal-to-noise by layer — {what}")
        if snr is not None:
            images["snr"] = snr
    images["heatmap"] = heatmap_png(end.modules, modules, out_dir / HEATMAP_NAME, flagged=flagged,
                                    title=f"Parameter-gradient norm ‖grad‖ per module and logged step — {what}")
    images["curves"] = curves_png(end.modules, modules, out_dir / CURVES_NAME, title=curves_title(modules, what))
    out = out_dir / REPORT_NAME
    out.write_text(_html_page(summary, end.steps, end.log_path, images), encoding="utf-8")
    return out


def _facts(summary: dict, steps: pl.DataFrame | None, log_path: Path) -> list[tuple[str, str, str]]:
    """(label, text, css class) rows of the run facts table."""
    complete = bool(summary.get("complete"))
    torn = _torn_tail(log_path)
    first, last = summary.get("first_step"), summary.get("last_step")
    rows = [
        ("model", str(summary.get("model")), ""),
        ("task", str(summary.get("task")), ""),
        ("data", describe_data(summary.get("data")), "bad" if (summary.get("data") or {}).get("generated") else ""),
        ("granularity", f"{summary.get('granularity')} ({len(summary.get('modules') or [])} modules)", ""),
        ("log every", f"{summary.get('log_every')} optimizer step(s)", ""),
        ("steps logged", f"{summary.get('steps_logged')}" + (f" (steps {first}–{last})" if first is not None else ""), ""),
        ("epochs", str(summary.get("epochs")), ""),
        ("complete", "yes: training finished" if complete else
         "no: the log has no end line (run still going, or stopped before train end)", "ok" if complete else "bad"),
        ("too few steps", ("yes: a rule's window could not fill (the verdict says which and what would fill it)"
                           if summary.get("too_few_steps") else "no"), "bad" if summary.get("too_few_steps") else ""),
        ("flags", f"{len(summary.get('flags') or [])} on {len(summary.get('flagged_modules') or [])} module(s)",
         "bad" if summary.get("flags") else "ok"),
    ]
    if torn:
        rows.append(("log tail", "the last line was torn (process killed mid-write) and was ignored", "bad"))
    if steps is not None and steps.height:
        clip = steps["clip_active"].fill_null(False).sum()
        amp_skip = steps["amp_skipped"].fill_null(False).sum()
        tn = steps["total_norm"].drop_nulls()
        rows.append(("median total ‖grad‖", num(tn.median()) if tn.len() else "–", ""))
        rows.append(("clipping active", f"{clip} of {steps.height} logged steps", ""))
        if amp_skip:
            rows.append(("AMP skipped steps", str(amp_skip), "bad"))
    rows.append(("log file", str(log_path), "muted"))
    return rows


def _torn_tail(log_path: Path) -> bool:
    try:
        with open(log_path, "rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                return False
            fh.seek(size - 1)
            return fh.read(1) != b"\n"
    except OSError:
        return False


_FIGURES = (
    ("flow", "Flow relative to the head, by layer",
     "For each top-level layer, the gradient reaching its output, ‖dL/d out‖, divided by the gradient at the head's "
     "output (1 by definition): the median over logged steps (line) and its min–max range (shaded), log scale. A "
     "vanishing flag needs this below the dashed red line for {window} observations. Red layer names are flagged."),
    ("snr", "Gradient signal-to-noise by layer",
     "For each top-level layer, |G_l|² / (tr Σ_l / nbs): the squared mean gradient over its noise at the nominal batch "
     "nbs, from the first micro-batch and the accumulated gradient of the last logged windows (dot: estimate, bar: 95% "
     "upper bound, log scale). Below the dashed line the layer's gradient is mostly noise at this batch (names in red)."),
    ("health", "Activation health by layer: saturated units and dead channels",
     "Fraction of a layer's activation values that sit in a flat tail of a two-tailed activation (saturated: "
     "Sigmoid/Tanh-like) and of its channels with no gradient over a whole batch (dead: ReLU-like), median over "
     "logged steps (bars) and maximum (ticks). These name the likely cause of a vanishing flag."),
    ("heatmap", "Parameter-gradient norm ‖grad‖ per module and logged step",
     "log10 of each module's parameter-gradient norm ‖grad‖ at each logged optimizer step; input at the top, "
     "head at the bottom. Grey: no gradient; red: non-finite gradient (marked above the map); white: zero."),
    ("curves", "Parameter-gradient norm ‖grad‖ per module over training",
     "One line per module, coloured by depth (see the colour bar). Gaps: no finite value."),
)


def _verdict(summary: dict) -> tuple[str, str]:
    """(text, css class) of the run's verdict: its lead lines (the non-finite event first), else the flag count."""
    lead = summary.get("lead") or []
    if lead:
        bad = bool(summary.get("flags")) or summary.get("complete") is False
        lines = [f"{line[:1].upper()}{line[1:].rstrip('.')}." for line in lead]  # one line each, in reading order
        return "\n".join(lines), ("bad" if bad else "warn" if summary.get("too_few_steps") else "ok")
    flags = summary.get("flags") or []
    mods = summary.get("flagged_modules") or []
    if flags:
        kinds = sorted({f.get("kind") for f in flags})
        return (f"{len(mods)} module(s) flagged ({', '.join(map(str, kinds))}): {', '.join(mods)}. "
                f"{summary.get('verdict', '')}."), "bad"
    if summary.get("too_few_steps"):
        return str(summary.get("verdict") or "too few steps to judge"), "warn"
    return f"No module flagged, {summary.get('verdict', '')}.", "ok"


def _flag_rows(flags: list[dict]) -> list[list[tuple[str, str]]]:
    rows = []
    for f in flags:
        ev = dict(f.get("evidence") or {})
        cause = ev.pop("cause", None)
        rows.append([
            (esc(f.get("kind")), f"kind-{f.get('kind')}"),
            (esc(f.get("module")), "mono"),
            (esc(f"{f.get('first_step')}–{f.get('last_step')}"), "num"),
            (esc(cause) if cause else '<span class="muted">–</span>', ""),
            (esc(", ".join(f"{k}={num(v)}" for k, v in ev.items())), "mono"),
            (esc("yes" if f.get("active", True) else "cleared"), ""),
        ])
    return rows or [[("none", "muted"), ("", ""), ("", ""), ("", ""), ("", ""), ("", "")]]


def _layer_rows(summary: dict) -> tuple[list[str], list[list[tuple[str, str]]], list[str]]:
    stats = summary.get("layer_stats") or []
    flagged = set(summary.get("flagged_modules") or [])
    headers = ["layer", "median flow / head", "min flow / head", "max flow / head", "median saturated",
               "max saturated", "median dead", "max dead"]
    pct = lambda v: "–" if v is None else f"{100 * float(v):.1f} %"  # noqa: E731
    rows = [[
        (esc(s.get("layer")), "mono"),
        (esc(num(s.get("median_flow_attenuation"))), "num"),
        (esc(num(s.get("min_flow_attenuation"))), "num"),
        (esc(num(s.get("max_flow_attenuation"))), "num"),
        (esc(pct(s.get("median_act_saturated"))), "num"),
        (esc(pct(s.get("max_act_saturated"))), "num"),
        (esc(pct(s.get("median_act_dead"))), "num"),
        (esc(pct(s.get("max_act_dead"))), "num"),
    ] for s in stats]
    return headers, rows, ["flagged" if s.get("layer") in flagged else "" for s in stats]


def _html_page(summary: dict, steps: pl.DataFrame | None, log_path: Path, images: Mapping[str, Path]) -> str:
    what = run_label(summary)
    verdict, vclass = _verdict(summary)
    facts = '<table class="facts"><tbody>' + "".join(
        f'<tr><th scope="row">{esc(k)}</th><td class="{esc(c)}">{esc(v)}</td></tr>' for k, v, c in _facts(summary, steps, log_path)
    ) + "</tbody></table>"
    flags = summary.get("flags") or []
    flags_html = table(["kind", "module", "steps", "likely cause", "evidence", "active"], _flag_rows(flags))
    if len(flags) > 20:
        flags_html = f'<div class="scroll">{flags_html}</div>'
    flagged = set(summary.get("flagged_modules") or [])
    stats = summary.get("module_stats") or []
    stat_rows = [
        [
            (esc(s.get("module")), "mono"),
            (esc(s.get("steps")), "num"),
            (esc(num(s.get("median_grad_norm"))), "num"),
            (esc(num(s.get("median_grad_to_weight"))), "num"),
            (esc(num(s.get("median_update_to_weight"))), "num"),
            (esc(num(s.get("max_abs_grad"))), "num"),
            (esc(s.get("nonfinite")), "num"),
        ]
        for s in stats
    ]
    stats_html = table(
        ["module", "steps", "median ‖grad‖", "median ‖grad‖/‖w‖", "median ‖Δw‖/‖w‖", "max |grad|", "non-finite"],
        stat_rows,
        row_classes=["flagged" if s.get("module") in flagged else "" for s in stats],
    )
    n_mod = len(summary.get("modules") or [])
    no_grad = n_mod - len(stats)
    stats_note = (f'<p class="muted">{no_grad} module(s) never received a gradient and are not listed.</p>'
                  if no_grad > 0 else "")
    every = (summary.get("config") or {}).get("update_every", GradmonConfig.update_every)
    if stats and every > 1:  # sampled columns: say over which steps (the "steps" column counts every logged step)
        stats_note += (f'<p class="muted">‖Δw‖/‖w‖ and max |grad| are measured on one logged step in {every} '
                       f"(<code>update_every={every}</code>); the other columns on every logged step.</p>")
    layer_html = ""
    if summary.get("layer_stats"):
        headers, rows, classes = _layer_rows(summary)
        layer_html = (f"<h2>Per-layer flow and activation health ({len(rows)} layers)</h2>"
                      f'<p class="muted">Flow / head: ‖dL/d out‖ of the layer over that of the head\'s output, over '
                      f"the logged steps where it was measured; saturated/dead: fractions as in the chart above.</p>"
                      f'<div class="scroll">{table(headers, rows, row_classes=classes)}</div>')
    window = (summary.get("config") or {}).get("vanish_window", GradmonConfig.vanish_window)
    missing = []
    if not summary.get("layers"):
        missing.append("the flow profile and activation health (this log has no per-layer signals: the flow and "
                       "activation_health options were off)")
    elif "health" not in images:
        missing.append("activation health (not measured: option off, or no activation it can measure)")
    figs = "".join(figure(t, d.format(window=window), images[k]) for k, t, d in _FIGURES if k in images)
    if missing:
        figs += "".join(f'<p class="muted">Not shown: {esc(m)}.</p>' for m in missing)
    generated = _dt.datetime.now().isoformat(timespec="seconds")
    body = (
        f"<h1>Gradient monitor report</h1><p class=\"muted\">{esc(what)} · generated {esc(generated)} from "
        f"{esc(log_path.name)}</p>"
        f'<p class="verdict {vclass}">{esc(verdict).replace(chr(10), "<br>")}<br><small>data: '
        f'{esc(describe_data(summary.get("data")))}</small></p>'
        f"{noise_box_html(summary)}"
        f"<h2>Flags ({len(flags)})</h2>{flags_html}"
        f"{figs}"
        f"<h2>Run</h2>{facts}"
        f"<h2>Per-module medians ({len(stats)} modules)</h2>{stats_note}<div class=\"scroll\">{stats_html}</div>"
        f"{layer_html}"
    )
    return page(f"gradmon report — {what}", body)
