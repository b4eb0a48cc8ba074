"""Which dataset trained a run: ``yolo_gradmon.trainer.dataset_facts`` read at train start, stored as the log header's
``data``, shown in ``summary.json``, the report's first box, the console's end line and the W&B config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import logged_records, real_coco8, requires_coco8
from yolo_gradmon import GradientMonitor, read_log
from yolo_gradmon.demo import synthetic_dataset
from yolo_gradmon.trainer import GENERATED_MARKER, dataset_facts
from yolo_gradmon.record.dataset import describe_data


def train(data, tmp_path, name):
    from ultralytics import YOLO

    with logged_records() as records:
        m = YOLO("yolo26n.yaml")
        mon = GradientMonitor(wandb=False, log_every=1).attach(m)
        m.train(data=str(data), epochs=1, imgsz=64, batch=2, nbs=2, workers=0, device="cpu", plots=False, val=False,
                project=str(tmp_path / "runs"), name=name, exist_ok=True)
    return mon, [r.getMessage() for r in records]


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generated")
    yaml_path = synthetic_dataset(tmp / "shapes", n_train=6, n_val=2, imgsz=64)
    mon, lines = train(yaml_path, tmp, "g")
    return yaml_path, mon, lines


def test_generated_dataset_is_named_in_header_summary_report_and_console(generated_run):
    yaml_path, mon, lines = generated_run
    header = read_log(mon.out_dir).header
    assert header["data"] == {"yaml": str(yaml_path), "yaml_file": str(yaml_path),
                              "root": str(yaml_path.parent.resolve()), "train_images": 6, "generated": True}
    assert json.loads((mon.out_dir / "summary.json").read_text())["data"] == header["data"]
    page = (mon.out_dir / "report.html").read_text(encoding="utf-8")
    first_box = page[page.index('class="verdict'):page.index("</p>", page.index('class="verdict'))]
    assert page.index(first_box) < page.index("<h2>")  # the box the page opens with
    assert "GENERATED offline" in first_box and str(yaml_path) in first_box and "6 train images" in first_box
    facts = page[page.index("<h2>Run</h2>"):]
    assert "GENERATED offline" in facts[:facts.index("</table>")]
    end = [ln for ln in lines if "optimizer step(s) logged on" in ln]
    assert len(end) == 1 and "GENERATED offline" in end[0] and str(yaml_path) in end[0], end


@requires_coco8
def test_coco8_run_records_its_yaml_and_real_or_generated(tmp_path):
    mon, lines = train("coco8.yaml", tmp_path, "c")
    data = read_log(mon.out_dir).header["data"]
    assert data["yaml"] == "coco8.yaml" and data["yaml_file"].endswith("coco8.yaml") and data["train_images"] == 4
    assert data["root"].endswith("coco8")
    assert data["generated"] is (not real_coco8())  # conftest's stand-in is generated; the real COCO8 is not
    end = next(ln for ln in lines if "optimizer step(s) logged on" in ln)
    assert ("GENERATED offline" in end) is (not real_coco8())


def test_dataset_facts_never_raise():
    class Broken:
        @property
        def args(self):
            raise RuntimeError("no args")

        @property
        def data(self):
            raise RuntimeError("no data")

    assert dataset_facts(Broken()) == {}
    assert dataset_facts(object()) == {}
    partial = SimpleNamespace(args=SimpleNamespace(data="x.yaml"), data={"path": "/nonexistent/x"})
    assert dataset_facts(partial) == {"yaml": "x.yaml", "root": "/nonexistent/x", "generated": False}


def test_marker_sets_generated(tmp_path):
    synthetic_dataset(tmp_path / "d", n_train=1, n_val=1, imgsz=32)
    assert (tmp_path / "d" / GENERATED_MARKER).is_file()
    (tmp_path / "real").mkdir()
    t = SimpleNamespace(args=SimpleNamespace(data="a.yaml"), data={"path": str(tmp_path / "real")},
                        train_loader=SimpleNamespace(dataset=SimpleNamespace(im_files=["a.jpg", "b.jpg"])))
    assert dataset_facts(t) == {"yaml": "a.yaml", "root": str(tmp_path / "real"), "train_images": 2, "generated": False}
    t.data = {"path": str(tmp_path / "d")}
    assert dataset_facts(t)["generated"] is True


def test_describe_data():
    assert describe_data({}) == "not recorded" and describe_data(None) == "not recorded"
    real = describe_data({"yaml": "coco8.yaml", "root": "/d/coco8", "train_images": 4, "generated": False})
    assert real == "coco8.yaml (4 train images, /d/coco8)"
    assert "GENERATED offline" in describe_data({"yaml": "s.yaml", "generated": True})
