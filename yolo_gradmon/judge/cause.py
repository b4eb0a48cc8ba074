"""Naming the likely cause of a vanishing flag: plain Python over one logged step's depth signals and the log
header's layer graph (no torch, no hooks)."""

from __future__ import annotations

from ..structure.activations import SATURATING
from ..structure.graph import consumers, cut_ratio, downstream, inner_consumers, upstream_only
from .dying import DYING_KINDS


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def likely_cause(layer: int, view, graph: dict, cfg) -> str:
    """A one-line diagnosis of why ``layer``'s gradient vanishes, from the step's flow profile and activation health
    on the layers between it and the head (``graph``: the log header's ``layers``/``layer_from``/``layer_acts``).

    Checked in order: saturated units (>= ``cause_saturated``), dead units (>= ``cause_dead``; ReLU-family layers
    from ``dying_dead`` on: dying units), a cut (the gradient at one layer's output below ``vanish_flow_cut`` x the
    largest at its consumers' outputs, the head excluded), saturating activations (Sigmoid/Tanh family: derivative
    <= 0.25 / 1 per layer) on the path; otherwise attenuation spread over depth. A cut or a weak head input names
    only a layer that ``layer``'s own gradient must pass (every path from it to the head goes through it), so two
    flags share a cause only when their paths do.
    """
    names = list(graph.get("layers") or [])
    sources = graph.get("layer_from") or []
    acts = graph.get("layer_acts") or [[] for _ in names]
    if not names or not sources or not 0 <= layer < len(names):
        return "unknown (no layer graph in the log)"
    path = downstream(layer, sources)
    sat = list(getattr(view, "act_saturated", None) or [None] * len(names))
    dead = list(getattr(view, "act_dead", None) or [None] * len(names))
    att = list(getattr(view, "flow_attenuation", None) or [None] * len(names))
    out = []

    def worst(values, thr):
        hits = sorted(((values[j], j) for j in path if values[j] is not None and values[j] >= thr), reverse=True)
        if not hits:
            return None
        shown = ", ".join(f"{_pct(v)} in {names[j]}" for v, j in hits[:3])
        return shown + (f" (+{len(hits) - 3} more layers)" if len(hits) > 3 else "")

    s = worst(sat, cfg.cause_saturated)
    if s:
        kinds = sorted({a for j in path for a in acts[j] if a in SATURATING})
        out.append(f"saturated {'/'.join(kinds) or 'activation'} units: {s}")
    d = worst(dead, cfg.cause_dead)
    if d:
        out.append(f"dead activation units (no gradient over a whole batch): {d}")
    else:
        dying_bound = getattr(cfg, "dying_dead", None)
        relu_path = [j for j in path if set(acts[j]) & DYING_KINDS]
        hits = sorted(((dead[j], j) for j in relu_path if dead[j] is not None and dying_bound is not None
                       and dead[j] >= dying_bound), reverse=True)
        if hits:
            kinds = sorted({a for j in relu_path for a in acts[j] if a in DYING_KINDS})
            shown = ", ".join(f"{_pct(v)} in {names[j]}" for v, j in hits[:3])
            out.append(f"dying {'/'.join(kinds)} units on its path: {shown}"
                       + (f" (+{len(hits) - 3} more layers)" if len(hits) > 3 else ""))
    cons = consumers(sources)
    head = len(names) - 1
    cuts, weak_from_head = [], []
    for j in path:
        if att[j] is None or not cons[j] or j == head or layer not in upstream_only(sources, j):
            continue  # not a layer this one's gradient must pass
        inner = inner_consumers(cons, j, head)
        ratio = cut_ratio(att, cons, j, head)
        if ratio is not None:
            if ratio < cfg.vanish_flow_cut:
                cuts.append((ratio, j, inner))
        elif not inner and att[j] < cfg.vanish_flow_attenuation:
            weak_from_head.append((att[j], j))
    if cuts:
        ratio, j, inner = min(cuts)
        out.append(f"gradient cut at {names[j]}'s output: {ratio:.1e}x the gradient at its consumers' outputs "
                   f"({', '.join(names[c] for c in inner)})")
    elif weak_from_head:
        a, j = min(weak_from_head)
        out.append(f"{names[j]} feeds only the head and receives {a:.1e}x the head's output gradient")
    if not out:
        kinds = sorted({a for j in path for a in acts[j] if a in SATURATING})
        if kinds:
            out.append(f"saturating activation on the path to the head ({'/'.join(kinds)}: derivative <= "
                       f"{'0.25' if kinds == ['Sigmoid'] else '1'} per layer), no unit past the saturation bound")
        else:
            own = att[layer] if layer < len(att) else None
            mine = f" (its output gradient: {own:.1e}x the head's)" if own is not None else ""
            out.append(f"no saturated or dead units and no single cut on its path: attenuation spread over depth{mine}")
    return "; ".join(out)

