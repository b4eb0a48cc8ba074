"""Ground truth for the detector: plant a gradient choke, amplification or NaN at one layer's output, and compute
which layers must then be flagged.

    >>> from ultralytics import YOLO
    >>> from yolo_gradmon import GradientMonitor
    >>> from yolo_gradmon.testing import GradientPlant, expected_vanishing
    >>> model = YOLO("yolo11n.yaml")
    >>> plant = GradientPlant(layer=6, factor=1e-6).attach(model)   # dL/d out_6 is multiplied by 1e-6
    >>> mon = GradientMonitor(wandb=False).attach(model)
    >>> model.train(data="coco8.yaml", epochs=3, batch=1, nbs=1)
    >>> truth = expected_vanishing(plant.model, 6)                  # every layer whose gradient passes only via 6

The plant is a forward hook on ``model.model[layer]`` placed *first* (``prepend=True``) that registers a tensor hook
on the layer's output tensor(s): in the backward pass it multiplies the gradient arriving at that output by
``factor`` (or replaces it by NaN) before anything else sees it, so the layer itself and everything that reaches the
head only through it receive the scaled gradient — what a real cut (a saturated gate, a stray ``* 1e-6``, a wrong
``detach``) does. Layers whose output also reaches the head by a skip/concat route keep their gradient.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from ultralytics.utils.torch_utils import unwrap_model

from .config import GradmonConfig
from .judge.rules import running_median
from .measure.flow import output_tensors
from .measure.noise import NoiseProbe
from .measure.params import GradientCapture
from .record.logfile import step_record
from .structure.graph import consumers, cut_ratio
from .structure.graph import upstream_only
from .structure.layout import build_layout, layer_names, layer_sources, top_layers


class GradientPlant:
    """Scale (or NaN) the gradient at ``layer``'s output on training backward passes ``start <= n < stop``.

    Args:
        layer: top-level layer index (``model.model[layer]``).
        factor: multiplier of dL/d(output): ``1e-6`` plants a choke, ``1e4`` an amplification; ``math.nan`` a NaN.
        start: first training forward/backward pass (0-based, counted over the whole run) to affect.
        stop: first pass no longer affected (None: until the end).
        forward: multiply the layer's *output* by ``factor`` in the forward pass instead (``math.nan``: a forward NaN
            entering at that layer; everything after it and the whole backward pass follow).
    """

    def __init__(self, layer: int, factor: float = 1e-6, start: int = 0, stop: int | None = None,
                 forward: bool = False):
        self.layer = int(layer)
        self.forward = bool(forward)
        self.factor = float(factor)
        self.start = int(start)
        self.stop = stop
        self.passes = 0  # training forward passes seen
        self.applied = 0  # backward passes changed
        self.model: nn.Module | None = None
        self._handle = None

    # ------------------------------------------------------------------ attaching
    def attach(self, yolo) -> "GradientPlant":
        """Register on an Ultralytics ``YOLO`` model: the hook goes on the trainer's model (the trainer builds its own)
        at each epoch start and comes off at its end; ``prepend=True`` puts it before the monitor's hooks."""
        yolo.add_callback("on_train_epoch_start", self._on_epoch_start)
        yolo.add_callback("on_train_epoch_end", lambda trainer: self.remove())
        yolo.add_callback("on_train_end", lambda trainer: self.remove())
        return self

    def _on_epoch_start(self, trainer) -> None:
        # hooked for the training loop only: Ultralytics deep-copies and saves the model between epochs
        self.hook_model(unwrap_model(trainer.model))

    def hook_model(self, model: nn.Module) -> "GradientPlant":
        """Place the hook on an (unwrapped) Ultralytics model directly."""
        self.remove()
        layers = top_layers(model)
        if layers is None or not 0 <= self.layer < len(layers):
            raise ValueError(f"layer {self.layer} is not a top-level layer of {type(model).__name__}")
        self.model = model
        self._handle = layers[self.layer].register_forward_hook(self._forward_hook, prepend=True)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------------ hooks
    def _active(self) -> bool:
        return self.passes >= self.start and (self.stop is None or self.passes < self.stop)

    def _forward_hook(self, module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):
            return
        active = self._active()
        self.passes += 1
        if not active:
            return
        if self.forward:
            if isinstance(output, torch.Tensor):
                self.applied += 1
                return output * self.factor  # replaces the output: later hooks and layers see it
            return None
        ts = output_tensors(inputs, output)
        if ts:
            self.applied += 1
        for t in ts:
            t.register_hook(self._scale)

    def _scale(self, grad: torch.Tensor) -> torch.Tensor:
        if math.isnan(self.factor):
            return torch.full_like(grad, float("nan"))
        return grad * self.factor


