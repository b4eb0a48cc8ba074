"""The ablation runner end to end: a 3-variant activation grid on YOLO26n / COCO8, resume, bad grids, sweeps."""

import json
import subprocess
import sys

import polars as pl
import pytest
import yaml
from conftest import requires_coco8

from yolo_gradmon.ablate.grid import GridError, load_grid
from yolo_gradmon.ablate.runner import run_grid, sweep_train, write_sweep

pytestmark = requires_coco8


def grid_file(tmp_path, activations=("silu", "relu", "sigmoid"), **base):
    data = {
        "base": {"model": "yolo26n.yaml", "data": "coco8.yaml", "epochs": 2, "imgsz": 160, "batch": 2, "nbs": 2,
                 "seed": 0, "plots": False, "val": False, "workers": 0, "device": "cpu", **base},
        "axes": {"activation": list(activations)},
        "gradmon": {"log_every": 1, "wandb": False},
    }
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abl")
    path = grid_file(tmp)
    grid = load_grid(path, {"project": str(tmp / "runs"), "name": "quick"})
    out = run_grid(grid)
    return tmp, path, grid, out


def test_three_rows_with_real_numbers(ablation):
    _, _, _, out = ablation
    df = pl.read_csv(out / "ablation.csv")
    assert df["variant"].to_list() == ["act-silu", "act-relu", "act-sigmoid"]
    assert df["status"].to_list() == ["done"] * 3
    assert (out / "ablation.parquet").is_file() and (out / "ablation.md").is_file() and (out / "ablation.html").is_file()
    for col in ("map50", "map50_95", "train_box_loss", "grad_norm_first_over_head", "median_grad_to_weight_L0",
                "flagged_count", "wall_time_s", "steps_logged"):
        assert col in df.columns, col
    assert (df["steps_logged"] >= 3).all()
    assert (df["wall_time_s"] > 0).all()
    assert df["grad_norm_first_over_head"].is_not_null().all()
    html = (out / "ablation.html").read_text()
    assert html.count("data:image/png;base64") >= 4  # flow profile + three heatmaps


def test_swapped_models_contain_only_the_requested_activation(ablation):
    _, _, _, out = ablation
    for act, cls in (("silu", "SiLU"), ("relu", "ReLU"), ("sigmoid", "Sigmoid")):
        row = json.loads((out / f"act-{act}" / "variant.json").read_text())
        report = json.loads(row["swap_report"])
        assert report["activation_counts"] == {cls: 105}  # every activation slot of YOLO26n, nothing else
        assert report["activations_replaced"] == {"SiLU": 105}


def test_second_run_skips_completed_variants(ablation, caplog):
    tmp, path, grid, out = ablation
    mtime = (out / "act-relu" / "variant.json").stat().st_mtime
    run_grid(load_grid(path, {"project": str(tmp / "runs"), "name": "quick"}))
    assert (out / "act-relu" / "variant.json").stat().st_mtime == mtime  # not retrained
    assert pl.read_csv(out / "ablation.csv").height == 3


def test_bad_activation_fails_before_training(tmp_path):
    path = grid_file(tmp_path, activations=("silu", "swishy"))
    with pytest.raises(GridError, match="sigmoid") as e:
        load_grid(path, {"project": str(tmp_path / "runs")})
    assert "swishy" in str(e.value)
    out = subprocess.run([sys.executable, "-m", "yolo_gradmon.cli", "ablate", str(path), f"project={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "swishy" in out.stderr and "relu" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_failed_variant_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    import yolo_gradmon.ablate.runner as runner

    real = runner.train_variant

    def flaky(grid, variant, out_dir, wandb_group=None):
        if variant.values["activation"] == "relu":
            raise RuntimeError("boom")
        return real(grid, variant, out_dir, wandb_group)

    monkeypatch.setattr(runner, "train_variant", flaky)
    path = grid_file(tmp_path, activations=("relu", "tanh"), epochs=1)
    out = run_grid(load_grid(path, {"project": str(tmp_path / "runs"), "name": "f"}))
    df = pl.read_csv(out / "ablation.csv")
    assert df["status"].to_list() == ["failed", "done"]
    assert "RuntimeError: boom" in df["error"][0]


def test_sweep_config_and_agent_entry_point(tmp_path):
    path = grid_file(tmp_path, activations=("relu", "tanh"), epochs=1)
    grid = load_grid(path, {"project": str(tmp_path / "runs"), "name": "sw"})
    sweep = yaml.safe_load(write_sweep(grid, path).read_text())
    assert sweep["method"] == "grid"
    assert sweep["parameters"]["activation"]["values"] == ["relu", "tanh"]
    assert sweep["command"][:2] == ["yolo-gradmon", "sweep-run"]
    # what one agent run receives: one value per axis plus the constants
    config = {k: v.get("value", (v.get("values") or [None])[-1]) for k, v in sweep["parameters"].items()}
    row = sweep_train(config, start_run=False)
    assert row["status"] == "done" and row["activation"] == "tanh"
    assert (tmp_path / "runs" / "sw" / "act-tanh" / "gradmon" / "gradients.parquet").is_file()
