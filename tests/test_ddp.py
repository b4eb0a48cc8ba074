"""Real distributed training: Ultralytics' trainer in two processes under torch.distributed (gloo, CPU), YOLO26n on
COCO8, launched by Ultralytics' own DDP launcher (``generate_ddp_command`` -> ``torch.distributed.run``) with the
monitor attached as a user attaches it. ``tests/ddp_harness.py`` is the launcher and the per-rank probe; it adapts
only the CUDA-specific device / backend / ``device_ids`` choices of Ultralytics' DDP set-up (see its docstring).

Each rank dumps facts to JSON (what is registered, called and written; reference gradient norms). Checked:

* rank 0 writes the log, summary.json and the outputs; rank 1 writes nothing, registers no hook (its
  ``trainer.optimizer_step`` is not wrapped, no monitor hook on its model) and runs no statistic code;
* every logged per-layer gradient norm equals the norm of the all-reduced gradients in the same optimizer step
  (rel. error <= 1e-5) and differs from each rank's local (pre-all-reduce) gradients;
* both processes finish within a timeout; SIGKILL of rank 1 at a random optimizer step ends the whole launch within
  a timeout and leaves rank 0's log intact up to its last logged step;
* with ``WANDB_MODE=offline`` exactly one W&B run directory is written, by rank 0.

The short variant (64 px, 3 epochs = 6 optimizer steps per launch, two launches, 35-50 s on 2 shared CPU cores) runs by
default; the long one (160 px, 8 epochs = 16 steps) is opt-in: ``pytest -m ddp tests/test_ddp.py``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATASETS_DIR, requires_coco8

from yolo_gradmon import GradientMonitor, read_log

pytestmark = requires_coco8

HARNESS = Path(__file__).with_name("ddp_harness.py")
REL_TOL = 1e-5  # logged norm vs float64 norm of the all-reduced gradients
LAUNCH_TIMEOUT = 240  # seconds for a whole launch (launcher + torch.distributed.run + 2 workers)
KILL_TIMEOUT = 120  # seconds for a launch whose rank 1 is SIGKILLed

VARIANTS = {
    "short": dict(imgsz=64, epochs=3, batch=2),  # 2 ranks x 1 image, 2 steps per epoch -> 6 steps
    "long": dict(imgsz=160, epochs=8, batch=2),  # 16 steps
}


def variant_params():
    return [pytest.param("short", id="short"), pytest.param("long", id="long", marks=pytest.mark.ddp)]


def launch(out: Path, variant: str, *extra: str, timeout: float) -> dict:
    """Run the harness in its own session; on timeout kill the whole process group (launcher, agent, workers)."""
    v = VARIANTS[variant]
    cmd = [sys.executable, str(HARNESS), "--out", str(out), "--datasets", str(DATASETS_DIR), "--imgsz", str(v["imgsz"]),
           "--epochs", str(v["epochs"]), "--batch", str(v["batch"]), *extra]  # the data conftest resolved
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"DDP launch did not end within {timeout} s (hang):\n{output[-4000:]}")
    seconds = time.monotonic() - t0
    facts = {}
    for r in (0, 1):
        f = out / "facts" / f"rank{r}.json"
        facts[r] = json.loads(f.read_text()) if f.is_file() else None
    launch_json = out / "launch.json"
    return {
        "out": out, "returncode": proc.returncode, "output": output, "seconds": seconds, "facts": facts,
        "launch": json.loads(launch_json.read_text()) if launch_json.is_file() else {},
        "save_dir": out / "runs" / "ddp", "n_steps": v["epochs"] * 2,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def comparison_table(log, steps0: list, steps1: list) -> list[dict]:
    """Per logged step: max rel. error vs the all-reduced reference, min rel. difference vs each rank's local grads."""
    rows = []
    by_step0 = {s["step"]: s for s in steps0}
    by_step1 = {s["step"]: s for s in steps1}
    for rec in log.steps:
        a, b = by_step0[rec["step"]], by_step1.get(rec["step"])
        err, d0, d1 = [], [], []
        for i, m in enumerate(log.modules):
            g = rec["grad_norm"][i]
            err.append(abs(g - a["ref"][m]) / a["ref"][m])
            d0.append(abs(g - a["local"][m]) / a["local"][m])
            if b is not None:
                d1.append(abs(g - b["local"][m]) / b["local"][m])
        rows.append({"step": rec["step"], "max_rel_err_allreduced": max(err), "min_rel_diff_local_rank0": min(d0),
                     "min_rel_diff_local_rank1": min(d1) if d1 else None})
    return rows


