"""The run report: a self-contained ``report.html`` built from a run's gradient log alone.

:func:`render_report` rebuilds Parquet/``summary.json`` from ``gradients.jsonl`` (so a run killed before train end
works, a torn last line included), draws the figures (:mod:`.figures`) and writes the page into the gradmon dir.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Mapping

import polars as pl

from ..record.logfile import locate_log
from ..record.tables import PARQUET_NAME, STEPS_PARQUET_NAME, rebuild
from .figures import CURVES_NAME, HEATMAP_NAME, _curves_title, curves_png, heatmap_png, run_label
from .html import esc, figure, num, page, table

HTML_NAME = "report.html"


def render_report(path: str | Path) -> Path:
    """Rebuild a run's outputs from its gradient log and write ``report.html`` with embedded figures.

    ``path`` is the run's ``save_dir``, its ``gradmon/`` dir, or ``gradients.jsonl``. Calls
    :func:`yolo_gradmon.record.tables.rebuild` (Parquet + ``summary.json`` from the log alone, so a run killed
    before train end works, a torn last line included), then writes ``heatmap.png``, ``curves.png`` and a
    self-contained ``report.html`` (images as base64 data URIs, no external CSS/JS) into the gradmon dir:
    run facts, the flags table, the per-module medians and both figures.

    Returns:
        The path of ``report.html``.
    """
    log_path = locate_log(path)
    out_dir = log_path.parent
    summary = rebuild(log_path)
    modules = list(summary.get("modules") or [])
    frame = pl.read_parquet(out_dir / PARQUET_NAME)
    steps = pl.read_parquet(out_dir / STEPS_PARQUET_NAME) if (out_dir / STEPS_PARQUET_NAME).is_file() else None
    what = run_label(summary)
    flagged = summary.get("flagged_modules") or []
    heat = heatmap_png(frame, modules, out_dir / HEATMAP_NAME,
                       title=f"Parameter-gradient norm ‖grad‖ per module — {what}", flagged=flagged)
    curves = curves_png(frame, modules, out_dir / CURVES_NAME, title=_curves_title(modules, what))
    page = _html_page(summary, steps, log_path, {"heatmap": heat, "curves": curves})
    out = out_dir / HTML_NAME
    out.write_text(page, encoding="utf-8")
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
        ("too few steps", ("yes: fewer logged steps than min_steps; the rules had little evidence"
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


def _html_page(summary: dict, steps: pl.DataFrame | None, log_path: Path, images: Mapping[str, Path]) -> str:
    what = run_label(summary)
    facts = '<table class="facts"><tbody>' + "".join(
        f'<tr><th scope="row">{esc(k)}</th><td class="{esc(c)}">{esc(v)}</td></tr>' for k, v, c in _facts(summary, steps, log_path)
    ) + "</tbody></table>"
    flags = summary.get("flags") or []
    flag_rows = [
        [
            (esc(f.get("kind")), f"kind-{f.get('kind')}"),
            (esc(f.get("module")), "mono"),
            (esc(f.get("first_step")), "num"),
            (esc(f.get("last_step")), "num"),
            (esc(", ".join(f"{k}={num(v)}" for k, v in (f.get("evidence") or {}).items())), "mono"),
            (esc("yes" if f.get("active", True) else "cleared"), ""),
        ]
        for f in flags
    ]
    if not flag_rows:
        flag_rows = [[("none", "muted"), ("", ""), ("", ""), ("", ""), ("", ""), ("", "")]]
    flags_html = table(["kind", "module", "first step", "last step", "evidence", "active"], flag_rows)
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
    figs = "".join(
        figure(t, d, images[k])
        for k, t, d in (
            ("heatmap", "Parameter-gradient norm per module and step",
             "log10 of each module's parameter-gradient norm ‖grad‖ at each logged optimizer step; input at the top, "
             "head at the bottom. Grey: no gradient; red: non-finite gradient (marked above the map); white: zero."),
            ("curves", "Per-module parameter-gradient norms",
             "One line per module, coloured by depth (see the colour bar). Gaps: no finite value."),
        )
        if k in images
    )
    generated = _dt.datetime.now().isoformat(timespec="seconds")
    if len(flags) > 20:
        flags_html = f'<div class="scroll">{flags_html}</div>'
    body = (
        f"<h1>Gradient monitor report</h1><p class=\"muted\">{esc(what)} · generated {esc(generated)} from "
        f"{esc(log_path.name)}</p>"
        f"<h2>Run</h2>{facts}"
        f"<h2>Flags ({len(flags)})</h2>{flags_html}"
        f"<h2>Per-module medians ({len(stats)} modules)</h2>{stats_note}<div class=\"scroll\">{stats_html}</div>"
        f"{figs}"
    )
    return page(f"gradmon report — {what}", body)
