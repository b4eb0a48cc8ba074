"""Non-finite gradients as ONE event with an origin: where the first non-finite step's NaN/Inf entered, which layers
it reached, and what followed (plain Python over logged ``step`` records and the log header; no torch).

The origin, checked in this order on the first step with a non-finite value:

- **forward**: some layer's output was non-finite (``out_nonfinite``, checked on every forward pass of logged
  steps): the origin is the first such layer in forward order (everything after it, and the whole backward pass,
  is non-finite as a consequence);
- **the loss itself**: every layer's output was finite but the gradient at the head's output was not;
- **backward**: the layer nearest the loss whose output gradient was non-finite (``grad_out_nonfinite``, from the
  gradient-flow passes), else the layer nearest the loss whose parameter gradients were non-finite.

What followed, from the later records: the weights non-finite at the next logged step (the optimizer applied the
gradient), AMP's ``GradScaler`` skipping the step and lowering its scale (expected under fp16 and no alarm unless it
repeats), Ultralytics' NaN recovery reloading ``last.pt`` (``reloaded``), and the first finite step after it.
"""

from __future__ import annotations

from typing import Sequence

NONFINITE_FIELDS = ("out_nonfinite", "grad_out_nonfinite", "reloaded")
"""The per-step record fields this module reads beyond the module statistics (declared in the record layer)."""


def _bad(v) -> bool:
    return v is None  # a step record is plain: a non-finite value is None (yolo_gradmon.fields)


def _bad_layers(values) -> list[int] | None:
    """Indices whose per-layer flag is set; None when the record has no such field."""
    if values is None:
        return None
    return [i for i, v in enumerate(values) if v]


def step_is_nonfinite(rec: dict) -> bool:
    """Whether a logged step saw a non-finite gradient or a non-finite layer output."""
    grads = rec.get("grad_norm") or []
    has = rec.get("has_grad") or [True] * len(grads)
    if any(int(n or 0) > 0 for n in rec.get("nonfinite") or []):
        return True
    if any(h and _bad(g) for h, g in zip(has, grads)):
        return True
    return bool(_bad_layers(rec.get("out_nonfinite")))


def _weights_nonfinite(rec: dict, trainable: Sequence[bool]) -> int:
    if rec.get("weights_measured") is False:  # sampled: not measured at this step (always measured after a NaN step)
        return 0
    w = rec.get("weight_norm") or []
    return sum(1 for i, v in enumerate(w) if (i >= len(trainable) or trainable[i]) and _bad(v))


def _span(names: list[str]) -> str:
    if not names:
        return "no layer"
    return names[0] if len(names) == 1 else f"{len(names)} layers ({names[0]}–{names[-1]})"


def locate_origin(rec: dict, header: dict) -> dict:
    """``direction`` (forward / loss / backward / unknown), ``origin`` (a layer name, None for the loss or unknown),
    ``how`` (which signal located it) and ``reached`` (the layer names with a non-finite value) of one record."""
    names = list(header.get("layers") or [])
    head = len(names) - 1
    li = list(header.get("layer_index") or [])
    grads = rec.get("grad_norm") or []
    has = rec.get("has_grad") or [True] * len(grads)
    counts = rec.get("nonfinite") or [0] * len(grads)
    mod_bad = sorted({li[i] for i, (h, g) in enumerate(zip(has, grads))
                      if i < len(li) and li[i] >= 0 and h and (_bad(g) or int(counts[i] or 0) > 0)})
    out_bad = _bad_layers(rec.get("out_nonfinite"))
    gout_bad = _bad_layers(rec.get("grad_out_nonfinite")) or []
    name = lambda j: names[j] if 0 <= j < len(names) else str(j)  # noqa: E731
    reached = sorted(set(mod_bad) | set(gout_bad) | set(out_bad or []))
    ev = {"reached": [name(j) for j in reached]}
    if out_bad:  # everything downstream of the origin and the whole backward pass follow from it
        return {"reached": [name(j) for j in out_bad], "direction": "forward", "origin": name(min(out_bad)),
                "how": "first non-finite layer output"}
    if head >= 0 and head in gout_bad or (mod_bad and max(mod_bad) == head):
        if out_bad is not None:  # every output was checked and finite
            return {**ev, "direction": "loss", "origin": None, "how": "finite outputs, non-finite loss gradient"}
        return {**ev, "direction": "unknown", "origin": None,
                "how": "the loss or a forward output (layer outputs not checked on this step)"}
    if gout_bad:
        return {**ev, "direction": "backward", "origin": name(max(gout_bad)),
                "how": "non-finite output gradient nearest the loss"}
    if mod_bad:
        return {**ev, "direction": "backward", "origin": name(max(mod_bad)),
                "how": "non-finite parameter gradients nearest the loss (output gradients not sampled on that pass)"}
    return {**ev, "direction": "unknown", "origin": None, "how": "no layer-level signal"}


