"""Ablation grids: a YAML file of base trainer args and axes whose cartesian product is the set of variants.

.. code-block:: yaml

    base:                 # Ultralytics trainer args (model/data included); activation/shortcut/norm allowed as fixed values
      model: yolo26n.yaml  # a key that is also an axis is replaced by the axis' values
      data: coco8.yaml
      epochs: 2
      imgsz: 320
      seed: 0
    axes:                 # each a non-empty list of distinct values; the cartesian product is the grid
      activation: [silu, relu, sigmoid]
      # shortcut: [true, false]    norm: [true, false]    model: [...]    data: [...]
    gradmon:              # optional GradientMonitor options (keys of yolo_gradmon.config.GradmonConfig)
      log_every: 1
    description: free text (optional)

The whole grid is validated by :func:`load_grid` before anything trains (:class:`GridError` otherwise).
``project``/``name`` in ``base`` (or as overrides) place the ablation in ``<project>/<name>/`` (default
``runs/ablate/<grid file stem>``); each variant trains in ``<project>/<name>/<variant name>/``.

Variant names are stable and filesystem-safe: one ``<prefix>-<value>`` part per axis in the fixed
order activation, shortcut, norm, model, data, joined by ``_`` (``act-relu``,
``act-relu_skip-off_model-yolo11n``). Every axis of the grid appears, even one collapsed to a single
value by an override, so a re-run with ``activation=relu`` finds the same directory (the runner resumes).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import CLI_PREFIX, GradmonConfig, GradmonConfigError, cli_options, did_you_mean, split_cli_args
from ..trainer import TrainerArgError, check_trainer_args, trainer_keys
from .activation_names import canonical_activation

__all__ = [
    "AXES",
    "AXIS_PREFIX",
    "DEFAULT_PROJECT",
    "MODIFICATION_KEYS",
    "Grid",
    "GridError",
    "Variant",
    "load_grid",
    "parse_grid",
    "sweep_config",
    "variant_from_sweep_config",
]

#: valid axis names, in the order they appear in variant names
AXES: tuple[str, ...] = ("activation", "shortcut", "norm", "model", "data")
#: name prefix of each axis
AXIS_PREFIX: dict[str, str] = {"activation": "act", "shortcut": "skip", "norm": "norm", "model": "model", "data": "data"}
#: keys handled by :func:`yolo_gradmon.ablate.swaps.apply_variant`, not by the Ultralytics trainer
MODIFICATION_KEYS: tuple[str, ...] = ("activation", "shortcut", "norm")
MODIFICATION_DEFAULTS: dict[str, Any] = {"activation": None, "shortcut": True, "norm": True}
TOP_LEVEL_KEYS: tuple[str, ...] = ("base", "axes", "gradmon", "description")
DEFAULT_PROJECT = "runs/ablate"
#: sweep-config parameter naming the grid's axes (lets :func:`variant_from_sweep_config` work from the config alone)
SWEEP_AXES_KEY = "ablation_axes"
_GRID_LEVEL = ("project", "name")  # trainer args that place the whole ablation, not one variant


class GridError(GradmonConfigError):
    """An invalid ablation grid (a ``ValueError``); raised before any training starts."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One point of the grid.

    Attributes:
        name: stable, filesystem-safe name (``act-relu_skip-off``).
        values: the varied values, axis -> canonical value (activation names canonical, booleans as bools).
        trainer_args: every Ultralytics trainer arg for this variant, ``model`` included (no project/name).
        modifications: ``activation``/``shortcut``/``norm`` keywords for ``apply_variant``.
    """

    name: str
    values: dict[str, Any]
    trainer_args: dict[str, Any]
    modifications: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Grid:
    """A validated ablation grid (build with :func:`load_grid` or :func:`parse_grid`).

    Attributes:
        base: Ultralytics trainer args shared by every variant, overrides applied (no project/name, no
            activation/shortcut/norm).
        fixed: activation/shortcut/norm values shared by every variant (defaults: None, True, True).
        axes: axis -> list of distinct canonical values, in file order.
        gradmon: GradientMonitor options (validated with ``GradmonConfig.from_dict``).
        project, name: the ablation lives in ``<project>/<name>/``.
        path: the grid file, when loaded from one.
        overrides: the CLI overrides that were applied.
        description: free text from the file.
    """

    base: dict[str, Any]
    fixed: dict[str, Any]
    axes: dict[str, list]
    gradmon: dict[str, Any]
    project: str = DEFAULT_PROJECT
    name: str = "ablation"
    path: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str | None = None

    def __len__(self) -> int:
        n = 1
        for values in self.axes.values():
            n *= len(values)
        return n

    def variants(self) -> list[Variant]:
        """Every variant: the cartesian product of the axes (first axis varies slowest)."""
        keys = list(self.axes)
        return [self.variant(dict(zip(keys, combo))) for combo in itertools.product(*(self.axes[k] for k in keys))]

    def variant(self, values: Mapping[str, Any]) -> Variant:
        """The variant for one value per axis (values already canonical and members of their axes)."""
        values = {k: values[k] for k in self.axes}
        args = dict(self.base)
        mods = dict(self.fixed)
        for k, v in values.items():
            (mods if k in MODIFICATION_KEYS else args)[k] = v
        return Variant(name=self.variant_name(values), values=values, trainer_args=args, modifications=mods)

    def variant_name(self, values: Mapping[str, Any]) -> str:
        """``<prefix>-<slug>`` per axis in :data:`AXES` order, joined by ``_``."""
        return "_".join(f"{AXIS_PREFIX[k]}-{self._slugs[k][_hashable(values[k])]}" for k in AXES if k in self.axes)

    @property
    def _slugs(self) -> dict[str, dict[Any, str]]:
        return {k: _axis_slugs(k, vals) for k, vals in self.axes.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (written to ``grid.json`` by the runner)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- slugs
def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-.")
    return s or "x"


def _axis_slugs(axis: str, values: list) -> dict[Any, str]:
    """Distinct filesystem-safe slugs for one axis' values (``yolo11n.yaml`` -> ``yolo11n``)."""
    if axis in ("shortcut", "norm"):
        return {True: "on", False: "off"}
    if axis == "activation":
        return {v: v for v in values}
    short = {v: _slug(Path(str(v)).stem) for v in values}
    if len(set(short.values())) == len(values):
        return short
    full = {v: _slug(str(v).replace("/", "-").replace("\\", "-")) for v in values}
    if len(set(full.values())) == len(values):
        return full
    raise GridError(f"axes.{axis}: values {values} give identical variant names; rename the files")


