"""Depth summaries: the vanishing picture of a logged step (or a whole run) in a few numbers, for run-level curves
(W&B) and comparisons (ablations).

"Flow relative to the head" is a layer's ``flow_attenuation``: ‖dL/d out‖ of the layer over that of the head's output.
The *early layers* are the first quarter of the top-level layers (at least one; YOLO26n/YOLO11n: layers 0-5 of 24),
where vanishing gradients show first.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from ..fields import finite_or_none

EARLY_FRACTION = 0.25


def early_layers(n_layers: int) -> list[int]:
    """Indices of the early layers of a model with ``n_layers`` top-level layers (the last one is the head)."""
    if n_layers < 2:
        return []
    return list(range(max(1, round((n_layers - 1) * EARLY_FRACTION))))


def _finite(values) -> list[float]:
    return [f for f in map(finite_or_none, values) if f is not None]


def _median(values) -> float | None:
    vals = _finite(values)
    return statistics.median(vals) if vals else None


def step_depth(record: dict, header: dict) -> dict:
    """The depth summary of one ``step`` record (None where the record has no such value):

    - ``early_flow``: median flow relative to the head over the early layers;
    - ``weakest_flow`` and ``weakest_layer``: the smallest flow relative to the head of any layer but the head;
    - ``early_grad_to_weight``: median ‖grad‖/‖w‖ of the monitored modules in the early layers.
    """
    layers = list(header.get("layers") or [])
    early = set(early_layers(len(layers)))
    att = record.get("flow_attenuation") or []
    out: dict = {"early_flow": _median(att[i] for i in early if i < len(att)),
                 "weakest_flow": None, "weakest_layer": None}
    inner = [(f, i) for i, f in enumerate(map(finite_or_none, att[: max(0, len(layers) - 1)])) if f is not None]
    if inner:
        v, i = min(inner)
        out["weakest_flow"], out["weakest_layer"] = v, layers[i]
    li = header.get("layer_index") or []
    g2w = record.get("grad_to_weight") or []
    has = record.get("has_grad") or [True] * len(g2w)
    out["early_grad_to_weight"] = _median(
        g2w[m] for m in range(min(len(li), len(g2w), len(has))) if li[m] in early and has[m]
    )
    return out


def run_depth(records: Sequence[dict], header: dict) -> dict:
    """Medians over a run's logged steps of :func:`step_depth` (steps without a value are skipped), and the layer
    that was the weakest most often."""
    per_step = [step_depth(r, header) for r in records]
    weakest = [s["weakest_layer"] for s in per_step if s["weakest_layer"] is not None]
    return {
        "early_flow": _median(s["early_flow"] for s in per_step),
        "weakest_flow": _median(s["weakest_flow"] for s in per_step),
        "weakest_layer": max(set(weakest), key=weakest.count) if weakest else None,
        "early_grad_to_weight": _median(s["early_grad_to_weight"] for s in per_step),
    }


def layer_profile(records: Sequence[dict], header: dict, field: str = "flow_attenuation") -> list[dict]:
    """The depth profile of a per-layer field (default: flow relative to the head) over ``records``: one row per
    top-level layer with ``index``, ``layer``, and the ``median``/``min``/``max`` over the records where that layer has
    a finite value (``n`` of them; None when it has none, e.g. flow not sampled)."""
    layers = list(header.get("layers") or [])
    values: list[list[float]] = [[] for _ in layers]
    for rec in records:
        for i, f in enumerate(map(finite_or_none, (rec.get(field) or [])[: len(layers)])):
            if f is not None:
                values[i].append(f)
    return [
        {"index": i, "layer": layer, "median": statistics.median(vals) if vals else None,
         "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)}
        for i, (layer, vals) in enumerate(zip(layers, values))
    ]
