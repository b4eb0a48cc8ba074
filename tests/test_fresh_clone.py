"""The README's test command on a user's fresh clone: no ``../shared`` beside it and no COCO8 in the user's Ultralytics
``datasets_dir``, so ``tests/conftest.py`` generates COCO8 offline and every data-dependent test trains on that.

CI always has ``../shared``; these tests keep the other case covered there:

* no test module but ``conftest.py`` names the shared datasets: every test resolves its data through the one resolver
  (a subprocess, like the DDP harness, is handed the resolved datasets dir);
* the tests that train in processes of their own (the DDP harness, the README's commands) run in a pytest
  subprocess as on a fresh machine: ``GRADMON_TEST_SHARED=/nonexistent`` and a HOME / config / temp dir with no
  Ultralytics settings. It must pass, run tests (never pytest's exit 5) and train on the generated COCO8.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_coco8

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# the data-dependent tests that start processes of their own (each must be handed the data the resolver chose)
SUBPROCESS_TESTS = ["tests/test_ddp.py", "tests/test_readme.py::test_marked_blocks_run"]
GENERATED = "COCO8 was generated offline data"
SHARED_NAME = re.compile(r"""["'/]\s*shared\b|\bshared["']|\.\./shared""")


def test_only_conftest_names_the_shared_datasets():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if SHARED_NAME.search(code) and "skip" not in code:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "resolve datasets through tests/conftest.py (DATASETS_DIR / the datasets_dir fixture): " \
                          + "; ".join(offenders)


def test_the_pattern_catches_a_direct_shared_path():
    # the check above is only as good as its pattern: it must see the forms a direct path takes
    for line in ('SHARED = ROOT.parent / "shared" / "datasets"', "src = '../shared/datasets/coco8'",
                 'Path(__file__).parents[2] / "shared"'):
        assert SHARED_NAME.search(line), line
    assert not SHARED_NAME.search("one shared activation module, as Conv.default_act is")


@pytest.mark.skipif(not real_coco8(), reason="this session already runs without ../shared (COCO8 generated offline)")
def test_subprocess_tests_pass_on_a_fresh_clone(tmp_path):
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "YOLO_", "WANDB_", "GRADMON_"))}
    env.update(GRADMON_TEST_SHARED="/nonexistent", HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               TMPDIR=str(tmp_path / "tmp"))  # no user settings.json, not even Ultralytics' temp-dir fallback
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBPROCESS_TESTS]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"exit {r.returncode} without ../shared:\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 5, out[-3000:]
    assert GENERATED in out, f"the fresh-clone run did not train on generated COCO8:\n{out[-3000:]}"