# ---------------------------------------------------------------------------------------------------- validation
def _canonical(axis: str, value: Any, where: str) -> Any:
    """Canonical form of one axis value, or GridError."""
    if axis == "activation":
        try:
            return canonical_activation(value)
        except ValueError as e:
            raise GridError(f"{where}: {e}") from None
    if axis in ("shortcut", "norm"):
        if not isinstance(value, bool):
            raise GridError(f"{where}: {axis} values must be true or false, got {value!r}")
        return value
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise GridError(f"{where}: {axis} values must be non-empty strings (file names), got {value!r}")
    return value.strip()


def _check_model(value: str, where: str) -> None:
    """A model YAML must resolve now (Ultralytics' bundled ones included); weights files are checked at train time."""
    if not value.lower().endswith((".yaml", ".yml")):
        return
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(value)
    except Exception as e:  # noqa: BLE001 - FileNotFoundError, YAML errors
        raise GridError(f"{where}: model {value!r} cannot be loaded ({type(e).__name__}: {e})") from None


def _check_trainer_args(args: Mapping[str, Any], where: str) -> None:
    """The trainer arguments of a grid, checked as the CLI checks them (:func:`yolo_gradmon.trainer.check_trainer_args`)."""
    try:
        check_trainer_args(args, also_valid=MODIFICATION_KEYS)
    except TrainerArgError as e:
        raise GridError(f"{where}: {e}") from None


