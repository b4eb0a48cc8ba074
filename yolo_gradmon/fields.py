"""The step record's schema, declared once: every field of a ``step`` line of ``gradients.jsonl``, what it is per
(the whole step, each monitored module, or each top-level layer), its type, and how it is charted.

The log writer, the reader, the Parquet tables, the rules, the W&B sink and the figures all read this declaration;
nothing else lists the fields. A step record is plain from the moment it is made (:func:`plain_values`): numbers are
Python floats/ints/bools, per-module and per-layer fields are lists aligned with the header's ``modules`` and
``layers``, and a non-finite or missing statistic is ``None``. A live record therefore equals the same record read
back from the log.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

STEP, MODULE, LAYER = "step", "module", "layer"


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a ``step`` record.

    Attributes:
        name: the key in the log, the Parquet column and the W&B key section (``gradients/<name>/<module>``).
        per: ``"step"`` (one value), ``"module"`` (a list over the header's ``modules``) or ``"layer"`` (a list over
            its ``layers``).
        kind: ``"float"``, ``"int"`` or ``"bool"`` (the Parquet type).
        label: what it is, in words and symbols, for chart titles and tables.
        log10: charted on a log scale (a positive quantity spanning decades).
        sampled: measured only on some logged steps (``update_every``, ``flow_every``, ``health_every``); ``None``
            (or an absent per-layer field) on the others. ``weight_norm`` and ``max_abs_grad`` are measured with the
            update ratio's cadence (``weights_measured`` says where); ``grad_to_weight`` is on every logged step, from
            the last measured weight norm.
        optional: absent from logs written without its signal (the per-layer fields without flow / health).
        chart: has a native W&B line chart (``gradmon/layers/<name>``), every module or layer a line.
    """

    name: str
    per: str
    kind: str = "float"
    label: str = ""
    log10: bool = False
    sampled: bool = False
    optional: bool = False
    chart: bool = False

    @property
    def family(self) -> bool:
        """A per-module or per-layer statistic that ``wandb_layer_scalars`` can stream as one W&B key per layer."""
        return self.per != STEP and bool(self.label)


FIELDS: tuple[Field, ...] = (
    Field("step", STEP, "int"),
    Field("epoch", STEP, "int"),
    Field("lr", STEP, "float"),  # a list: one learning rate per optimizer param group
    Field("amp_scale", STEP),
    Field("amp_skipped", STEP, "bool"),
    Field("total_norm", STEP, label="total ‖grad‖ before clipping"),
    Field("clip_active", STEP, "bool"),
    Field("warmup", STEP, "bool"),
    Field("weights_measured", STEP, "bool", optional=True),  # weight_norm and max_abs_grad measured at this step
    Field("has_grad", MODULE, "bool"),
    Field("grad_norm", MODULE, label="‖grad‖", log10=True, chart=True),
    Field("weight_norm", MODULE, sampled=True),  # with max_abs_grad: every update_every-th logged step
    Field("grad_to_weight", MODULE, label="‖grad‖/‖w‖", log10=True, chart=True),
    Field("update_to_weight", MODULE, label="‖Δw‖/‖w‖", log10=True, sampled=True, chart=True),
    Field("max_abs_grad", MODULE, label="max |grad|", log10=True, sampled=True),
    Field("nonfinite", MODULE, "int"),
    Field("flow_backwards", STEP, "int", optional=True),
    Field("flow_norm", LAYER, label="flow ‖dL/d out‖", log10=True, sampled=True, optional=True),
    Field("flow_attenuation", LAYER, label="flow relative to the head", log10=True, sampled=True, optional=True,
          chart=True),
    Field("act_saturated", LAYER, label="saturated-unit fraction", sampled=True, optional=True, chart=True),
    Field("act_dead", LAYER, label="dead-channel fraction", sampled=True, optional=True, chart=True),
    # the non-finite event (judge/nonfinite.py): 0/1 bits per layer, and Ultralytics' NaN recovery
    Field("out_nonfinite", LAYER, "int", optional=True),  # a forward output was non-finite on a pass of the step
    Field("grad_out_nonfinite", LAYER, "int", sampled=True, optional=True),  # its output gradient was (flow passes)
    Field("reloaded", STEP, "bool", optional=True),  # the first logged step after Ultralytics reloaded last.pt
    # the gradient noise scale (measure/noise.py): on logged steps with two or more micro-batches
    Field("gns_small_sq", LAYER, sampled=True, optional=True),  # ‖g‖² per image² after the first micro-batch
    Field("gns_big_sq", LAYER, sampled=True, optional=True),  # ‖g‖² per image² of the accumulated gradient
    Field("gns_small_total", STEP, sampled=True, optional=True),
    Field("gns_big_total", STEP, sampled=True, optional=True),
    Field("gns_small_batch", STEP, sampled=True, optional=True),  # images in the first micro-batch
    Field("gns_big_batch", STEP, sampled=True, optional=True),  # images in the accumulation window
)
BY_NAME = {f.name: f for f in FIELDS}
STEP_FIELDS = tuple(f.name for f in FIELDS if f.per == STEP)
MODULE_FIELDS = tuple(f.name for f in FIELDS if f.per == MODULE and f.name != "has_grad")
LAYER_FIELDS = tuple(f.name for f in FIELDS if f.per == LAYER)
FAMILIES = tuple(f.name for f in FIELDS if f.family)
"""The per-module / per-layer families that ``wandb_layer_scalars`` can stream as one W&B key per module or layer."""
CHART_FAMILIES = tuple(f.name for f in FIELDS if f.chart)
"""The families with a native W&B line chart."""


def finite_or_none(v) -> float | None:
    """A finite float, or None for None/NaN/Inf: how a record stores a non-finite or missing statistic."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def as_float(v) -> float:
    """A record's value as a float for arithmetic: ``None`` (non-finite or missing) becomes NaN."""
    return math.nan if v is None else float(v)


def plain_values(value: Any) -> Any:
    """A JSON-ready copy of ``value``: numpy scalars and arrays unwrapped (``tolist``), non-finite floats as None,
    recursively through lists, tuples and dicts. How a step record is made plain once, when it is built."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars (bool_, integer, floating), without importing numpy
        return plain_values(value.tolist())
    return value
