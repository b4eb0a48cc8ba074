"""The ablation runner end to end: a 3-variant activation grid on YOLO26n / COCO8 run through the CLI with a relative
project from a temporary working directory, resume, a missing log, bad grids, sweeps."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import logged_records, requires_coco8

from yolo_gradmon import cli
from yolo_gradmon.ablate.grid import GridError, load_grid
from yolo_gradmon.ablate.runner import STATUS_NAME, run_grid, sweep_train, write_comparison, write_sweep

pytestmark = requires_coco8


def grid_file(tmp_path, activations=("silu", "relu", "sigmoid"), **base):
    data = {
        "base": {"model": "yolo26n.yaml", "data": "coco8.yaml", "epochs": 2, "imgsz": 64, "batch": 2, "nbs": 2,
                 "seed": 0, "plots": False, "val": False, "workers": 0, "device": "cpu", **base},
        "axes": {"activation": list(activations)},
        "gradmon": {"log_every": 1, "wandb": False},
    }
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """``yolo-gradmon ablate grid.yaml project=runs/abl name=quick`` from a fresh working directory: a RELATIVE
    project, which Ultralytics alone would nest under its runs_dir/<task>/."""
    tmp = tmp_path_factory.mktemp("abl")
    path = grid_file(tmp)
    cwd = tmp / "work"
    cwd.mkdir()
    with logged_records() as records, pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        assert cli.main(["ablate", str(path), "project=runs/abl", "name=quick"]) == 0
        grid = load_grid(path, {"project": "runs/abl", "name": "quick"})
    out = cwd / "runs" / "abl" / "quick"
    return tmp, path, grid, out, [r.getMessage() for r in records]


def test_relative_project_lands_in_the_working_directory(ablation):
    tmp, _, _, out, lines = ablation
    assert (out / "ablation.html").is_file()
    for act in ("silu", "relu", "sigmoid"):
        status = json.loads((out / f"act-{act}" / STATUS_NAME).read_text())
        assert Path(status["save_dir"]) == (out / f"act-{act}").resolve()  # where the trainer really wrote it
        assert (Path(status["gradmon_dir"]) / "gradients.jsonl").is_file()
    assert any(f"comparison: {(out / 'ablation.html').resolve()}" in line for line in lines), lines[-5:]
    assert any("first layers receive" in line for line in lines)  # the finding is printed


def test_page_embeds_every_variant_and_opens_with_the_finding(ablation):
    _, _, _, out, _ = ablation
    html = (out / "ablation.html").read_text()
    for act in ("silu", "relu", "sigmoid"):
        assert f'alt="act-{act}" src="data:image/png;base64,' in html  # its heatmap is on the page
    assert html.index('class="finding"') < html.index("<table")  # finding first, then the short table
    assert "first layers receive" in html and "relative to act-silu" in html
    assert "mAP needs more epochs to separate variants" in html  # 2 epochs: mAP cannot separate them yet
    assert (out / "heatmap-colorbar.png").is_file()  # one colour scale, shown once
    assert "<style>" in html and html.count("<style>") == 1  # the report's stylesheet (show/html.py)


def test_three_rows_with_real_numbers(ablation):
    _, _, _, out, _ = ablation
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
    numeric = [c for c, t in df.schema.items() if t.is_numeric()]
    assert {"early_flow", "early_flow_vs_baseline", "weakest_flow", "map50_95"} <= set(numeric)
    empty = [c for c in numeric if df[c].is_null().any()]
    assert not empty, f"numeric columns with empty cells for completed variants: {empty}"
    # the depth signal is the early layers' median flow relative to the head (record/depth.run_depth)
    summary = json.loads((out / "act-sigmoid" / "gradmon" / "summary.json").read_text())
    assert df.filter(pl.col("variant") == "act-sigmoid")["early_flow"][0] == pytest.approx(summary["depth"]["early_flow"])
    assert df.filter(pl.col("variant") == "act-silu")["early_flow_vs_baseline"][0] == pytest.approx(1.0)
    html = (out / "ablation.html").read_text()
    assert html.count("data:image/png;base64") >= 5  # flow profile, grad profile, colour bar, three heatmaps


def test_swapped_models_contain_only_the_requested_activation(ablation):
    _, _, _, out, _ = ablation
    for act, cls in (("silu", "SiLU"), ("relu", "ReLU"), ("sigmoid", "Sigmoid")):
        row = json.loads((out / f"act-{act}" / "variant.json").read_text())
        report = json.loads(row["swap_report"])
        assert report["activation_counts"] == {cls: 105}  # every activation slot of YOLO26n, nothing else
        assert report["activations_replaced"] == {"SiLU": 105}


def test_second_run_skips_completed_variants(ablation):
    tmp, path, grid, out, _ = ablation
    mtime = (out / "act-relu" / "variant.json").stat().st_mtime
    assert run_grid(load_grid(path, {"project": str(out.parent), "name": "quick"})) == out.resolve()  # absolute too
    assert (out / "act-relu" / "variant.json").stat().st_mtime == mtime  # not retrained
    assert pl.read_csv(out / "ablation.csv").height == 3


def test_missing_log_is_named_not_skipped(ablation, tmp_path):
    _, _, grid, out, _ = ablation
    rows = [json.loads((out / f"act-{a}" / STATUS_NAME).read_text()) for a in ("silu", "relu", "sigmoid")]
    rows[1]["gradmon_dir"] = str(tmp_path / "gone" / "gradmon")
    _, comparison = write_comparison(tmp_path, rows, grid)
    assert list(comparison.missing) == ["act-relu"] and "no gradient log" in comparison.missing["act-relu"]
    html = (tmp_path / "ablation.html").read_text()
    assert "act-relu: no gradient log at" in html and 'alt="act-silu"' in html and 'alt="act-relu"' not in html


def test_bad_activation_fails_before_training(tmp_path):
    path = grid_file(tmp_path, activations=("silu", "swishy"))
    with pytest.raises(GridError, match="sigmoid") as e:
        load_grid(path, {"project": str(tmp_path / "runs")})
    assert "swishy" in str(e.value)
    out = subprocess.run([sys.executable, "-m", "yolo_gradmon.cli", "ablate", str(path), f"project={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "swishy" in out.stderr and "relu" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_failed_variant_is_recorded_and_the_grid_goes_on(tmp_path, relu_variant_fails):
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


def test_wandb_one_group_one_run_per_variant(tmp_path, monkeypatch):
    """With W&B on, a grid is one W&B group (named by the grid) holding one run per variant, named by the variant,
    with its axis values at the top of its config, in the project the grid's ``project`` names (as Ultralytics names
    a training's project), plus the group's comparison run; read back with W&B's own reader."""
    path = grid_file(tmp_path, activations=("silu", "relu"), epochs=1)
    data = yaml.safe_load(path.read_text())
    data["gradmon"]["wandb"] = True
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.chdir(tmp_path)
    import wandb

    try:
        out = run_grid(load_grid(path, {"project": "runs/abl", "name": "quick"}))
    finally:
        wandb.teardown()  # stop this process's W&B service (and its WANDB_SERVICE variable) for the tests after
    runs = {}
    for log in sorted(out.rglob("run-*.wandb")):
        proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log.parent)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        runs[run["display_name"]] = run
    assert not list((tmp_path / "wandb-default").rglob("run-*.wandb"))  # every run beside its variant's training
    assert sorted(runs) == ["act-relu", "act-silu", "quick-summary"], sorted(runs)
    for name, run in runs.items():
        assert run["run_group"] == "quick" and run["project"] == "runs-abl", run
    for name, act in (("act-silu", "silu"), ("act-relu", "relu")):
        config = runs[name]["config"]["update"]
        assert config["activation"] == act and runs[name]["job_type"] == "ablation"
        assert config["gradmon"]["wandb"] is True and config["epochs"] == 1  # the variant's trainer args and options