def parse_grid(data: Any, overrides: Mapping[str, Any] | None = None, *, path: str | Path | None = None) -> Grid:
    """Validate a grid given as a mapping (the parsed YAML) and apply ``overrides``; return a :class:`Grid`.

    ``overrides`` are CLI ``key=value`` pairs: trainer args replace base args (``epochs=1``);
    ``project``/``name`` place the ablation; an axis key collapses that axis to the given value(s)
    (``activation=relu``, a comma-separated ``activation=silu,relu``, or a list); activation/shortcut/norm that are not axes become fixed values;
    ``gradmon_<option>`` (and ``gradmon_config=<yaml>``) override the ``gradmon`` section.

    Raises:
        GridError: with a message naming the offending key; the whole grid is checked.
    """
    src = f"{path}" if path else "grid"
    if not isinstance(data, Mapping):
        raise GridError(f"{src}: expected a mapping with 'base' and 'axes', got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise GridError(f"{src}: unknown top-level key {key!r}{did_you_mean(str(key), TOP_LEVEL_KEYS)}; "
                            f"valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    base_in = data.get("base") or {}
    if not isinstance(base_in, Mapping):
        raise GridError(f"{src}: 'base' must be a mapping of trainer arguments, got {type(base_in).__name__}")
    axes_in = data.get("axes")
    if not isinstance(axes_in, Mapping) or not axes_in:
        raise GridError(f"{src}: 'axes' must be a non-empty mapping of axis -> list of values "
                        f"(valid axes: {', '.join(AXES)})")
    gradmon_in = data.get("gradmon") or {}
    if not isinstance(gradmon_in, Mapping):
        raise GridError(f"{src}: 'gradmon' must be a mapping of GradientMonitor options, got {type(gradmon_in).__name__}")
    description = data.get("description")

    gradmon_pairs, plain_over = split_cli_args(overrides or {})
    try:
        gradmon_over = cli_options(gradmon_pairs)
    except GradmonConfigError as e:
        raise GridError(f"override {CLI_PREFIX}config: {e}") from None

    # ---- axes
    axes: dict[str, list] = {}
    for axis, values in axes_in.items():
        where = f"{src}: axes.{axis}"
        if axis not in AXES:
            raise GridError(f"{src}: unknown axis {axis!r}{did_you_mean(str(axis), AXES)}; valid axes: {', '.join(AXES)}")
        if axis in plain_over:  # CLI override collapses the axis
            over = plain_over.pop(axis)
            where = f"override {axis}={over!r}"
            if isinstance(over, str) and "," in over:  # the CLI's activation=silu,relu,sigmoid
                over = [v.strip() for v in over.split(",") if v.strip()]
            values = over if isinstance(over, list) else [over]
        if not isinstance(values, list):
            raise GridError(f"{where}: must be a list of values, got {type(values).__name__} {values!r}")
        if not values:
            raise GridError(f"{where}: empty list; give at least one value")
        canon = [_canonical(axis, v, where) for v in values]
        dupes = sorted({str(v) for v in canon if canon.count(v) > 1})
        if dupes:
            raise GridError(f"{where}: duplicate values {', '.join(dupes)} (after normalization: {canon})")
        if axis == "model":
            for v in canon:
                _check_model(v, where)
        axes[axis] = canon

    # ---- base (+ overrides)
    merged = {k: v for k, v in {**dict(base_in), **plain_over}.items() if k not in axes}  # an axis beats base
    fixed = dict(MODIFICATION_DEFAULTS)
    base: dict[str, Any] = {}
    project, name = DEFAULT_PROJECT, Path(str(path)).stem if path else "ablation"
    for key, value in merged.items():
        where = f"{src}: base.{key}" if key not in plain_over else f"override {key}={value!r}"
        if key in MODIFICATION_KEYS:
            if value is not None or key != "activation":
                fixed[key] = _canonical(key, value, where)
        elif key == "project":
            project = str(value)
        elif key == "name":
            name = str(value)
        elif key.startswith(CLI_PREFIX):
            raise GridError(f"{where}: gradmon options go in the 'gradmon' section (without the prefix)")
        else:
            base[key] = str(value) if isinstance(value, Path) else value
    _check_trainer_args(base, f"{src}: base")
    if "model" not in base and "model" not in axes:
        raise GridError(f"{src}: no model; set base.model (e.g. yolo26n.yaml) or an axes.model list")
    if "model" in base:
        base["model"] = _canonical("model", base["model"], f"{src}: base.model")
        _check_model(base["model"], f"{src}: base.model")
    if "data" in base:
        base["data"] = _canonical("data", base["data"], f"{src}: base.data")
    if not name.strip() or not project.strip():
        raise GridError(f"{src}: 'project' and 'name' must be non-empty")

    # ---- gradmon
    gradmon = {**dict(gradmon_in), **gradmon_over}
    try:
        GradmonConfig.from_dict(gradmon)  # validation only; the runner builds the config from the dict
    except GradmonConfigError as e:
        raise GridError(f"{src}: gradmon: {e}") from None

    grid = Grid(base=base, fixed=fixed, axes=axes, gradmon=gradmon, project=project, name=name,
                path=str(path) if path else None, overrides=dict(overrides or {}), description=description)
    grid._slugs  # noqa: B018 - raises GridError when two values of an axis would share a name
    return grid


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Grid:
    """Load and validate an ablation grid YAML; see :func:`parse_grid` for ``overrides``.

    Raises:
        GridError: missing/unparsable file or any invalid entry (unknown top-level keys or axes, bad
            activation names with the valid names listed, non-list/empty axes, duplicate values,
            unknown or mistyped trainer args, bad gradmon options).
    """
    p = Path(path)
    if not p.is_file():
        raise GridError(f"ablation grid {str(path)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML ({e})") from None
    return parse_grid(data, overrides, path=p)


# ---------------------------------------------------------------------------------------------------- W&B sweeps
def sweep_config(grid: Grid) -> dict[str, Any]:
    """A W&B Sweep config running the same grid: ``method: grid``, each axis as ``{values: [...]}``.

    Every base trainer arg, fixed activation/shortcut/norm, ``project``/``name`` and gradmon option
    (as ``gradmon_<option>``) is a constant ``{value: ...}``, and ``ablation_axes`` names the axes, so the
    config alone describes every run (:func:`variant_from_sweep_config` inverts it).
    """
    params: dict[str, Any] = {k: {"value": v} for k, v in grid.base.items()}
    for k, v in grid.fixed.items():
        if k not in grid.axes and v != MODIFICATION_DEFAULTS[k]:
            params[k] = {"value": v}
    params["project"] = {"value": grid.project}
    params["name"] = {"value": grid.name}
    for k, v in grid.gradmon.items():
        params[f"{CLI_PREFIX}{k}"] = {"value": v}
    params[SWEEP_AXES_KEY] = {"value": ",".join(grid.axes)}
    for axis, values in grid.axes.items():
        params[axis] = {"values": list(values)}
    return {"method": "grid", "name": grid.name, "parameters": params}


def variant_from_sweep_config(grid_or_base: Grid | Mapping[str, Any], config: Mapping[str, Any]) -> Variant:
    """The :class:`Variant` a W&B agent run should train, from its ``wandb.config`` (a plain dict works).

    Args:
        grid_or_base: the :class:`Grid` (values must then be members of its axes), or a mapping of base
            trainer args (plus optional fixed activation/shortcut/norm).
        config: the run's config, as produced from :func:`sweep_config`: axis values, constants; keys this
            package does not know (``grid``, ``overrides``, W&B's own) are ignored.

    Trainer args in ``config`` override the grid's base (the sweep may carry CLI overrides);
    ``project``/``name``/``gradmon_*`` are grid-level and not part of the variant.

    Raises:
        GridError: an axis value is missing, invalid or not in the grid.
    """
    cfg = dict(config)
    if isinstance(grid_or_base, Grid):
        grid = grid_or_base
        axes = list(grid.axes)
    else:
        base_map = dict(grid_or_base)
        names = cfg.get(SWEEP_AXES_KEY)
        axes = [a for a in str(names).split(",") if a] if names else [a for a in AXES if a in cfg and a not in base_map]
        unknown = [a for a in axes if a not in AXES]
        if unknown:
            raise GridError(f"sweep config: unknown axis {unknown[0]!r}; valid axes: {', '.join(AXES)}")
        grid = None
    missing = [a for a in axes if a not in cfg]
    if missing:
        raise GridError(f"sweep config: no value for axis {missing[0]!r} (axes: {', '.join(axes)})")
    values = {a: _canonical(a, cfg[a], f"sweep config: {a}") for a in axes}

    if grid is not None:
        for a, v in values.items():
            if v not in grid.axes[a]:
                raise GridError(f"sweep config: {a}={v!r} is not in the grid's axis {grid.axes[a]}")
        base, fixed = dict(grid.base), dict(grid.fixed)
    else:
        base, fixed = {}, dict(MODIFICATION_DEFAULTS)
        for k, v in base_map.items():
            if k in MODIFICATION_KEYS:
                if v is not None or k != "activation":
                    fixed[k] = _canonical(k, v, f"base.{k}")
            elif k not in _GRID_LEVEL and not k.startswith(CLI_PREFIX):
                base[k] = v
        slug_grid = Grid(base=base, fixed=fixed, axes={a: [values[a]] for a in axes}, gradmon={})

    valid = trainer_keys()
    for k, v in cfg.items():
        if k in axes or k in _GRID_LEVEL or k.startswith(CLI_PREFIX):
            continue
        if k in MODIFICATION_KEYS:
            if v is not None or k != "activation":
                fixed[k] = _canonical(k, v, f"sweep config: {k}")
        elif k in valid:
            base[k] = v
    target = grid if grid is not None else slug_grid
    tmp = Grid(base=base, fixed=fixed, axes=target.axes, gradmon={}, project=target.project, name=target.name)
    return tmp.variant(values)
