"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish, Kaplan, Amodei 2018) and per-layer signal-to-noise,
estimated from the logged small/big-batch squared norms (``gns_*`` fields, :mod:`yolo_gradmon.measure.noise`).

Per window (one logged optimizer step with ``accumulate >= 2``: a first micro-batch of ``b`` images and the whole
window of ``B`` images, both per-image gradients), the unbiased estimates are

    |G|²  ≈ (B |G_B|² − b |G_b|²) / (B − b)          tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

One window's |G|² is dominated by noise whenever ``B`` is far below B_simple (it is often negative), so windows are
pooled: the numerator and the denominator are averaged separately (exponentially along the run for the curve,
:func:`ema_curve`; plainly over the final stretch for the headline, :func:`pooled`), and the uncertainty comes from a
bootstrap over windows. When more than 2.5% of the bootstrap resamples have a non-positive |G|², the data cannot
tell B_simple from infinity: only the one-sided 95% lower bound is reported ("B_simple >= N"), which also takes the
t-interval bounds of both means (:func:`lower_bound`), so heavy-tailed windows do not make it optimistic.

Plain Python and numpy over logged numbers: works on live records and on re-read ones (lists with None).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np

from ..fields import finite_or_none

EMA_BETA = 0.9
"""Weight of the past in the exponential averages of |G|² and tr(Σ) along the run (the curve)."""
MIN_FINAL_WINDOWS = 16
"""The headline pools the last epoch's windows, extended back to at least this many windows."""
N_BOOT = 2000
MIN_WINDOWS_FOR_NUMBER = 8
"""Fewer pooled windows than this give a lower bound only: a bootstrap over a handful of windows understates the spread."""
NOISY_SNR = 1.0
"""A layer whose signal-to-noise ratio at the effective batch is below this (95% upper bound) receives mostly noise."""


def windows(records: Sequence[dict], n_layers: int | None = None) -> list[dict]:
    """The windows of ``records``: ``step, epoch, b, B, small, big`` (totals) and ``small_l, big_l`` (per layer, None
    where not measured). Records without both batch sizes (accumulate 1, noise scale off) are skipped."""
    out = []
    for r in records:
        b, B = r.get("gns_small_batch"), r.get("gns_big_batch")
        small, big = finite_or_none(r.get("gns_small_total")), finite_or_none(r.get("gns_big_total"))
        if not b or not B or B <= b or small is None or big is None:
            continue
        sl, bl = list(r.get("gns_small_sq") or []), list(r.get("gns_big_sq") or [])
        n = n_layers if n_layers is not None else max(len(sl), len(bl))
        out.append({"step": r["step"], "epoch": r["epoch"], "b": int(b), "B": int(B), "small": small, "big": big,
                    "small_l": [finite_or_none(sl[i]) if i < len(sl) else None for i in range(n)],
                    "big_l": [finite_or_none(bl[i]) if i < len(bl) else None for i in range(n)]})
    return out


def unbiased(b: float, B: float, small: float, big: float) -> tuple[float, float]:
    """One window's unbiased (|G|², tr(Σ)) from per-image squared norms at batches ``b < B``."""
    return (B * big - b * small) / (B - b), (small - big) / (1.0 / b - 1.0 / B)


