"""Activation health per top-level layer: saturated units (Sigmoid/Tanh-like) and dead units (ReLU-like).

Sampled on the forward passes of logged optimizer steps only: forward hooks are placed on the activation modules
when such a step's micro-batches start (:meth:`ActivationHealth.arm`) and removed after it, so unlogged steps run
hook-free. Ultralytics shares one activation module across layers (``Conv.default_act``), so a forward pre-hook on
each top-level layer tells the activation hook which layer is running.

What counts (``eps`` = ``health_eps``, a bound on the activation's derivative |f'(x)|):

- a unit (one activation value) is **saturated** when |f'(x)| < eps on a two-tailed activation (Sigmoid, Tanh,
  Hardsigmoid, Hardtanh, Softsign: both tails flat); ``act_saturated`` is their fraction of the layer's values;
- a channel is **dead** for a micro-batch when |f'(x)| < eps at every position of every image of the batch (for
  ReLU: zero output over the whole batch): no gradient passes it. ``act_dead`` is the fraction of the layer's
  (channel, activation call) pairs that are dead, over every elementwise activation kind.

The flat regions are found once per activation module by differentiating it on a dense grid (|x| <= 60), so any
elementwise ``torch.nn`` activation works (SiLU is flat below x ~ -9.0 at eps=1e-3, Sigmoid beyond |x| ~ 6.9,
Tanh beyond |x| ~ 4.1, ReLU below 0; LeakyReLU never). A test only compares x against those bounds: one or two
elementwise passes and a per-channel reduction per activation call, all on the device, synced with the logged
step's one transfer.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch import nn

from ..structure import activations
from ..structure.layout import top_layers
from .flow import warn_failed

ELEMENTWISE_TYPES = tuple(getattr(nn, name) for name in activations.ELEMENTWISE)
_GRID = 60.0


@dataclasses.dataclass(frozen=True)
class FlatRegions:
    """Where an activation's derivative is below ``eps``: x < left and/or x > right (None: that tail is not flat)."""

    name: str
    left: float | None
    right: float | None

    @property
    def saturating(self) -> bool:
        return self.left is not None and self.right is not None

    @property
    def can_die(self) -> bool:
        return self.left is not None or self.right is not None