def noise_capture(model: nn.Module) -> tuple[GradientCapture, NoiseProbe]:
    """The monitor's noise-scale path without a trainer or the depth hooks: a layer-granularity capture (no update
    ratio) whose one sync carries an armed :class:`~yolo_gradmon.measure.noise.NoiseProbe`, as
    :class:`~yolo_gradmon.measure.probe.ModelProbe` wires them. Call ``noise.start_window()`` and ``noise.read_small()``
    around the micro-batches, then ``capture.step(...)``."""
    layout = build_layout(model, "layer")
    capture = GradientCapture(layout, update_ratio=False)
    noise = NoiseProbe(model, layout)
    noise.capture = capture
    capture.extra_sources = [noise]
    noise.arm(True)
    return capture, noise


def noise_windows(model: nn.Module, n_windows: int, k: int, micro_batch: Callable[[], None]) -> list[dict]:
    """``n_windows`` optimizer steps of ``k`` micro-batches each (``micro_batch()`` runs one forward/backward), read as
    the monitor reads them: the first micro-batch's gradient before the second pass, the accumulated one at the step.
    Returns the plain step records (their ``gns_*`` fields are the noise scale's raw material)."""
    capture, noise = noise_capture(model)
    records = []
    for step in range(1, n_windows + 1):
        model.zero_grad(set_to_none=True)
        noise.start_window()
        for j in range(k):
            if j == 1:
                noise.read_small()
            micro_batch()
        done = capture.step(lambda: None, step=step, epoch=1, logged=True, update=False, lr=[0.0])
        records += [step_record(s, None) for s in done]
    records += [step_record(s, None) for s in capture.flush()]
    noise.remove()
    return records


# ---------------------------------------------------------------------------------------------- ground truth
def expected_vanishing(model: nn.Module, layer: int, names: list[str] | None = None) -> list[str]:
    """The layer keys (``"06.C3k2"``) a choke at ``layer``'s output must make vanish: ``layer`` and every layer all of
    whose paths to the head pass through it (from each layer's ``.f``), restricted to layers with trainable
    parameters (parameter-free layers such as Concat/Upsample are never monitored modules)."""
    model = unwrap_model(model)
    names = names or layer_names(model)
    layers = top_layers(model)
    inside = upstream_only(layer_sources(model), layer)
    return [names[j] for j in inside if any(p.requires_grad for p in layers[j].parameters())]


def precision_recall(flagged: set[str] | list[str], expected: set[str] | list[str]) -> tuple[float, float]:
    """Precision and recall of flagged module names against the expected set (1.0 for empty-vs-empty)."""
    flagged, expected = set(flagged), set(expected)
    tp = len(flagged & expected)
    precision = tp / len(flagged) if flagged else (1.0 if not expected else 0.0)
    recall = tp / len(expected) if expected else 1.0
    return precision, recall


# ---------------------------------------------------------------------------------------------- calibration numbers
def _arr(records: list[dict], key: str) -> np.ndarray:
    rows = [[np.nan if v is None else float(v) for v in list(r[key])] for r in records if r.get(key) is not None]
    return np.array(rows, dtype=float) if rows else np.zeros((0, 0))


