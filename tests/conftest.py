"""Test fixtures: an isolated Ultralytics settings dir whose ``datasets_dir`` holds copies of the real
COCO8 / COCO128 from ``../shared/datasets`` (Ultralytics writes ``.cache`` files beside labels, so the
shared originals are never used in place), offline W&B, and small training helpers.

This module runs before any test imports Ultralytics, which reads its settings (and ``DATASETS_DIR``)
once at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="gradmon-tests-"))
DATASETS_DIR = _SESSION_DIR / "datasets"
RUNS_DIR = _SESSION_DIR / "runs"
CONFIG_DIR = _SESSION_DIR / "ultralytics-config"
(CONFIG_DIR / "Ultralytics").mkdir(parents=True)
(CONFIG_DIR / "Ultralytics" / "settings.json").write_text(
    json.dumps(
        {
            "settings_version": "0.0.8",
            "uuid": "gradmon-tests",
            "api_key": "",
            "openai_api_key": "",
            "datasets_dir": str(DATASETS_DIR),
            "weights_dir": str(_SESSION_DIR / "weights"),
            "runs_dir": str(RUNS_DIR),
            "sync": False,
            "wandb": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "raytune": False,
            "tensorboard": False,
            "vscode_msg": False,
            "openvino_msg": False,
        }
    )
)
os.environ["YOLO_CONFIG_DIR"] = str(CONFIG_DIR)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["WANDB_DIR"] = str(_SESSION_DIR / "wandb-default")
os.environ.setdefault("OMP_NUM_THREADS", "2")

for name in ("coco8", "coco128"):
    src = SHARED_DATASETS / name
    if src.is_dir():
        shutil.copytree(src, DATASETS_DIR / name)


def have_dataset(name: str) -> bool:
    return (DATASETS_DIR / name / "images").is_dir()


requires_coco8 = pytest.mark.skipif(not have_dataset("coco8"), reason="../shared/datasets/coco8 not found")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    return DATASETS_DIR


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fresh Ultralytics ``project`` directory for one test's training runs."""
    return tmp_path / "runs"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
