"""Everything measured on one model: its parameter layout, the parameter-statistics capture around the optimizer
step, and the depth-signal hooks, built together and read with one host sync per logged step."""

from __future__ import annotations

from typing import Callable

from ..config import GradmonConfig
from ..structure.layout import build_layout
from .depth import DepthSignals
from .params import GradientCapture
from .schedule import PassPlan


class ModelProbe:
    """The measurements of one (unwrapped) model.

    Args:
        model: the trainer's model, unwrapped from DDP/EMA wrappers.
        cfg: the monitor's options.
        compiled: the model runs under ``torch.compile`` (depth hooks stay off).
        scale_fn: returns the AMP ``GradScaler``'s scale as a device tensor, or None without AMP.
    """

    def __init__(self, model, cfg: GradmonConfig, compiled: bool = False, scale_fn: Callable | None = None):
        self.model = model
        self.layout = build_layout(model, cfg.granularity)
        self.capture = GradientCapture(self.layout, update_ratio=cfg.update_ratio, clip_norm=cfg.clip_norm)
        self.depth = DepthSignals(model, cfg, compiled=compiled, scale_fn=scale_fn)
        self.capture.extra_sources = self.depth.sources_for_capture

    def header_fields(self) -> dict:
        """The log header's description of what is measured: modules, their layers, and the depth signals."""
        L = self.layout
        return {"modules": L.names, "trainable": L.trainable, "numel": L.numel, "layer_index": L.layer_index,
                "depth": self.depth.header()}

    def arm(self, plan: PassPlan) -> None:
        self.depth.arm(flow=plan.flow, health=plan.health, logged=plan.logged)

    def disarm(self) -> None:
        self.depth.arm(flow=False, health=False, logged=False)

    def remove(self) -> None:
        """Remove every hook (never raises: removing hooks never stops training)."""
        try:
            self.depth.remove()
        except Exception:  # noqa: BLE001
            pass
