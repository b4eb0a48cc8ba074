"""A model, weights or dataset that does not resolve: one line on stderr, exit status 2, Ultralytics' reason kept,
and no run folder, for ``train``, ``demo`` and ``ablate``; an ablation in which no variant trained exits non-zero."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import requires_coco8
from yolo_gradmon import cli
from yolo_gradmon.ablate import runner
from yolo_gradmon.preflight import InputError, check_data, check_inputs

GRID = {"base": {"model": "yolo26n.yaml", "data": "coco8.yaml", "epochs": 1, "imgsz": 64, "batch": 2, "nbs": 2,
                 "seed": 0, "plots": False, "val": False, "workers": 0, "device": "cpu"},
        "axes": {"activation": ["relu", "tanh"]}, "gradmon": {"log_every": 1, "wandb": False}}


def one_line(capsys, argv) -> str:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out[-2000:], err)
    assert err.count("\n") == 1 and "Traceback" not in err + out, err
    return err.strip()


@pytest.fixture
def grid_path(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(GRID))
    return p


@pytest.fixture
def unreachable(tmp_path):
    """A dataset YAML whose images are nowhere and that has no download."""
    p = tmp_path / "gone.yaml"
    p.write_text(yaml.safe_dump({"path": str(tmp_path / "nowhere"), "train": "images/train", "val": "images/val",
                                 "names": {0: "a"}}))
    return p


@pytest.mark.parametrize("command", ["train", "demo", "ablate"])
def test_missing_dataset_is_one_line_exit_2_no_run_folder(capsys, tmp_path, monkeypatch, grid_path, command):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    head = [command] if command != "ablate" else [command, str(grid_path)]
    project = [] if command == "demo" else ["project=runs/p"]  # the demo's default project: ./runs/gradmon
    line = one_line(capsys, head + ["data=nonexistent.yaml", *project, "epochs=1", "imgsz=64"])
    assert line.startswith("data=nonexistent.yaml: ") and "'nonexistent.yaml' does not exist" in line, line
    assert list(work.iterdir()) == []  # no run folder, no generated data


def test_unreachable_dataset_in_ablate_names_data(capsys, tmp_path, monkeypatch, grid_path, unreachable):
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, ["ablate", str(grid_path), f"data={unreachable}", "project=runs/abl", "name=q"])
    assert f"data={unreachable}: " in line and "images not found" in line and "Pass data=" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("pair, needle", [("model=nonexistent.yaml", "'nonexistent.yaml' does not exist"),
                                          ("pretrained=missing.pt", "'missing.pt' does not exist")])
def test_missing_model_or_weights_is_one_line(capsys, tmp_path, monkeypatch, pair, needle):
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, ["train", pair, "project=runs/p", "epochs=1"])
    assert line.startswith(pair.split("=")[0] + "=") and needle in line, line
    assert list(tmp_path.iterdir()) == []


@requires_coco8
def test_resolving_inputs_pass(tmp_path):
    model = check_inputs("yolo26n.yaml", {"data": "coco8.yaml", "pretrained": False})
    assert model.task == "detect"
    assert check_data("coco8.yaml", "detect")["nc"] == 80


def test_check_data_keeps_ultralytics_reason(unreachable):
    with pytest.raises(InputError, match="images not found") as e:
        check_data(str(unreachable), "detect")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ an ablation in which nothing trained
def _failing(grid, variant, out_dir, own_wandb_run=False):
    raise FileNotFoundError(f"Dataset '{grid.base.get('data')}' images not found, missing path '/x/images/val'")


@requires_coco8
def test_ablation_with_no_completed_variant_exits_1(capsys, tmp_path, monkeypatch, grid_path):
    from ultralytics.utils import LOGGER

    monkeypatch.setattr(runner, "train_variant", _failing)
    monkeypatch.chdir(tmp_path)
    lines = []
    monkeypatch.setattr(LOGGER, "info", lambda msg, *a, **k: lines.append(str(msg)))
    rc = cli.main(["ablate", str(grid_path), "project=runs/abl", "name=q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("yolo-gradmon ablate: nothing trained: no variant completed (2 failed)")
    assert "act-relu: FileNotFoundError: Dataset 'coco8.yaml' images not found" in err and "Pass data=" in err
    assert not any("ETA" in ln for ln in lines), lines
    import html

    page = html.unescape((tmp_path / "runs" / "abl" / "q" / "ablation.html").read_text(encoding="utf-8"))
    finding = page[page.index('class="finding"'):]
    assert finding.split("</strong>")[0].endswith("nothing trained: none of the 2 variant(s) completed; the first "
                                                  "failure, act-relu: FileNotFoundError: Dataset 'coco8.yaml' images "
                                                  "not found, missing path '/x/images/val'")
    assert "no variant has a flagged module" not in page


@requires_coco8
def test_ablation_with_some_completed_says_how_many(capsys, tmp_path, monkeypatch, grid_path, relu_variant_fails):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["ablate", str(grid_path), "project=runs/abl", "name=s"])
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count("\n") == 1 and "1 of 2 variants completed (1 failed)" in err and "RuntimeError: boom" in err
    assert "variant.json" in err and "Pass data=" not in err  # not a data problem: the traceback's place instead
    status = json.loads((tmp_path / "runs" / "abl" / "s" / "act-tanh" / "variant.json").read_text())
    assert status["status"] == "done"
    page = (tmp_path / "runs" / "abl" / "s" / "ablation.html").read_text(encoding="utf-8")
    assert "nothing trained" not in page
