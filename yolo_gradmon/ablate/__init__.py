"""Ablations: activation swaps and structural changes (``swaps``, with the activation names in ``activation_names``), YAML grids of variants (``grid``), and the
runner that trains and compares them (``runner``, imported on demand: ``yolo-gradmon ablate <grid.yaml>``).

>>> from yolo_gradmon.ablate import apply_variant, count_activations
>>> model, report = apply_variant("yolo26n.yaml", activation="relu", shortcut=False)
>>> count_activations(model)              # {'ReLU': 105}
>>> model.train(data="coco8.yaml", epochs=1)  # trains the modified architecture
"""

from .grid import AXES, Grid, GridError, Variant, load_grid, parse_grid, sweep_config, variant_from_sweep_config
from .activation_names import ACTIVATIONS, canonical_activation, make_activation
from .swaps import (
    SwapReport,
    VariantSpec,
    apply_variant,
    build_model_with_activation,
    count_activations,
    count_norms,
    count_shortcuts,
    disable_norm,
    disable_shortcuts,
    swap_activations,
    variant_of,
)

__all__ = [
    "ACTIVATIONS",
    "AXES",
    "Grid",
    "GridError",
    "SwapReport",
    "Variant",
    "VariantSpec",
    "apply_variant",
    "build_model_with_activation",
    "canonical_activation",
    "count_activations",
    "count_norms",
    "count_shortcuts",
    "disable_norm",
    "disable_shortcuts",
    "load_grid",
    "make_activation",
    "parse_grid",
    "swap_activations",
    "sweep_config",
    "variant_from_sweep_config",
    "variant_of",
]
