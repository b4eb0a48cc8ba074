"""A real multi-process DDP training on CPU (gloo), launched the way Ultralytics launches it.

Run:  OMP_NUM_THREADS=1 python tests/ddp_harness.py --out /tmp/ddp --datasets <dir holding coco8/>
      [--imgsz 64 --epochs 3 --batch 2] [--wandb]
      [--kill-rank 1 --kill-step 3] [--no-monitor] [--no-probe-reference] [--no-trace] [--bench]
      (the launcher runs with nbs=batch, amp=False, seed=0, val=False, plots=False, workers=0)

What happens (nothing in yolo_gradmon is changed or patched):

1. This (launching) process builds ``YOLO("yolo26n.yaml")``, registers the probe below, attaches
   ``GradientMonitor(...)`` exactly as a user does, and calls ``model.train(trainer=CPUDDPTrainer, device="cpu", ...)``.
2. Ultralytics' own ``BaseTrainer.train()`` takes its DDP branch: ``generate_ddp_command`` cloudpickles the trainer
   class, args, model and ``model.callbacks`` (monitor and probe included) into a ``.pt`` file, writes its worker
   script, and runs ``python -m torch.distributed.run --nproc_per_node N --master_port P <worker>``.
3. Each worker rebuilds the trainer from the pickle and runs Ultralytics' ``_do_train``: ``_setup_ddp``, the
   ``DistributedDataParallel`` wrap, a ``DistributedSampler`` per rank, the ``loss *= world_size`` scaling, the
   ``optimizer_step`` call, ``broadcast_object_list`` of ``stop`` per epoch, final evaluation on rank 0.

``CPUDDPTrainer`` adapts ONLY what Ultralytics' CUDA-only DDP set-up needs for a CPU process group (four places):

* device selection / process count: ``device="cpu"`` makes Ultralytics count 0 devices; the launcher sets
  ``world_size=N`` and ``ddp=True`` (so ``train()`` spawns workers), each worker takes ``world_size`` from the
  ``WORLD_SIZE`` that ``torch.distributed.run`` exports and keeps ``self.device = cpu``;
* process-group backend: ``_setup_ddp`` calls ``dist.init_process_group("gloo", ...)`` instead of selecting a CUDA
  device and NCCL;
* the ``DistributedDataParallel`` wrapper: Ultralytics passes ``device_ids=[self.device.index]`` (``[None]`` on CPU,
  which DDP rejects); during ``_setup_train`` the wrapper class is a ``DistributedDataParallel`` subclass that
  passes ``device_ids=None`` (the CPU form) and nothing else differs;
* device selection of the final validation of ``best.pt`` (``final_eval``): a DDP rank's validator builds its model
  on ``cuda:<current_device()>``; during ``final_eval`` it is built on the CPU.

The ``Probe`` (cloudpickled into the workers with the monitor, like any callback) records per rank, into
``<out>/facts/rank<R>.json``:

* ``steps``: per optimizer step, the per-layer L2 norms (float64) of ``p.grad`` inside the monitor's wrapper (the
  probe's ``on_train_start`` is registered before the monitor's, so its wrapper is the inner one, as
  ``tests/test_training.py``'s ``reference_hook``): the all-reduced gradients the optimizer receives; the same norms of
  this rank's LOCAL gradients before the all-reduce (a ``register_post_accumulate_grad_hook`` on every parameter,
  which runs when autograd has accumulated the local gradient and before DDP's reducer hook copies it into its
  bucket); a fixed random linear sketch of both (sum_i g_i r_i per layer), so a test can check
  mean_over_ranks(local) == all-reduced (valid with one backward per optimizer step, nbs=batch as here: with
  accumulation, p.grad would already hold the all-reduced earlier micro-batches); and the monitor's hooks present on
  the model (wrapper and inner modules, parameters, global hooks) at that moment;
* ``write_opens`` / ``mkdirs`` / ``spawned``: files opened for writing, directories made and processes started from
  ``on_pretrain_routine_end`` on (``sys.addaudithook``);
* ``gradmon_calls``: every yolo_gradmon function called from then on (``sys.setprofile``; off with ``--no-trace``);
* ``batch_times``: seconds from ``on_train_batch_start`` to ``on_train_batch_end`` per batch (the benchmark).

With ``--kill-rank R --kill-step K`` rank R SIGKILLs itself at the start of optimizer step K.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

PKG = "yolo_gradmon"
_FACTS_DIR_ENV = "GRADMON_DDP_FACTS"


# ------------------------------------------------------------------------------------------------ the CPU trainer
# Importing Ultralytics reads its settings (datasets_dir): the launcher imports this module only after
# _prepare_env() (see __main__ below); workers inherit that environment.
if __name__ != "__main__":
    from ultralytics.models.yolo.detect import DetectionTrainer as _Base
else:  # the script body only prepares the environment, then imports this file as ``ddp_harness``
    _Base = object


class CPUDDPTrainer(_Base):
    """Ultralytics' DetectionTrainer with the three CPU adaptations described in the module docstring."""

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK

        super().__init__(cfg=cfg or DEFAULT_CFG, overrides=overrides, _callbacks=_callbacks)
        if LOCAL_RANK == -1:  # the launching process: take Ultralytics' DDP branch in train()
            self.world_size = int(os.environ.get("GRADMON_DDP_NPROC", "2"))
            self.ddp = True
        else:  # a worker started by torch.distributed.run
            self.world_size = int(os.environ["WORLD_SIZE"])
            self.ddp = False

    def _setup_ddp(self):
        import torch.distributed as dist
        from ultralytics.utils import RANK

        dist.init_process_group(
            backend="gloo", timeout=timedelta(seconds=int(os.environ.get("GRADMON_DDP_TIMEOUT", "300"))),
            rank=RANK, world_size=self.world_size,
        )  # self.device stays cpu

    def _setup_train(self):
        import torch.nn.parallel as par

        original = par.DistributedDataParallel

        class CPUDistributedDataParallel(original):
            def __init__(self, module, device_ids=None, *args, **kwargs):
                super().__init__(module, None, *args, **kwargs)  # CPU modules take device_ids=None

        par.DistributedDataParallel = CPUDistributedDataParallel
        try:
            return super()._setup_train()
        finally:
            par.DistributedDataParallel = original

    def final_eval(self):
        import torch
        import ultralytics.engine.validator as v

        class _CPUBackend:  # DDP ranks validate best.pt on "cuda:<current_device()>"; here on the CPU
            @staticmethod
            def current_device():
                return None

        saved = v.get_torch_device_backend, v.AutoBackend

        def cpu_autobackend(*args, **kwargs):
            kwargs["device"] = torch.device("cpu")
            return saved[1](*args, **kwargs)

        v.get_torch_device_backend, v.AutoBackend = (lambda *_: _CPUBackend), cpu_autobackend
        try:
            return super().final_eval()
        finally:
            v.get_torch_device_backend, v.AutoBackend = saved