def _arrays(wins: Sequence[dict], layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    g2, tr = [], []
    for w in wins:
        s, l_ = (w["small"], w["big"]) if layer is None else (w["small_l"][layer], w["big_l"][layer])
        if s is None or l_ is None:
            continue
        a, t = unbiased(w["b"], w["B"], s, l_)
        g2.append(a)
        tr.append(t)
    return np.asarray(g2, dtype=float), np.asarray(tr, dtype=float)


def ema_curve(wins: Sequence[dict], beta: float = EMA_BETA) -> list[dict]:
    """Per window: ``step, epoch`` and the exponentially averaged ``g2``, ``trace`` and ``b_simple`` (their ratio;
    None while the averaged |G|² is not positive, i.e. noise dominates what was seen so far)."""
    out, g, t = [], 0.0, 0.0
    for w in wins:
        a, s = unbiased(w["b"], w["B"], w["small"], w["big"])
        g, t = beta * g + (1 - beta) * a, beta * t + (1 - beta) * s
        out.append({"step": w["step"], "epoch": w["epoch"], "g2": g, "trace": t,
                    "b_simple": max(t, 0.0) / g if g > 0 else None})
    return out


def pooled(g2: np.ndarray, tr: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """B_simple from windows' unbiased estimates averaged separately, with a bootstrap over windows.

    Returns ``windows``, ``g2``, ``trace``, ``b_simple`` (None when the mean |G|² is not positive), ``ci95`` (2.5 and
    97.5 percentiles; the upper one None = infinite), ``lower95`` (one-sided 95% lower bound: the smaller of the
    bootstrap's 5th percentile and :func:`lower_bound`) and ``bound_only`` (the interval is unbounded above: report
    the lower bound, not a number)."""
    n = len(g2)
    out = {"windows": n, "g2": None, "trace": None, "b_simple": None, "ci95": [None, None], "lower95": None,
           "bound_only": True}
    if n < 2:
        return out
    G, T = float(g2.mean()), float(tr.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    bg, bt = g2[idx].mean(axis=1), tr[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bb = np.where(bg > 0, np.maximum(bt, 0.0) / bg, np.inf)
    lo, hi, low95 = (float(np.quantile(bb, q, method="inverted_cdf")) for q in (0.025, 0.975, 0.05))
    out.update(g2=G, trace=T, b_simple=(max(T, 0.0) / G) if G > 0 else None,
               ci95=[finite_or_none(lo), finite_or_none(hi)], lower95=min(low95, lower_bound(g2, tr)),
               bound_only=not math.isfinite(hi) or G <= 0 or n < MIN_WINDOWS_FOR_NUMBER)
    return out


def _t975(df: int) -> float:
    """Student's t 97.5% quantile, approximated (within 1% for df >= 3)."""
    return 1.96 + 2.4 / df + 3.0 / df ** 2


def lower_bound(g2: np.ndarray, tr: np.ndarray) -> float:
    """A conservative 95% lower bound of B_simple: the 97.5% lower bound of tr(Σ) over the 97.5% upper bound of
    |G|² (t intervals of the window means; |G|² >= 0, so a negative mean counts as 0 before its margin is added)."""
    n = len(g2)
    t = _t975(max(n - 1, 1))
    g_hi = max(float(g2.mean()), 0.0) + t * float(g2.std(ddof=1)) / math.sqrt(n)
    t_lo = max(float(tr.mean()) - t * float(tr.std(ddof=1)) / math.sqrt(n), 0.0)
    return t_lo / g_hi if g_hi > 0 else 0.0


def final_stretch(wins: Sequence[dict], min_windows: int = MIN_FINAL_WINDOWS) -> list[dict]:
    """The last epoch's windows, extended back to at least ``min_windows`` (fewer when the run has fewer)."""
    if not wins:
        return []
    last = wins[-1]["epoch"]
    k = sum(1 for w in wins if w["epoch"] == last)
    return list(wins[-max(k, min(min_windows, len(wins))):])


def layer_snr(wins: Sequence[dict], layers: Sequence[str], batch: int, seed: int = 0) -> list[dict]:
    """Per layer: pooled |G_l|², tr(Σ_l), the layer's noise scale and its signal-to-noise ratio at ``batch``
    images, ``snr = |G_l|² / (tr(Σ_l) / batch)`` (point, and the 95% upper bound ``snr_hi95 = batch / lower95``)."""
    rows = []
    for i, name in enumerate(layers):
        g2, tr = _arrays(wins, i)
        if len(g2) < 2:
            continue
        p = pooled(g2, tr, n_boot=N_BOOT // 4, seed=seed)
        b = p["b_simple"]
        snr = (batch / b if b else math.inf) if p["g2"] is not None and p["g2"] > 0 else 0.0
        hi = batch / p["lower95"] if p["lower95"] else math.inf
        rows.append({"index": i, "layer": name, "g2": p["g2"], "trace": p["trace"], "b_simple": b,
                     "snr": finite_or_none(snr), "snr_hi95": finite_or_none(hi),
                     "mostly_noise": bool(hi < NOISY_SNR)})
    return rows


def unmeasured_reason(header: dict, records: Sequence[dict]) -> str:
    """Why a run has no noise scale, and what would make it measurable."""
    cfg = header.get("config") or {}
    if cfg.get("noise_scale") is False:
        return "not measured: noise_scale=false"
    if header.get("noise_scale") is False:
        return "not measured: off under compile=True, or the model has no Ultralytics layer list (model.model)"
    t = header.get("train") or {}
    batch, nbs, acc = t.get("batch"), t.get("nbs"), t.get("accumulate")
    if acc == 1 or (batch and nbs and batch >= nbs):
        return (f"not measurable: batch {batch} >= nbs {nbs}, so accumulate = 1 and every optimizer step is one "
                "micro-batch (no smaller batch to compare with). It needs accumulate >= 2: nbs >= 2 x batch (e.g. "
                f"nbs={2 * batch if batch else 'twice the batch'}; nbs also scales the weight decay), or batch <= nbs/2")
    n = len(windows(records))
    return (f"not measured yet: {n} of {len(records)} logged step(s) had two or more micro-batches, the estimate needs at "
            "least 2 (accumulate ramps up from 1 during Ultralytics' warm-up; log_every > 1 samples fewer steps)")


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def headline(s: dict) -> tuple[str, str]:
    """The report's first line and its plain meaning, from :func:`noise_summary`'s result."""
    nbs = s.get("nbs")
    nominal = f"your nominal batch nbs = {nbs}" if nbs else "nominal batch nbs unknown"
    if not s.get("measured"):
        return f"gradient noise scale: {s.get('reason')}", ""
    f = s["final"]
    n_win = f["windows"]
    if f["bound_only"] or s.get("median_last_epoch") is None:
        lb = f["lower95"] or 0.0
        line = f"gradient noise scale ≥ {_fmt(lb)} images (B_simple, 95% lower bound over the last {n_win} windows); {nominal}"
        meaning = ("The mean gradient is too small against its noise to measure at this batch: the critical batch is "
                   "above this bound. " + (f"nbs = {nbs} is far below it, so larger batches (or more GPUs) would cost "
                                           "almost no extra optimizer steps." if nbs and lb > 2 * nbs else
                                           "More logged windows (more epochs) would tighten the bound."))
        return line, meaning
    b = s["median_last_epoch"]
    lo, hi = f["ci95"]
    line = (f"gradient noise scale ≈ {_fmt(b)} images (B_simple, median over the last epoch; 95% interval "
            f"{_fmt(lo or 0.0)}–{_fmt(hi)} over {n_win} windows); {nominal}")
    if not nbs:
        return line, ""
    if b > 4 * nbs:
        meaning = (f"nbs = {nbs} is well below the critical batch: each step's gradient is mostly noise, so a larger "
                   "batch/nbs (up to about B_simple) would need proportionally fewer optimizer steps for the same images.")
    elif b < nbs / 4:
        meaning = (f"nbs = {nbs} is well above the critical batch: extra images per step add little signal; a smaller "
                   "nbs would reach the same loss with fewer images.")
    else:
        meaning = f"nbs = {nbs} is near the critical batch: a balanced trade between optimizer steps and images."
    return line, meaning


def noise_summary(header: dict, records: Sequence[dict], seed: int = 0) -> dict:
    """The run-level noise-scale values of ``summary.json``: ``measured`` (else ``reason``), ``nbs``, ``windows``,
    ``final`` (:func:`pooled` over the final stretch), ``run`` (over every window), ``median_last_epoch`` (median of the
    :func:`ema_curve` B_simple over the final stretch; None when any of it is unbounded), ``layers``
    (:func:`layer_snr` at nbs), ``noisy_layers``, ``line`` and ``meaning`` (:func:`headline`)."""
    layers = list(header.get("layers") or [])
    t = header.get("train") or {}
    nbs = t.get("nbs")
    wins = windows(records, len(layers))
    out: dict = {"measured": False, "nbs": nbs, "windows": len(wins)}
    if len(wins) < 2:
        out["reason"] = unmeasured_reason(header, records)
        out["line"], out["meaning"] = headline(out)
        return out
    fin = final_stretch(wins)
    curve = {c["step"]: c["b_simple"] for c in ema_curve(wins)}
    tail = [curve[w["step"]] for w in fin]
    med = statistics.median(tail) if tail and all(v is not None for v in tail) else None
    eff = nbs or max(w["B"] for w in wins)
    snr = layer_snr(fin, layers, eff, seed=seed)
    out.update(measured=True, final=pooled(*_arrays(fin), seed=seed), run=pooled(*_arrays(wins), seed=seed),
               median_last_epoch=med, final_epochs=[fin[0]["epoch"], fin[-1]["epoch"]], snr_batch=eff,
               b_small=statistics.median(w["b"] for w in wins), b_big=statistics.median(w["B"] for w in wins),
               layers=snr, noisy_layers=[r["layer"] for r in snr if r["mostly_noise"]])
    out["line"], out["meaning"] = headline(out)
    return out


class NoiseCurve:
    """The exponentially averaged B_simple, one logged record at a time (for streaming sinks)."""

    def __init__(self, beta: float = EMA_BETA):
        self.beta, self.g, self.t, self.n = beta, 0.0, 0.0, 0

    def update(self, record: dict) -> float | None:
        """Fold in one record; returns the curve's B_simple (None without a window yet or while unbounded)."""
        w = windows([record])
        if w:
            a, s = unbiased(w[0]["b"], w[0]["B"], w[0]["small"], w[0]["big"])
            self.g, self.t, self.n = self.beta * self.g + (1 - self.beta) * a, self.beta * self.t + (1 - self.beta) * s, self.n + 1
        return max(self.t, 0.0) / self.g if self.n and self.g > 0 else None
