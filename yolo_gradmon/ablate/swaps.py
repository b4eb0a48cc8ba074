"""Architecture modifications for ablations: activation swaps, no shortcuts, no normalization.

Everything here works by **module replacement** (or flag flipping) on a built model, so it reaches
activations wherever Ultralytics put them: ``Conv.act`` (and its subclasses ``DWConv``, ``GhostConv``...)
as well as activations hard-coded outside ``Conv`` (``HGStem``/``HGBlock`` ReLU, the GELU of
``TransformerEncoderLayer``/``MLPBlock``, ``RepVGGDW``/``BottleneckCSP`` SiLU, ...). In the installed
Ultralytics the detection models YOLO26n and YOLO11n have *no* activation modules outside ``Conv``:
all of theirs (105 and 77 slots) are ``Conv.act`` SiLU, mostly the single ``nn.SiLU`` instance
``Conv.default_act`` shared by every ``Conv`` (YOLO26's ``one2one`` head copies hold deep copies), so
slots are counted, not unique modules. Functional calls (``F.silu`` in ``SwiGLUFFN``, the softmax of attention, the
output sigmoid of ``Detect``) are not modules and are never touched. What counts as an activation: :mod:`.activation_names`.

Making a modification survive ``model.train()``
    Ultralytics' trainer never trains the module you modified: a YAML-built ``YOLO`` has an empty
    ``ckpt``, so ``Model.train`` hands the trainer the YAML *path* and ``BaseTrainer.setup_model`` builds
    a fresh ``DetectionModel`` from it; a ``.pt``-loaded one goes through
    ``trainer.get_model(cfg=model.yaml, weights=model)``, which also builds a fresh model and only copies
    the *state dict* across. Either way module replacements are lost. (The model YAML's ``activation:``
    key survives, but it only sets ``Conv.default_act``, not hard-coded activations, shortcuts or norms.)

    The route used here: every modification applied to an Ultralytics ``Model`` (``YOLO``) is also
    recorded on it as a :class:`VariantSpec` (an ordered tuple of operations), and the object's class
    is switched to a subclass (:class:`VariantYOLO`) whose ``task_map`` hands out a trainer subclass
    whose ``get_model(cfg, weights)`` builds the model exactly as Ultralytics does (``nc``/channels of
    the dataset, the trainer's seed), **re-applies the recorded operations, then loads** ``weights`` (so
    pretrained weights land in the modified architecture; removed BatchNorms simply drop out of the
    state dict). Both of Ultralytics' paths call ``get_model``, so a plain ``model.train(...)`` (what
    the ablation runner and users call) trains the modified architecture, with no ``trainer=``
    argument; the trainer subclass is picklable by cloudpickle, so DDP workers rebuild it too. The
    modifications are also written into ``model.yaml`` (``activation: nn.ReLU()`` and a
    ``gradmon_variant`` list) so checkpoints record what they are; the checkpoint itself pickles the
    modified modules, all of them plain ``torch.nn`` classes, so ``best.pt`` loads without this package.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import functools
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn

from .activation_names import (ACTIVATION_TYPES, ACTIVATION_YAML, activation_label, canonical_activation, is_activation,
                               make_activation)

__all__ = [
    "DEFAULT_EXCLUDE",
    "NORM_TYPES",
    "SwapReport",
    "VariantSpec",
    "VariantYOLO",
    "apply_variant",
    "build_model_with_activation",
    "count_activations",
    "count_norms",
    "count_shortcuts",
    "disable_norm",
    "disable_shortcuts",
    "swap_activations",
    "variant_of",
]

#: parents (by class name) whose activations are not part of the feature path and are left alone by default
DEFAULT_EXCLUDE: tuple[str, ...] = ("ChannelAttention", "SpatialAttention", "RealNVP")

#: normalization layers :func:`disable_norm` removes
NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)

_NORM_MARK = "_gradmon_norm_removed"  # identity standing in for a norm layer: value = original type name

Include = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


# ---------------------------------------------------------------------------------------------------- walking
def _unwrap(model: Any) -> nn.Module:
    """The ``nn.Module`` to modify: ``YOLO(...).model`` for an Ultralytics ``Model``, else ``model`` itself."""
    if _is_ultralytics_model(model):
        inner = model.model
        if not isinstance(inner, nn.Module):
            raise TypeError(f"{type(model).__name__} holds no PyTorch model ({type(inner).__name__}); "
                            "ablations need a model built from YAML or loaded from a .pt file")
        return inner
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected an Ultralytics YOLO object or a torch.nn.Module, got {type(model).__name__}")


def _is_ultralytics_model(obj: Any) -> bool:
    try:
        from ultralytics.engine.model import Model
    except Exception:  # noqa: BLE001
        return False
    return isinstance(obj, Model)


def _slots(root: nn.Module, match: Callable[[nn.Module], bool], exclude: Iterable[str] = (),
           prefix: str = "") -> Iterator[tuple[nn.Module, str, str, nn.Module]]:
    """Every (parent, attribute, qualified name, child) slot whose child matches, depth first.

    Walks slots, not unique modules: Ultralytics shares one ``Conv.default_act`` instance between every
    ``Conv``, and each of those slots is yielded (``named_modules()`` would yield it once). Matching
    children are not descended into; subtrees of ``exclude`` class names are skipped.
    """
    excl = frozenset(exclude)
    for name, child in root._modules.items():
        if child is None:
            continue
        qual = f"{prefix}.{name}" if prefix else name
        if match(child):
            yield root, name, qual, child
            continue
        if type(child).__name__ in excl:
            continue
        yield from _slots(child, match, excl, qual)


def _include_fn(include: Include) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda name, module: True
    if callable(include):
        return include
    patterns = (include,) if isinstance(include, str) else tuple(include)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"include must be None, a callable or glob patterns of module names, got {include!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _freeze_include(include: Include) -> Any:
    """A hashable form of ``include`` for the recorded spec."""
    if include is None or callable(include):
        return include
    return (include,) if isinstance(include, str) else tuple(include)


# ---------------------------------------------------------------------------------------------------- activations
@dataclasses.dataclass
class SwapReport:
    """What :func:`swap_activations` did.

    Attributes:
        target: canonical name of the new activation (``"relu"``).
        replaced: number of replaced slots per original type name (``{"SiLU": 105}``); slots that already
            held the target type are replaced too (with a fresh instance) and counted under that type.
        total: number of replaced slots.
        modules: qualified names of the replaced slots (``"model.0.act"``, ...).
    """

    target: str
    replaced: dict[str, int]
    total: int
    modules: list[str] = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the module list)."""
        return {"target": self.target, "replaced": dict(self.replaced), "total": self.total}