# ------------------------------------------------------------------------------------------------ the probe
def _fn_module(fn) -> str:
    for _ in range(5):
        inner = getattr(fn, "func", None) or getattr(fn, "__func__", None)
        if inner is None:
            break
        fn = inner
    return str(getattr(fn, "__module__", "") or "")


def _is_ours(fn) -> bool:
    return _fn_module(fn).startswith(PKG)


def _layer_keys(net) -> dict:
    layers = net.model
    keys = {}
    for name, _ in net.named_parameters():
        idx = int(name.split(".")[1])
        keys[name] = f"{idx:02d}.{type(layers[idx]).__name__}"
    return keys


class Probe:
    """Picklable callbacks recording facts per rank (see the module docstring)."""

    def __init__(self, facts_dir, reference=True, trace=True, kill_rank=-1, kill_step=-1, scan_hooks=True):
        self.facts_dir = str(facts_dir)
        self.reference = reference
        self.trace = trace
        self.kill_rank = kill_rank
        self.kill_step = kill_step
        self.scan_hooks = scan_hooks

    def callbacks(self) -> dict:
        return {
            "on_pretrain_routine_end": self.on_pretrain_routine_end,
            "on_train_start": self.on_train_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_batch_end": self.on_train_batch_end,
            "teardown": self.teardown,
        }

    # -- state lives only in the worker
    def __getstate__(self):
        return {k: getattr(self, k) for k in ("facts_dir", "reference", "trace", "kill_rank", "kill_step", "scan_hooks")}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _init(self, trainer):
        from ultralytics.utils import RANK

        self.rank = RANK
        self.facts = {
            "rank": RANK, "pid": os.getpid(), "world_size": int(getattr(trainer, "world_size", 0)),
            "save_dir": str(trainer.save_dir), "steps": [], "batch_times": [], "write_opens": [], "mkdirs": [],
            "spawned": [], "gradmon_calls": {}, "finished": False,
        }
        self._t0 = None
        self._local_sq = defaultdict(float)
        self._local_sk = defaultdict(float)

    # -- on_pretrain_routine_end: the model is DDP-wrapped; nothing of the monitor has run yet
    def on_pretrain_routine_end(self, trainer):
        import torch
        from ultralytics.utils.torch_utils import unwrap_model

        self._init(trainer)
        self.facts["model_wrapper"] = type(trainer.model).__name__
        self.facts["model_wrapper_mro"] = [c.__name__ for c in type(trainer.model).__mro__]
        self.facts["amp"] = bool(getattr(trainer, "amp", False))
        self.facts["accumulate"] = int(trainer.accumulate)
        write_opens, mkdirs, spawned = set(), set(), []

        def audit(event, args):
            try:
                if event == "open":
                    path, mode, flags = args
                    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                        mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                    )
                    if writing and path is not None and not isinstance(path, int):
                        write_opens.add(os.fsdecode(path))
                elif event == "os.mkdir":
                    mkdirs.add(os.fsdecode(args[0]))
                elif event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork"):
                    spawned.append(f"{event} {args[0]!r}"[:300])
            except Exception:  # noqa: BLE001 - never disturb the run
                pass

        sys.addaudithook(audit)
        self._write_opens, self._mkdirs, self._spawned = write_opens, mkdirs, spawned

        if self.trace:
            pkg_dir = None
            calls = self.facts["gradmon_calls"]

            def prof(frame, event, arg):
                nonlocal pkg_dir
                if event == "call":
                    fn = frame.f_code.co_filename
                    if pkg_dir is None and PKG in sys.modules:
                        pkg_dir = os.path.dirname(sys.modules[PKG].__file__)
                    if pkg_dir is not None and fn.startswith(pkg_dir):
                        mod = frame.f_globals.get("__name__", "?")
                        key = f"{mod}:{frame.f_code.co_name}"
                        calls[key] = calls.get(key, 0) + 1

            sys.setprofile(prof)

        net = unwrap_model(trainer.model)
        self._keys = _layer_keys(net)
        self._sketch = {}
        if self.reference:
            gen = torch.Generator().manual_seed(12345)
            for name, p in net.named_parameters():
                self._sketch[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64)  # same on every rank
            for name, p in net.named_parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self._local_hook(name))

    def _local_hook(self, name):
        key = self._keys[name]
        r = self._sketch[name]

        def hook(p):  # autograd accumulated this rank's gradient into p.grad; DDP's reducer has not copied it yet
            g = p.grad.detach().double()
            self._local_sq[key] += float(g.norm()) ** 2
            self._local_sk[key] += float((g * r).sum())

        return hook

    def on_train_start(self, trainer):
        from ultralytics.utils.torch_utils import unwrap_model

        net = unwrap_model(trainer.model)
        original = trainer.optimizer_step
        self.facts["step_fn_at_probe_start"] = _fn_module(original) or "ultralytics"
        probe = self

        def optimizer_step(*a, **k):
            step = len(probe.facts["steps"]) + 1
            if probe.rank == probe.kill_rank and step == probe.kill_step:
                probe.facts["killed_at_step"] = step
                probe._dump()
                os.kill(os.getpid(), signal.SIGKILL)
            rec = {"step": step, "epoch": int(trainer.epoch) + 1}
            outer = trainer.__dict__.get("optimizer_step")
            rec["outer_step_fn_module"] = _fn_module(outer) if outer is not None else "ultralytics"
            if probe.scan_hooks:
                rec["monitor_hooks"] = probe._monitor_hooks(trainer)
            if probe.reference:
                g2, sk = defaultdict(float), defaultdict(float)
                for name, p in net.named_parameters():
                    if p.grad is not None:
                        g = p.grad.detach().double()
                        g2[probe._keys[name]] += float(g.norm()) ** 2
                        sk[probe._keys[name]] += float((g * probe._sketch[name]).sum())
                rec["ref"] = {k: math.sqrt(v) for k, v in g2.items()}
                rec["ref_sketch"] = dict(sk)
                rec["local"] = {k: math.sqrt(v) for k, v in probe._local_sq.items()}
                rec["local_sketch"] = dict(probe._local_sk)
                probe._local_sq.clear()
                probe._local_sk.clear()
            probe.facts["steps"].append(rec)
            if probe.kill_rank >= 0:
                probe._dump()  # a rank may be terminated at any step: keep what it saw so far
            return original(*a, **k)

        trainer.optimizer_step = optimizer_step

    def _monitor_hooks(self, trainer) -> dict:
        """The monitor's hooks present on the (wrapped) model right now, by kind."""
        import torch.nn.modules.module as M

        out = defaultdict(int)
        for m in trainer.model.modules():  # the DDP wrapper and everything inside it
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                out[kind] += sum(_is_ours(f) for f in (getattr(m, kind, None) or {}).values())
            for p in m.parameters(recurse=False):
                out["param_hooks"] += sum(_is_ours(f) for f in (getattr(p, "_backward_hooks", None) or {}).values())
                out["param_hooks"] += sum(
                    _is_ours(f) for f in (getattr(p, "_post_accumulate_grad_hooks", None) or {}).values()
                )
        for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks"):
            out["global"] += sum(_is_ours(f) for f in (getattr(M, kind, None) or {}).values())
        return dict(out)

    def on_train_batch_start(self, trainer):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer):
        if self._t0 is not None:
            self.facts["batch_times"].append(time.perf_counter() - self._t0)

    def teardown(self, trainer):
        if not hasattr(self, "facts"):
            return
        sys.setprofile(None)
        self.facts["finished"] = True
        self.facts["step_fn_at_end"] = _fn_module(trainer.__dict__.get("optimizer_step")) or "ultralytics"
        self.facts["monitor_hooks_at_end"] = self._monitor_hooks(trainer)
        mons = [fn.__self__ for fns in trainer.callbacks.values() for fn in fns
                if _fn_module(type(getattr(fn, "__self__", None))).startswith(PKG)]
        self.facts["monitor_objects"] = len({id(m) for m in mons})
        if mons:
            m = mons[0]
            self.facts["monitor_state"] = {
                "records": len(getattr(m, "records", []) or []),
                "out_dir": None if getattr(m, "out_dir", None) is None else str(m.out_dir),
                "summary": getattr(m, "summary", None) is not None,
            }
        self.facts["wandb_imported"] = "wandb" in sys.modules
        self._dump()

    def _dump(self):
        self.facts["write_opens"] = sorted(self._write_opens)
        self.facts["mkdirs"] = sorted(self._mkdirs)
        self.facts["spawned"] = list(self._spawned)
        d = Path(self.facts_dir)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".rank{self.rank}.json.tmp"
        tmp.write_text(json.dumps(self.facts))
        os.replace(tmp, d / f"rank{self.rank}.json")


