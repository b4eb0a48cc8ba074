"""The run report: a self-contained ``report.html`` next to a run's PNGs, written at train end by the local sink
(:func:`write_report`) and rebuilt from the gradient log alone by ``yolo-gradmon report <dir>`` (:func:`render_report`).

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
from ..record.logfile import locate_log, read_log
from ..record.tables import layer_frame, module_frame, rebuild, step_frame
from .figures import (CURVES_NAME, HEATMAP_NAME, _curves_title, curves_png, flow_profile_png, health_png, heatmap_png,
                      run_label)
from .html import esc, figure, num, page, table

HTML_NAME = "report.html"
FLOW_NAME = "flow_by_layer.png"
HEALTH_NAME = "activation_health.png"


def render_report(path: str | Path) -> Path:
    """Rebuild a run's outputs from its gradient log and write ``report.html`` with embedded figures.

    ``path`` is the run's ``save_dir``, its ``gradmon/`` dir, or ``gradients.jsonl``. Calls
    :func:`yolo_gradmon.record.tables.rebuild` (Parquet + ``summary.json`` from the log alone, so a run killed
    before train end works, a torn last line included), then :func:`write_report`.

    Returns:
        The path of ``report.html``.
    """
    log_path = locate_log(path)
    summary = rebuild(log_path)
    log = read_log(log_path)
    return write_report(log_path.parent, summary, log.header, log.steps, log_path)


def write_report(out_dir: str | Path, summary: dict, header: dict, records: list[dict],
                 log_path: Path | None = None) -> Path:
    """Draw the run's PNGs into ``out_dir`` (``heatmap.png``, ``curves.png``, ``flow_by_layer.png`` and, where
    activation health was measured, ``activation_health.png``) and write the self-contained ``report.html`` there
    (images as base64 data URIs, no external CSS/JS). ``summary`` is the run's ``summary.json`` content, ``header``
    and ``records`` the log's header and ``step`` lines. Returns the path of ``report.html``; the PNG paths are
    added to ``summary["media"]``."""
    out_dir = Path(out_dir)
    log_path = Path(log_path) if log_path is not None else out_dir / "gradients.jsonl"
    modules = list(summary.get("modules") or header.get("modules") or [])
    layers = list(summary.get("layers") or [])
    frame = module_frame(records, modules)
    steps = step_frame(records)
    what = run_label(summary)
    flagged = summary.get("flagged_modules") or []
    images: dict[str, Path] = {}
    if layers:
        lframe = layer_frame(records, layers)
        threshold = (summary.get("config") or {}).get("vanish_flow_attenuation", GradmonConfig.vanish_flow_attenuation)
        images["flow"] = flow_profile_png(lframe, layers, out_dir / FLOW_NAME, threshold=threshold, flagged=flagged,
                                          title=f"Flow relative to the head, by layer — {what}")
        health = health_png(lframe, layers, out_dir / HEALTH_NAME, flagged=flagged,
                            title=f"Activation health by layer: saturated units and dead channels — {what}")
        if health is not None:
            images["health"] = health
    images["heatmap"] = heatmap_png(frame, modules, out_dir / HEATMAP_NAME, flagged=flagged,
                                    title=f"Parameter-gradient norm ‖grad‖ per module and logged step — {what}")
    images["curves"] = curves_png(frame, modules, out_dir / CURVES_NAME, title=_curves_title(modules, what))
    out = out_dir / HTML_NAME
    out.write_text(_html_page(summary, steps, log_path, images), encoding="utf-8")
    summary.setdefault("media", {}).update({k: str(v) for k, v in images.items()} | {"report": str(out)})
    return out


def _facts(summary: dict, steps: pl.DataFrame | None, log_path: Path) -> list[tuple[str, str, str]]:
    """(label, text, css class) rows of the run facts table."""
    complete = bool(summary.get("complete"))
    torn = _torn_tail(log_path)
    first, last = summary.get("first_step"), summary.get("last_step")
    rows = [
        ("model", str(summary.get("model")), ""),
        ("task", str(summary.get("task")), ""),
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
        return " ".join(f"{line.rstrip('.')}." for line in lead), (
            "bad" if bad else "warn" if summary.get("too_few_steps") else "ok")
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
        f'<p class="verdict {vclass}">{esc(verdict)}</p>'
        f"<h2>Flags ({len(flags)})</h2>{flags_html}"
        f"{figs}"
        f"<h2>Run</h2>{facts}"
        f"<h2>Per-module medians ({len(stats)} modules)</h2>{stats_note}<div class=\"scroll\">{stats_html}</div>"
        f"{layer_html}"
    )
    return page(f"gradmon report — {what}", body)
