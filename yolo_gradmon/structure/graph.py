"""The top-level layer graph of an Ultralytics model as plain lists of indices (no torch): who consumes whose output,
which layers reach the head only through one layer, and the "cut" ratio between a layer and its consumers.

``sources[i]`` lists the layers whose outputs layer ``i`` consumes (Ultralytics' ``.f``, resolved; see
:func:`yolo_gradmon.structure.layout.layer_sources`); the last layer is the head, which feeds the loss.
"""

from __future__ import annotations

from typing import Sequence

from ..fields import finite_or_none


def consumers(sources: Sequence[Sequence[int]]) -> list[list[int]]:
    """For each layer, the layers that consume its output."""
    cons: list[list[int]] = [[] for _ in sources]
    for i, src in enumerate(sources):
        for s in src:
            cons[s].append(i)
    return cons


def upstream_only(sources: Sequence[Sequence[int]], k: int) -> list[int]:
    """Layers all of whose paths to the head pass through layer ``k``'s output, ``k`` included.

    A layer qualifies when it is ``k`` or when every consumer of its output qualifies (its gradient then arrives only
    through ``k``'s output). Skip and concat routes that bypass ``k`` disqualify a layer: e.g. a backbone stage feeding
    both ``k`` and a neck ``Concat`` keeps its gradient.
    """
    n = len(sources)
    cons = consumers(sources)
    inside = [False] * n
    inside[k] = True
    for j in range(k - 1, -1, -1):  # consumers have larger indices: one backward sweep settles every layer
        inside[j] = bool(cons[j]) and all(inside[c] for c in cons[j])
    return [j for j in range(n) if inside[j]]


def downstream(layer: int, sources: Sequence[Sequence[int]]) -> list[int]:
    """``layer`` and every layer its output reaches on the way to the head."""
    cons = consumers(sources)
    seen, stack = {layer}, [layer]
    while stack:
        for c in cons[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return sorted(seen)


def inner_consumers(cons: Sequence[Sequence[int]], k: int, head: int) -> list[int]:
    """The consumers of layer ``k`` other than the head (the head's output is the loss gradient, not a layer-to-layer
    step, so it never takes part in a cut)."""
    return [c for c in cons[k] if c != head]


def cut_ratio(values: Sequence[float | None], cons: Sequence[Sequence[int]], k: int, head: int) -> float | None:
    """Layer ``k``'s output-gradient value over the largest at the outputs of its non-head consumers: how much of the
    gradient survives the step back across ``k``'s consumers. None where it is undefined (no consumer value, a
    missing value, or all consumers at zero)."""
    fk = finite_or_none(values[k])
    down = [finite_or_none(values[c]) for c in inner_consumers(cons, k, head)]
    down = [d for d in down if d is not None]
    if fk is None or not down or max(down) <= 0:
        return None
    return fk / max(down)