# ------------------------------------------------------------------------------------------------ launcher
def _prepare_env(out: Path, nproc: int, source: Path) -> None:
    """An isolated Ultralytics settings dir with a copy of ``<source>/coco8`` (the source is never written in).

    ``tests/test_ddp.py`` passes the datasets dir ``tests/conftest.py`` resolved (shared copy, the user's
    ``datasets_dir``, or generated data), so the harness trains on what every other test trains on."""
    datasets = out / "datasets"
    if not (datasets / "coco8").is_dir():
        if not (source / "coco8" / "images").is_dir():
            raise SystemExit(f"ddp_harness: no COCO8 in --datasets {source} (expected {source / 'coco8' / 'images'})")
        shutil.copytree(source / "coco8", datasets / "coco8", ignore=shutil.ignore_patterns("*.cache"))
    cfg = out / "ultralytics-config" / "Ultralytics"
    cfg.mkdir(parents=True, exist_ok=True)
    settings = {
        "settings_version": "0.0.8", "uuid": "gradmon-ddp", "api_key": "", "openai_api_key": "",
        "datasets_dir": str(datasets), "weights_dir": str(out / "weights"), "runs_dir": str(out / "runs"),
        "sync": False, "wandb": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
        "raytune": False, "tensorboard": False, "vscode_msg": False, "openvino_msg": False,
    }
    (cfg / "settings.json").write_text(json.dumps(settings))
    os.environ["YOLO_CONFIG_DIR"] = str(cfg.parent)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["GRADMON_DDP_NPROC"] = str(nproc)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.pop("WANDB_SERVICE", None)  # a W&B service of the calling process: rank 0 starts its own, as a training does
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(out / "wandb-default")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        os.environ[var] = str(out / "wandb-home" / sub)  # nothing of W&B outside --out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--datasets", required=True, type=Path,
                    help="the directory holding coco8/ (tests/test_ddp.py passes the one tests/conftest.py resolved)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="global batch (split over the ranks); nbs=batch")
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--no-monitor", dest="monitor", action="store_false")
    ap.add_argument("--wandb", action="store_true", help="GradientMonitor(wandb=True) (WANDB_MODE offline default)")
    ap.add_argument("--no-probe-reference", dest="reference", action="store_false")
    ap.add_argument("--no-trace", dest="trace", action="store_false")
    ap.add_argument("--bench", action="store_true", help="timing only: no reference, no trace, no hook scan")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-step", type=int, default=-1)
    return ap.parse_args(argv)