def _swap(root: nn.Module, key: str, include: Include, exclude: Iterable[str]) -> SwapReport:
    keep = _include_fn(include)
    replaced: dict[str, int] = {}
    names: list[str] = []
    for parent, attr, qual, child in list(_slots(root, is_activation, exclude)):
        if not keep(qual, child):
            continue
        new = make_activation(key)
        setattr(parent, attr, new)
        label = activation_label(child)
        replaced[label] = replaced.get(label, 0) + 1
        names.append(qual)
    if not names:
        where = "" if include is None else f" matching include={include!r}"
        raise ValueError(
            f"swap to {key!r} replaced nothing: no activation modules{where} in {type(root).__name__} "
            f"(activations are modules of type {', '.join(sorted({t.__name__ for t in ACTIVATION_TYPES}))}; "
            "nn.Identity placeholders are never replaced)"
        )
    return SwapReport(target=key, replaced=dict(sorted(replaced.items())), total=len(names), modules=names)


def swap_activations(model: Any, name: str, *, include: Include = None,
                     exclude: Iterable[str] = DEFAULT_EXCLUDE) -> SwapReport:
    """Replace every activation module of ``model`` with a fresh ``name`` activation.

    Args:
        model: an Ultralytics ``YOLO`` object, a ``DetectionModel`` or any ``nn.Module``. A ``YOLO``
            object also records the swap so ``model.train()`` trains the swapped architecture
            (see the module docstring); a bare ``nn.Module`` is only modified.
        name: activation name, case-insensitive (:data:`ACTIVATIONS`, :data:`ACTIVATION_ALIASES`).
        include: restrict the swap to some slots: glob patterns over qualified slot names relative to the
            ``nn.Module`` (``"model.23.*"`` = the Detect head, ``"*.cv1.act"``) or a callable
            ``(qualified_name, module) -> bool``. ``None`` = every activation.
        exclude: class names of parents whose activations are left alone (default :data:`DEFAULT_EXCLUDE`).

    Returns:
        SwapReport: target, replaced count per original type, total.

    Raises:
        ValueError: unknown activation name (valid names listed), or nothing was replaced.

    ``Conv.default_act`` (a class attribute shared by every model in the process) is never mutated:
    slots are re-pointed at fresh modules, one per slot.
    """
    key = canonical_activation(name)
    root = _unwrap(model)
    report = _swap(root, key, include, exclude)
    _record_on_yolo(model, ("activation", key, _freeze_include(include), tuple(exclude)))
    return report