def format_table(rows) -> str:
    lines = ["step | max rel. error vs all-reduced ref | min rel. diff vs rank-0 local | min rel. diff vs rank-1 local"]
    for r in rows:
        d1 = "-" if r["min_rel_diff_local_rank1"] is None else f"{r['min_rel_diff_local_rank1']:.3g}"
        lines.append(f"{r['step']:4d} | {r['max_rel_err_allreduced']:.2e} | {r['min_rel_diff_local_rank0']:.3g} | {d1}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", params=variant_params())
def ddp_run(request, tmp_path_factory):
    """A complete 2-rank run with the monitor attached (wandb=True, WANDB_MODE=offline)."""
    out = tmp_path_factory.mktemp(f"ddp-{request.param}")
    run = launch(out, request.param, "--wandb", timeout=LAUNCH_TIMEOUT)
    assert run["returncode"] == 0, run["output"][-4000:]
    return run


@pytest.fixture(scope="module", params=variant_params())
def killed_run(request, tmp_path_factory):
    """Rank 1 SIGKILLs itself at a random optimizer step (GRADMON_DDP_KILL_STEP=k to replay one)."""
    out = tmp_path_factory.mktemp(f"ddp-kill-{request.param}")
    n = VARIANTS[request.param]["epochs"] * 2
    k = int(os.environ.get("GRADMON_DDP_KILL_STEP") or random.SystemRandom().randint(2, n))
    print(f"\nSIGKILL of rank 1 at optimizer step {k} of {n} (replay: GRADMON_DDP_KILL_STEP={k})")
    run = launch(out, request.param, "--kill-rank", "1", "--kill-step", str(k), timeout=KILL_TIMEOUT)
    run["kill_step"] = k
    return run


# ------------------------------------------------------------------------------------------------ complete run
def test_both_ranks_finish_within_timeout_under_ddp(ddp_run):
    f0, f1 = ddp_run["facts"][0], ddp_run["facts"][1]
    assert f0 and f1 and f0["finished"] and f1["finished"]
    assert ddp_run["seconds"] < LAUNCH_TIMEOUT
    for f in (f0, f1):
        assert f["world_size"] == 2
        assert "DistributedDataParallel" in f["model_wrapper_mro"]  # the monitor saw a DDP-wrapped trainer.model
        assert f["accumulate"] == 1 and f["amp"] is False
        assert len(f["steps"]) == ddp_run["n_steps"]
    assert f0["pid"] != f1["pid"] and f0["save_dir"] == f1["save_dir"]


def test_rank0_writes_log_summary_and_outputs(ddp_run):
    f0 = ddp_run["facts"][0]
    gm = ddp_run["save_dir"] / "gradmon"
    for name in ("gradients.jsonl", "summary.json", "gradients.parquet", "heatmap.png", "curves.png"):
        assert (gm / name).is_file(), name
    for name in ("gradients.jsonl", "summary.json", "heatmap.png", "curves.png"):  # Parquet: polars' own I/O, unaudited
        assert str(gm / name) in f0["write_opens"], f"{name} was not written by rank 0"
    log = read_log(gm)
    assert log.ended
    assert [r["step"] for r in log.steps] == list(range(1, ddp_run["n_steps"] + 1))
    summary = json.loads((gm / "summary.json").read_text())
    assert summary["steps_logged"] == ddp_run["n_steps"] and summary["modules"] == log.modules
    # positive controls for what rank 1 must not show: rank 0's step is wrapped, its hooks are seen, its code runs
    assert all(s["outer_step_fn_module"].startswith("yolo_gradmon") for s in f0["steps"])
    assert sum(f0["steps"][0]["monitor_hooks"].values()) > 0  # flow/health hooks armed on the first logged step
    assert any(not k.startswith(GradientMonitor.__module__ + ":") for k in f0["gradmon_calls"])
    assert f0["monitor_state"]["records"] == ddp_run["n_steps"]


def test_rank1_writes_registers_and_computes_nothing(ddp_run):
    f1 = ddp_run["facts"][1]
    assert f1["write_opens"] == [] and f1["mkdirs"] == [] and f1["spawned"] == []
    assert not f1["wandb_imported"]
    # its trainer.optimizer_step is the trainer's own (only the harness probe wraps it), at start, every step, end
    assert not f1["step_fn_at_probe_start"].startswith("yolo_gradmon")
    assert all(s["outer_step_fn_module"] == "ddp_harness" for s in f1["steps"])
    assert not f1["step_fn_at_end"].startswith("yolo_gradmon")
    # no forward/backward/parameter/global hook of the monitor on the DDP wrapper or any module inside it
    for s in f1["steps"]:
        assert not any(s["monitor_hooks"].values()), s
    assert not any(f1["monitor_hooks_at_end"].values())
    # no statistic: the only monitor code that ran is the callbacks' early return (the profile of every call)
    allowed = set(GradientMonitor(wandb=False).callbacks()) | {"_reset"}
    called = {k.split(":")[0]: 0 for k in f1["gradmon_calls"]}
    assert set(called) <= {GradientMonitor.__module__}, f1["gradmon_calls"]
    assert {k.split(":")[1] for k in f1["gradmon_calls"]} <= allowed, f1["gradmon_calls"]
    assert f1["monitor_objects"] == 1
    assert f1["monitor_state"] == {"records": 0, "out_dir": None, "summary": False}


