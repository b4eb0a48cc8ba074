"""What the user sees of the gradient noise scale (``summary["noise_scale"]``, :func:`yolo_gradmon.record.noise.
noise_summary`): the report's first box, the per-layer signal-to-noise chart by depth, and the W&B rows (a run-level
curve key per logged step and one native per-layer chart at train end)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..record.noise import NOISY_SNR, NoiseCurve
from .html import esc

SNR_NAME = "snr_by_layer.png"
CURVE_KEY = "gradients/noise_scale"
"""W&B: the exponentially averaged B_simple (images) at each logged step with two or more micro-batches."""
SNR_CHART_KEY = "gradmon/layers/snr"
"""W&B: one native chart, log10 signal-to-noise ratio per layer at nbs (train end)."""


def noise_box_html(summary: dict) -> str:
    """The report's noise-scale box (after the verdict): the noise-scale line and what it means for ``batch``/``nbs``."""
    s = summary.get("noise_scale") or {}
    if not s.get("line"):
        return ""
    meaning = f"<br><span class=\"muted\">{esc(s['meaning'])}</span>" if s.get("meaning") else ""
    noisy = s.get("noisy_layers") or []
    if noisy:
        meaning += (f"<br><span class=\"muted\">Gradient mostly noise at nbs = {esc(s.get('snr_batch'))} "
                    f"(SNR &lt; {NOISY_SNR:g} at 95%): {esc(', '.join(noisy))}.</span>")
    return f'<p class="verdict">{esc(s["line"])}{meaning}</p>'


def snr_png(summary: dict, layers: Sequence[str], path: str | Path, title: str | None = None) -> Path | None:
    """Per top-level layer, the signal-to-noise ratio |G_l|² / (tr(Σ_l)/B) at the effective batch ``B`` (nbs) over
    the final stretch of windows: the point estimate (dot) and its 95% upper bound (bar top), log scale, with the
    SNR = 1 line; layers whose upper bound is below it (mostly noise) are named in red. None when not measured."""
    from .depth_figures import layer_ticks  # matplotlib only when drawing
    from .figures import new_figure, save_figure

    s = summary.get("noise_scale") or {}
    rows = [r for r in s.get("layers") or [] if r.get("snr_hi95") is not None or r.get("snr") is not None]
    if not s.get("measured") or not rows:
        return None
    import numpy as np

    layers = list(layers)
    fig = new_figure(float(np.clip(4 + 0.32 * len(layers), 8, 16)), 4.8)
    ax = fig.add_subplot()
    floor = 1e-4
    finite = [r["snr_hi95"] for r in rows if r.get("snr_hi95") is not None] + [r["snr"] or 0.0 for r in rows]
    top = max([NOISY_SNR * 10, *finite]) * 3  # an unbounded upper limit (no lower bound on B_l) is drawn to here
    hi_x = [r["index"] for r in rows]
    hi_y = [max(r["snr_hi95"] if r.get("snr_hi95") is not None else top, floor) for r in rows]
    ax.bar(hi_x, hi_y, width=0.6, color="tab:green", alpha=0.25, label="95% upper bound (to the top: unbounded)")
    pts = [(r["index"], max(r["snr"], floor)) for r in rows if r.get("snr") is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="tab:green", ms=4,
                label=f"estimate (≤ {floor:g}: |G_l|² not above its noise)")
    ax.axhline(NOISY_SNR, color="0.3", lw=0.9, ls=(0, (4, 3)))
    ax.annotate("signal = noise", (0.0, NOISY_SNR), xycoords=("axes fraction", "data"), xytext=(3, 3),
                textcoords="offset points", fontsize=7, color="0.3")
    ax.set_yscale("log")
    layer_ticks(ax, layers, set(s.get("noisy_layers") or []))
    ax.set_xlabel("top-level layer: input (left) → head (right); red: gradient mostly noise; no bar: no parameters")
    ax.set_ylabel(f"SNR at batch {s.get('snr_batch')}: |G_l|² / (tr Σ_l / batch)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or "Gradient signal-to-noise by layer", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


class WandbNoiseRows:
    """The W&B rows of the noise scale: :meth:`step` adds the curve key to a logged step's row, :meth:`final` builds
    the native per-layer chart from the summary."""

    def __init__(self):
        self.curve = NoiseCurve()

    def step(self, record: dict) -> dict[str, float]:
        b = self.curve.update(record)
        return {CURVE_KEY: float(b)} if b is not None and math.isfinite(b) else {}

    @staticmethod
    def final(summary: dict, wb: Any) -> dict:
        s = summary.get("noise_scale") or {}
        rows = [r for r in s.get("layers") or [] if r.get("snr") is not None]
        if not s.get("measured") or not rows:
            return {}
        data = [[r["layer"], math.log10(max(r["snr"], 1e-6)), math.log10(max(r["snr_hi95"] or r["snr"], 1e-6))]
                for r in rows]
        table = wb.Table(columns=["layer", "log10_snr", "log10_snr_hi95"], data=data)
        return {SNR_CHART_KEY: wb.plot.bar(table, "layer", "log10_snr",
                                           title=f"log10 gradient SNR by layer at nbs {s.get('snr_batch')} (< 0: mostly noise)")}

    @staticmethod
    def summary_fields(summary: dict) -> dict:
        s = summary.get("noise_scale") or {}
        if not s.get("measured"):
            return {}
        f = s.get("final") or {}
        out = {"gradmon/noise_scale_line": s.get("line")}
        number = None if f.get("bound_only") else s.get("median_last_epoch")  # a bound is never shown as a number
        for key, v in (("noise_scale", number), ("noise_scale_lower95", f.get("lower95"))):
            if v is not None:
                out[f"gradmon/{key}"] = float(v)
        out["gradmon/noise_scale_bound_only"] = bool(f.get("bound_only"))
        out["gradmon/noisy_layers"] = ", ".join(s.get("noisy_layers") or [])
        return out