def calibration_stats(records: list[dict], header: dict) -> dict:
    """The numbers the thresholds are calibrated on, over every logged step of a run (healthy runs: how close they
    come to each threshold; planted runs: how far beyond it they go).

    - ``min_flow_attenuation``: smallest ‖dL/d out‖/‖dL/d out_head‖ of any non-head layer (and the layer);
    - ``min_local_flow_ratio``: smallest ratio of a layer's output gradient to the largest at its consumers' outputs
      (head excluded), i.e. how close a healthy run comes to a "cut";
    - ``min_grad_to_weight``, ``max_grad_norm_over_clip``, ``max_spike_factor`` (a module's norm over the exploding
      rule's running median of its previous logged norms), ``max_act_dead``, ``max_act_saturated``,
      ``min_update_to_weight`` (outside warm-up).
    """
    layers = list(header.get("layers") or [])
    modules = list(header.get("modules") or [])
    sources = header.get("layer_from") or []
    clip = float((header.get("config") or {}).get("clip_norm", 10.0))
    out: dict = {"steps": len(records), "backward_passes": sum(int(r.get("flow_backwards") or 0) for r in records)}

    def argmin(a, names):
        if a.size == 0 or not np.isfinite(a).any():
            return None, None
        col = np.where(np.isfinite(a), a, np.inf).min(axis=0)
        k = int(np.argmin(col))
        return float(col[k]), names[k] if k < len(names) else k

    att = _arr(records, "flow_attenuation")
    if att.size:
        out["min_flow_attenuation"], out["min_flow_attenuation_layer"] = argmin(att[:, :-1], layers)
        out["max_flow_attenuation"] = float(np.nanmax(att[:, :-1]))
        fl = _arr(records, "flow_norm")
        cons, head = consumers(sources), len(layers) - 1
        loc = np.array([[_nan(cut_ratio(row, cons, j, head)) for j in range(len(row))] for row in fl.tolist()])
        out["min_local_flow_ratio"], out["min_local_flow_ratio_layer"] = argmin(loc, layers)
    gw = _arr(records, "grad_to_weight")
    out["min_grad_to_weight"], out["min_grad_to_weight_module"] = argmin(gw, modules)
    g = _arr(records, "grad_norm")
    out["max_grad_norm_over_clip"] = float(np.nanmax(g)) / clip if g.size else None
    spike, where = 0.0, None
    min_steps = int((header.get("config") or {}).get("min_steps", GradmonConfig.min_steps))
    for j in range(g.shape[1] if g.size else 0):
        hist = []
        for t, v in enumerate(g[:, j]):
            if not np.isfinite(v):
                continue
            med = running_median(hist, min_steps)  # the exploding rule's own running median
            if med is not None and med > 0 and v / med > spike:
                spike, where = v / med, (modules[j] if j < len(modules) else j, int(records[t]["step"]))
            hist.append(v)
    out["max_spike_factor"], out["max_spike_at"] = spike, where
    warm = np.array([bool(r.get("warmup")) for r in records])
    u = _arr(records, "update_to_weight")
    out["min_update_to_weight"] = float(np.nanmin(u[~warm])) if u.size and (~warm).any() else None
    for key in ("act_dead", "act_saturated"):
        a = _arr(records, key)
        out[f"max_{key}"] = float(np.nanmax(a)) if a.size and np.isfinite(a).any() else None
    return out


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def flow_profile(records: list[dict]) -> list[float | None]:
    """Median over logged steps of each layer's flow attenuation (‖dL/d out‖ relative to the head)."""
    att = _arr(records, "flow_attenuation")
    if not att.size:
        return []
    with np.errstate(all="ignore"):
        med = np.nanmedian(att, axis=0)
    return [float(v) if np.isfinite(v) else None for v in med]
