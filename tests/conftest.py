"""Test fixtures: an isolated Ultralytics settings dir whose ``datasets_dir`` holds copies of COCO8 / COCO128
(Ultralytics writes ``.cache`` files beside labels, so no source is ever used in place), offline W&B, and small
training helpers.

Where each dataset comes from, the first that has it:

1. ``<repo>/../shared/datasets/<name>`` (CI: the real datasets). ``GRADMON_TEST_SHARED=<dir>`` replaces
   ``<repo>/../shared``; ``GRADMON_TEST_SHARED=/nonexistent`` hides it, to test what a fresh clone runs;
2. the user's Ultralytics ``datasets_dir`` (from their own ``settings.json``, read directly from the default
   Ultralytics config dir, since this file redirects ``YOLO_CONFIG_DIR`` before Ultralytics is imported);
3. COCO8 only: the offline labelled dataset of :func:`yolo_gradmon.demo.synthetic_dataset` (4 train + 4 val
   images, like COCO8) laid out as ``<datasets_dir>/coco8``, so ``data="coco8.yaml"`` resolves to it and every
   training test runs. Tests asserting facts of the real images use :data:`requires_real_coco8`.

COCO128 (slow tests) has no generated stand-in: those tests skip without it. Every skip is summed up in ONE
line at the end of the run (:func:`pytest_terminal_summary`).

This module runs before any test imports Ultralytics, which reads its settings (and ``DATASETS_DIR``)
once at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("GRADMON_TEST_SHARED") or ROOT.parent / "shared") / "datasets"


def _user_datasets_dir() -> Path | None:
    """The ``datasets_dir`` of the user's own Ultralytics settings (None when there are none).

    Mirrors ``ultralytics.utils.get_user_config_dir``; must run before ``YOLO_CONFIG_DIR`` is redirected below
    (a ``YOLO_CONFIG_DIR`` set by the user is their settings dir, and is honoured).
    """
    if os.environ.get("YOLO_CONFIG_DIR"):
        base = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser()
    elif sys.platform.startswith("win"):
        base = Path.home() / "AppData" / "Roaming"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    uid = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    fallback = Path(tempfile.gettempdir()) / f"Ultralytics{uid}"  # Ultralytics' own fallback when base is read-only
    for settings in (base / "Ultralytics" / "settings.json", fallback / "settings.json"):
        try:
            value = json.loads(settings.read_text()).get("datasets_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return Path(value).expanduser()
    return None


USER_DATASETS = _user_datasets_dir()

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

DATASET_SOURCE: dict[str, str] = {}
"""Dataset name -> where this session's copy came from ("real COCO8 from <dir>", "generated ...")."""
_NOT_FOUND = f"not in {SHARED_DATASETS} nor in the user's Ultralytics datasets_dir ({USER_DATASETS or 'no settings.json'})"


def _seed_datasets() -> None:
    for name in ("coco8", "coco128"):
        for root in (SHARED_DATASETS, USER_DATASETS):
            src = root / name if root else None
            if src is not None and (src / "images").is_dir():
                shutil.copytree(src, DATASETS_DIR / name, ignore=shutil.ignore_patterns("*.cache"))
                DATASET_SOURCE[name] = f"real {name.upper()} from {root}"
                break
    if "coco8" not in DATASET_SOURCE:  # a fresh clone, offline: generated labelled data in COCO8's place
        try:
            from yolo_gradmon.demo import synthetic_dataset

            synthetic_dataset(DATASETS_DIR / "coco8", n_train=4, n_val=4, imgsz=640)
            (DATASETS_DIR / "coco8" / "data.yaml").unlink(missing_ok=True)  # coco8.yaml (Ultralytics') describes it
            DATASET_SOURCE["coco8"] = f"generated offline data (yolo_gradmon.demo.synthetic_dataset): COCO8 is {_NOT_FOUND}"
        except Exception as e:  # noqa: BLE001 - the tests needing COCO8 then skip, saying why
            shutil.rmtree(DATASETS_DIR / "coco8", ignore_errors=True)
            DATASET_SOURCE["coco8"] = f"missing: COCO8 could not be generated ({type(e).__name__}: {e})"


_seed_datasets()


def have_dataset(name: str) -> bool:
    return (DATASETS_DIR / name / "images").is_dir()


def real_coco8() -> bool:
    return DATASET_SOURCE.get("coco8", "").startswith("real")


requires_coco8 = pytest.mark.skipif(not have_dataset("coco8"), reason=DATASET_SOURCE.get("coco8", "COCO8 missing"))
requires_real_coco8 = pytest.mark.skipif(
    not real_coco8(), reason=f"needs the real COCO8 images (they are {_NOT_FOUND})"
)
"""For tests asserting facts of the real COCO8 images, which the generated stand-in does not share."""
requires_coco128 = pytest.mark.skipif(
    not have_dataset("coco128"), reason=f"COCO128 {_NOT_FOUND}"
)


# Tests that assert facts of the real COCO8 images and fail on the generated stand-in (their assertions are kept;
# on generated data they skip with this reason, named in the end-of-run summary line). Found with
# GRADMON_TEST_SHARED=/nonexistent (no user COCO8 either) on tests/test_training.py, test_detection.py, test_report.py.
REAL_COCO8_ONLY: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    if real_coco8():
        return
    for item in items:
        why = REAL_COCO8_ONLY.get(f"{Path(str(item.fspath)).name}::{item.name}")
        if why:
            item.add_marker(pytest.mark.skip(reason=f"needs the real COCO8 images: {why}"))


@contextlib.contextmanager
def logged_records():
    """Everything Ultralytics' LOGGER (which the monitor uses) emits meanwhile; it does not propagate to caplog."""
    import logging

    from ultralytics.utils import LOGGER

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    LOGGER.addHandler(handler)
    try:
        yield records
    finally:
        LOGGER.removeHandler(handler)


@pytest.fixture
def relu_variant_fails(monkeypatch):
    """The ablation runner's ``activation: relu`` variants raise ``RuntimeError("boom")``; the others train as usual."""
    from yolo_gradmon.ablate import runner

    real = runner.train_variant

    def relu_fails(grid, variant, out_dir, own_wandb_run=False):
        if variant.values["activation"] == "relu":
            raise RuntimeError("boom")
        return real(grid, variant, out_dir, own_wandb_run)

    monkeypatch.setattr(runner, "train_variant", relu_fails)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    return DATASETS_DIR


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fresh Ultralytics ``project`` directory for one test's training runs."""
    return tmp_path / "runs"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # the outermost wrapper: after pytest's own short summary (-ra)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """ONE line: what was skipped and why (grouped by reason), and the COCO8 trained on when not the real one."""
    yield
    by_reason: dict[str, list[str]] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        name = rep.nodeid.split("::")[-1].split("[")[0]
        names = by_reason.setdefault(reason, [])
        if name not in names:
            names.append(name)
    n = len(terminalreporter.stats.get("skipped", []))
    parts = [f"{reason}: {', '.join(names)}" for reason, names in by_reason.items()]
    if not real_coco8():
        parts.append(f"COCO8 was {DATASET_SOURCE.get('coco8')}")
    if n or not real_coco8():
        terminalreporter.write_line(f"gradmon tests: {n} skipped" + (" | " if parts else "") + " | ".join(parts))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
