"""What the evidence of a run could decide, and the lines a report, the console and W&B lead with (plain Python over
the log header, its ``step`` records and the flags; no torch).

- :func:`evidence_gaps`: each rule whose window could not fill (the gradient-flow window in backward passes, the
  grad/weight window and the spike rule's history in logged steps, the dying rule in activation-health samples),
  with what would fill it. A run with a gap on the flow window and no vanishing flag "cannot tell yet": it is never
  called healthy on evidence that could not have flagged a planted choke;
- :func:`frozen_modules`: modules without trainable parameters (``freeze=``, Ultralytics' always-frozen DFL):
  frozen, not judged;
- :func:`lead_lines`: the non-finite event first, then the other verdict lines.
"""

from __future__ import annotations

import math
from typing import Sequence

from .dying import DYING_KINDS


def evidence_gaps(header: dict, records: Sequence[dict], cfg: dict) -> list[dict]:
    """Rules that had too little evidence on this run: ``rule``, ``have``, ``need``, ``unit`` and ``fill``."""
    window = int(cfg.get("vanish_window", 5))
    min_steps = int(cfg.get("min_steps", 3))
    steps = len(records)
    passes = sum(int(r.get("flow_backwards") or 0) for r in records)
    gaps = []
    if header.get("flow") and passes < window:
        per = passes / steps if steps else 0.0
        more = math.ceil((window - passes) / per) if per > 0 else None
        fill = (f"about {more} more logged step(s) at this run's {per:.3g} flow pass(es) per step" if more
                else "logged steps with gradient flow")
        if int(cfg.get("flow_every", 1)) > 1:
            fill += f", or gradmon_flow_every=1 (flow on every pass; now on every {cfg.get('flow_every')} passes)"
        gaps.append({"rule": "vanishing (gradient flow)", "have": passes, "need": window, "unit": "backward passes with flow",
                     "fill": fill})
    elif not header.get("flow") and steps < window:
        gaps.append({"rule": "vanishing (grad/weight)", "have": steps, "need": window, "unit": "logged steps",
                     "fill": f"{window - steps} more logged step(s)"})
    if steps <= min_steps:
        gaps.append({"rule": "exploding (spike over the running median)", "have": max(0, steps - 1), "need": min_steps,
                     "unit": "logged steps of history", "fill": f"{min_steps + 1 - steps} more logged step(s)"})
    acts = header.get("layer_acts") or []
    if header.get("activation_health") and any(set(a) & DYING_KINDS for a in acts):
        samples = sum(1 for r in records if r.get("act_dead") is not None
                      and any(v is not None and v == v for v in list(r["act_dead"])))
        need = int(cfg.get("dying_window", 3))
        if samples < need:
            every = int(cfg.get("health_every", 1))
            gaps.append({"rule": "dying", "have": samples, "need": need, "unit": "activation-health samples",
                         "fill": f"{(need - samples) * every} more logged step(s)"
                                 + (f", or gradmon_health_every=1 (now on every {every} logged steps)" if every > 1
                                    else "")})
    return gaps


def _trend(per_sample: float) -> str:
    points = 100 * per_sample
    return "steady" if abs(points) < 0.5 else f"{'rising' if points > 0 else 'falling'} {abs(points):.1f} points per sample"


def gap_line(gap: dict) -> str:
    return (f"{gap['rule']}: {gap['have']} of {gap['need']} {gap['unit']}, so it could not fire; "
            f"to fill it: {gap['fill']}")


def frozen_modules(header: dict) -> dict:
    """Monitored modules without trainable parameters and the top-level layers they make up (frozen, not judged)."""
    modules = list(header.get("modules") or [])
    trainable = list(header.get("trainable") or [True] * len(modules))
    frozen = [m for m, t in zip(modules, trainable) if not t]
    dfl = [m for m in frozen if m.split(".")[-2:-1] == ["dfl"] or ".dfl" in m]
    freeze = (header.get("train") or {}).get("freeze")
    return {"modules": frozen, "dfl": dfl, "freeze": freeze}