def count_activations(model: Any, *, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, int]:
    """Activation slots per type name (``{"SiLU": 105}``), counting each slot of a shared instance.

    Uses the same notion of activation as :func:`swap_activations` (``nn.Identity`` placeholders are not
    counted; an ``Identity`` inserted by a swap to ``identity`` is, as ``"Identity"``). Activations inside
    ``exclude`` parents are not counted (pass ``exclude=()`` to count everything).
    """
    counts: dict[str, int] = {}
    for _, _, _, child in _slots(_unwrap(model), is_activation, exclude):
        label = activation_label(child)
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------------- structure
def _shortcut_flags(m: nn.Module) -> list[str]:
    return [a for a in ("add", "shortcut") if isinstance(m.__dict__.get(a), bool)]


def count_shortcuts(model: Any) -> int:
    """Number of active residual shortcuts controlled by a boolean ``add``/``shortcut`` flag."""
    return sum(1 for m in _unwrap(model).modules() for a in _shortcut_flags(m) if getattr(m, a))


def disable_shortcuts(model: Any) -> int:
    """Turn off residual shortcuts; return how many modules changed.

    Ultralytics gates its residuals with a boolean ``add`` attribute set at construction
    (``Bottleneck``: ``add = shortcut and c1 == c2``, also ``PSABlock``, ``CIB``, ``SPPF`` (YOLO26's SPPF
    has one), ``HGBlock``), and ``C2f``/``C3k2``/``C3k``/``C2PSA`` build those blocks with their
    ``shortcut`` argument. Every module with an ``add`` (or boolean ``shortcut``) flag that is ``True``
    is set to ``False``. Not covered (no flag to flip): the CSP concatenation of ``C2f``/``C3k2`` (a
    split-and-concatenate path, not a residual), and hard-wired residuals of ``ResNetBlock``,
    ``GhostBottleneck``, ``ABlock``/``A2C2f`` and ``Residual``.

    A ``YOLO`` object also records the change so ``model.train()`` trains without shortcuts.

    Raises:
        ValueError: no active shortcut flag was found (count 0).
    """
    root = _unwrap(model)
    n = 0
    for m in root.modules():
        for attr in _shortcut_flags(m):
            if getattr(m, attr):
                setattr(m, attr, False)
                n += 1
    if n == 0:
        raise ValueError(f"disable_shortcuts changed nothing: {type(root).__name__} has no module with an active "
                         "'add'/'shortcut' flag (already disabled, or an architecture without gated residuals)")
    _record_on_yolo(model, ("shortcut",))
    return n


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORM_TYPES) or type(m).__name__ == "LayerNorm2d"


