"""Everything measured on one model: its parameter layout, the parameter-statistics capture around the optimizer
step, the depth-signal hooks and the gradient noise scale's micro-batch reads, built together and read with one host
sync per logged step."""

from __future__ import annotations

from typing import Callable

from ..config import GradmonConfig
from ..structure.layout import build_layout
from .layer_signals import DepthSignals
from .noise import NoiseProbe
from .params import GradientCapture
from .schedule import PassPlan


class ModelProbe:
    """The measurements of one (unwrapped) model.

    Args:
        model: the trainer's model, unwrapped from DDP/EMA wrappers.
        cfg: the monitor's options.
        compiled: the model runs under ``torch.compile`` (depth hooks stay off).
        scale_fn: returns the AMP ``GradScaler``'s scale as a device tensor, or None without AMP.
        world_size: DDP processes (the noise scale's batch sizes count every rank's images).
    """

    def __init__(self, model, cfg: GradmonConfig, compiled: bool = False, scale_fn: Callable | None = None,
                 world_size: int = 1):
        self.model = model
        self.layout = build_layout(model, cfg.granularity)
        self.capture = GradientCapture(self.layout, update_ratio=cfg.update_ratio, clip_norm=cfg.clip_norm)
        self.depth = DepthSignals(model, cfg, compiled=compiled, scale_fn=scale_fn)
        self.capture.extra_sources = self.depth.sources_for_capture
        self.noise: NoiseProbe | None = None
        if cfg.noise_scale and self.depth.names and not compiled:  # its pre-hook would break a compiled graph
            self.noise = NoiseProbe(model, self.layout, scale_fn=scale_fn, world_size=world_size)
            self.noise.capture = self.capture
            self.capture.extra_sources.append(self.noise)

    def header_fields(self) -> dict:
        """The log header's description of what is measured: modules, their layers, and the depth signals."""
        L = self.layout
        return {"modules": L.names, "trainable": L.trainable, "numel": L.numel, "layer_index": L.layer_index,
                "depth": {**self.depth.header(), "noise_scale": self.noise is not None}}

    def arm(self, plan: PassPlan) -> None:
        self.depth.arm(flow=plan.flow, health=plan.health, logged=plan.logged)
        if self.noise is not None:
            if plan.noise_read:
                self.noise.read_small()  # before this pass's backward adds to the first micro-batch's gradient
            if plan.window_start:
                self.noise.start_window()
            self.noise.arm(True)

    def disarm(self) -> None:
        self.depth.arm(flow=False, health=False, logged=False)
        if self.noise is not None:
            self.noise.arm(False)

    def remove(self) -> None:
        """Remove every hook (never raises: removing hooks never stops training)."""
        try:
            self.depth.remove()
            if self.noise is not None:
                self.noise.remove()
        except Exception:  # noqa: BLE001
            pass
