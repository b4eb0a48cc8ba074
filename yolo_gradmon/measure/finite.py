"""Where a forward NaN/Inf appears: a per-layer "output was non-finite" bit, accumulated on the device over every
forward pass of a logged optimizer step and read with that step's one host sync (``GradientCapture.extra_sources``).

A forward hook on each top-level layer (placed only for the passes of logged steps, like the depth signals) reduces
the layer's output tensor(s) to one float32 number, the L2 norm (NaN or Inf anywhere makes it non-finite); at the end of the
pass the norms are stacked and OR-ed into the step's bits with one ``isfinite``. Per pass that is one elementwise read
of each output and a few tiny ops, no sync; the bits only matter to the host when the step is already non-finite
(:mod:`yolo_gradmon.judge.nonfinite` names the first non-finite layer in forward order as the origin).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..structure.layout import top_layers
from .layer_hooks import ArmedLayerHooks
from .flow import _tensors, warn_failed


def _reduce(t: torch.Tensor) -> torch.Tensor:
    """One float32 number that is non-finite iff ``t`` holds a NaN or Inf: its L2 norm (in isolation the fastest full
    read on the CPU, 5.3 ms against 8.5 ms for a float32 sum of a 16x64x160x160 activation; inside a training pass the
    two cost the same: the read is bandwidth-bound). Its float32 sum of squares would overflow only for an output of
    norm above 1.8e19, which is reported non-finite too."""
    return torch.linalg.vector_norm(t.detach(), 2, dtype=torch.float32)


class FiniteWatch(ArmedLayerHooks):
    """Per-layer non-finite output bits of the forward passes of logged steps.

    Args:
        model: an unwrapped Ultralytics model (``model.model`` is the layer list).
    """

    def __init__(self, model: nn.Module):
        layers = top_layers(model)
        if layers is None or len(layers) == 0:
            raise ValueError("the forward check needs an Ultralytics model (model.model is the list of layers)")
        super().__init__()
        self.layers = layers
        self.n = len(layers)
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.failed = False
        self._norms: list[torch.Tensor] = []
        self._index: list[int] = []
        self._checked = 0  # passes folded into the bits this step
        self._bad = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        self._idx_cache: dict[tuple, torch.Tensor] = {}

    def _on_disarm(self) -> None:
        self._fold()

    def _start_pass(self, module, inputs):
        if not self.failed:
            self._fold()

    def _forward_hook(self, i: int):
        def hook(module, inputs, output):
            if self.failed or not (module.training and torch.is_grad_enabled()):
                return
            try:
                # a detached tensor records no graph: no no_grad() context (it costs more than the read at batch 1)
                if isinstance(output, torch.Tensor):  # most layers: one output tensor
                    if output.is_floating_point() and output.numel() and not any(output is t for t in inputs):
                        self._norms.append(_reduce(output))
                        self._index.append(i)
                    return
                ins = {id(t) for t in _tensors(inputs)}
                for t in _tensors(output):
                    if id(t) not in ins and t.is_floating_point() and t.numel():
                        self._norms.append(_reduce(t))
                        self._index.append(i)
            except Exception as e:  # noqa: BLE001 - inside the trainer's forward: never raise
                self.failed = True
                warn_failed("forward non-finite check", e)

        return hook

    def _fold(self) -> None:
        """OR the finished pass's norms into the step's bits (on the device, no sync)."""
        if not self._index:
            return
        try:
            with torch.no_grad():
                key = tuple(self._index)
                idx = self._idx_cache.get(key)
                if idx is None:
                    if len(self._idx_cache) > 64:
                        self._idx_cache.clear()
                    idx = self._idx_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
                bad = (~torch.isfinite(torch.stack(self._norms).to(self.device))).float()
                self._bad = self._bad.index_add(0, idx, bad)
            self._checked += 1
        except Exception as e:  # noqa: BLE001
            self.failed = True
            warn_failed("forward non-finite check", e)
        self._norms, self._index = [], []

    def device_parts(self) -> dict[str, torch.Tensor]:
        self._fold()
        return {"out_bad": self._bad}

    def host_fields(self, host: dict[str, np.ndarray]) -> dict:
        checked = self._checked and not self.failed and "out_bad" in host
        self._bad = torch.zeros(self.n, dtype=torch.float32, device=self.device)
        self._checked = 0
        if not checked:
            return {"out_nonfinite": None}
        return {"out_nonfinite": [int(v > 0) for v in np.asarray(host["out_bad"], dtype=float)]}
