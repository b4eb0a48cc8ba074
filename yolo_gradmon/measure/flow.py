"""Gradient flow through depth: the norm of the back-propagated gradient at every top-level layer's output.

For each top-level layer ``model.model[i]`` a forward hook registers a tensor hook on the layer's output
tensor(s); during the backward pass that tensor hook receives dL/d(output) — the total over every consumer of
the output (skip and concat routes included), i.e. exactly what back-propagates into the layer — and keeps its
float32 L2 norm on the device. Nothing is synced: the per-layer values of the backward passes that belong to a
logged optimizer step travel with that step's one device-to-host transfer (:class:`~yolo_gradmon.measure.params.
GradientCapture` ``extra_sources``).

Per logged optimizer step, per layer (aligned with the header's ``layers``):

- ``flow_norm``: RMS over the step's backward passes (its ``accumulate`` micro-batches) of ‖dL/d out‖₂,
  divided by the AMP ``GradScaler`` scale in force during that backward (so AMP and FP32 runs compare);
- ``flow_attenuation``: ‖dL/d out_i‖ / ‖dL/d out_head‖ (the head is the last layer), the *largest* value over
  the step's backward passes: below a threshold means every backward pass of the step was below it, which lets
  the rules count backward passes where optimizer steps are scarce;
- ``flow_backwards``: the number of backward passes aggregated.

Layers whose output does not require a gradient (frozen prefixes, parameter-free layers fed only by them) or that
return their input unchanged have no value (null). The head's own output dict also carries its *input* feature
maps (``feats``); tensors that are inputs of a layer are never counted as its output.

The hooks exist only for the forward/backward passes of logged steps (:meth:`FlowHooks.arm`); in between the
model runs hook-free. Ultralytics' in-place list updates compose with this (a tensor hook registered before an
in-place change of that tensor receives the gradient of the value it was registered on).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..config import PREFIX
from ..structure.layout import layer_names, top_layers
from .layer_hooks import ArmedLayerHooks


# ---------------------------------------------------------------------------------------------- tensors of outputs
def _tensors(obj, depth: int = 0) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o, depth + 1)


def output_tensors(inputs, output) -> list[torch.Tensor]:
    """The tensors a layer produced that carry a gradient: requiring grad, not one of the layer's inputs, unique."""
    ins = {id(t) for t in _tensors(inputs)}
    seen, out = set(), []
    for t in _tensors(output):
        if t.requires_grad and id(t) not in ins and id(t) not in seen and t.is_floating_point():
            seen.add(id(t))
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------- the hooks
class FlowHooks(ArmedLayerHooks):
    """On-device, per-backward-pass norms of dL/d(output) of every top-level layer of ``model``.

    Args:
        model: an unwrapped Ultralytics model (``model.model`` is the layer list).
        scale_fn: returns the AMP ``GradScaler``'s scale as a device tensor, or None without AMP scaling.
    """

    def __init__(self, model: nn.Module, scale_fn: Callable[[], torch.Tensor | None] | None = None):
        layers = top_layers(model)
        if layers is None or len(layers) == 0:
            raise ValueError("gradient flow needs an Ultralytics model (model.model is the list of layers)")
        super().__init__()
        self.model = model
        self.layers = layers
        self.names = layer_names(model)
        self.n = len(layers)
        self.head = self.n - 1
        self.scale_fn = scale_fn or (lambda: None)
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.failed = False  # a hook raised: the signal is off for the rest of the run (training is never stopped)
        self._reset_step()
        self._reset_backward()

    def _fail(self, e: Exception) -> None:
        if not self.failed:
            self.failed = True
            warn_failed("gradient flow", e)

    # ------------------------------------------------------------------ arming
    def _on_disarm(self) -> None:
        self.finalize()  # the last backward pass of the armed period

    # ------------------------------------------------------------------ hooks
    def _start_pass(self, module, inputs):
        if self.failed or not (torch.is_grad_enabled() and module.training):
            return
        try:
            self.finalize()  # the previous forward's backward pass is complete when the next forward starts
            if not self.armed:
                return  # registered but idle (a logged step's pass without flow): the layer hooks see no open pass
            self._scale = self.scale_fn()
            if self._scale is not None:
                self._scale = self._scale.detach().clone()  # the scaler updates its scale in place later
            self._pass_open = True
        except Exception as e:  # noqa: BLE001 - inside the trainer's forward: never raise
            self._fail(e)

    def _forward_hook(self, i: int):
        def hook(module, inputs, output):
            if self.failed or not (self._pass_open and torch.is_grad_enabled()):
                return
            try:
                ts = output_tensors(inputs, output)
                if ts:
                    self._registered[i] = True
                    for t in ts:
                        t.register_hook(self._grad_hook(i))
            except Exception as e:  # noqa: BLE001
                self._fail(e)

        return hook

    def _grad_hook(self, i: int):
        def hook(grad):
            if grad is None or self.failed:
                return  # returns None: the gradient is observed, never changed
            try:
                self._norms.append(torch.linalg.vector_norm(grad.detach(), 2, dtype=torch.float32))
                self._index.append(i)
            except Exception as e:  # noqa: BLE001 - inside the trainer's backward: never raise
                self._fail(e)

        return hook

    # ------------------------------------------------------------------ per pass / per step
    def _reset_backward(self) -> None:
        self._norms: list[torch.Tensor] = []
        self._index: list[int] = []
        self._registered = [False] * self.n
        self._scale: torch.Tensor | None = None
        self._pass_open = False

    def _reset_step(self) -> None:
        self._sumsq = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        self._maxatt = torch.full((self.n,), float("nan"), dtype=torch.float32, device=self.device)
        self._present = np.ones(self.n, dtype=bool)
        self._passes = 0

    def finalize(self) -> None:
        """Fold the last backward pass into the step's buffers (on the device, no sync)."""
        if not self._pass_open:
            return
        if not self._index:  # the forward ran but no backward reached any layer (e.g. an OOM retry)
            self._reset_backward()
            return
        with torch.no_grad():
            idx = self._index_tensor(tuple(self._index))
            norms = torch.stack(self._norms).to(self.device)
            sq = torch.zeros(self.n, dtype=torch.float32, device=self.device).index_add_(0, idx, norms * norms)
            if self._scale is not None:
                sq = sq / self._scale.double().square().float()
            att = (sq / sq[self.head]).sqrt()  # NaN/inf where the head got no gradient: ignored by fmax
            att = torch.where(torch.isfinite(att), att, torch.full_like(att, float("nan")))
            self._sumsq += sq
            self._maxatt = torch.fmax(self._maxatt, att)
        self._present &= np.asarray(self._registered)
        self._passes += 1
        self._reset_backward()

    def _index_tensor(self, key: tuple) -> torch.Tensor:
        """Device index of a pass's hook order, cached: the order repeats every pass, so the host-to-device copy
        (a synchronizing one on CUDA) happens once, not per backward pass."""
        cache = self.__dict__.setdefault("_idx_cache", {})
        t = cache.get(key)
        if t is None:
            if len(cache) > 64:
                cache.clear()
            t = cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return t

    def device_parts(self) -> dict[str, torch.Tensor]:
        """The step's on-device values for the logged step's one sync (finalizes the last backward pass)."""
        self.finalize()
        return {"flow_sumsq": self._sumsq, "flow_maxatt": self._maxatt}

    def host_fields(self, host: dict[str, np.ndarray]) -> dict:
        """Record fields from the synced values; resets the step's buffers (call right after the sync)."""
        n = 0 if self.failed else self._passes
        present = self._present.copy() if n else np.zeros(self.n, dtype=bool)
        self._reset_step()
        if "flow_sumsq" not in host or n == 0:
            return {"flow_backwards": 0, "flow_norm": [None] * self.n, "flow_attenuation": [None] * self.n,
                    "grad_out_nonfinite": None}
        sumsq = np.asarray(host["flow_sumsq"], dtype=float)
        rms = np.sqrt(sumsq / n)
        att = np.asarray(host["flow_maxatt"], dtype=float)
        return {
            "flow_backwards": n,
            "flow_norm": [float(v) if ok and math.isfinite(v) else None for v, ok in zip(rms, present)],
            "flow_attenuation": [float(v) if ok and math.isfinite(v) else None for v, ok in zip(att, present)],
            # the output gradient was non-finite on a sampled pass (the norm carries NaN/Inf): the backward origin
            "grad_out_nonfinite": [int(ok and not math.isfinite(v)) for v, ok in zip(sumsq, present)],
        }


def warn_failed(what: str, e: Exception) -> None:
    """One error line when a signal's hooks fail: the signal is off for the rest of the run, training goes on."""
    from ultralytics.utils import LOGGER

    LOGGER.error(f"{PREFIX}{what} hooks disabled after {type(e).__name__}: {e}. Training and the other "
                 "gradient statistics continue.")