def _norm_stand_in(norm: nn.Module) -> nn.Module:
    """An ``nn.Identity`` replacing ``norm``.

    For BatchNorms it carries non-persistent buffers of an identity BatchNorm (mean 0, var 1, weight 1,
    bias 0, eps 0) so Ultralytics' ``fuse()`` (``fuse_conv_and_bn(m.conv, m.bn)``, run by the validator
    when it loads ``best.pt``) folds it exactly into the conv; non-persistent, so they never enter a
    state dict and a pretrained BatchNorm's statistics cannot be loaded into them.
    """
    stand_in = nn.Identity()
    setattr(stand_in, _NORM_MARK, type(norm).__name__)
    n = getattr(norm, "num_features", None)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and isinstance(n, int):
        ref = next((t for t in (norm.running_mean, norm.weight) if t is not None), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        stand_in.register_buffer("running_mean", torch.zeros(n, **kw), persistent=False)
        stand_in.register_buffer("running_var", torch.ones(n, **kw), persistent=False)
        stand_in.register_buffer("weight", torch.ones(n, **kw), persistent=False)
        stand_in.register_buffer("bias", torch.zeros(n, **kw), persistent=False)
        stand_in.eps = 0.0
        stand_in.num_features = n
    return stand_in


def _repconv_identity_bn(parent: nn.Module, attr: str) -> bool:
    # RepConv's identity-branch BatchNorm: RepConv._fuse_bn_tensor only accepts None/Conv/BatchNorm2d there
    return attr == "bn" and type(parent).__name__ == "RepConv"


def count_norms(model: Any) -> dict[str, int]:
    """Normalization layers per type name (``{"BatchNorm2d": 114}``)."""
    counts: dict[str, int] = {}
    for _, _, _, child in _slots(_unwrap(model), _is_norm):
        counts[type(child).__name__] = counts.get(type(child).__name__, 0) + 1
    return dict(sorted(counts.items()))


def disable_norm(model: Any) -> int:
    """Replace normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm) with ``nn.Identity``.

    ``Conv.forward`` is ``act(bn(conv(x)))``, so with ``bn`` an identity the block becomes
    ``act(conv(x))`` (Ultralytics' convs have ``bias=False``: no bias is added back, the ablation removes
    the BatchNorm's affine shift with it). The identity standing in for a BatchNorm keeps ``fuse()``
    working (see :func:`_norm_stand_in`). RepConv's identity-branch BatchNorm is kept (its fuse code
    requires one); YOLO26n/YOLO11n have none. A ``YOLO`` object also records the change so
    ``model.train()`` trains without normalization.

    Returns:
        int: the number of removed layers.

    Raises:
        ValueError: the model has no normalization layer (count 0).
    """
    root = _unwrap(model)
    n = 0
    for parent, attr, _, child in list(_slots(root, _is_norm)):
        if _repconv_identity_bn(parent, attr):
            continue
        setattr(parent, attr, _norm_stand_in(child))
        n += 1
    if n == 0:
        raise ValueError(f"disable_norm changed nothing: {type(root).__name__} has no normalization layer "
                         f"({', '.join(t.__name__ for t in NORM_TYPES)})")
    _record_on_yolo(model, ("norm",))
    return n


# ---------------------------------------------------------------------------------------------------- variant spec
@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """The ordered modifications recorded on a ``YOLO`` object, re-applied to every model its trainer builds.

    ``ops`` holds tuples ``("activation", name, include, exclude)``, ``("shortcut",)`` (disable) and
    ``("norm",)`` (disable), applied in order by :meth:`apply`.
    """

    ops: tuple = ()

    def add(self, op: tuple) -> "VariantSpec":
        """A new spec with ``op`` appended."""
        return VariantSpec(self.ops + (op,))

    @property
    def activation(self) -> str | None:
        """The last whole-model activation swap (``None`` when none, or only partial ``include`` swaps)."""
        acts = [op for op in self.ops if op[0] == "activation" and op[2] is None]
        return acts[-1][1] if acts else None

    @property
    def shortcut(self) -> bool:
        """False once shortcuts were disabled."""
        return not any(op[0] == "shortcut" for op in self.ops)

    @property
    def norm(self) -> bool:
        """False once normalization was removed."""
        return not any(op[0] == "norm" for op in self.ops)

    def apply(self, model: nn.Module) -> list[dict[str, Any]]:
        """Apply every op to a bare ``nn.Module`` (nothing is recorded); return one report per op."""
        reports = []
        for op in self.ops:
            if op[0] == "activation":
                _, key, include, exclude = op
                reports.append({"op": "activation", **_swap(model, key, include, exclude).to_dict()})
            elif op[0] == "shortcut":
                reports.append({"op": "shortcut", "disabled": disable_shortcuts(model)})
            elif op[0] == "norm":
                reports.append({"op": "norm", "removed": disable_norm(model)})
            else:  # pragma: no cover - ops are only built here
                raise ValueError(f"unknown variant op {op!r}")
        return reports

    def to_list(self) -> list[dict[str, Any]]:
        """The ops as plain data (for ``model.yaml`` and reports)."""
        out = []
        for op in self.ops:
            if op[0] == "activation":
                include = op[2] if op[2] is None or isinstance(op[2], tuple) else repr(op[2])
                out.append({"activation": op[1], "include": list(include) if isinstance(include, tuple) else include,
                            "exclude": list(op[3])})
            else:
                out.append({op[0]: False})
        return out

    def record(self, model: nn.Module) -> None:
        """Write the spec into ``model.yaml`` (when the model has a YAML dict): ``activation:`` in Ultralytics'
        own format, so a plain Ultralytics rebuild at least gets ``Conv``'s activation right, and the full
        op list under ``gradmon_variant``."""
        yaml_dict = getattr(model, "yaml", None)
        if not isinstance(yaml_dict, dict) or not self.ops:
            return
        if self.activation is not None:
            yaml_dict["activation"] = ACTIVATION_YAML[self.activation]
        yaml_dict["gradmon_variant"] = self.to_list()


def variant_of(model: Any) -> VariantSpec | None:
    """The :class:`VariantSpec` recorded on a ``YOLO`` object, or ``None``."""
    return getattr(model, "__dict__", {}).get("_gradmon_variant")


class _VariantTrainerMixin:
    """Trainer mixin: ``get_model`` builds as Ultralytics does, re-applies the variant, then loads weights."""

    gradmon_variant: VariantSpec = VariantSpec()

    def get_model(self, cfg=None, weights=None, verbose=True):
        """Build the task model from ``cfg``, apply :attr:`gradmon_variant`, then load ``weights`` into it."""
        spec = type(self).gradmon_variant
        if spec.activation is not None:  # build from the original activations; the swap report stays informative
            cfg = _cfg_without_activation(cfg)
        with _preserve_default_act():
            model = super().get_model(cfg=cfg, weights=None, verbose=verbose)
        self.gradmon_variant_report = spec.apply(model)
        spec.record(model)
        if weights:
            model.load(weights)
        return model


def _cfg_without_activation(cfg: Any) -> Any:
    from ultralytics.nn.tasks import yaml_model_load

    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)  # DetectionModel keeps (and edits) a dict cfg as its .yaml
    elif isinstance(cfg, (str, Path)):
        d = yaml_model_load(cfg)
    else:
        return cfg
    d.pop("activation", None)
    return d


