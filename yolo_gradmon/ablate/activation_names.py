"""The activations an ablation can swap in: names and aliases (``silu``, ``leakyrelu``...), the module each builds, the
``activation:`` a model YAML records for it, and the activation types a swap recognises.

What counts as an activation: a module whose type is in :data:`ACTIVATION_TYPES` (the package's activation registry,
:data:`yolo_gradmon.structure.activations.SWAPPABLE`, plus Ultralytics' learnable ``AGLU``), or a module a swap
inserted (it carries the :data:`ACT_MARK` marker). ``nn.Identity`` is **not** an activation unless we put it there: the
``Identity`` a ``Conv(act=False)`` or ``Detect.dfl`` holds is a placeholder and is never replaced,
so swapping to ``relu`` cannot turn a linear projection into a ReLU. Swapping *to* ``identity``
inserts marked ``nn.Identity`` modules, which later swaps and :func:`~yolo_gradmon.ablate.swaps.count_activations` still see.
Activations inside :data:`~yolo_gradmon.ablate.swaps.DEFAULT_EXCLUDE` parents are left alone: the sigmoid *gates* of CBAM
(``ChannelAttention``/``SpatialAttention``) and the normalizing flow (``RealNVP``) the YOLO26 pose
loss uses; pass ``exclude=()`` to swap those too.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..structure import activations

ACT_MARK = "_gradmon_act"  # inserted activation: value = canonical name

#: canonical name -> factory returning a fresh module. LeakyReLU uses YOLO's customary slope 0.1
#: (Darknet, YOLOv3-v5) rather than torch's 0.01. No module is created ``inplace``.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "celu": nn.CELU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
    "leakyrelu": lambda: nn.LeakyReLU(0.1),
    "mish": nn.Mish,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}

#: the same activations as a model-YAML ``activation:`` value (what Ultralytics' ``parse_model`` reads)
ACTIVATION_YAML: dict[str, str] = {
    "celu": "nn.CELU()",
    "elu": "nn.ELU()",
    "gelu": "nn.GELU()",
    "hardswish": "nn.Hardswish()",
    "identity": "nn.Identity()",
    "leakyrelu": "nn.LeakyReLU(0.1)",
    "mish": "nn.Mish()",
    "relu": "nn.ReLU()",
    "relu6": "nn.ReLU6()",
    "selu": "nn.SELU()",
    "sigmoid": "nn.Sigmoid()",
    "silu": "nn.SiLU()",
    "softplus": "nn.Softplus()",
    "tanh": "nn.Tanh()",
}

#: other accepted spellings (after lower-casing and dropping ``_``, ``-``, spaces, ``nn.`` and ``()``)
ACTIVATION_ALIASES: dict[str, str] = {
    "swish": "silu",
    "lrelu": "leakyrelu",
    "leaky": "leakyrelu",
    "hswish": "hardswish",
    "linear": "identity",
}


def _aglu_type() -> tuple[type, ...]:
    try:
        from ultralytics.nn.modules.activation import AGLU

        return (AGLU,)
    except Exception:  # noqa: BLE001 - older Ultralytics without AGLU
        return ()


#: module types treated as activations (nn.Identity deliberately absent: see the module docstring)
ACTIVATION_TYPES: tuple[type, ...] = tuple(getattr(nn, name) for name in activations.SWAPPABLE) + _aglu_type()


def _norm_key(name: str) -> str:
    key = str(name).strip().lower()
    for prefix in ("torch.nn.", "nn."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = key.removesuffix("()")
    for ch in "_- ":
        key = key.replace(ch, "")
    return key


def _valid_names_message() -> str:
    aliases = ", ".join(f"{a}={c}" for a, c in sorted(ACTIVATION_ALIASES.items()))
    return f"valid names: {', '.join(sorted(ACTIVATIONS))} (case-insensitive; aliases: {aliases})"


def canonical_activation(name: str) -> str:
    """The registry key for an activation name (``"LeakyReLU"``, ``"leaky_relu"`` -> ``"leakyrelu"``).

    Raises:
        ValueError: unknown name; the message lists the valid names, sorted.
    """
    if not isinstance(name, str):
        raise ValueError(f"activation name must be a string, got {name!r}; {_valid_names_message()}")
    key = _norm_key(name)
    key = ACTIVATION_ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; {_valid_names_message()}")
    return key


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (case-insensitive), marked as an inserted activation.

    Raises:
        ValueError: unknown name; the message lists the valid names, sorted.
    """
    key = canonical_activation(name)
    module = ACTIVATIONS[key]()
    setattr(module, ACT_MARK, key)
    return module


def is_activation(m: nn.Module) -> bool:
    return m.__dict__.get(ACT_MARK) is not None or isinstance(m, ACTIVATION_TYPES)


def activation_label(m: nn.Module) -> str:
    return type(m).__name__
