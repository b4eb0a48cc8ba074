"""Which parameters belong to which monitored module, at each granularity, and the model's top-level layers.

``layer``  : each top-level ``model.model[i]`` of an Ultralytics model, keyed ``"02.C3k2"``;
``module`` : each module that owns parameters directly (conv, bn, linear, ...), keyed
             ``"02.C3k2.m.0.cv1.conv"``;
``param``  : each parameter tensor, keyed ``"02.C3k2.m.0.cv1.conv.weight"``.

Keys start with the zero-padded top-level index, so sorting them keeps depth order (in W&B too).
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from ..config import GRANULARITIES

_LAYER_RE = re.compile(r"^model\.(\d+)(?:\.(.*))?$")


@dataclasses.dataclass
class ModuleLayout:
    """The grouping of a model's parameters into monitored modules.

    Attributes:
        granularity: ``layer``, ``module`` or ``param``.
        names: module keys in depth order.
        params: every parameter, in the order of ``model.named_parameters()``.
        group_of: for each parameter, the index of its module in ``names``.
        numel: number of parameter values per module.
        trainable: per module, whether any of its parameters requires grad.
        layer_index: per module, the top-level layer index it belongs to (-1 when it has none).
    """

    granularity: str
    names: list[str]
    params: list[nn.Parameter]
    group_of: list[int]
    numel: list[int]
    trainable: list[bool]
    layer_index: list[int]

    @property
    def n_groups(self) -> int:
        return len(self.names)


def top_layers(model: nn.Module) -> nn.ModuleList | nn.Sequential | None:
    """An Ultralytics model's list of top-level layers (``model.model``), or None for another ``nn.Module``."""
    seq = getattr(model, "model", None)
    return seq if isinstance(seq, (nn.Sequential, nn.ModuleList)) else None


def layer_key(index: int, module: nn.Module, width: int = 2) -> str:
    """``"02.C3k2"``: zero-padded top-level index and class name."""
    return f"{index:0{width}d}.{type(module).__name__}"


def layer_names(model: nn.Module) -> list[str]:
    """Keys of every top-level layer (with or without parameters), e.g. ``"12.Concat"``; same format as the layout."""
    layers = top_layers(model)
    if layers is None:
        return []
    width = max(2, len(str(len(layers) - 1)))
    return [layer_key(i, m, width) for i, m in enumerate(layers)]


def layer_sources(model: nn.Module) -> list[list[int]]:
    """For each top-level layer, the indices of the layers whose outputs it consumes (Ultralytics' ``.f``;
    -1 = previous layer, resolved). Layer 0 consumes the image (``[]``). Without ``.f`` a plain chain is assumed."""
    layers = top_layers(model)
    if layers is None:
        return []
    out = []
    for i, m in enumerate(layers):
        f = getattr(m, "f", -1)
        fs = [f] if isinstance(f, int) else list(f)
        src = sorted({(i + j if j < 0 else j) for j in fs})
        out.append([s for s in src if 0 <= s < i])
    return out


def build_layout(model: nn.Module, granularity: str = "layer") -> ModuleLayout:
    """Group ``model``'s parameters (an unwrapped Ultralytics model or any ``nn.Module``)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    layers = top_layers(model)
    width = max(2, len(str(len(layers) - 1))) if layers is not None else 2
    owner = {id(p): mname for mname, m in model.named_modules() for _, p in m.named_parameters(recurse=False)}

    names: list[str] = []
    index: dict[str, int] = {}
    params, group_of, layer_idx = [], [], []
    for pname, p in model.named_parameters():
        m = _LAYER_RE.match(pname) if layers is not None else None
        if m:
            li = int(m.group(1))
            prefix = layer_key(li, layers[li], width)
            rest = m.group(2) or ""
        else:
            li, prefix, rest = -1, pname.split(".")[0], ".".join(pname.split(".")[1:])
        if granularity == "layer":
            key = prefix
        elif granularity == "param":
            key = f"{prefix}.{rest}" if rest else prefix
        else:  # module: the module owning the parameter directly
            mod_name = owner.get(id(p), "")
            mrest = _LAYER_RE.match(mod_name).group(2) if m and _LAYER_RE.match(mod_name) else None
            if m:
                key = f"{prefix}.{mrest}" if mrest else prefix
            else:
                key = mod_name or prefix
        if key not in index:
            index[key] = len(names)
            names.append(key)
            layer_idx.append(li)
        params.append(p)
        group_of.append(index[key])

    numel = [0] * len(names)
    trainable = [False] * len(names)
    for p, g in zip(params, group_of):
        numel[g] += p.numel()
        trainable[g] |= bool(p.requires_grad)
    return ModuleLayout(granularity, names, params, group_of, numel, trainable, layer_idx)


def device_of(layout: ModuleLayout) -> torch.device:
    return layout.params[0].device if layout.params else torch.device("cpu")
