"""Ablation grid YAMLs (yolo_gradmon/ablate/grid.py): product, names, overrides, validation, W&B sweep round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from yolo_gradmon.ablate.grid import (
    AXES,
    Grid,
    GridError,
    Variant,
    load_grid,
    parse_grid,
    sweep_config,
    variant_from_sweep_config,
)
from yolo_gradmon.ablate.activation_names import ACTIVATIONS
from yolo_gradmon.config import GradmonConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = {"model": "yolo26n.yaml", "data": "coco8.yaml", "epochs": 2, "imgsz": 320, "seed": 0, "batch": 16}
SAFE = re.compile(r"^[A-Za-z0-9.+_-]+$")


def grid(axes, base=None, gradmon=None, overrides=None, **top):
    data = {"base": dict(BASE if base is None else base), "axes": axes, **top}
    if gradmon is not None:
        data["gradmon"] = gradmon
    return parse_grid(data, overrides)


def write(tmp_path, data, name="my-grid.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


# ---------------------------------------------------------------------------------------------------- product and names
def test_single_axis():
    g = grid({"activation": ["silu", "relu", "sigmoid"]}, gradmon={"log_every": 1})
    vs = g.variants()
    assert len(vs) == len(g) == 3
    assert [v.name for v in vs] == ["act-silu", "act-relu", "act-sigmoid"]
    v = vs[1]
    assert v.values == {"activation": "relu"}
    assert v.trainer_args == BASE  # model included, no project/name
    assert v.modifications == {"activation": "relu", "shortcut": True, "norm": True}
    assert g.gradmon == {"log_every": 1}


def test_cartesian_product_sizes_and_names():
    g = grid({"model": ["yolo26n.yaml", "yolo11n.yaml"], "shortcut": [True, False], "activation": ["relu", "silu"],
              "norm": [True, False], "data": ["coco8.yaml", "coco128.yaml"]})
    vs = g.variants()
    assert len(vs) == len(g) == 32 and len({v.name for v in vs}) == 32
    assert all(SAFE.match(v.name) for v in vs)
    # fixed prefix order (activation, shortcut, norm, model, data) whatever the YAML order; product in YAML order
    assert vs[0].name == "act-relu_skip-on_norm-on_model-yolo26n_data-coco8"
    assert vs[-1].name == "act-silu_skip-off_norm-off_model-yolo11n_data-coco128"
    assert [v.values["model"] for v in vs[:2]] == ["yolo26n.yaml", "yolo26n.yaml"]  # first axis varies slowest
    v = next(v for v in vs if v.name == "act-relu_skip-off_norm-on_model-yolo11n_data-coco128")
    assert v.trainer_args["model"] == "yolo11n.yaml" and v.trainer_args["data"] == "coco128.yaml"
    assert v.modifications == {"activation": "relu", "shortcut": False, "norm": True}
    assert "shortcut" not in v.trainer_args and "activation" not in v.trainer_args


def test_names_are_stable_and_normalized():
    a = grid({"activation": ["LeakyReLU", "Swish"]}).variants()
    b = grid({"activation": ["leaky_relu", "silu"]}).variants()
    assert [v.name for v in a] == [v.name for v in b] == ["act-leakyrelu", "act-silu"]
    assert a == b


def test_model_paths_that_share_a_stem_get_distinct_names(tmp_path):
    src = Path(__import__("ultralytics").__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "yolo11n.yaml").write_text(src.read_text())
    g = grid({"model": [str(tmp_path / "a" / "yolo11n.yaml"), str(tmp_path / "b" / "yolo11n.yaml")]}, base={})
    names = [v.name for v in g.variants()]
    assert len(set(names)) == 2 and all(SAFE.match(n) for n in names)


def test_fixed_modifications_in_base():
    g = grid({"shortcut": [True, False]}, base={**BASE, "activation": "Sigmoid", "norm": False})
    v = g.variants()[1]
    assert v.name == "skip-off"
    assert v.modifications == {"activation": "sigmoid", "shortcut": False, "norm": False}
    assert "activation" not in v.trainer_args and "norm" not in v.trainer_args


def test_axis_replaces_base_value():
    g = grid({"model": ["yolo11n.yaml"]})  # base also has model: the axis wins
    assert [v.trainer_args["model"] for v in g.variants()] == ["yolo11n.yaml"]


# ---------------------------------------------------------------------------------------------------- overrides
def test_overrides():
    g = grid({"activation": ["silu", "relu", "sigmoid"], "norm": [True, False]}, gradmon={"log_every": 2},
             overrides={"epochs": 1, "imgsz": 160, "project": "runs/x", "name": "quick", "gradmon_log_every": 5,
                        "gradmon_console": False, "shortcut": False})
    assert g.project == "runs/x" and g.name == "quick"
    assert g.gradmon == {"log_every": 5, "console": False}
    v = g.variants()[0]
    assert v.trainer_args["epochs"] == 1 and v.trainer_args["imgsz"] == 160 and v.trainer_args["batch"] == 16
    assert "project" not in v.trainer_args and "name" not in v.trainer_args
    assert all(v.modifications["shortcut"] is False for v in g.variants())  # not an axis: a fixed value


def test_override_collapses_an_axis_keeping_names():
    full = {v.name for v in grid({"activation": ["silu", "relu"], "norm": [True, False]}).variants()}
    one = grid({"activation": ["silu", "relu"], "norm": [True, False]}, overrides={"activation": "ReLU", "norm": False})
    assert [v.name for v in one.variants()] == ["act-relu_norm-off"] and "act-relu_norm-off" in full
    two = grid({"activation": ["silu"]}, overrides={"activation": ["tanh", "gelu"]})
    assert [v.name for v in two.variants()] == ["act-tanh", "act-gelu"]
    cli = grid({"activation": ["silu"]}, overrides={"activation": "sigmoid, Tanh"})  # activation=sigmoid,Tanh
    assert [v.name for v in cli.variants()] == ["act-sigmoid", "act-tanh"]


def test_load_grid_defaults_and_overrides(tmp_path):
    p = write(tmp_path, {"base": BASE, "axes": {"activation": ["relu"]}, "description": "x"})
    g = load_grid(p)
    assert g.project == "runs/ablate" and g.name == "my-grid" and g.path == str(p) and g.description == "x"
    assert load_grid(p, {"model": "yolo11n.yaml"}).variants()[0].trainer_args["model"] == "yolo11n.yaml"
    cfg = write(tmp_path, {"log_every": 7}, "gm.yaml")
    assert load_grid(p, {"gradmon_config": str(cfg)}).gradmon == {"log_every": 7}


# ---------------------------------------------------------------------------------------------------- validation
INVALID = [
    ({"axes": {"activation": ["relu"]}, "bsae": {}}, ["unknown top-level key 'bsae'", "did you mean 'base'"]),
    ({"axes": {"activaton": ["relu"]}}, ["unknown axis 'activaton'", "did you mean 'activation'",
                                         "valid axes: " + ", ".join(AXES)]),
    ({"axes": {"activation": ["relu", "swishh"]}}, ["axes.activation", "unknown activation 'swishh'",
                                                    "valid names: " + ", ".join(sorted(ACTIVATIONS))]),
    ({"axes": {"activation": "relu"}}, ["axes.activation: must be a list"]),
    ({"axes": {"shortcut": []}}, ["axes.shortcut: empty list"]),
    ({"axes": {"activation": ["relu", "ReLU"]}}, ["axes.activation: duplicate values relu"]),
    ({"axes": {"model": ["yolo26n.yaml", "yolo26n.yaml"]}}, ["duplicate values yolo26n.yaml"]),
    ({"axes": {"norm": [True, "no"]}}, ["axes.norm: norm values must be true or false, got 'no'"]),
    ({"axes": {"model": ["yolo99z.yaml"]}}, ["axes.model: model 'yolo99z.yaml' cannot be loaded"]),
    ({"axes": {"data": [3]}}, ["axes.data: data values must be non-empty strings"]),
    ({"axes": {}}, ["'axes' must be a non-empty mapping"]),
    ({"base": BASE}, ["'axes' must be a non-empty mapping"]),
    ({"axes": {"activation": ["relu"]}, "gradmon": {"log_evry": 1}}, ["gradmon:", "unknown gradmon option 'log_evry'"]),
    ({"axes": {"activation": ["relu"]}, "gradmon": {"log_every": 0}}, ["gradmon:", "'log_every' must be >= 1"]),
    ({"axes": {"activation": ["relu"]}, "gradmon": [1]}, ["'gradmon' must be a mapping"]),
    ({"axes": {"activation": ["relu"]}, "base": {**BASE, "epoch": 3}}, ["'epoch' is not an Ultralytics trainer argument",
                                                                      "did you mean 'epochs'"]),
    ({"axes": {"activation": ["relu"]}, "base": {**BASE, "epochs": "many"}}, ["base", "'epochs=many'"]),
    ({"axes": {"shortcut": [True]}, "base": {**BASE, "activation": "nope"}}, ["base.activation",
                                                                                 "unknown activation 'nope'"]),
    ({"axes": {"activation": ["relu"]}, "base": {"data": "coco8.yaml"}}, ["no model"]),
    ({"axes": {"activation": ["relu"]}, "base": {**BASE, "gradmon_log_every": 2}}, ["go in the 'gradmon' section"]),
    ({"axes": {"activation": ["relu"]}, "base": ["model"]}, ["'base' must be a mapping"]),
]


@pytest.mark.parametrize("data, needles", INVALID, ids=[n[0][:40] for _, n in INVALID])
def test_invalid_grids_rejected(tmp_path, data, needles):
    data = {"base": BASE, **data}
    for load in (lambda: parse_grid(data), lambda: load_grid(write(tmp_path, data))):
        with pytest.raises(GridError) as e:
            load()
        for needle in needles:
            assert needle in str(e.value), str(e.value)
    assert issubclass(GridError, ValueError) and issubclass(GridError, GradmonConfigError)  # the CLI reports these


@pytest.mark.parametrize("overrides, needle", [({"activation": "nope"}, "override activation='nope'"),
                                               ({"epochs": "x"}, "'epochs=x'"),
                                               ({"epohcs": 1}, "'epohcs' is not an Ultralytics trainer argument"),
                                               ({"gradmon_log_every": -1}, "'log_every' must be >= 1"),
                                               ({"name": ""}, "must be non-empty")])
def test_invalid_overrides_rejected(overrides, needle):
    with pytest.raises(GridError, match=re.escape(needle)):
        grid({"activation": ["relu", "silu"]}, overrides=overrides)


def test_load_grid_file_errors(tmp_path):
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(GridError, match="expected a mapping"):
        load_grid(lst)


# ---------------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name, size", [("ablation-activations.yaml", 9), ("ablation-structure.yaml", 8)])
def test_shipped_configs_load(name, size):
    g = load_grid(CONFIGS / name)
    assert len(g.variants()) == size and g.name == Path(name).stem
    assert all(SAFE.match(v.name) for v in g.variants())
    small = load_grid(CONFIGS / name, {"epochs": 1, "imgsz": 160})
    assert {v.trainer_args["epochs"] for v in small.variants()} == {1}


def test_structure_config_corners():
    names = [v.name for v in load_grid(CONFIGS / "ablation-structure.yaml").variants()]
    assert "act-silu_skip-on_norm-on" in names and "act-sigmoid_skip-off_norm-off" in names


# ---------------------------------------------------------------------------------------------------- W&B sweep
def constants(sc: dict) -> dict:
    return {k: p["value"] for k, p in sc["parameters"].items() if "value" in p}


def test_sweep_config_shape():
    g = grid({"activation": ["silu", "relu"], "norm": [True, False]}, gradmon={"log_every": 3},
             overrides={"epochs": 1, "shortcut": False})
    sc = sweep_config(g)
    assert sc["method"] == "grid" and sc["name"] == g.name
    p = sc["parameters"]
    assert p["activation"] == {"values": ["silu", "relu"]} and p["norm"] == {"values": [True, False]}
    assert p["epochs"] == {"value": 1} and p["model"] == {"value": "yolo26n.yaml"}
    assert p["shortcut"] == {"value": False} and p["gradmon_log_every"] == {"value": 3}
    yaml.safe_load(yaml.safe_dump(sc))  # plain data: writable as sweep.yaml
    n = 1
    for spec in p.values():
        n *= len(spec.get("values", [0]))
    assert n == len(g)


@pytest.mark.parametrize("axes", [{"activation": ["silu", "relu", "sigmoid"]},
                                  {"activation": ["silu", "sigmoid"], "shortcut": [True, False], "norm": [True, False]},
                                  {"model": ["yolo26n.yaml", "yolo11n.yaml"], "data": ["coco8.yaml", "coco128.yaml"]}])
def test_sweep_round_trip(axes):
    g = grid(axes, overrides={"epochs": 1, "shortcut": False} if "shortcut" not in axes else {"epochs": 1})
    sc = sweep_config(g)
    for v in g.variants():
        run_config = {**constants(sc), **v.values, "grid": "/path/grid.yaml", "overrides": {}}  # as wandb.config
        assert variant_from_sweep_config(g, run_config) == v
        assert variant_from_sweep_config({}, run_config) == v  # the config alone is enough


def test_variant_from_sweep_config_errors_and_base_dict():
    g = grid({"activation": ["silu", "relu"]})
    with pytest.raises(GridError, match="no value for axis 'activation'"):
        variant_from_sweep_config(g, {"epochs": 1})
    with pytest.raises(GridError, match="not in the grid"):
        variant_from_sweep_config(g, {"activation": "tanh"})
    with pytest.raises(GridError, match="unknown activation 'nope'"):
        variant_from_sweep_config(g, {"activation": "nope"})
    v = variant_from_sweep_config({**BASE, "norm": False}, {"activation": "GELU", "epochs": 5, "project": "p"})
    assert isinstance(v, Variant) and v.name == "act-gelu"
    assert v.trainer_args == {**BASE, "epochs": 5}
    assert v.modifications == {"activation": "gelu", "shortcut": True, "norm": False}
    assert isinstance(g, Grid) and g.to_dict()["axes"] == {"activation": ["silu", "relu"]}