def run(a) -> int:
    out = a.out.resolve()
    facts = out / "facts"
    shutil.rmtree(facts, ignore_errors=True)

    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor

    t0 = time.time()
    model = YOLO(a.model)
    probe = Probe(facts, reference=a.reference and not a.bench, trace=a.trace and not a.bench,
                  kill_rank=a.kill_rank, kill_step=a.kill_step, scan_hooks=not a.bench)
    for event, fn in probe.callbacks().items():  # before the monitor: the probe's step wrapper is the inner one
        model.add_callback(event, fn)
    if a.monitor:
        GradientMonitor(wandb=a.wandb).attach(model)  # as a user attaches it
    result = {"argv": sys.argv[1:], "returncode": 0}
    try:
        model.train(
            trainer=CPUDDPTrainer,
            data="coco8.yaml", device="cpu", imgsz=a.imgsz, epochs=a.epochs, batch=a.batch, nbs=a.batch,
            workers=0, amp=False, plots=False, val=False, seed=0, project=str(out / "runs"), name="ddp",
            exist_ok=True,
        )
    except Exception as e:  # noqa: BLE001 - e.g. CalledProcessError when a worker was killed
        result["returncode"] = getattr(e, "returncode", 1)
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = time.time() - t0
    result["save_dir"] = str(out / "runs" / "ddp")
    (out / "launch.json").write_text(json.dumps(result, indent=1))
    return 0 if result["returncode"] == 0 else 3


if __name__ == "__main__":
    args = parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    _prepare_env(args.out, args.nproc, args.datasets.resolve())
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ddp_harness  # this file as a module: the trainer class and probe pickle by reference into the workers

    sys.exit(ddp_harness.run(args))