@contextlib.contextmanager
def _preserve_default_act():
    """Restore ``Conv.default_act`` after a build (``parse_model`` restores it, but not when it raises)."""
    from ultralytics.nn.modules import Conv

    saved = Conv.__dict__.get("default_act")
    try:
        yield
    finally:
        if saved is not None and Conv.__dict__.get("default_act") is not saved:
            Conv.default_act = saved


@functools.lru_cache(maxsize=None)
def _variant_trainer(base: type, spec: VariantSpec) -> type:
    return type(f"Variant{base.__name__}", (_VariantTrainerMixin, base),
                {"gradmon_variant": spec, "__module__": __name__})


class _VariantModelMixin:
    """``Model`` mixin: ``task_map`` hands out trainers that re-apply the recorded :class:`VariantSpec`."""

    @property
    def task_map(self) -> dict:
        """Ultralytics' task map with every trainer wrapped by :func:`_variant_trainer`."""
        tm = super().task_map
        spec = self.__dict__.get("_gradmon_variant")
        if spec is None or not spec.ops:
            return tm
        return {task: ({**m, "trainer": _variant_trainer(m["trainer"], spec)} if m.get("trainer") else m)
                for task, m in tm.items()}


def _yolo_class() -> type:
    from ultralytics import YOLO

    return YOLO


try:
    from ultralytics import YOLO as _YOLO

    class VariantYOLO(_VariantModelMixin, _YOLO):
        """A ``YOLO`` whose ``train()`` trains its recorded variant (objects become one via :func:`apply_variant`)."""

except Exception:  # noqa: BLE001  pragma: no cover
    VariantYOLO = None  # type: ignore[assignment,misc]


@functools.lru_cache(maxsize=None)
def _variant_model_class(base: type) -> type:
    if VariantYOLO is not None and base is _yolo_class():
        return VariantYOLO
    return type(f"Variant{base.__name__}", (_VariantModelMixin, base), {"__module__": __name__})


def _record_on_yolo(model: Any, op: tuple) -> None:
    """Append ``op`` to the spec of an Ultralytics ``Model`` and route its training through the variant trainer."""
    if not _is_ultralytics_model(model):
        return
    if not isinstance(model, _VariantModelMixin):
        model.__class__ = _variant_model_class(type(model))
    spec = (variant_of(model) or VariantSpec()).add(op)
    model.__dict__["_gradmon_variant"] = spec
    spec.record(model.model)


# ---------------------------------------------------------------------------------------------------- entry points
def _load_yolo(model: Any):
    if _is_ultralytics_model(model):
        return model
    if isinstance(model, (str, Path)):
        with _preserve_default_act():
            return _yolo_class()(str(model))
    raise TypeError(f"expected a model YAML/weights path or an Ultralytics YOLO object, got {type(model).__name__}")