def nonfinite_event(header: dict, records: Sequence[dict], complete: bool = True) -> dict | None:
    """The run's non-finite event (None when every logged step was finite): step, epoch, origin (see
    :func:`locate_origin`), what followed, whether it is an alarm, and its one ``line``."""
    records = list(records)
    first = next((k for k, r in enumerate(records) if step_is_nonfinite(r)), None)
    if first is None:
        return None
    rec = records[first]
    where = locate_origin(rec, header)
    trainable = list(header.get("trainable") or [])
    later = records[first + 1 :]
    followed = []
    bad_steps = [int(r["step"]) for r in records if step_is_nonfinite(r)]
    amp_skips = [int(r["step"]) for r in records if r.get("amp_skipped")]
    if rec.get("amp_skipped"):
        followed.append("AMP skipped the step and lowered its scale" +
                        (" (expected under fp16)" if len(amp_skips) == 1 else f" ({len(amp_skips)} skipped steps: "
                                                                              "repeated overflow)"))
    nxt = later[0] if later else None
    if nxt is not None and _weights_nonfinite(nxt, trainable):
        followed.append(f"weights of {_weights_nonfinite(nxt, trainable)} module(s) non-finite at step {nxt['step']} "
                        "(the optimizer applied it)")
    reload = next((r for r in later if r.get("reloaded")), None)
    if reload is not None:
        followed.append(f"Ultralytics reloaded last.pt before step {reload['step']}")
    finite_again = next((r for r in later if not step_is_nonfinite(r)), None)
    if finite_again is not None:
        followed.append(f"finite again from step {finite_again['step']}")
    elif not complete:
        followed.append("training stopped before any finite step")
    if len(bad_steps) > 1:
        followed.append(f"{len(bad_steps)} non-finite logged steps in all")
    alarm = not (rec.get("amp_skipped") and len(amp_skips) == 1 and len(bad_steps) == 1)
    return {"step": int(rec["step"]), "epoch": rec.get("epoch"), **where, "followed": followed,
            "nonfinite_steps": bad_steps, "amp_skipped_steps": amp_skips, "alarm": alarm,
            "line": event_line(int(rec["step"]), rec.get("epoch"), where, followed, alarm)}


def event_line(step: int, epoch, where: dict, followed: list[str], alarm: bool = True) -> str:
    """The one line a user reads first: when, where it entered, what it reached, what followed."""
    d, o = where["direction"], where.get("origin")
    entry = {"forward": f"in the forward pass at {o}'s output (then the whole backward pass)",
             "loss": "in the loss itself (every layer output finite, the loss gradient not)",
             "backward": f"in the backward pass at {o}'s output gradient",
             }.get(d, f"origin not located ({where.get('how')})")
    head = "Non-finite gradients" if alarm else "AMP overflow (not an alarm)"
    text = f"{head} first at step {step}" + (f" (epoch {epoch})" if epoch is not None else "") + f": entered {entry}"
    text += ", reached " + ("the outputs of " if d == "forward" else "") + _span(where.get("reached") or [])
    return text + ("; then " + "; ".join(followed) if followed else "") + "."
