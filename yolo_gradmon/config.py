"""Options of the gradient monitor: one dataclass, validated before training starts.

The defaults here are the single source of truth; ``configs/default.yaml`` mirrors them with comments
(a test keeps the two identical). Options come from Python keywords, a YAML file, or the CLI, where
each monitor option carries the ``gradmon_`` prefix (``gradmon_log_every=5``) so it cannot collide
with an Ultralytics ``yolo train`` argument.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

CLI_PREFIX = "gradmon_"
PREFIX = "gradmon: "  # every console message of the monitor starts with this
GRANULARITIES = ("layer", "module", "param")
LAYER_FAMILIES = ("grad_norm", "grad_to_weight", "update_to_weight", "max_abs_grad", "flow_norm", "flow_attenuation",
                  "act_saturated", "act_dead")
"""The per-module / per-layer families of the log that ``wandb_layer_scalars`` can stream as one W&B key each."""


class GradmonConfigError(ValueError):
    """An invalid monitor option; raised before any training starts."""


@dataclasses.dataclass(frozen=True)
class GradmonConfig:
    """Every option of :class:`~yolo_gradmon.GradientMonitor` with its default.

    See ``configs/default.yaml`` for the documented, calibrated copy of these values.
    """

    # what is captured
    log_every: int = 1
    granularity: str = "layer"
    update_ratio: bool = True
    update_every: int = 10
    flow: bool = True
    flow_every: int = 2
    activation_health: bool = True
    health_every: int = 10
    health_eps: float = 1e-3
    # where it goes
    wandb: bool = True
    wandb_media_every: int = 0
    wandb_alerts: bool = True
    wandb_layer_scalars: str = "none"
    console: bool = True
    # detection rules (counted in logged steps)
    clip_norm: float = 10.0
    vanish_grad_to_weight: float = 1e-6
    vanish_flow_attenuation: float = 1e-5
    vanish_flow_cut: float = 1e-2
    vanish_window: int = 5
    explode_factor: float = 1000.0
    explode_window: int = 1
    explode_clip_factor: float = 1e4
    explode_clip_window: int = 5
    dead_window: int = 5
    min_steps: int = 3
    cause_saturated: float = 0.5
    cause_dead: float = 0.5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name), f.default)
        for name in _FRACTIONS:
            if getattr(self, name) > 1:
                raise GradmonConfigError(f"gradmon option '{name}' is a fraction in (0, 1], got {getattr(self, name)}")
        self.layer_scalar_families()  # validates wandb_layer_scalars
        if self.granularity not in GRANULARITIES:
            raise GradmonConfigError(
                f"gradmon option 'granularity={self.granularity!r}' is invalid; valid values: {', '.join(GRANULARITIES)}"
            )

    def layer_scalar_families(self) -> tuple[str, ...]:
        """The families named by ``wandb_layer_scalars`` (``none``, ``all`` or a comma-separated list)."""
        text = self.wandb_layer_scalars.strip().lower()
        if text in ("", "none"):
            return ()
        if text == "all":
            return LAYER_FAMILIES
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in LAYER_FAMILIES]
        if bad:
            raise GradmonConfigError(
                f"gradmon option 'wandb_layer_scalars' names unknown famil{'ies' if len(bad) > 1 else 'y'} "
                f"{', '.join(bad)}; valid: none, all, or a comma-separated list of {', '.join(LAYER_FAMILIES)}"
            )
        return names

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None = None, **overrides: Any) -> "GradmonConfig":
        """Build from a mapping (keys with or without the ``gradmon_`` prefix); unknown keys are an error."""
        merged: dict[str, Any] = {}
        for key, value in {**dict(options or {}), **overrides}.items():
            name = key[len(CLI_PREFIX) :] if key.startswith(CLI_PREFIX) else key
            if name not in _FIELDS:
                raise GradmonConfigError(
                    f"unknown gradmon option {key!r}; valid options: {', '.join(sorted(_FIELDS))}"
                )
            merged[name] = value
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "GradmonConfig":
        """Load options from a YAML file (a flat mapping, same keys as ``configs/default.yaml``)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise GradmonConfigError(f"{path}: expected a mapping of gradmon options, got {type(data).__name__}")
        return cls.from_dict(data, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(GradmonConfig)}
_POSITIVE_INTS = {"log_every", "update_every", "flow_every", "health_every", "vanish_window", "explode_window", "explode_clip_window", "dead_window", "min_steps"}
_NON_NEGATIVE_INTS = {"wandb_media_every"}
_FRACTIONS = ("cause_saturated", "cause_dead")


def _check_value(name: str, value: Any, default: Any) -> None:
    """Type and range check of one option against the type of its default."""
    expected = type(default)
    if expected is bool:
        if not isinstance(value, bool):
            raise GradmonConfigError(f"gradmon option '{name}' must be true or false, got {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GradmonConfigError(f"gradmon option '{name}' must be an integer, got {value!r}")
        low = 1 if name in _POSITIVE_INTS else 0
        if value < low:
            raise GradmonConfigError(f"gradmon option '{name}' must be >= {low}, got {value}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GradmonConfigError(f"gradmon option '{name}' must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise GradmonConfigError(f"gradmon option '{name}' must be a finite number > 0, got {value}")
    elif expected is str and not isinstance(value, str):
        raise GradmonConfigError(f"gradmon option '{name}' must be a string, got {value!r}")


def split_cli_args(args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split parsed ``key=value`` CLI pairs into (gradmon options, Ultralytics trainer args).

    ``gradmon_config=path.yaml`` loads a YAML file of options first; ``gradmon_<option>=value`` pairs
    override it. Everything else is passed to Ultralytics unchanged.
    """
    gradmon, trainer = {}, {}
    for key, value in args.items():
        (gradmon if key.startswith(CLI_PREFIX) else trainer)[key] = value
    return gradmon, trainer


def config_from_cli(gradmon_args: Mapping[str, Any]) -> GradmonConfig:
    """Build a config from ``gradmon_*`` CLI pairs, honouring ``gradmon_config=<yaml>``."""
    args = dict(gradmon_args)
    path = args.pop(f"{CLI_PREFIX}config", None)
    return GradmonConfig.from_yaml(path, **args) if path else GradmonConfig.from_dict(args)