def build_model_with_activation(model_yaml: str, name: str):
    """Build ``model_yaml`` with every activation replaced by ``name``; return ``(YOLO, SwapReport)``.

    The YAML is loaded with ``ultralytics.nn.tasks.yaml_model_load`` and built with its own activations.
    The model-YAML ``activation:`` key is *not* used for the build: it only sets ``Conv.default_act``
    (``parse_model`` restores the class attribute afterwards in this Ultralytics, so it does not leak
    into later models), it would hide which types were replaced from the report, and with ``identity``
    it would yield unmarked placeholders. Instead :func:`swap_activations` replaces every activation,
    ``Conv.act`` and hard-coded ones alike, so the model contains only ``name`` (check with
    :func:`count_activations`); the key is then written into ``model.yaml`` for the record. The
    returned ``YOLO`` trains the swapped architecture (``model.train(...)``, see the module docstring).

    Raises:
        ValueError: unknown activation name, or the model has no activation to replace.
    """
    key = canonical_activation(name)  # fail before building anything
    if not str(model_yaml).lower().endswith((".yaml", ".yml")):
        raise ValueError(f"build_model_with_activation needs a model YAML, got {model_yaml!r} (use apply_variant)")
    from ultralytics.nn.tasks import yaml_model_load

    yaml_model_load(model_yaml)  # resolves Ultralytics' bundled YAMLs; raises FileNotFoundError when missing
    yolo = _load_yolo(model_yaml)  # Model._new: yaml_model_load + DetectionModel(cfg_dict)
    report = swap_activations(yolo, key)
    return yolo, report


def apply_variant(model_yaml_or_yolo: Any, activation: str | None = None, shortcut: bool = True, norm: bool = True,
                  *, include: Include = None, exclude: Iterable[str] = DEFAULT_EXCLUDE):
    """Build (or take) a model and apply one ablation variant; return ``(YOLO, report)``.

    This is the ablation runner's entry point. ``model.train(**args)`` on the returned object trains the
    modified architecture (the variant is re-applied inside the trainer's ``get_model``; see the module
    docstring), and the ``GradientMonitor`` callbacks see it as ``trainer.model``.

    Args:
        model_yaml_or_yolo: a model YAML (``"yolo26n.yaml"``), a weights path, or a ``YOLO`` object
            (modified in place).
        activation: activation name to swap every activation to; ``None`` keeps the model's own.
        shortcut: ``False`` disables residual shortcuts (:func:`disable_shortcuts`).
        norm: ``False`` removes normalization layers (:func:`disable_norm`).
        include, exclude: passed to :func:`swap_activations`.

    Returns:
        tuple: the ``YOLO`` object and a JSON-ready report: ``activation``, ``shortcut``, ``norm``,
        ``activations_replaced`` (per original type), ``activations_total``, ``shortcuts_disabled``,
        ``norms_removed``, ``activation_counts`` (after), ``parameters`` and ``training_route``.

    Raises:
        ValueError: unknown activation, or a requested modification changes nothing.
    """
    key = canonical_activation(activation) if activation is not None else None  # validate before building
    if not isinstance(shortcut, bool) or not isinstance(norm, bool):
        raise ValueError(f"shortcut and norm must be true or false, got shortcut={shortcut!r}, norm={norm!r}")
    yolo = _load_yolo(model_yaml_or_yolo)
    report: dict[str, Any] = {"activation": key, "shortcut": shortcut, "norm": norm,
                              "activations_replaced": {}, "activations_total": 0,
                              "shortcuts_disabled": 0, "norms_removed": 0}
    if key is not None:
        swap = swap_activations(yolo, key, include=include, exclude=exclude)
        report.update(activations_replaced=swap.replaced, activations_total=swap.total)
    if not shortcut:
        report["shortcuts_disabled"] = disable_shortcuts(yolo)
    if not norm:
        report["norms_removed"] = disable_norm(yolo)
    report["activation_counts"] = count_activations(yolo, exclude=exclude)
    report["parameters"] = sum(p.numel() for p in _unwrap(yolo).parameters())
    spec = variant_of(yolo)
    report["training_route"] = (
        f"{type(yolo).__name__}.task_map -> Variant<Trainer>.get_model: rebuild, re-apply "
        f"{len(spec.ops)} op(s), then load weights" if spec is not None and spec.ops else "unmodified"
    )
    return yolo, report
