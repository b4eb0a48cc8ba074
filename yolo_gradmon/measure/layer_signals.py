"""The depth signals of one model: gradient flow (:mod:`.flow`) and activation health (:mod:`.health`), built on the
trainer's model, armed for the passes the :class:`~yolo_gradmon.measure.schedule.Schedule` selects, and read with
the logged step's one device-to-host transfer (``GradientCapture.extra_sources``).
"""

from __future__ import annotations

from ultralytics.utils import LOGGER

from ..config import PREFIX, GradmonConfig
from ..structure.layout import layer_names, layer_sources, top_layers
from .finite import FiniteWatch
from .flow import FlowHooks
from .health import ELEMENTWISE_TYPES, ActivationHealth


class DepthSignals:
    """Flow and activation-health hooks of one model (either may be off)."""

    def __init__(self, model, cfg: GradmonConfig, compiled: bool = False, scale_fn=None):
        self.flow: FlowHooks | None = None
        self.finite: FiniteWatch | None = None  # forward non-finite bits, on every pass of logged steps
        self.health: ActivationHealth | None = None
        self.names: list[str] = layer_names(model)
        self.sources: list[list[int]] = layer_sources(model)
        wanted = [k for k in ("flow", "activation_health") if getattr(cfg, k)]
        if wanted and top_layers(model) is None:
            LOGGER.warning(f"{PREFIX}{' and '.join(wanted)} need an Ultralytics layer list (model.model); off for "
                           f"{type(model).__name__}.")
            wanted = []
        if top_layers(model) is not None and not compiled and cfg.forward_check:
            self.finite = FiniteWatch(model)
        if wanted and compiled:
            LOGGER.warning(
                f"{PREFIX}{' and '.join(wanted)} off under compile=True (tensor and forward hooks inside a compiled "
                "graph would break it); parameter gradients are still monitored. Train without compile to get them."
            )
            wanted = []
        if "flow" in wanted:
            self.flow = FlowHooks(model, scale_fn)
        if "activation_health" in wanted:
            self.health = ActivationHealth(model, cfg.health_eps)
            self.acts = self.health.layer_acts
        else:
            layers = top_layers(model)
            self.acts = [sorted({type(m).__name__ for m in layer.modules() if isinstance(m, ELEMENTWISE_TYPES)})
                         for layer in (layers if layers is not None else [])]

    @property
    def sources_for_capture(self) -> list:
        return [s for s in (self.flow, self.health, self.finite) if s is not None]

    def arm(self, flow: bool, health: bool, logged: bool = False) -> None:
        """Hooks on (or off) for the coming forward/backward pass, as the schedule's ``PassPlan`` says."""
        if self.finite is not None:
            self.finite.arm(logged)
        if self.flow is not None:
            self.flow.arm(flow, keep=logged)  # idle between the flow passes of logged steps, gone on unlogged ones
        if self.health is not None:
            self.health.arm(health)

    def remove(self) -> None:
        for s in self.sources_for_capture:
            s.remove()

    def header(self) -> dict:
        """Header fields: every top-level layer (with or without parameters), its inputs, its activations."""
        return {
            "layers": self.names,
            "layer_from": self.sources,
            "layer_acts": self.acts,
            "flow": self.flow is not None,
            "activation_health": self.health is not None,
            "forward_check": self.finite is not None,
        }
