"""The two batch sizes of the gradient noise scale, read from the micro-batches Ultralytics already accumulates.

With ``accumulate = round(nbs / batch) >= 2`` an optimizer step's window holds several forward/backward passes whose
gradients add up in ``p.grad``. Right after the window's FIRST backward pass (at the next batch's start, before its
backward adds to them) the gradients are those of one micro-batch of ``b`` images: :meth:`NoiseProbe.read_small` reduces
them in place to per-layer squared norms, a small device tensor (no gradient copy). At the optimizer step the
accumulated gradient of all ``B = sum(b_j)`` images is the one :class:`~yolo_gradmon.measure.params.GradientCapture`
already reduces per module (its ``last_grad_sq``); :meth:`NoiseProbe.device_parts` folds it into the same layers.
Both ride the logged step's one host sync (``GradientCapture.extra_sources``).

Per logged step with ``accumulate >= 2`` (record fields, per image: each gradient divided by its number of images,
after the AMP scale is divided out; YOLO's loss is normalised per batch and multiplied by the batch size, so a batch
gradient divided by its batch is a per-image mean):

- ``gns_small_sq`` / ``gns_big_sq``: per top-level layer (aligned with the header's ``layers``; null for layers
  without trainable parameters) ``|g_small / b_small|²`` and ``|g_big / B_big|²``;
- ``gns_small_total`` / ``gns_big_total``: the same over every parameter;
- ``gns_small_batch`` / ``gns_big_batch``: the images in the first micro-batch and in the whole window (counted by a
  forward pre-hook on layer 0; under DDP multiplied by the world size: the all-reduced gradients rank 0 reads are
  those of every rank's images).

Steps with one pass (``accumulate == 1``), or whose first pass was not seen, carry none of these fields. The
estimator (unbiased ``|G|²``, ``tr(Σ)``, ``B_simple``, per-layer SNR) is plain Python in :mod:`yolo_gradmon.record.noise`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..structure.layout import ModuleLayout, layer_names, top_layers
from .flow import warn_failed

# the record fields this module writes are declared in yolo_gradmon.fields (gns_*)


class NoiseProbe:
    """First-micro-batch and accumulated-gradient squared norms per top-level layer, on the device.

    Args:
        model: an unwrapped Ultralytics model (``model.model`` is the layer list).
        layout: the capture's parameter layout (its ``layer_index`` maps modules to layers).
        scale_fn: the AMP ``GradScaler``'s scale as a device tensor, or None without AMP scaling.
        world_size: DDP processes whose images each all-reduced gradient holds (1 without DDP).
    """

    def __init__(self, model: nn.Module, layout: ModuleLayout, scale_fn: Callable[[], torch.Tensor | None] | None = None,
                 world_size: int = 1):
        layers = top_layers(model)
        if layers is None or len(layers) == 0:
            raise ValueError("the gradient noise scale needs an Ultralytics model (model.model is the list of layers)")
        self.layers, self.names, self.n = layers, layer_names(model), len(layers)
        self.layout = layout
        self.capture = None  # the GradientCapture whose last_grad_sq is the big batch (set by the probe)
        self.scale_fn = scale_fn or (lambda: None)
        self.world = max(1, int(world_size or 1))
        self.device = layout.params[0].device if layout.params else torch.device("cpu")
        n = self.n
        # slot n collects parameters outside any top-level layer: they count in the total only
        slot = [li if 0 <= li < n else n for li in layout.layer_index]
        self._param_slot = [slot[g] for g in layout.group_of]
        self._group_slot = torch.tensor(slot, dtype=torch.long, device=self.device)
        has = np.zeros(n, dtype=bool)
        for p, s in zip(layout.params, self._param_slot):
            if s < n and p.requires_grad:
                has[s] = True
        self._has_params = has
        self._idx_cache: dict[tuple, torch.Tensor] = {}
        self._handle = None
        self.failed = False
        self.sizes: list[int] = []  # images of each forward pass of the current window
        self._small: torch.Tensor | None = None  # per-slot squared norms of the first micro-batch (AMP scale removed)
        self._small_batch = 0

    # ------------------------------------------------------------------ the schedule's calls
    def arm(self, on: bool) -> None:
        """Count the images of each training forward pass (a pre-hook on layer 0) while on."""
        if on and self._handle is None and not self.failed:
            self._handle = self.layers[0].register_forward_pre_hook(self._count)
        elif not on and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def remove(self) -> None:
        self.arm(False)

    def start_window(self) -> None:
        """The first pass of an optimizer step's window is about to run: forget the previous window."""
        self.sizes = []
        self._small = None

    def read_small(self) -> None:
        """The window's first backward pass is done and the second has not started: reduce ``p.grad`` (one
        micro-batch's gradient) to per-layer squared norms on the device. No sync, no gradient copy."""
        if self.failed or len(self.sizes) != 1:
            return  # the first pass was not seen (monitor started mid-window): this window has no small batch
        try:
            with torch.no_grad():
                grads, key = [], []
                for i, p in enumerate(self.layout.params):
                    if p.grad is not None:
                        grads.append(p.grad)
                        key.append(self._param_slot[i])
                if not grads:
                    return
                norms = torch.stack(torch._foreach_norm(grads, dtype=torch.float32) if _low(grads)
                                    else torch._foreach_norm(grads)).float()
                sq = torch.zeros(self.n + 1, dtype=torch.float32, device=self.device)
                sq = sq.index_add_(0, self._index(tuple(key)), norms * norms)
                scale = self.scale_fn()
                if scale is not None:
                    sq = sq / scale.detach().double().square().float()
                self._small = sq
                self._small_batch = self.sizes[0]
        except Exception as e:  # noqa: BLE001 - between the trainer's passes: never raise
            self._fail(e)

    # ------------------------------------------------------------------ the capture's one sync
    def device_parts(self) -> dict[str, torch.Tensor]:
        """The window's small and big squared norms per slot (empty when the window has no small batch)."""
        big = getattr(self.capture, "last_grad_sq", None)
        if self.failed or self._small is None or big is None or len(self.sizes) < 2:
            return {}
        big_slot = torch.zeros(self.n + 1, dtype=torch.float32, device=self.device).index_add_(
            0, self._group_slot, big.float())
        return {"gns_small": self._small, "gns_big": big_slot}

    def host_fields(self, host: dict[str, np.ndarray]) -> dict:
        """Record fields of the synced values, per image (see the module docstring); {} without a small batch."""
        sizes, small_b = list(self.sizes), self._small_batch
        self._small = None
        if "gns_small" not in host or "gns_big" not in host or len(sizes) < 2 or small_b <= 0:
            return {}
        b_small, b_big = small_b * self.world, sum(sizes) * self.world
        small = np.asarray(host["gns_small"], dtype=float) / b_small ** 2
        big = np.asarray(host["gns_big"], dtype=float) / b_big ** 2

        def per_layer(v: np.ndarray) -> list:
            return [float(x) if ok and math.isfinite(x) else None for x, ok in zip(v[: self.n], self._has_params)]

        def total(v: np.ndarray) -> float | None:
            t = float(v.sum())
            return t if math.isfinite(t) else None

        return {"gns_small_sq": per_layer(small), "gns_big_sq": per_layer(big), "gns_small_total": total(small),
                "gns_big_total": total(big), "gns_small_batch": int(b_small), "gns_big_batch": int(b_big)}

    # ------------------------------------------------------------------ internals
    def _count(self, module, inputs) -> None:
        if self.failed or not (module.training and torch.is_grad_enabled()):
            return
        try:
            x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
            if isinstance(x, torch.Tensor) and x.dim() > 0:
                self.sizes.append(int(x.shape[0]))  # a shape: host metadata, no sync
        except Exception as e:  # noqa: BLE001 - inside the trainer's forward: never raise
            self._fail(e)

    def _index(self, key: tuple) -> torch.Tensor:
        """Device index of the present gradients' layer slots, cached (the set repeats every window)."""
        t = self._idx_cache.get(key)
        if t is None:
            if len(self._idx_cache) > 16:
                self._idx_cache.clear()
            t = self._idx_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return t

    def _fail(self, e: Exception) -> None:
        if not self.failed:
            self.failed = True
            self._small = None
            warn_failed("gradient noise scale", e)


def _low(tensors: list[torch.Tensor]) -> bool:
    return any(t.dtype in (torch.float16, torch.bfloat16) for t in tensors)
