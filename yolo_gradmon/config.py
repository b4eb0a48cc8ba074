"""Options of the gradient monitor: one dataclass, validated before training starts.

The defaults here are the single source of truth; ``configs/default.yaml`` mirrors them with comments
(a test keeps the two identical). Options come from Python keywords, a YAML file, or the CLI, where
each monitor option carries the ``gradmon_`` prefix (``gradmon_log_every=5``) so it cannot collide
with an Ultralytics ``yolo train`` argument.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from .fields import FAMILIES

CLI_PREFIX = "gradmon_"
PREFIX = "gradmon: "  # every console message of the monitor starts with this
GRANULARITIES = ("layer", "module", "param")


class GradmonConfigError(ValueError):
    """An invalid monitor option; raised before any training starts."""


def _option(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word for it
    """A :class:`GradmonConfig` field: its default and ONE line of meaning (``metadata["help"]``).

    That line is the help of ``yolo-gradmon train --help`` and starts the inline comment of the
    option in ``configs/default.yaml`` (a test keeps the two identical).
    """
    return dataclasses.field(default=default, metadata={"help": help})


def did_you_mean(name: str, valid, n: int = 3) -> str:
    """`` (did you mean 'x'?)`` naming the valid names closest to ``name`` (difflib), or ``""`` when none is close.

    Pass ``valid`` as the user must type them (``gradmon_log_every`` on the CLI, ``log_every`` in Python).
    """
    scored = sorted(((difflib.SequenceMatcher(None, str(name), str(v)).ratio(), str(v)) for v in valid), reverse=True)
    best = scored[0][0] if scored else 0.0
    close = [v for r, v in scored[:n] if r >= max(0.6, best - 0.05)]  # the best, and only near-ties of it
    if not close:
        return ""
    names = [repr(c) for c in close]
    return f" (did you mean {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' or ' + names[-1]}?)"


@dataclasses.dataclass(frozen=True)
class GradmonConfig:
    """Every option of :class:`~yolo_gradmon.GradientMonitor` with its default.

    See ``configs/default.yaml`` for the documented, calibrated copy of these values.
    """

    # what is captured
    log_every: int = _option(1, "capture every N-th optimizer step (1 = all)")
    granularity: str = _option("layer", "statistics per layer (model.model[i]) | module (conv/bn/linear leaf) | param (tensor)")
    update_ratio: bool = _option(True, "measure ||dw||/||w|| per step; holds ONE copy of the trainable weights (never of gradients)")
    update_every: int = _option(10, "update ratio, weight norms, max |grad|: every N-th logged step (1 = every logged step; null between)")
    flow: bool = _option(True, "gradient flow: ||dL/d out|| at every top-level layer's output")
    flow_every: int = _option(2, "measure the flow on every N-th forward/backward pass of logged steps (1 = all)")
    activation_health: bool = _option(True, "saturated (Sigmoid/Tanh-like) and dead (ReLU-like) units per layer")
    health_every: int = _option(10, "measure activation health on every N-th logged step (1 = every logged step)")
    health_eps: float = _option(1e-3, "|f'(x)| below this = saturated / passes no gradient")
    forward_check: bool = _option(True, "per-layer non-finite check of the forward outputs of logged steps: where a NaN/Inf entered")
    noise_scale: bool = _option(True, "gradient noise scale B_simple and per-layer SNR from the accumulated micro-batches (nbs > batch)")
    # where it goes
    wandb: bool = _option(True, "stream to Weights & Biases (reuses an active run, else starts one; WANDB_MODE respected)")
    wandb_media_every: int = _option(0, "also log the W&B heatmap, per-layer charts and flags table every N epochs (0 = at train end only)")
    wandb_alerts: bool = _option(True, "one wandb.alert per (module, kind) for vanishing / exploding / nonfinite flags")
    wandb_layer_scalars: str = _option("none", "per-layer families also streamed as one W&B key per layer: none | all | a comma-separated list")
    console: bool = _option(True, "compact per-module table at train end (never anything per step)")
    # detection rules (counted in logged steps)
    clip_norm: float = _option(10.0, "Ultralytics' clip_grad_norm_(max_norm=10.0); decides clip_active")
    vanish_grad_to_weight: float = _option(1e-6, "||g||/||w|| below this is vanishing evidence")
    vanish_flow_attenuation: float = _option(1e-5, "||dL/d out|| / ||dL/d out_head|| below this is vanishing evidence")
    vanish_flow_cut: float = _option(1e-2, "a layer's output gradient below this x the largest at its consumers' outputs is a \"cut\"")
    vanish_window: int = _option(5, "low observations to flag vanishing; as many healthy logged steps clear it (hysteresis)")
    explode_factor: float = _option(1000.0, "grad norm above this x its running median (last 50 logged steps) is exploding")
    explode_total_fraction: float = _option(1.0, "a spike counts only if the module's norm also reaches this x the total norm's running median")
    explode_window: int = _option(1, "consecutive high logged steps to flag (1 = immediately)")
    explode_clip_factor: float = _option(1e4, "grad norm above this x clip_norm for explode_clip_window logged steps is exploding")
    explode_clip_window: int = _option(5, "consecutive logged steps above explode_clip_factor x clip_norm to flag")
    dead_window: int = _option(5, 'consecutive logged steps with an exactly-zero gradient to flag "dead"')
    dying_dead: float = _option(0.05, 'a ReLU-family layer with this fraction of dead channels on dying_window samples in a row: "dying"')
    dying_window: int = _option(3, "consecutive activation-health samples at or above dying_dead to flag dying")
    min_steps: int = _option(3, 'fewer logged steps than this is "too few steps to judge"')
    cause_saturated: float = _option(0.5, 'a flag names "saturated units" when a layer on its path has this fraction saturated')
    cause_dead: float = _option(0.5, 'a flag names "dead units" when a layer on its path has this fraction of dead channels')

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name), f.default)
        for name in _FRACTIONS:
            if getattr(self, name) > 1:
                raise GradmonConfigError(f"gradmon option '{name}' is a fraction in (0, 1], got {getattr(self, name)}")
        self.layer_scalar_families()  # validates wandb_layer_scalars
        if self.granularity not in GRANULARITIES:
            raise GradmonConfigError(
                f"gradmon option 'granularity' got {self.granularity!r}{did_you_mean(self.granularity, GRANULARITIES)}; "
                f"valid values: {', '.join(GRANULARITIES)}"
            )

    def layer_scalar_families(self) -> tuple[str, ...]:
        """The families named by ``wandb_layer_scalars`` (``none``, ``all`` or a comma-separated list)."""
        text = self.wandb_layer_scalars.strip().lower()
        if text in ("", "none"):
            return ()
        if text == "all":
            return FAMILIES
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in FAMILIES]
        if bad:
            raise GradmonConfigError(
                f"gradmon option 'wandb_layer_scalars' names unknown famil{'ies' if len(bad) > 1 else 'y'} "
                f"{', '.join(bad)}; valid: none, all, or a comma-separated list of {', '.join(FAMILIES)}"
            )
        return names

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None = None, **overrides: Any) -> "GradmonConfig":
        """Build from a mapping (keys with or without the ``gradmon_`` prefix); unknown keys are an error."""
        merged: dict[str, Any] = {}
        for key, value in {**dict(options or {}), **overrides}.items():
            prefixed = key.startswith(CLI_PREFIX)
            name = key[len(CLI_PREFIX) :] if prefixed else key
            if name not in _FIELDS:
                valid = [f"{CLI_PREFIX}{n}" if prefixed else n for n in sorted(_FIELDS)]  # as the user writes them
                listing = "every option: yolo-gradmon train --help" if prefixed else f"valid options: {', '.join(valid)}"
                raise GradmonConfigError(f"unknown gradmon option {key!r}{did_you_mean(key, valid)}; {listing}")
            merged[name] = value
        return cls(**merged)

    @classmethod
    def coerce(cls, config: "GradmonConfig | Mapping[str, Any] | str | Path | None" = None,
               **overrides: Any) -> "GradmonConfig":
        """Options from a config, a mapping, the path of a YAML file, or nothing, with keyword overrides on top."""
        if isinstance(config, GradmonConfig):
            return cls.from_dict(config.to_dict(), **overrides)
        if isinstance(config, (str, Path)):
            return cls.from_yaml(config, **overrides)
        return cls.from_dict(config or {}, **overrides)

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
OPTION_HELP: dict[str, str] = {name: f.metadata["help"] for name, f in _FIELDS.items()}
"""Option name -> its one line of meaning (the CLI help and the start of its ``configs/default.yaml`` comment)."""
OPTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "what is captured": ("log_every", "granularity", "update_ratio", "update_every", "flow", "flow_every",
                         "activation_health", "health_every", "health_eps", "forward_check", "noise_scale"),
    "where it goes": ("wandb", "wandb_media_every", "wandb_alerts", "wandb_layer_scalars", "console"),
    "detection rules (windows count logged steps)": tuple(_FIELDS)[tuple(_FIELDS).index("clip_norm") :],
}
"""The options in field order, grouped as in ``configs/default.yaml``."""
_POSITIVE_INTS = {"log_every", "update_every", "flow_every", "health_every", "vanish_window", "explode_window", "explode_clip_window", "dead_window", "min_steps", "dying_window"}
_NON_NEGATIVE_INTS = {"wandb_media_every"}
_FRACTIONS = ("cause_saturated", "cause_dead", "dying_dead")


def format_value(value: Any) -> str:
    """A default as the user types it on the CLI (``true``, ``0.001``, ``1e-06``, ``layer``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def options_help(prefix: str = CLI_PREFIX, indent: int = 2) -> str:
    """Every option as ``<prefix><name>=<default>  <one line of meaning>``, grouped by section.

    The text of ``yolo-gradmon train|demo|ablate --help``, built from the dataclass (defaults and
    :data:`OPTION_HELP`), so it cannot disagree with ``configs/default.yaml``.
    """
    defaults = GradmonConfig().to_dict()
    cells = {n: f"{prefix}{n}={format_value(defaults[n])}" for n in _FIELDS}
    width = max(len(c) for c in cells.values()) + 2
    lines = []
    if prefix == CLI_PREFIX:  # the CLI's file option (config_from_cli)
        lines.append(f"{' ' * indent}{prefix + 'config=<file.yaml>':<{width}}"
                     "load options from a YAML file (a copy of configs/default.yaml) first")
    for section, names in OPTION_SECTIONS.items():
        lines.append(f"{' ' * indent}# {section}")
        lines += [f"{' ' * indent}{cells[n]:<{width}}{OPTION_HELP[n]}" for n in names]
    return "\n".join(lines)


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


def cli_options(gradmon_args: Mapping[str, Any]) -> dict[str, Any]:
    """The monitor options of ``gradmon_*`` CLI pairs, prefix stripped: the options of a ``gradmon_config=<yaml>``
    file first, the other pairs on top (not validated here: :meth:`GradmonConfig.from_dict` does that)."""
    args = dict(gradmon_args)
    path = args.pop(f"{CLI_PREFIX}config", None)
    out: dict[str, Any] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise GradmonConfigError(f"{path}: expected a mapping of gradmon options, got {type(data).__name__}")
        out.update(data)
    out.update({k[len(CLI_PREFIX):] if k.startswith(CLI_PREFIX) else k: v for k, v in args.items()})
    return out


def config_from_cli(gradmon_args: Mapping[str, Any]) -> GradmonConfig:
    """Build a config from ``gradmon_*`` CLI pairs, honouring ``gradmon_config=<yaml>``."""
    args = dict(gradmon_args)
    path = args.pop(f"{CLI_PREFIX}config", None)
    return GradmonConfig.from_yaml(path, **args) if path else GradmonConfig.from_dict(args)
