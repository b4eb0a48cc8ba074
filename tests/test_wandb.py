"""The W&B sink, verified with W&B's own reader of offline runs (``wandb leet inspect --json``).

- ``alone``: the monitor alone (Ultralytics' W&B callback is off under pytest, default options) starts, fills and
  finishes one run: at most 40 monitor history keys, no per-layer scalar keys; the run-level and depth curves, the
  native per-family line charts and the per-epoch depth profile equal the local log; heatmap, flags table, summary
  fields and alerts are there.
- ``with_ultralytics``: a subprocess that does not look like pytest, with the Ultralytics setting ``wandb: true``:
  the monitor logs into Ultralytics' run, whose epoch rows stay whole, also when the monitor's callbacks run
  after Ultralytics' (its epoch-end flush then lands between their ``commit=False`` and ``commit=True``); that run
  also asks for every per-layer scalar (``wandb_layer_scalars="all"``): each equals the local log, and a family
  that stayed constant is never streamed.
- faults: ``wandb`` not importable, ``wandb.init`` raising, ``run.log`` raising mid-run: training completes, the
  local log is whole, one warning.
- small unit tests of the sink with a fake ``wandb`` module (alerts, NaN cells, queued rows).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIG_DIR, logged_records, requires_coco8

from yolo_gradmon import GradientMonitor, GradmonConfig, read_log
from yolo_gradmon.judge.rules import KINDS, Flag
from yolo_gradmon.config import PREFIX
from yolo_gradmon.show.sink import GuardedSink, History, RunInfo
from yolo_gradmon.record.depth import layer_profile, step_depth
from yolo_gradmon.fields import CHART_FAMILIES, MODULE_FIELDS, plain_values
from yolo_gradmon.record.outputs import TrainEnd
from yolo_gradmon.show.wandb import MAX_ALERTS, STEP_KEY, WandbSink, make_wandb_sink
from yolo_gradmon.show.wandb_rows import DEPTH_KEYS, FLAG_COLUMNS, PROFILE_COLUMNS, WEAKEST_LAYER_KEY

TRAIN = dict(data="coco8.yaml", epochs=2, imgsz=160, batch=2, nbs=2, workers=0, device="cpu", plots=False, exist_ok=True)
MAX_MONITOR_KEYS = 40
UL_KEYS = ("train/box_loss", "train/cls_loss", "lr/pg0", "metrics/mAP50-95(B)", "metrics/mAP50(B)", "val/box_loss")


# ---------------------------------------------------------------------------------------------------- helpers
def gradmon_warnings(records) -> list[str]:
    """The monitor's warnings other than the console's flag lines ("<kind> gradients in <module> ...")."""
    flag_lines = tuple(f"{PREFIX}{k} gradients in " for k in KINDS)
    msgs = [r.getMessage() for r in records if r.levelno == logging.WARNING and PREFIX in r.getMessage()]
    return [m for m in msgs if not m.startswith(flag_lines) and not any(f in m for f in flag_lines)]


def gradmon_errors(records) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.ERROR and PREFIX in r.getMessage()]


def run_dirs(*roots: Path) -> list[Path]:
    """W&B run directories (holding a ``run-<id>.wandb`` log) under ``roots``."""
    found = set()
    for root in roots:
        if Path(root).is_dir():
            found |= {p.parent for p in Path(root).rglob("run-*.wandb")}
    return sorted(found)


def leet(run_dir: Path, summary: bool = False):
    """W&B's own reader: the records of the run's ``.wandb`` log (or its summary object)."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"] + (["--summary"] if summary else []) + [str(run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if summary:
        return json.loads(out.stdout)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def history(records) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def of_type(records, kind) -> list[dict]:
    return [r[kind] for r in records if r["type"] == kind]


def wb_float(v) -> float:
    """History values: numbers, or the strings "NaN" / "Infinity" / "-Infinity"."""
    return float(v)


def close(wb_value, local_value, rel=1e-6) -> bool:
    a = wb_float(wb_value)
    if local_value is None:  # the local log's null: non-finite or undefined
        return math.isnan(a)
    b = float(local_value)
    return math.isfinite(a) and abs(a - b) <= rel * max(abs(b), 1e-30)


def logical_key(key: str) -> str:
    """``gradmon/heatmap._type`` -> ``gradmon/heatmap``: a medium or table arrives as several history fields."""
    head, _, tail = key.rpartition("/")
    return f"{head}/{tail.split('.', 1)[0]}"


def monitor_keys(hist) -> set[str]:
    return {logical_key(k) for h in hist for k in h if k.startswith(("gradients/", "gradmon/"))}


def visualize(records) -> dict[str, dict]:
    """The custom charts of the run (``wandb.plot.*``): key -> panel config, the newest of each."""
    out = {}
    for c in of_type(records, "config"):
        for k, v in (c.get("update") or {}).items():
            if k.startswith("_wandb.visualize."):
                out[k[len("_wandb.visualize."):]] = v["panel_config"]
    return out


def tables(run_dir, hist, key) -> list[tuple[int, dict]]:
    """Every logged wandb.Table under ``key``: (gradients/step, table JSON)."""
    return [(h[STEP_KEY], json.loads((run_dir / "files" / h[f"{key}.path"]).read_text())) for h in hist if f"{key}.path" in h]


def gradient_rows(hist) -> dict[int, dict]:
    rows = {}
    for item in hist:
        if "gradients/total_norm" in item:
            step = int(item[STEP_KEY])
            assert step not in rows, f"step {step} logged twice"
            rows[step] = item
    return rows


def assert_rows_equal_local_log(hist, log, per_layer: bool = False):
    """Every logged step has one W&B row whose run-level and depth values equal the local log's (and, with
    ``per_layer``, every per-module value; else there is none)."""
    rows = gradient_rows(hist)
    assert sorted(rows) == [r["step"] for r in log.steps]
    for rec in log.steps:
        row = rows[rec["step"]]
        assert row["gradients/epoch"] == rec["epoch"]
        assert close(row["gradients/total_norm"], rec["total_norm"])
        assert close(row["gradients/lr"], rec["lr"][0])
        assert row["gradients/clip_active"] == int(bool(rec["clip_active"]))
        assert ("gradients/amp_scale" in row) == (rec["amp_scale"] is not None)
        depth = step_depth(rec, log.header)
        for key, field in DEPTH_KEYS.items():
            assert (key in row) == (depth[field] is not None), (rec["step"], key)
            if depth[field] is not None:
                assert close(row[key], depth[field]), (rec["step"], key)
        if depth["weakest_layer"] is not None:
            assert log.header["layers"][row[WEAKEST_LAYER_KEY]] == depth["weakest_layer"]
        if not per_layer:
            assert not any(k.startswith(("gradients/grad_norm/", "gradients/flow_norm/", "gradients/act_")) for k in row)
            continue
        for col, section in (("grad_norm", "grad_norm"), ("grad_to_weight", "grad_to_weight"),
                             ("update_to_weight", "update_to_weight"), ("max_abs_grad", "max_abs_grad")):
            constant = len(distinct_values(log, col)) == 1  # never streamed: no wall of flat panels
            for i, m in enumerate(log.modules):
                key = f"gradients/{section}/{m}"
                if constant or not rec["has_grad"][i]:
                    assert key not in row, (key, rec["step"])
                else:
                    assert close(row[key], rec[col][i]), (key, rec["step"], row[key], rec[col][i])


def distinct_values(log, family) -> set[float]:
    """The distinct finite values of a family over the local log (modules with a gradient only)."""
    out = set()
    for rec in log.steps:
        for i, v in enumerate(rec.get(family) or []):
            if v is not None and math.isfinite(v) and (family not in MODULE_FIELDS or rec["has_grad"][i]):
                out.add(v)
    return out


# ---------------------------------------------------------------------------------------------------- the monitor alone
@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """One training with the monitor alone; every module flagged ``vanishing`` from step 1 (threshold 1e9)."""
    import wandb
    from ultralytics import YOLO

    assert wandb.run is None
    project = tmp_path_factory.mktemp("alone")
    default_dir = tmp_path_factory.mktemp("wandb-default")
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(log_every=1, vanish_grad_to_weight=1e9, vanish_window=1).attach(model)
    with pytest.MonkeyPatch.context() as mp, logged_records() as records:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(default_dir))
        model.train(project=str(project), name="alone", **TRAIN)
    dirs = run_dirs(project, default_dir)
    assert len(dirs) == 1, dirs
    return types.SimpleNamespace(
        mon=mon,
        log=read_log(mon.out_dir),
        run_dir=dirs[0],
        dirs=dirs,
        records=leet(dirs[0]),
        summary=leet(dirs[0], summary=True),
        messages=records,
        run_after=wandb.run,
    )


@requires_coco8
def test_alone_one_run_started_and_finished(alone):
    assert len(alone.dirs) == 1
    assert alone.run_dir.parent == alone.mon.out_dir.parent / "wandb"  # beside the training, like Ultralytics
    assert alone.run_after is None  # the run it started is finished
    (run,) = of_type(alone.records, "run")
    assert run["job_type"] == "train" and run["display_name"] == "alone"
    assert of_type(alone.records, "exit")[-1]["exit_code"] == 0
    s = alone.summary
    assert s["state"] == "finished"
    assert s["config"]["gradmon"]["vanish_grad_to_weight"] == 1e9 and s["config"]["gradmon"]["log_every"] == 1
    assert s["config"]["epochs"] == 2 and s["config"]["imgsz"] == 160  # the trainer args
    assert not gradmon_warnings(alone.messages) and not gradmon_errors(alone.messages)


@requires_coco8
def test_alone_step_metric_defined(alone):
    metrics = of_type(alone.records, "metric")
    assert {"name": STEP_KEY, "options": {"defined": True}} in metrics
    globs = {m.get("glob_name"): m.get("step_metric") for m in metrics if m.get("glob_name")}
    assert globs == {"gradients/*": STEP_KEY, "gradmon/*": STEP_KEY,
                     **{f"{p}/*": "epoch" for p in ("train", "lr", "metrics", "val")}}  # Ultralytics' own axis


@requires_coco8
def test_alone_carries_ultralytics_epoch_metrics_once(alone):
    """Ultralytics' W&B integration is off (its default, and under pytest): the monitor's run still carries the
    losses, learning rates and metrics Ultralytics logs, with its keys on its epoch axis, one row per epoch."""
    hist = history(alone.records)
    epoch_rows = [h for h in hist if any(k.startswith("train/") for k in h)]
    assert [h["epoch"] for h in epoch_rows] == [1, 2]
    for h in epoch_rows:
        assert all(k in h for k in UL_KEYS), sorted(h)
        assert not any(k.startswith(("gradients/", "gradmon/")) for k in h)  # their rows stay whole
    metric_rows = [h for h in hist if "metrics/mAP50-95(B)" in h]
    assert [h["epoch"] for h in metric_rows] == [1, 2, 3]  # + Ultralytics' final validation of best.pt
    assert "metrics/mAP50-95(B)" in alone.summary["summary"] and "train/box_loss" in alone.summary["summary"]


@requires_coco8
def test_alone_summary_keys_name_one_quantity_each(alone):
    """No two summary keys of one quantity disagree: a run-level statistic is named by its statistic, and equals the
    summary.json value of that name."""
    s, local = alone.summary["summary"], alone.mon.summary
    assert not [k for k in s if k.startswith("gradmon/") and k.rsplit("/", 1)[-1] in
                {"weakest_module", "worst_attenuation", "weakest_layer", "early_flow_rel_head"}]  # the old, ambiguous names
    depth = local["depth"]
    assert s["gradmon/early_flow_rel_head_median"] == pytest.approx(depth["early_flow"], rel=1e-9)
    assert s["gradmon/lowest_grad_to_weight_module"] == local["lowest_grad_to_weight"]["module"]
    assert s["gradmon/grad_norm_range_decades"] == pytest.approx(local["grad_norm_range_decades"], rel=1e-9)
    # the history key's own summary is its last value, named by the history key alone
    last = [h for h in history(alone.records) if "gradients/depth/early_flow_rel_head" in h][-1]
    assert s["gradients/depth/early_flow_rel_head"] == pytest.approx(last["gradients/depth/early_flow_rel_head"])


@requires_coco8
def test_alone_default_keys_few_run_level_and_depth_curves_equal_local_log(alone):
    """Default options: a handful of run-level keys per step (no per-layer scalar), equal to the local log."""
    log = alone.log
    assert log.ended and [r["step"] for r in log.steps] == [1, 2, 3, 4]
    hist = history(alone.records)
    keys = monitor_keys(hist)
    assert len(keys) <= MAX_MONITOR_KEYS, sorted(keys)
    assert {STEP_KEY, "gradients/total_norm", "gradients/clip_active", "gradients/flagged_modules",
            WEAKEST_LAYER_KEY, *DEPTH_KEYS} <= keys
    assert not [k for k in keys if k.count("/") > 1 and not k.startswith(("gradients/depth/", "gradmon/layers/"))]
    assert_rows_equal_local_log(hist, log)
    rows = gradient_rows(hist)
    assert all(row["gradients/flagged_modules"] == 18 for row in rows.values())  # every module flagged from step 1
    # defaults: flow on every 2nd logged step (1, 3): the flow depth curves there only; grad/weight on every step
    assert sorted(s for s, r in rows.items() if "gradients/depth/early_flow_rel_head" in r) == [1, 3]
    assert sorted(s for s, r in rows.items() if "gradients/depth/early_grad_to_weight" in r) == [1, 2, 3, 4]
    # one history row per logged step, one per epoch end (the depth profile), the train-end media row
    ours = [h for h in hist if any(k.startswith(("gradients/", "gradmon/")) for k in h)]
    assert len(ours) == len(log.steps) + 2 + 1


@requires_coco8
def test_alone_native_line_charts_per_family_equal_local_log(alone):
    """One wandb.plot.line_series per varying family (every layer a line, depth order), at train end; act_dead
    (always 0 on SiLU), act_saturated (no Sigmoid/Tanh-like unit) and update_to_weight (sampled at step 1 only here,
    where Ultralytics' warmup lr is 0: always 0) are left out."""
    log = alone.log
    hist = history(alone.records)
    charts = visualize(alone.records)
    line_keys = sorted(k for k in charts if k.startswith("gradmon/layers/"))
    varied = sorted(f"gradmon/layers/{f}" for f in CHART_FAMILIES if len(distinct_values(log, f)) > 1)
    assert line_keys == varied
    assert {"gradmon/layers/grad_norm", "gradmon/layers/grad_to_weight", "gradmon/layers/flow_attenuation"} <= set(varied)
    assert distinct_values(log, "act_dead") == {0.0} and not distinct_values(log, "act_saturated")
    for key in line_keys:
        family = key.rsplit("/", 1)[-1]
        cfg = charts[key]
        assert cfg["panelDefId"] == "wandb/lineseries/v0" and cfg["stringSettings"]["xname"] == STEP_KEY
        ((step, table),) = tables(alone.run_dir, hist, f"{key}_table")  # train end only (wandb_media_every=0)
        assert step == 4 and table["columns"] == ["step", "lineKey", "lineVal"]
        names = log.modules if family in MODULE_FIELDS else log.header["layers"]
        assert list(dict.fromkeys(r[1] for r in table["data"])) == [  # depth order, every layer with a value
            n for i, n in enumerate(names) if any(r[family][i] is not None and r[family][i] > 0 for r in log.steps)
        ]
        want = {(r["step"], names[i]): math.log10(v) for r in log.steps for i, v in enumerate(r[family])
                if v is not None and v > 0}
        got = {(x, name): y for x, name, y in table["data"]}
        assert set(got) == set(want)
        assert all(abs(got[k] - want[k]) < 1e-9 for k in want), family
    assert {"act_dead", "act_saturated"}.isdisjoint(k.rsplit("/", 1)[-1] for k in line_keys)


@requires_coco8
def test_alone_depth_profile_each_epoch_equals_local_log(alone):
    log = alone.log
    hist = history(alone.records)
    cfg = visualize(alone.records)["gradmon/depth_profile"]
    assert cfg["panelDefId"] == "wandb/line/v0"
    assert cfg["fieldSettings"]["x"] == "index" and cfg["fieldSettings"]["y"] == "log10_median"
    logged = tables(alone.run_dir, hist, "gradmon/depth_profile_table")
    assert [s for s, _ in logged] == [2, 4]  # after epoch 1 (steps 1-2) and epoch 2 (steps 3-4)
    for epoch, (_, table) in enumerate(logged, start=1):
        assert table["columns"] == PROFILE_COLUMNS
        want = layer_profile([r for r in log.steps if r["epoch"] == epoch], log.header)
        assert len(table["data"]) == len(want) == 24
        for got, w in zip(table["data"], want):
            row = dict(zip(PROFILE_COLUMNS, got))
            assert row["epoch"] == epoch and (row["index"], row["layer"]) == (w["index"], w["layer"])
            for c in ("median", "min", "max"):
                assert close(row[c], w[c]), (epoch, w["layer"], c)
            assert close(row["log10_median"], math.log10(w["median"]))
        assert dict(zip(PROFILE_COLUMNS, table["data"][-1]))["median"] == 1.0  # the head, relative to itself


@requires_coco8
def test_alone_media_and_flags_table(alone):
    media = [h for h in history(alone.records) if "gradmon/heatmap._type" in h]
    assert len(media) == 1 and media[0][STEP_KEY] == 4
    row = media[0]
    assert row["gradmon/heatmap._type"] == "image-file"
    png = alone.run_dir / "files" / row["gradmon/heatmap.path"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (alone.mon.out_dir / "heatmap.png").is_file() and (alone.mon.out_dir / "wandb_media" / "heatmap.png").is_file()
    assert row["gradmon/flags._type"] == "table-file"
    table = json.loads((alone.run_dir / "files" / row["gradmon/flags.path"]).read_text())
    assert table["columns"] == FLAG_COLUMNS
    flags = alone.mon.summary["flags"]
    assert len(table["data"]) == len(flags) == 18
    for got, want in zip(table["data"], flags):
        kind, module, first, last, active, evidence = got
        assert (kind, module, first, last, active) == (
            want["kind"], want["module"], want["first_step"], want["last_step"], want["active"]
        )
        assert json.loads(evidence)["threshold_grad_to_weight"] == 1e9


@requires_coco8
def test_alone_summary_fields(alone):
    s = alone.summary["summary"]
    assert s["gradmon/steps_logged"] == 4 and s["gradmon/complete"] is True
    assert s["gradmon/flagged_modules"] == 18 and s["gradmon/n_vanishing"] == 18 and s["gradmon/n_nonfinite"] == 0
    stats = alone.mon.summary["module_stats"]
    weakest = min(stats, key=lambda r: r["median_grad_to_weight"])
    assert s["gradmon/lowest_grad_to_weight_module"] == weakest["module"]
    assert s["gradmon/lowest_grad_to_weight_median"] == pytest.approx(weakest["median_grad_to_weight"], rel=1e-9)
    assert 0 < s["gradmon/lowest_grad_to_weight_vs_median_module"] <= 1
    # the summary's run-level numbers are the summary.json ones: every output shows the same
    assert alone.mon.summary["lowest_grad_to_weight"]["module"] == weakest["module"]
    assert s["gradmon/alerts_sent"] == 18
    depth = alone.mon.summary["depth"]  # run-level depth medians, for the runs table of a group
    assert s["gradmon/early_flow_rel_head_median"] == pytest.approx(depth["early_flow"], rel=1e-9)
    assert s["gradmon/weakest_flow_rel_head_median"] == pytest.approx(depth["weakest_flow"], rel=1e-9)
    assert s["gradmon/early_grad_to_weight_median"] == pytest.approx(depth["early_grad_to_weight"], rel=1e-9)
    assert s["gradmon/weakest_flow_layer_mode"] == depth["weakest_layer"]
    # SiLU: dead fraction always 0, no saturating unit: not charted, and said so
    assert "act_dead=0" in s["gradmon/constant_families"].split(", ")
    assert s["gradmon/unmeasured_families"] == "act_saturated"


@requires_coco8
def test_alone_one_alert_per_module_and_kind(alone):
    alerts = of_type(alone.records, "alert")
    flagged = [f["module"] for f in alone.mon.summary["flags"]]
    assert len(alerts) == len(flagged) == 18 <= MAX_ALERTS
    assert sorted(a["title"] for a in alerts) == sorted(f"gradmon: vanishing gradients in {m}" for m in flagged)
    for a, m in zip(alerts, flagged):
        assert a["level"] == "WARN"
        assert a["text"].startswith(f"Layer {m}: ") and "optimizer step 1" in a["text"] and "grad_to_weight=" in a["text"]


# ---------------------------------------------------------------------------------------------------- with Ultralytics' W&B callback
SCRIPT = textwrap.dedent(
    '''
    """Two trainings with Ultralytics' W&B callback on: monitor callbacks in their usual place ("normal"), and moved
    after every other callback ("late"), so its epoch-end flush comes after Ultralytics' commit=False; the late one
    also streams every per-layer scalar family (wandb_layer_scalars="all")."""
    import json, sys
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS, TESTS_RUNNING
    from yolo_gradmon import GradientMonitor

    assert not TESTS_RUNNING and SETTINGS["wandb"] is True, (TESTS_RUNNING, SETTINGS["wandb"])
    project = sys.argv[1]
    for order in ("normal", "late"):
        model = YOLO("yolo26n.yaml")
        scalars = "all" if order == "late" else "none"  # per-layer keys on request, in the late run
        mon = GradientMonitor(log_every=1, wandb_media_every=1, wandb_layer_scalars=scalars).attach(model)
        if order == "late":
            def move_monitor_last(trainer, mon=mon):
                for fns in trainer.callbacks.values():
                    ours = [f for f in fns if getattr(f, "__self__", None) is mon]
                    fns[:] = [f for f in fns if f not in ours] + ours
            model.add_callback("on_pretrain_routine_start", move_monitor_last)
        model.train(data="coco8.yaml", epochs=2, imgsz=160, batch=2, nbs=2, workers=0, device="cpu", plots=False,
                    project=project, name=order, exist_ok=True)
        print("RESULT " + json.dumps({"order": order, "out_dir": str(mon.out_dir)}), flush=True)
    '''
)


@pytest.fixture(scope="module")
def with_ultralytics(tmp_path_factory):
    base = tmp_path_factory.mktemp("ul-wandb")
    settings = json.loads((CONFIG_DIR / "Ultralytics" / "settings.json").read_text())
    settings["wandb"] = True  # same datasets_dir (COCO8), W&B integration on
    (base / "config" / "Ultralytics").mkdir(parents=True)
    (base / "config" / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    script = base / "train_with_ultralytics_wandb.py"  # the name must not contain "pytest"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "GITHUB_"))}
    env.update(YOLO_CONFIG_DIR=str(base / "config"), WANDB_MODE="offline", WANDB_DIR=str(base / "wandb-default"),
               WANDB_SILENT="true")
    project = base / "runs"
    proc = subprocess.run([sys.executable, str(script), str(project)], cwd=base, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            out_dir = Path(r["out_dir"])
            dirs = run_dirs(out_dir.parent)
            results[r["order"]] = types.SimpleNamespace(
                out_dir=out_dir, dirs=dirs, records=leet(dirs[0]) if dirs else [], log=read_log(out_dir),
                summary=leet(dirs[0], summary=True) if dirs else {},
                output=proc.stdout + proc.stderr,
            )
    assert set(results) == {"normal", "late"}, proc.stdout[-3000:] + proc.stderr[-3000:]
    results["stray"] = run_dirs(base / "wandb-default")
    return results


@requires_coco8
@pytest.mark.parametrize("order", ["normal", "late"])
def test_ultralytics_run_reused_and_epoch_rows_whole(with_ultralytics, order):
    r = with_ultralytics[order]
    assert len(r.dirs) == 1 and not with_ultralytics["stray"]  # one run: Ultralytics', never a second one
    (run,) = of_type(r.records, "run")
    assert run["run_id"].startswith(f"{order}_")  # Ultralytics' run id scheme: the monitor did not start it
    config = r.summary["config"]
    assert config["gradmon"]["wandb_media_every"] == 1 and config["epochs"] == 2  # ours added to their config
    assert of_type(r.records, "exit")[-1]["exit_code"] == 0
    hist = history(r.records)

    # Ultralytics' rows: one per epoch, each holding its losses, lr, and validation metrics together
    epoch_rows = [h for h in hist if any(k.startswith("train/") for k in h)]
    assert [h["epoch"] for h in epoch_rows] == [1, 2]
    for h in epoch_rows:
        assert all(k in h for k in UL_KEYS), sorted(h)
        assert not any(k.startswith(("gradients/", "gradmon/")) for k in h)
    metric_rows = [h for h in hist if "metrics/mAP50-95(B)" in h]
    assert [h["epoch"] for h in metric_rows] == [1, 2, 3]  # + Ultralytics' final validation of best.pt
    for h in hist:  # no half rows: a row with any of their epoch keys is one of theirs, whole
        if any(k.startswith(("train/", "lr/")) for k in h):
            assert all(k in h for k in UL_KEYS)

    # the monitor's rows: every logged step, equal to the local log (per-layer scalars only on request)
    assert_rows_equal_local_log(hist, r.log, per_layer=order == "late")
    if order == "normal":
        assert len(monitor_keys(hist)) <= MAX_MONITOR_KEYS, sorted(monitor_keys(hist))
    media = [h for h in hist if "gradmon/heatmap._type" in h]
    assert [h[STEP_KEY] for h in media] == [2, 4]  # wandb_media_every=1: after epoch 1, and at train end
    assert [h[STEP_KEY] for h in hist if "gradmon/layers/grad_norm_table.path" in h] == [2, 4]
    # the flow is sampled on every 2nd logged step: one sample after epoch 1 is no chart (single dots), two are
    assert [h[STEP_KEY] for h in hist if "gradmon/layers/flow_attenuation_table.path" in h] == [4]
    assert [h[STEP_KEY] for h in hist if "gradmon/depth_profile_table.path" in h] == [2, 4]  # every epoch

    steps_before_epoch1 = [h[STEP_KEY] for h in hist[: hist.index(epoch_rows[0])] if "gradients/total_norm" in h]
    if order == "normal":
        assert steps_before_epoch1 == [1, 2]  # the epoch's last step was logged before Ultralytics' epoch row
    else:
        # the flush came after Ultralytics' commit=False: queued, and logged after their commit
        assert steps_before_epoch1 == [1]
        assert "streaming to W&B active run" in r.output


@requires_coco8
def test_layer_scalars_on_request_equal_local_log_constant_family_never_streamed(with_ultralytics):
    """wandb_layer_scalars="all": flow and activation health per top-level layer equal the local log, except a
    family whose every value was one constant (act_dead on SiLU: 0), which never gets a key."""
    r = with_ultralytics["late"]
    log, layers = r.log, r.log.header["layers"]
    rows = gradient_rows(history(r.records))
    assert [x["step"] for x in log.steps if x["flow_backwards"] >= 1] == [1, 3]
    assert {v for x in log.steps for v in x["act_dead"] if v is not None} == {0.0}
    for rec in log.steps:
        row = rows[rec["step"]]
        for field, name in (("flow_norm", "flow_norm"), ("flow_attenuation", "flow_attenuation")):
            for layer, v in zip(layers, rec[field]):
                key = f"gradients/{name}/{layer}"
                assert (key in row) == (v is not None), (rec["step"], key)
                if v is not None:
                    assert close(row[key], v), (rec["step"], key)
        assert not any(k.startswith(("gradients/act_dead/", "gradients/act_saturated/")) for k in row)
    assert "act_dead=0" in r.summary["summary"]["gradmon/constant_families"]


# ---------------------------------------------------------------------------------------------------- faults
@requires_coco8
@pytest.mark.parametrize("fault", ["import-fails", "init-raises", "log-raises"])
def test_wandb_fault_training_completes_local_log_whole(fault, tmp_path, monkeypatch):
    import wandb
    from ultralytics import YOLO

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    calls = []
    if fault == "import-fails":
        monkeypatch.setitem(sys.modules, "wandb", None)
    elif fault == "init-raises":

        def init(*a, **k):
            raise RuntimeError("wandb.init failed (injected)")

        monkeypatch.setattr(wandb, "init", init)
    else:
        from wandb.sdk.wandb_run import Run

        real_log = Run.log

        def log(self, data, *a, **k):
            calls.append(data.get(STEP_KEY))
            if "gradients/total_norm" in data and data[STEP_KEY] == 3:  # the row of the 3rd logged step
                raise ConnectionError("wandb log failed (injected)")
            return real_log(self, data, *a, **k)

        monkeypatch.setattr(Run, "log", log)
    model = YOLO("yolo26n.yaml")
    mon = GradientMonitor(log_every=1).attach(model)
    with logged_records() as records:
        model.train(project=str(tmp_path / "runs"), name=fault, **TRAIN)
    save_dir = mon.out_dir.parent
    assert (save_dir / "weights" / "last.pt").is_file()  # training completed
    log = read_log(mon.out_dir)
    assert log.ended and [r["step"] for r in log.steps] == [1, 2, 3, 4]
    assert mon.summary["steps_logged"] == 4 and (mon.out_dir / "summary.json").is_file()
    warnings = gradmon_warnings(records)
    assert not gradmon_errors(records)
    dirs = run_dirs(save_dir, tmp_path / "wandb-default")
    if fault == "import-fails":
        assert len(warnings) == 1, warnings
        assert "wandb cannot be imported" in warnings[0] and "wandb=False" in warnings[0]
        assert not dirs
        return
    # said when it happens and again as the run's last line: why, and the two ways to turn W&B on
    assert len(warnings) == 2 and warnings[1] in warnings[0], warnings
    assert "W&B logging is off for this run" in warnings[0] and "`wandb login`" in warnings[0]
    assert "WANDB_MODE=offline" in warnings[0] and "wandb sync" in warnings[0] and str(mon.out_dir) in warnings[0]
    assert "start()" not in warnings[0] and "log_step()" not in warnings[0]  # no internal method names
    if fault == "init-raises":
        assert "RuntimeError" in warnings[0] and "injected" in warnings[0]
        assert not dirs
    else:
        assert "ConnectionError" in warnings[0]
        # steps 1, 2, epoch 1's depth profile, step 3; nothing after the failure (None: Ultralytics' epoch rows)
        assert [c for c in calls if c is not None] == [1, 2, 2, 3]
        (run_dir,) = dirs
        recs = leet(run_dir)
        assert sorted(gradient_rows(history(recs))) == [1, 2]  # what was logged before the failure stays
        assert of_type(recs, "exit")[-1]["exit_code"] == 1  # the run it started is closed, as failed
        assert wandb.run is None


# ---------------------------------------------------------------------------------------------------- unit tests (fake wandb)
class FakeRun:
    def __init__(self):
        self.logged, self.alerts, self.metrics = [], [], []
        self.summary, self.finished = {}, None
        self.config = types.SimpleNamespace(update=lambda *a, **k: None, setdefaults=lambda *a, **k: None)
        self.name = "fake"

    def log(self, row):
        self.logged.append(row)

    def alert(self, title, text, level):
        self.alerts.append((title, text, level))

    def define_metric(self, name, **kw):
        self.metrics.append((name, kw))

    def finish(self, exit_code=0):
        self.finished = exit_code


def fake_wandb(run=None):
    plot = types.SimpleNamespace(line_series=lambda **k: ("line_series", k),
                                 line=lambda table, x, y, title="": ("line", table, x, y, title))
    return types.SimpleNamespace(run=run, init=lambda **kw: FakeRun(), Image=lambda *a, **k: ("image", a),
                                 Table=lambda **k: ("table", k), plot=plot)


def fake_ctx(tmp_path, modules=("00.Conv", "01.Conv", "02.C3k2"), callbacks=None, layers=None, layer_index=None,
             **opts) -> RunInfo:
    cfg = GradmonConfig.from_dict(opts)
    n = len(modules)
    header = {"type": "header", "model": "m.yaml", "granularity": "layer", "modules": list(modules),
              "trainable": [True] * n, "numel": [1] * n, "layer_index": list(layer_index or range(n)),
              "layers": list(layers or []), "config": cfg.to_dict()}
    return RunInfo(header=header, cfg=cfg, save_dir=tmp_path, out_dir=tmp_path / "gradmon", epochs=10,
                   trainer_args={"project": None, "name": "t"}, callbacks=callbacks if callbacks is not None else {})


def record(step, grad_norm, has_grad=None):
    n = len(grad_norm)
    g = np.asarray(grad_norm, dtype=float)
    return plain_values({  # a step record is plain, as the monitor makes it: lists, None for non-finite
        "type": "step", "step": step, "epoch": 1, "lr": [0.01, 0.02], "amp_scale": None, "amp_skipped": None,
        "total_norm": 1.0, "clip_active": False, "warmup": False,
        "has_grad": has_grad if has_grad is not None else [True] * n, "grad_norm": g, "weight_norm": np.ones(n),
        "grad_to_weight": g, "update_to_weight": g * 0.1, "max_abs_grad": g, "nonfinite": np.zeros(n, int)})


def test_started_run_gets_step_metric_and_flat_rows_nan_for_nonfinite(tmp_path):
    sink = WandbSink(GradmonConfig(), fake_wandb())
    sink.start(fake_ctx(tmp_path))
    run = sink.run
    assert sink.owns_run
    assert run.metrics == [(STEP_KEY, {}), ("gradients/*", {"step_metric": STEP_KEY}), ("gradmon/*", {"step_metric": STEP_KEY}),
                           *((f"{p}/*", {"step_metric": "epoch"}) for p in ("train", "lr", "metrics", "val"))]
    sink.log_step(record(1, [float("nan"), 2.0, float("inf")], has_grad=[True, False, True]), 2)
    (row,) = run.logged
    assert row[STEP_KEY] == 1 and row["gradients/flagged_modules"] == 2 and row["gradients/lr"] == 0.01
    assert not any(k.startswith("gradients/grad_norm/") for k in row)  # default: no per-layer scalar keys

    sink = WandbSink(GradmonConfig(wandb_layer_scalars="grad_norm"), fake_wandb())
    sink.start(fake_ctx(tmp_path, wandb_layer_scalars="grad_norm"))
    run = sink.run
    sink.log_step(record(1, [float("nan"), 2.0, float("inf")], has_grad=[True, False, True]), 2)
    (row,) = run.logged
    assert math.isnan(row["gradients/grad_norm/00.Conv"]) and math.isnan(row["gradients/grad_norm/02.C3k2"])  # NaN/Inf → NaN
    assert not any("01.Conv" in k for k in row)  # no gradient at this step: no keys
    assert "gradients/amp_scale" not in row  # no AMP
    assert all(not isinstance(v, (dict, list)) for v in row.values())  # flat


def test_active_run_reused_not_finished(tmp_path):
    user_run = FakeRun()
    sink = WandbSink(GradmonConfig(), fake_wandb(user_run))
    sink.start(fake_ctx(tmp_path))
    assert sink.run is user_run and not sink.owns_run
    sink.close_after_error()
    assert user_run.finished is None  # someone else's run is never finished by the sink


def test_alerts_one_per_module_and_kind_capped_and_optional(tmp_path):
    sink = WandbSink(GradmonConfig(), fake_wandb())
    sink.start(fake_ctx(tmp_path))
    f = Flag("nonfinite", "00.Conv", 7, 7, {"nonfinite_values": 3, "grad_norm": float("nan")})
    sink.on_flag(f)
    sink.on_flag(f)  # the same (module, kind) again: rate-limited
    sink.on_flag(Flag("dead", "01.Conv", 8, 8, {"zero_steps": 5}))  # dead: no alert
    sink.on_flag(Flag("exploding", "00.Conv", 9, 9, {"grad_norm": 1e5, "running_median": 1.0}))
    alerts = sink.run.alerts
    assert [(t, lvl) for t, _, lvl in alerts] == [
        ("gradmon: nonfinite gradients in 00.Conv", "ERROR"), ("gradmon: exploding gradients in 00.Conv", "WARN")
    ]
    assert "Layer 00.Conv" in alerts[0][1] and "step 7" in alerts[0][1] and "nonfinite_values=3" in alerts[0][1]
    for i in range(MAX_ALERTS + 5):
        sink.on_flag(Flag("vanishing", f"m{i}", 10, 10, {"grad_to_weight": 1e-9}))
    assert len(sink.run.alerts) == MAX_ALERTS + 1 and sink.run.alerts[-1][0] == "gradmon: more gradient flags"

    quiet = WandbSink(GradmonConfig(wandb_alerts=False), fake_wandb())
    quiet.start(fake_ctx(tmp_path))
    quiet.on_flag(f)
    assert quiet.run.alerts == [] and ("nonfinite", "00.Conv") in quiet.flags


def test_rows_queued_while_ultralytics_row_is_open(tmp_path):
    """Markers go right after Ultralytics' W&B callbacks; between them the sink queues its rows."""
    from ultralytics.utils.callbacks import wb as ul_wb

    def other(trainer):
        pass

    callbacks = {"on_train_epoch_end": [other, ul_wb.on_train_epoch_end, other],
                 "on_fit_epoch_end": [ul_wb.on_fit_epoch_end, other]}
    sink = WandbSink(GradmonConfig(), fake_wandb())
    sink.start(fake_ctx(tmp_path, callbacks=callbacks))
    opened = callbacks["on_train_epoch_end"][2]
    closed = callbacks["on_fit_epoch_end"][1]
    assert callbacks["on_train_epoch_end"][3] is other and callbacks["on_fit_epoch_end"][2] is other
    sink.log_step(record(1, [1.0, 1.0, 1.0]), 0)
    opened(None)  # Ultralytics logged its losses with commit=False
    sink.log_step(record(2, [1.0, 1.0, 1.0]), 0)
    sink.epoch_end(1, 2, History([], []))
    assert [r[STEP_KEY] for r in sink.run.logged] == [1]  # held back: would commit their half row
    closed(None)  # Ultralytics committed its epoch row
    sink.log_step(record(3, [1.0, 1.0, 1.0]), 0)
    assert [r[STEP_KEY] for r in sink.run.logged] == [1, 2, 3]
    assert callbacks["teardown"]  # a run it started is closed if training raises


def test_guard_disables_sink_once_and_finishes_own_run(tmp_path):
    sink = WandbSink(GradmonConfig(), fake_wandb())
    guarded = GuardedSink(sink)
    guarded.start(fake_ctx(tmp_path))
    sink.run.log = lambda row: (_ for _ in ()).throw(OSError("disk full"))
    with logged_records() as records:
        guarded.log_step(record(1, [1.0, 1.0, 1.0]), 0)
        guarded.log_step(record(2, [1.0, 1.0, 1.0]), 0)
    assert not guarded.enabled and sink.run.finished == 1
    assert len([r for r in records if r.levelno == logging.WARNING]) == 1


def test_make_wandb_sink_disabled_and_missing(monkeypatch):
    with logged_records() as records:
        monkeypatch.setenv("WANDB_MODE", "disabled")
        assert make_wandb_sink(GradmonConfig()) is None
        monkeypatch.setenv("WANDB_MODE", "offline")
        assert isinstance(make_wandb_sink(GradmonConfig()), WandbSink)
        monkeypatch.setitem(sys.modules, "wandb", None)
        assert make_wandb_sink(GradmonConfig()) is None
    assert [r.levelno for r in records if PREFIX in r.getMessage()] == [logging.INFO, logging.WARNING]


def test_resumed_training_continues_its_run(tmp_path):
    """resume=True: the run the sink starts continues the newest run in save_dir/wandb, as Ultralytics does."""
    old = tmp_path / "wandb" / "offline-run-20260101_000000-abc123"
    old.mkdir(parents=True)
    (old / "run-abc123.wandb").write_bytes(b"")
    ctx = fake_ctx(tmp_path)
    seen = {}
    wb = fake_wandb()
    wb.init = lambda **kw: seen.update(kw) or FakeRun()
    ctx.resumed, ctx.start_step = True, 8
    WandbSink(GradmonConfig(), wb).start(ctx)
    assert seen["id"] == "abc123" and seen["resume"] == "allow" and seen["dir"] == str(tmp_path)
    assert seen["project"] == "Ultralytics" and seen["name"] == "t" and seen["job_type"] == "train"
    assert seen["config"]["gradmon"] == GradmonConfig().to_dict()


def layer_record(step, epoch, n_modules, n_layers, rng, dead=0.0):
    rec = record(step, rng.uniform(0.1, 10.0, n_modules).tolist())
    rec["epoch"] = epoch
    rec["update_to_weight"] = rec["update_to_weight"] if step % 10 == 1 else [None] * n_modules
    rec["flow_backwards"] = 1
    rec["flow_norm"] = rng.uniform(0.1, 10.0, n_layers).tolist()
    rec["flow_attenuation"] = [*rng.uniform(1e-3, 1.0, n_layers - 1).tolist(), 1.0]
    rec["act_saturated"] = [None] * n_layers
    rec["act_dead"] = [dead] * n_layers if step % 10 == 1 else [None] * n_layers
    return rec


@pytest.mark.parametrize("model", ["yolo26n.yaml", "yolo11n.yaml"])
def test_default_keys_at_most_40_charts_skip_constant_families(tmp_path, model):
    """Layer granularity, default options, 3 epochs of 20 steps: at most 40 monitor keys (logical W&B keys: a chart
    is stored as ``<key>_table``) whatever the model; no chart of the constant act_dead, none of the unmeasured
    act_saturated; the summary says so."""
    from ultralytics import YOLO

    from yolo_gradmon.structure.layout import build_layout, layer_names

    net = YOLO(model).model
    layout, layers = build_layout(net, "layer"), layer_names(net)
    ctx = fake_ctx(tmp_path, modules=layout.names, layers=layers, layer_index=layout.layer_index)
    sink = WandbSink(GradmonConfig(), fake_wandb())
    sink.start(ctx)
    rng = np.random.default_rng(0)
    records = []
    for epoch in (1, 2, 3):
        for step in range(20 * epoch - 19, 20 * epoch + 1):
            records.append(layer_record(step, epoch, len(layout.names), len(layers), rng))
            sink.log_step(records[-1], 0)
        sink.epoch_end(epoch, 20 * epoch, History(records, []))
    sink.finish(TrainEnd.build(ctx.header, records, [], complete=True, log_path=tmp_path / "gradmon" / "gradients.jsonl"))
    keys = {k for row in sink.run.logged for k in row}
    assert len(keys) <= MAX_MONITOR_KEYS, sorted(keys)
    assert len([k for k in keys if k.startswith("gradients/")]) <= 12
    charts = {k for k in keys if k.startswith("gradmon/layers/")}
    assert charts == {f"gradmon/layers/{f}" for f in ("grad_norm", "grad_to_weight", "update_to_weight",
                                                      "flow_attenuation")}
    (final,) = [row for row in sink.run.logged if "gradmon/heatmap" in row]
    kind, kw = final["gradmon/layers/grad_norm"]
    assert kind == "line_series" and kw["keys"] == list(layout.names) and kw["xname"] == STEP_KEY
    assert kw["xs"][0] == [r["step"] for r in records]
    assert kw["ys"][0] == pytest.approx([math.log10(r["grad_norm"][0]) for r in records])
    kind, kw = final["gradmon/layers/update_to_weight"]
    assert kw["xs"][0] == [1, 11, 21, 31, 41, 51]  # sampled steps only
    profiles = [row["gradmon/depth_profile"] for row in sink.run.logged if "gradmon/depth_profile" in row]
    assert len(profiles) == 3  # every epoch
    kind, table, x, y, _title = profiles[-1]
    assert (kind, x, y) == ("line", "index", "log10_median") and table[1]["columns"] == PROFILE_COLUMNS
    assert [r[2] for r in table[1]["data"]] == layers and table[1]["data"][-1][3] == 1.0
    assert sink.run.summary["gradmon/constant_families"] == "act_dead=0"
    assert sink.run.summary["gradmon/unmeasured_families"] == "act_saturated"


def test_requested_constant_family_held_then_backfilled_at_its_steps(tmp_path):
    """wandb_layer_scalars: a family is streamed once it varies, its earlier (constant) values backfilled at their
    own gradients/step; a family constant over the whole run never gets a key."""
    layers = ["00.Conv", "01.Conv", "02.Detect"]
    ctx = fake_ctx(tmp_path, modules=layers, layers=layers, wandb_layer_scalars="act_dead,flow_norm")
    sink = WandbSink(ctx.cfg, fake_wandb())
    sink.start(ctx)
    rng = np.random.default_rng(0)
    for step in (1, 2, 3):
        sink.log_step(layer_record(step, 1, 3, 3, rng, dead=0.0), 0)
    assert all(not k.startswith("gradients/act_dead/") for row in sink.run.logged for k in row)
    assert all(f"gradients/flow_norm/{n}" in sink.run.logged[0] for n in layers)  # varied from step 1: streamed
    rec = layer_record(11, 1, 3, 3, rng)
    rec["act_dead"] = [0.0, 0.25, 0.0]  # now it varies
    sink.log_step(rec, 0)
    backfill, row = sink.run.logged[-2:]
    assert backfill == {STEP_KEY: 1, **{f"gradients/act_dead/{n}": 0.0 for n in layers}}  # step 1 (health sampled)
    assert row[STEP_KEY] == 11 and row["gradients/act_dead/01.Conv"] == 0.25
    sink.log_step(layer_record(12, 1, 3, 3, rng), 0)
    assert "gradients/act_dead/00.Conv" not in sink.run.logged[-1]  # not sampled at step 12: no key


def test_sampled_family_with_one_sample_is_not_charted_and_said(tmp_path):
    """A family sampled at fewer than 2 logged steps (update_to_weight, update_every=10, 8 steps) would be a chart of
    single dots: it is not drawn, and the summary names it; with 2 samples it is a chart of lines."""
    from yolo_gradmon.show import wandb_rows

    header = {"modules": ["00.Conv", "01.Conv", "02.C3k2"], "granularity": "layer", "layers": []}
    recs = [record(s, [1.0 * s, 2.0, 3.0]) for s in range(1, 9)]
    for r in recs:
        r["update_to_weight"] = [0.01 * r["step"], 0.02, 0.03] if r["step"] == 1 else [None, None, None]
    assert wandb_rows.family_state(recs, "update_to_weight") == ("sparse", None)
    charts = wandb_rows.line_charts(recs, header)
    assert "gradmon/layers/update_to_weight" not in charts and "gradmon/layers/grad_norm" in charts
    assert wandb_rows.summary_fields({"flags": []}, 0, recs)["gradmon/sparse_families"] == "update_to_weight"
    recs[5]["update_to_weight"] = [0.05, 0.02, 0.03]  # a second sample: now a line per layer between the samples
    chart = wandb_rows.line_charts(recs, header)["gradmon/layers/update_to_weight"]
    assert chart["xs"] == [[1, 6], [1, 6], [1, 6]]