def flat_regions(module: nn.Module, eps: float) -> FlatRegions:
    """Find the flat tails of an elementwise activation by autograd on a dense float64 grid."""
    m = copy.deepcopy(module).cpu().double()
    if hasattr(m, "inplace"):
        m.inplace = False
    xs = torch.linspace(-_GRID, _GRID, 240_001, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(m(xs).sum(), xs)
    small = (d.abs() < eps).numpy()
    x = xs.detach().numpy()
    left = right = None
    if small[0]:
        stop = int(np.argmin(small))  # first non-flat point from the left (0 if all flat: no such activation)
        left = float(x[stop - 1]) if stop > 0 else None
    if small[-1]:
        stop = int(np.argmin(small[::-1]))
        right = float(x[len(x) - stop]) if stop > 0 else None
    snap = lambda v: 0.0 if v is not None and abs(v) < 1e-6 else v  # noqa: E731 - ReLU's kink at exactly 0
    return FlatRegions(type(module).__name__, snap(left), snap(right))


class ActivationHealth:
    """Saturated / dead activation units per top-level layer, on sampled forward passes.

    Args:
        model: an unwrapped Ultralytics model.
        eps: derivative bound below which a unit counts as saturated / passing no gradient.
    """

    def __init__(self, model: nn.Module, eps: float = 1e-3):
        layers = top_layers(model)
        if layers is None or len(layers) == 0:
            raise ValueError("activation health needs an Ultralytics model (model.model is the list of layers)")
        self.layers = layers
        self.n = len(layers)
        self.eps = eps
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self._regions: dict[int, FlatRegions] = {}
        self._modules: dict[int, nn.Module] = {}
        self.layer_acts: list[list[str]] = []
        cache: dict[tuple, FlatRegions] = {}
        for layer in layers:
            names = set()
            for m in layer.modules():
                if not isinstance(m, ELEMENTWISE_TYPES):
                    continue
                if getattr(m, "inplace", False) and not isinstance(m, nn.ReLU):
                    continue  # the input is overwritten by the output: its derivative cannot be recovered
                key = (type(m), repr(m))
                if key not in cache:
                    cache[key] = flat_regions(m, eps)
                if cache[key].can_die:
                    self._regions[id(m)] = cache[key]
                    self._modules[id(m)] = m
                names.add(type(m).__name__)
            self.layer_acts.append(sorted(names))
        self.armed = False
        self.failed = False  # a hook raised: the signal is off for the rest of the run (training is never stopped)
        self._handles: list = []
        self._cur = -1
        self._reset()

    def _reset(self) -> None:
        self._sat: list[tuple[int, torch.Tensor]] = []
        self._dead: list[tuple[int, torch.Tensor]] = []
        self._sat_elems = np.zeros(self.n, dtype=np.float64)
        self._units = np.zeros(self.n, dtype=np.float64)

    # ------------------------------------------------------------------ arming
    def arm(self, on: bool) -> None:
        if on == self.armed:
            return
        if on:
            for i, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_pre_hook(self._enter(i)))
                self._handles.append(layer.register_forward_hook(self._leave))
            for mid, m in self._modules.items():
                self._handles.append(m.register_forward_hook(self._act_hook))
        else:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._cur = -1
        self.armed = on

    def remove(self) -> None:
        self.arm(False)

    def _enter(self, i: int):
        def pre(module, inputs):
            self._cur = i

        return pre

    def _leave(self, module, inputs, output):
        self._cur = -1

    def _act_hook(self, module, inputs, output):
        i = self._cur
        if self.failed or i < 0 or not module.training or not torch.is_grad_enabled() or not inputs:
            return
        try:
            self._measure(i, module, inputs[0])
        except Exception as e:  # noqa: BLE001 - inside the trainer's forward: never raise
            self.failed = True
            warn_failed("activation-health", e)

    def _measure(self, i: int, module: nn.Module, x) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point() or x.numel() == 0:
            return
        r = self._regions[id(module)]
        x = x.detach()  # records no graph: no no_grad() context (its cost shows at small batches)
        c = x.shape[1]
        other = tuple(d for d in range(x.dim()) if d != 1)
        if r.saturating:
            flat = (x < r.left) | (x > r.right)
            self._sat.append((i, flat.sum(dtype=torch.float32)))
            self._sat_elems[i] += x.numel()
            dead = flat.all(dim=0).reshape(c, -1).all(dim=1).sum(dtype=torch.float32)
        elif r.left is not None:
            dead = (x.amax(dim=other) <= r.left).sum(dtype=torch.float32)
        else:
            dead = (x.amin(dim=other) >= r.right).sum(dtype=torch.float32)
        self._dead.append((i, dead))
        self._units[i] += c

    # ------------------------------------------------------------------ per step
    def _per_layer(self, pairs) -> torch.Tensor:
        out = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        if pairs:
            key = tuple(i for i, _ in pairs)  # the same every sampled step: one host-to-device copy, cached
            cache = self.__dict__.setdefault("_idx_cache", {})
            if key not in cache:
                if len(cache) > 64:
                    cache.clear()
                cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
            out.index_add_(0, cache[key], torch.stack([v for _, v in pairs]).to(self.device))
        return out

    def device_parts(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"act_sat": self._per_layer(self._sat), "act_dead": self._per_layer(self._dead)}

    def host_fields(self, host: dict[str, np.ndarray]) -> dict:
        sat_n, units = self._sat_elems.copy(), self._units.copy()
        self._reset()
        if "act_sat" not in host or self.failed:
            return {"act_saturated": [None] * self.n, "act_dead": [None] * self.n}
        sat = np.asarray(host["act_sat"], dtype=float)
        dead = np.asarray(host["act_dead"], dtype=float)
        return {
            "act_saturated": [float(s / e) if e > 0 and math.isfinite(s) else None for s, e in zip(sat, sat_n)],
            "act_dead": [float(d / u) if u > 0 and math.isfinite(d) else None for d, u in zip(dead, units)],
        }