def test_logged_norms_equal_allreduced_reference_not_local(ddp_run):
    f0, f1 = ddp_run["facts"][0], ddp_run["facts"][1]
    log = read_log(ddp_run["save_dir"] / "gradmon")
    assert not any(m.startswith("module.") or "module." in m for m in log.modules)
    assert set(log.modules) == set(f0["steps"][0]["ref"])  # the layers of the unwrapped model, nothing else
    rows = comparison_table(log, f0["steps"], f1["steps"])
    table = format_table(rows)
    print("\n" + table)
    (ddp_run["out"] / "reference_table.txt").write_text(table + "\n")
    for rec, a, b in zip(log.steps, f0["steps"], f1["steps"]):
        assert rec["step"] == a["step"] == b["step"] and rec["epoch"] == a["epoch"]
        for i, m in enumerate(log.modules):
            # both ranks hold the same all-reduced gradient, and it is the mean of the two local ones (the linear
            # sketch), so the reference really is the all-reduced gradient and "local" really is pre-all-reduce
            assert a["ref"][m] == pytest.approx(b["ref"][m], rel=1e-12)
            scale = math.sqrt(a["ref"][m] ** 2 + a["local"][m] ** 2 + b["local"][m] ** 2)
            assert abs((a["local_sketch"][m] + b["local_sketch"][m]) / 2 - a["ref_sketch"][m]) <= 1e-4 * scale
            assert rec["grad_norm"][i] == pytest.approx(a["ref"][m], rel=REL_TOL), (rec["step"], m)
        total = math.sqrt(sum(v * v for v in a["ref"].values()))
        assert rec["total_norm"] == pytest.approx(total, rel=REL_TOL)
    for r in rows:  # logging before the all-reduce (either rank's local gradients) would be caught
        assert r["min_rel_diff_local_rank0"] > 10 * REL_TOL and r["min_rel_diff_local_rank1"] > 10 * REL_TOL, r


def test_wandb_offline_one_run_written_by_rank0(ddp_run):
    out, f0, f1 = ddp_run["out"], ddp_run["facts"][0], ddp_run["facts"][1]
    runs = [p for p in out.rglob("offline-run-*") if p.is_dir()] + [p for p in out.rglob("run-*") if p.is_dir()]
    runs = sorted({p for p in runs if p.parent.name == "wandb"})
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert run_dir.parent == ddp_run["save_dir"] / "wandb"
    assert any(w.startswith(str(run_dir)) for w in f0["write_opens"]), "rank 0 wrote no W&B file"
    assert f0["wandb_imported"] and not f1["wandb_imported"]
    assert any("wandb" in s for s in f0["spawned"]) and f1["spawned"] == []


# ------------------------------------------------------------------------------------------------ SIGKILL of rank 1
def test_sigkill_rank1_ends_launch_and_keeps_rank0_log(killed_run):
    k = killed_run["kill_step"]
    assert killed_run["seconds"] < KILL_TIMEOUT  # no hang (in the monitor or elsewhere)
    assert killed_run["returncode"] != 0 and "SIGKILL" in killed_run["output"]
    f0, f1 = killed_run["facts"][0], killed_run["facts"][1]
    assert f1["killed_at_step"] == k
    # rank 0 never took a step after k (step k+1 needs rank 1's all-reduce); it reached step k unless
    # torch.distributed.run's SIGTERM came first; its trainer failed on the dead peer (gloo) or was terminated
    # (its teardown callback may run)
    assert f0 is not None
    s0 = len(f0["steps"])
    assert k - 1 <= s0 <= k, (k, s0)
    time.sleep(0.5)
    assert not _alive(f0["pid"]) and not _alive(f1["pid"]), "a worker survived the launch"
    log = read_log(killed_run["save_dir"] / "gradmon")  # strict JSON lines up to the last logged step
    steps = [r["step"] for r in log.steps]
    assert steps == list(range(1, len(steps) + 1)), steps
    # every step rank 0 began is logged except possibly the last (its record is written when the next step starts)
    assert s0 - 1 <= len(steps) <= s0, (k, s0, steps)
    assert not log.ended
    ref = {s["step"]: s for s in f0["steps"]}
    for rec in log.steps:  # what is there is right
        for i, m in enumerate(log.modules):
            assert rec["grad_norm"][i] == pytest.approx(ref[rec["step"]]["ref"][m], rel=REL_TOL)