def frozen_line(frozen: dict) -> str | None:
    mods = [m for m in frozen.get("modules") or [] if m not in (frozen.get("dfl") or [])]
    parts = []
    if mods:
        what = mods[0] if len(mods) == 1 else f"{mods[0]}–{mods[-1]}"
        why = f" (freeze={frozen['freeze']})" if frozen.get("freeze") not in (None, "", []) else ""
        parts.append(f"{len(mods)} module(s) frozen, not judged: {what}{why}")
    if frozen.get("dfl"):
        parts.append(f"{', '.join(frozen['dfl'])} frozen by Ultralytics (DFL), not judged")
    return "; ".join(parts) or None


def weakest_line(depth: dict, cfg: dict) -> str | None:
    """The weakest layer's median flow relative to the head and its distance to the vanishing threshold in decades."""
    v, layer = depth.get("weakest_flow"), depth.get("weakest_layer")
    if v is None or layer is None or v <= 0:
        return None
    thr = float(cfg.get("vanish_flow_attenuation", 1e-5))
    dec = math.log10(v / thr)
    side = f"{dec:.1f} decades above" if dec >= 0 else f"{-dec:.1f} decades below"
    return (f"weakest layer {layer}: its output gradient is {v:.2g}x the head's (median), {side} the vanishing "
            f"threshold {thr:g}")


def clip_line(records: Sequence[dict], cfg: dict) -> str | None:
    """Explains an always-active gradient clip: YOLO sums its loss over the batch, so the total norm exceeds 10."""
    n = len(records)
    active = sum(1 for r in records if r.get("clip_active"))
    if n == 0 or active < n:
        return None
    totals = sorted(float(r["total_norm"]) for r in records if r.get("total_norm") is not None
                    and math.isfinite(float(r["total_norm"])))
    med = totals[len(totals) // 2] if totals else None
    return (f"gradient clipping active on all {n} logged steps (median total norm "
            + (f"{med:.3g}" if med is not None else "–") + f" > clip_norm {cfg.get('clip_norm', 10.0):g}): expected, "
            "YOLO sums its loss over the batch, so its total gradient norm is far above Ultralytics' max_norm=10")


def lead_lines(summary: dict, records: Sequence[dict] = ()) -> list[str]:
    """The verdict's lines in order: the non-finite event, the run stopping early, the flags by kind (dying first) or
    the verdict without flags, what the evidence could not decide, frozen modules, the weakest layer and an
    always-active clip."""
    cfg = summary.get("config") or {}
    lines = []
    ev = summary.get("nonfinite_event")
    if ev:
        lines.append(ev["line"])
    if summary.get("complete") is False:
        lines.append("Training stopped before its end" + (f" ({summary['stopped_by']})" if summary.get("stopped_by")
                                                          else "") + ": this report covers the steps logged until then.")
    flags = summary.get("flags") or []
    for kind in ("dying", "exploding", "vanishing", "dead"):  # dying units explain the vanishing that follows them
        mods = sorted({f["module"] for f in flags if f["kind"] == kind})
        if not mods:
            continue
        active = sorted({f["module"] for f in flags if f["kind"] == kind and f.get("active", True)})
        if kind == "dying":
            worst = max((f for f in flags if f["kind"] == "dying"), key=lambda f: f["evidence"]["dead_fraction"])
            e = worst["evidence"]
            lines.append(f"dying units in {len(mods)} layer(s) ({', '.join(mods[:4])}{', ...' if len(mods) > 4 else ''})"
                         f": up to {100 * e['dead_fraction']:.0f}% dead channels in {worst['module']} ({e['activation']},"
                         f" {_trend(e['trend_per_sample'])})")
            continue
        shown = ", ".join(mods[:6]) + (f" (+{len(mods) - 6} more)" if len(mods) > 6 else "")
        lines.append(f"{kind}: {len(mods)} module(s), {shown}" + ("" if active else " (all cleared since)"))
    verdict = str(summary.get("verdict") or "")
    if not flags:
        lines.append(verdict if summary.get("too_few_steps") else f"No module flagged, {verdict}")
    lines += [gap_line(g) for g in summary.get("evidence_gaps") or [] if gap_line(g) not in verdict]
    fl = frozen_line(summary.get("frozen") or {})
    if fl:
        lines.append(fl)
    wl = weakest_line(summary.get("depth") or {}, cfg)
    if wl:
        lines.append(wl)
    cl = clip_line(records, cfg)
    if cl:
        lines.append(cl)
    return lines
