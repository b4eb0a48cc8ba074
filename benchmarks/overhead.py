"""Side-by-side overhead benchmark of yolo_gradmon against no monitor and ``wandb.watch``.

One process, one real Ultralytics trainer, one fixed batch, same seed. Each repetition runs every
variant in turn (interleaved A/B), each for ``--steps`` real training steps (forward, loss, backward,
the trainer's ``optimizer_step``), and the median step time per variant is compared with "no monitor".
Besides the ratio of medians (which includes the machine's noise), the monitor's own added time is
timed directly inside its wrapper (time in the wrapper minus the time of the original step) and inside its
flow/health hooks, averaged over whole sampling cycles (the default measures the flow on every 2nd and activation
health on every 10th logged step, so each repetition times 10 of its steps).

    python benchmarks/overhead.py --model yolo26n.yaml --batch 16 --imgsz 640
    python benchmarks/overhead.py --model yolo11n.yaml --batch 1 --imgsz 320 --reps 15
    python benchmarks/overhead.py --scaling          # capture cost vs parameter count (n/s/m) + memory bandwidth
    python benchmarks/overhead.py --batch 1 --imgsz 320 --accumulate 4 --variants layer-local local-nonoise \
        --no-watch                                   # the noise scale on vs off (it needs accumulate >= 2)
    python benchmarks/overhead.py --model yolo26n.yaml --batch 1 --imgsz 320 --data coco8.yaml \
        --variants default --no-watch --wandb-sink-file /tmp/old_wandb.py   # W&B sink: this one vs another copy

The W&B sink's own cost per logged step (``wandb_sink_s``: time inside ``WandbSink.log_step``, the ``run.log`` of
its row included) is timed directly in the variants that stream to W&B (``default``, ``all-signals``). With
``--wandb-sink-file`` a copy of ``yolo_gradmon/show/wandb.py`` from elsewhere (e.g. an older version) runs as the
extra variant ``<variant>@alt`` of each W&B variant, interleaved with the installed one, so both are measured
under the same machine load.

Writes a JSON file (``--out``, default ``benchmarks/results/overhead-<model>-b<batch>-<imgsz>.json``).
Needs COCO8 or COCO128 in the Ultralytics datasets dir (``yolo settings datasets_dir=...``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def build_trainer(model: str, data: str, batch: int, imgsz: int, device: str, project: str):
    from ultralytics.models.yolo.detect import DetectionTrainer

    overrides = dict(model=model, data=data, imgsz=imgsz, batch=batch, device=device, workers=0, plots=False,
                     val=False, epochs=1, project=project, name="bench", exist_ok=True, seed=0, amp=device != "cpu")
    tr = DetectionTrainer(overrides=overrides)
    tr._setup_train()
    tr.epoch = 0
    return tr


def fixed_batch(tr, batch: int):
    """One preprocessed batch of exactly ``batch`` images (repeating the dataset if it is smaller)."""
    imgs, rows = [], []
    n = 0
    for b in tr.train_loader:
        for k in range(b["img"].shape[0]):
            if n == batch:
                break
            imgs.append(b["img"][k : k + 1])
            sel = b["batch_idx"] == k
            rows.append((n, b["cls"][sel], b["bboxes"][sel]))
            n += 1
        if n == batch:
            break
    while n < batch:  # small dataset: repeat images
        i = n % len(imgs)
        imgs.append(imgs[i])
        rows.append((n, rows[i][1], rows[i][2]))
        n += 1
    out = {
        "img": torch.cat(imgs),
        "batch_idx": torch.cat([torch.full((len(c),), float(j)) for j, c, _ in rows]),
        "cls": torch.cat([c for _, c, _ in rows]),
        "bboxes": torch.cat([bb for _, _, bb in rows]),
    }
    return tr.preprocess_batch(out)


def train_step(tr, batch, accumulate: int = 1, before_pass=None):
    """One optimizer step of ``accumulate`` forward/backward passes (``before_pass()`` runs before each: the
    monitor's ``on_train_batch_start``, where the noise scale reads the first micro-batch's gradient)."""
    from ultralytics.utils.torch_utils import autocast

    for _ in range(accumulate):
        if before_pass is not None:
            before_pass()
        with autocast(tr.amp, device=tr.device.type):
            loss, _ = tr.model(batch)
        tr.scaler.scale(loss.sum()).backward()
    tr.optimizer_step()


class Timer:
    """Accumulates the monitor's own time: wrapper time minus the original optimizer step's time."""

    def __init__(self):
        self.added = 0.0

    def wrap(self, tr):
        inner = tr.optimizer_step  # the monitor's wrapper
        original = inner._gradmon_original
        timer = self

        def timed_original(*a, **k):
            t0 = time.perf_counter()
            original(*a, **k)
            timer.added -= time.perf_counter() - t0

        if BREAKDOWN:  # the trainer's own step is a part of its own, left out of the monitor's breakdown
            timed_original = Sections.wrap(TRAINER_STEP, timed_original)

        def outer():
            t0 = time.perf_counter()
            inner()
            timer.added += time.perf_counter() - t0

        # route the monitor's call of the original through the timer
        closure_swap(inner, original, timed_original)
        tr.optimizer_step = outer


class NoiseClock:
    """Time inside the noise scale's own calls (``NoiseProbe.read_small``, ``device_parts``, ``host_fields``): its
    direct cost, robust to the machine's noise (the rest of the monitor is the same with it on or off)."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        from yolo_gradmon.measure.noise import NoiseProbe

        for name in ("read_small", "device_parts", "host_fields", "_count"):
            setattr(NoiseProbe, name, timed_into(cls, getattr(NoiseProbe, name)))


class BatchStartClock:
    """Time inside the monitor's ``on_train_batch_start`` (arming hooks; the noise scale's first-micro-batch read)."""

    seconds = 0.0


def timed_into(clock, fn):
    """``fn`` wrapped to add its wall time to ``clock.seconds``."""

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            clock.seconds += time.perf_counter() - t0

    return wrapper


class HookClock:
    """Time spent inside the flow / activation-health / forward finite-check hooks (passes of logged steps).

    On the CPU a hook's kernels run synchronously, so the wall time inside it is its full cost; on CUDA it
    is only the launch cost (read the step ratio there). Installed by patching the hook factories/methods
    of :class:`~yolo_gradmon.measure.flow.FlowHooks` and :class:`~yolo_gradmon.measure.health.ActivationHealth`.
    """

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        from yolo_gradmon.measure.finite import FiniteWatch
        from yolo_gradmon.measure.flow import FlowHooks
        from yolo_gradmon.measure.health import ActivationHealth

        def timed(fn):
            return timed_into(cls, fn)

        def timed_factory(factory):
            return lambda self, i: timed(factory(self, i))

        for klass, factories, methods in (
            (FlowHooks, ("_forward_hook", "_grad_hook"), ("_start_pass",)),
            (ActivationHealth, ("_enter",), ("_leave", "_act_hook")),
            (FiniteWatch, ("_forward_hook",), ("_start_pass",)),  # the forward non-finite check
        ):
            for name in factories:
                setattr(klass, name, timed_factory(getattr(klass, name)))
            for name in methods:
                setattr(klass, name, timed(getattr(klass, name)))


class WatchClock:
    """Time spent inside ``wandb.watch``'s gradient hooks (``TorchHistory.log_tensor_stats``: the histogram of each
    parameter's gradient and its host copy), the peer's own time measured the same way as the monitor's."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        from wandb.integration.torch.wandb_torch import TorchHistory

        TorchHistory.log_tensor_stats = timed_into(cls, TorchHistory.log_tensor_stats)


class SinkClock:
    """Time spent inside the W&B sink's ``log_step`` (building its row and ``run.log``), per logged step."""

    seconds = 0.0

    @classmethod
    def install(cls, *classes) -> None:
        for klass in classes:
            klass.log_step = timed_into(cls, klass.log_step)


class Sections:
    """``--breakdown``: exclusive wall time per named part of the monitor and the thread it ran on.

    Every patched function adds its own time minus the time of the patched functions it called, so the parts add up
    without double counting. ``train`` is the training thread (wall time); ``worker`` anything else, the monitor's host
    thread (its CPU time, ``time.thread_time``: the wall time there also counts waiting for the GIL while the training
    thread runs Python).
    On CUDA the device parts synchronize before and after themselves, so their time is the kernels' time and ``sync``
    is the transfer alone (this serializes what normally overlaps: read the step ratio of a run without
    ``--breakdown`` for the real cost there).
    """

    totals: dict = {}
    _local = None
    cuda = False

    @classmethod
    def snapshot(cls) -> dict:
        return dict(cls.totals)

    @classmethod
    def wrap(cls, name: str, fn, device: bool = False):
        import threading

        if cls._local is None:
            cls._local = threading.local()
        local = cls._local

        def wrapper(*a, **k):
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            if device and cls.cuda:
                torch.cuda.synchronize()
            main = threading.current_thread() is threading.main_thread()
            clock = time.perf_counter if main else time.thread_time  # the worker: its CPU time, not its GIL waits
            stack.append(0.0)
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                if device and cls.cuda:
                    torch.cuda.synchronize()
                el = clock() - t0
                child = stack.pop()
                role = "train" if main else "worker"
                cls.totals[(role, name)] = cls.totals.get((role, name), 0.0) + el - child
                if stack:
                    stack[-1] += el

        wrapper.__wrapped__ = fn
        return wrapper

    @classmethod
    def patch(cls, owner, attr: str, name: str, device: bool = False, factory: bool = False) -> None:
        fn = getattr(owner, attr)
        if factory:  # a method returning the hook: time the hook
            setattr(owner, attr, lambda self, *a, _f=fn: cls.wrap(name, _f(self, *a), device))
        else:
            setattr(owner, attr, cls.wrap(name, fn, device))

    @classmethod
    def install(cls, cuda: bool) -> None:
        """Patch the monitor's parts (the names in the table of docs/performance.md)."""
        from yolo_gradmon import monitor
        from yolo_gradmon.judge.rules import RuleEngine, StepView
        from yolo_gradmon.measure import params
        from yolo_gradmon.measure.finite import FiniteWatch
        from yolo_gradmon.measure.flow import FlowHooks
        from yolo_gradmon.measure.health import ActivationHealth
        from yolo_gradmon.measure.noise import NoiseProbe
        from yolo_gradmon.show.console import ConsoleSink
        from yolo_gradmon.show.local import LocalSink
        from yolo_gradmon.show.wandb import WandbSink

        cls.cuda = cuda
        P = params.GradientCapture
        cls.patch(monitor.GradientMonitor, "on_train_batch_start", "hooks: arming (batch start)")
        cls.patch(monitor.GradientMonitor, "_on_optimizer_step", "glue: step wrapper")
        cls.patch(P, "_read", "device: gradient/weight norms, max|grad|", device=True)
        cls.patch(P, "_snapshot_weights", "device: weight copy (update ratio)", device=True)
        cls.patch(P, "_measure_update", "device: update difference (update ratio)", device=True)
        cls.patch(params, "_sync", "sync: one device-to-host copy")
        cls.patch(P, "decode", "host: decode the synced values")
        for klass in (FlowHooks, ActivationHealth, FiniteWatch, NoiseProbe):
            cls.patch(klass, "device_parts", "device: depth/noise parts", device=True)
            cls.patch(klass, "host_fields", "host: depth/noise fields")
        for klass, factories, methods, name in (
            (FlowHooks, ("_forward_hook", "_grad_hook"), ("_start_pass",), "hooks: gradient flow"),
            (ActivationHealth, ("_enter",), ("_leave", "_act_hook"), "hooks: activation health"),
            (FiniteWatch, ("_forward_hook",), ("_start_pass",), "hooks: forward finite check"),
        ):
            for attr in factories:
                cls.patch(klass, attr, name, factory=True)
            for attr in methods:
                cls.patch(klass, attr, name)
        cls.patch(NoiseProbe, "read_small", "hooks: noise scale first micro-batch", device=True)
        for target in _emit_targets(monitor):
            cls.patch(*target)
        cls.patch(RuleEngine, "update", "host: rules")
        StepView.from_record = classmethod(cls.wrap("host: rules", StepView.from_record.__func__))
        cls.patch(LocalSink, "log_step", "host: log write (local sink)")
        cls.patch(WandbSink, "log_step", "host: W&B sink")
        cls.patch(WandbSink, "on_flag", "host: W&B sink")
        cls.patch(ConsoleSink, "on_flag", "host: console sink")


def rep_summary(rep_parts: dict, n: int, watch_s: float) -> dict:
    """One repetition's ms per optimizer step: the training thread, the worker, the forward check's hooks, and the
    parameter statistics alone (both threads, no depth-signal hook: what ``wandb.watch`` is compared with)."""
    ms = lambda pred: sum(sec for key, sec in rep_parts.items() if pred(key)) / max(n, 1) * 1e3  # noqa: E731
    out = {"train_ms": ms(lambda k: k[0] == "train"), "worker_ms": ms(lambda k: k[0] == "worker"),
           "forward_check_ms": ms(lambda k: k[1] == "hooks: forward finite check")}
    out["parameter_statistics_ms"] = ms(lambda k: not k[1].startswith("hooks:"))
    if watch_s:
        out["watch_hooks_ms"] = watch_s / max(n, 1) * 1e3
    return out


def _emit_targets(monitor) -> list[tuple]:
    """The glue that turns synced values into records and hands them on (a monitor without the host thread, as
    before 6b2c3a8, has no ``HostWorker``: then there is no hand-off to time)."""
    out = [(monitor, "step_record", "host: record building"), (monitor.GradientMonitor, "_emit", "glue: emit")]
    worker = getattr(monitor, "HostWorker", None)
    if worker is not None:
        out.append((worker, "put", "glue: hand-off to worker"))
    return out


def load_alt_sink(path: str):
    """A copy of ``yolo_gradmon/show/wandb.py`` loaded beside the installed one (same package, other name)."""
    import importlib.util
    import sys

    name = "yolo_gradmon.show._wandb_alt"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ALT_SINK = None  # the module loaded by --wandb-sink-file
BREAKDOWN = False  # --breakdown: time the monitor's parts (Sections)
TRAINER_STEP = "trainer: optimizer step"


def closure_swap(fn, old, new):
    for cell in fn.__closure__ or ():
        if cell.cell_contents is old:
            cell.cell_contents = new


# the monitor variants: options on top of the defaults (configs/default.yaml)
VARIANTS = {
    "default": {},  # layer granularity, flow every 2nd pass, health and update ratio every 10th step, local + W&B sinks
    "all-signals": {"flow_every": 1, "health_every": 1, "update_every": 1},  # every signal on every step, local + W&B
    "layer-grads": {"flow": False, "activation_health": False, "wandb": False},  # parameter statistics only
    "layer-grads-update1": {"flow": False, "activation_health": False, "wandb": False, "update_every": 1},
    "layer-grads-noupdate": {"flow": False, "activation_health": False, "wandb": False, "update_ratio": False},
    "default-log2": {"log_every": 2},  # the default, capturing every 2nd optimizer step
    "layer-local": {"wandb": False},  # the default without the W&B sink
    "local-nonoise": {"wandb": False, "noise_scale": False},  # ... and without the noise scale (run with --accumulate)
    "layer-flow": {"activation_health": False, "wandb": False, "flow_every": 1},
    "layer-health": {"flow": False, "wandb": False, "health_every": 1},
    "module": {"granularity": "module", "flow": False, "activation_health": False, "wandb": False},
    "param": {"granularity": "param", "flow": False, "activation_health": False, "wandb": False},
}


@contextlib.contextmanager
def variant(name: str, tr, workdir: Path):
    """Set up one variant on the trainer; yields a Timer (or None) and tears it down."""
    from yolo_gradmon import GradientMonitor

    if name == "plain":
        yield None
        return
    if name == "wandb.watch":
        import wandb

        if wandb.run is None:
            wandb.init(project="gradmon-bench", dir=str(workdir), mode="offline")
        wandb.watch(tr.model, log="gradients", log_freq=1)
        try:
            yield None
        finally:
            wandb.unwatch(tr.model)
        return
    base_name, alt = (name[:-4], True) if name.endswith("@alt") else (name, False)
    mon = GradientMonitor(console=False, **VARIANTS[base_name])
    tr.save_dir = workdir / name
    if alt:  # the sink is made in on_train_start: hand it the other copy's factory meanwhile
        import yolo_gradmon.show.wandb as installed

        own = installed.make_wandb_sink
        installed.make_wandb_sink = ALT_SINK.make_wandb_sink
        try:
            mon.on_train_start(tr)
        finally:
            installed.make_wandb_sink = own
    else:
        mon.on_train_start(tr)
    mon.on_train_epoch_start(tr)
    timer = Timer()
    timer.wrap(tr)
    timer.monitor = mon
    try:
        yield timer
    finally:
        mon.on_train_end(tr)
        tr.__dict__.pop("optimizer_step", None)


def timed_steps(name: str, steps: int) -> int:
    """Timed steps per repetition: whole sampling cycles where a signal runs on every N-th logged step only
    (the default's activation health), so the mean over them is the amortized cost."""
    from yolo_gradmon.config import GradmonConfig

    name = name[:-4] if name.endswith("@alt") else name
    if name not in VARIANTS:
        return steps
    cfg = GradmonConfig(**VARIANTS[name])
    cycle = math.lcm(cfg.flow_every if cfg.flow else 1, cfg.health_every if cfg.activation_health else 1,
                     cfg.update_every if cfg.update_ratio else 1)
    cycle *= cfg.log_every
    return cycle * -(-steps // cycle)


def measure(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    HookClock.install()
    WatchClock.install()
    NoiseClock.install()
    global ALT_SINK, BREAKDOWN
    if args.breakdown:
        BREAKDOWN = True
        Sections.install(cuda=str(args.device) not in ("cpu", "mps"))
    from yolo_gradmon.show.wandb import WandbSink

    sink_classes = [WandbSink]
    if args.wandb_sink_file:
        ALT_SINK = load_alt_sink(args.wandb_sink_file)
        sink_classes.append(ALT_SINK.WandbSink)
    SinkClock.install(*sink_classes)
    work = Path(tempfile.mkdtemp(prefix="gradmon-bench-"))
    tr = build_trainer(args.model, args.data, args.batch, args.imgsz, args.device, str(work))
    batch = fixed_batch(tr, args.batch)
    variants = ["plain", *(args.variants or VARIANTS)]
    if ALT_SINK is not None:
        variants += [f"{v}@alt" for v in variants if v in VARIANTS and VARIANTS[v].get("wandb", True)]
    if not args.no_watch:
        variants.append("wandb.watch")
    times = {v: [] for v in variants}
    added = {v: [] for v in variants}
    sink_s = {v: [] for v in variants}
    noise_s = {v: [] for v in variants}
    rep_medians = {v: [] for v in variants}
    parts = {v: {} for v in variants}  # --breakdown: (thread, part) -> seconds over the timed steps
    per_rep = {v: [] for v in variants}  # --breakdown: per repetition, ms per step by thread (for medians and spreads)
    acc = args.accumulate
    for _ in range(2):  # warm-up
        train_step(tr, batch, acc)
    for rep in range(args.reps):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for v in order:
            rep_parts, rep_watch, rep_n = {}, 0.0, timed_steps(v, args.steps)
            with variant(v, tr, work) as timer:
                start = None
                if timer:  # the monitor's batch-start callback, timed into its own time (the noise scale's read)
                    start = timed_into(BatchStartClock, lambda mon=timer.monitor: mon.on_train_batch_start(tr))
                train_step(tr, batch, acc, start)  # untimed first step of the variant (logged step 1: a sampled one)
                for _ in range(timed_steps(v, args.steps)):
                    if tr.device.type == "cuda":
                        torch.cuda.synchronize()
                    a0 = (timer.added if timer else 0.0) + HookClock.seconds + BatchStartClock.seconds
                    s0 = SinkClock.seconds
                    w0 = WatchClock.seconds
                    n0 = NoiseClock.seconds
                    b0 = Sections.snapshot()
                    t0 = time.perf_counter()
                    train_step(tr, batch, acc, start)  # start() arms the flow/health hooks for each pass
                    if tr.device.type == "cuda":
                        torch.cuda.synchronize()
                    times[v].append(time.perf_counter() - t0)
                    if BREAKDOWN and timer:
                        drain = getattr(timer.monitor, "drain_host_work", None)  # the worker's part of this step
                        if drain is not None:
                            drain()
                        for key, sec in Sections.snapshot().items():
                            if key[1] != TRAINER_STEP and sec - b0.get(key, 0.0) > 0:
                                parts[v][key] = parts[v].get(key, 0.0) + sec - b0.get(key, 0.0)
                                rep_parts[key] = rep_parts.get(key, 0.0) + sec - b0.get(key, 0.0)
                    if timer:
                        added[v].append(timer.added + HookClock.seconds + BatchStartClock.seconds - a0)
                        sink_s[v].append(SinkClock.seconds - s0)
                        noise_s[v].append(NoiseClock.seconds - n0)
                    if v == "wandb.watch":
                        added[v].append(WatchClock.seconds - w0)
                        rep_watch += WatchClock.seconds - w0
            if BREAKDOWN:
                per_rep[v].append(rep_summary(rep_parts, rep_n, rep_watch))
        for v in variants:
            rep_medians[v].append(statistics.median(times[v][-timed_steps(v, args.steps):]))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{v}={statistics.median(times[v]) * 1e3:.1f}ms" for v in variants), flush=True)
    base = statistics.median(times["plain"])
    watch_added = statistics.median(times["wandb.watch"]) - base if "wandb.watch" in times else None
    watch_own = statistics.mean(added["wandb.watch"]) if added.get("wandb.watch") else None
    result = {
        "model": args.model, "batch": args.batch, "imgsz": args.imgsz, "device": args.device,
        "threads": args.threads, "reps": args.reps, "steps_per_rep": args.steps, "accumulate": acc,
        "params": sum(p.numel() for p in tr.model.parameters()),
        "variants": {},
    }
    base_mean = statistics.mean(times["plain"])
    for v in variants:
        med = statistics.median(times[v])
        row = {"median_step_s": med, "ratio_to_plain": med / base, "mean_step_s": statistics.mean(times[v]),
               "mean_ratio_to_plain": statistics.mean(times[v]) / base_mean, "timed_steps": len(times[v]),
               "rep_median_step_s": [min(rep_medians[v]), max(rep_medians[v])]}  # spread: range of per-rep medians
        if any(noise_s[v]):  # the noise scale's own time per optimizer step (NoiseClock)
            ns = sorted(noise_s[v])
            row.update(noise_s=statistics.mean(ns), noise_median_s=statistics.median(ns),
                       noise_p10_p90_s=[ns[len(ns) // 10], ns[(9 * len(ns)) // 10]], noise_fraction=statistics.mean(ns) / base)
        if v == "wandb.watch" and added[v]:
            row["watch_own_s"] = watch_own  # inside its gradient hooks; a lower bound of what it adds (see ratio)
            row["watch_own_fraction"] = watch_own / base
        elif added[v]:
            # the mean over whole sampling cycles: the amortized cost (equal to the median without sampling)
            a = statistics.mean(added[v])
            row["monitor_added_s"] = a
            row["monitor_added_median_s"] = statistics.median(added[v])
            row["monitor_added_max_s"] = max(added[v])
            row["monitor_added_fraction"] = a / base
            if watch_added:
                row["watch_added_over_monitor_added"] = watch_added / a if a > 0 else None
            if watch_own:
                # both timed directly (robust to machine noise): watch's gradient hooks vs the monitor's own time
                row["watch_own_over_monitor_added"] = watch_own / a if a > 0 else None
            if any(sink_s[v]):  # a variant streaming to W&B: the sink's own time per logged step
                row["wandb_sink_s"] = statistics.mean(sink_s[v])
                row["wandb_sink_median_s"] = statistics.median(sink_s[v])
                row["wandb_sink_fraction"] = row["wandb_sink_s"] / base
        if per_rep[v]:  # per repetition: median and range of each thread's total (and of watch's hooks)
            for key in per_rep[v][0]:
                vals = [r[key] for r in per_rep[v]]
                row[f"rep_{key}"] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}
        if parts[v]:  # per optimizer step, in ms, by thread
            n = len(times[v])
            row["breakdown_ms"] = {f"{role}/{part}": sec / n * 1e3 for (role, part), sec in sorted(parts[v].items())}
            row["breakdown_train_thread_ms"] = sum(sec for (role, _), sec in parts[v].items() if role == "train") / n * 1e3
            row["breakdown_worker_ms"] = sum(sec for (role, _), sec in parts[v].items() if role == "worker") / n * 1e3
        result["variants"][v] = row
    grads, watch = result["variants"].get("layer-grads", {}), result["variants"].get("wandb.watch", {})
    if "rep_parameter_statistics_ms" in grads and "rep_watch_hooks_ms" in watch:  # the same repetitions, side by side
        ratios = [w / p for w, p in zip(watch["rep_watch_hooks_ms"]["values"], grads["rep_parameter_statistics_ms"]["values"])]
        result["watch_over_parameter_statistics"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios), "values": ratios}
    result["weight_copy_bytes"] = sum(p.numel() * p.element_size() for p in tr.model.parameters() if p.requires_grad)
    if tr.device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        import psutil

        result["process_rss_bytes"] = psutil.Process().memory_info().rss
    return result


def scaling(args) -> dict:
    """Capture cost alone vs model size, against the machine's copy bandwidth measured in-process."""
    from ultralytics import YOLO

    from yolo_gradmon.measure.params import GradientCapture
    from yolo_gradmon.structure.layout import build_layout

    torch.set_num_threads(args.threads)
    src = torch.randn(64 * 2**20 // 4 * 4)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    bw = 5 * 2 * src.numel() * 4 / (time.perf_counter() - t0)
    del src, dst
    out = {"copy_bandwidth_GBps": bw / 1e9, "models": []}
    base = args.model.replace("n.yaml", "").replace("s.yaml", "").replace("m.yaml", "")
    for scale in ("n", "s", "m"):
        net = YOLO(f"{base}{scale}.yaml").model.to(args.device)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        for gran in ("layer", "param"):
            layout = build_layout(net, gran)
            cap = GradientCapture(layout, update_ratio=True)
            ts = []
            for i in range(args.reps + 1):
                t0 = time.perf_counter()
                cap.step(lambda: None, step=i + 1, epoch=1, logged=True, lr=[0.0])
                ts.append(time.perf_counter() - t0)
            med = statistics.median(ts[1:])
            nparam = sum(p.numel() for p in net.parameters())
            # bytes touched per logged step: grads read twice (L2, max), weights read twice (norm, copy),
            # copy written once, copy+weights read for the delta, delta norm read once
            nbytes = nparam * 4 * 8
            out["models"].append({
                "model": f"{base}{scale}", "granularity": gran, "params": nparam, "tensors": len(layout.params),
                "modules": layout.n_groups, "capture_ms": med * 1e3, "bytes_touched": nbytes,
                "achieved_GBps": nbytes / med / 1e9,
            })
            print(out["models"][-1], flush=True)
    return out


def print_breakdown(res: dict) -> None:
    """The parts per optimizer step, one column per monitor variant."""
    rows = [(v, r) for v, r in res["variants"].items() if r.get("breakdown_ms")]
    if not rows:
        return
    keys = sorted({k for _, r in rows for k in r["breakdown_ms"]}, key=lambda k: (k.split("/")[0] != "train", k))
    print(f"\n{'part (ms per optimizer step)':<58}" + "".join(f"{v:>14}" for v, _ in rows))
    for k in keys:
        print(f"{k:<58}" + "".join(f"{r['breakdown_ms'].get(k, 0.0):>14.3f}" for _, r in rows))
    print(f"{'training thread, total':<58}" + "".join(f"{r['breakdown_train_thread_ms']:>14.3f}" for _, r in rows))
    print(f"{'worker thread, total':<58}" + "".join(f"{r['breakdown_worker_ms']:>14.3f}" for _, r in rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolo26n.yaml")
    ap.add_argument("--data", default="coco128.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-watch", action="store_true", help="skip the wandb.watch peer")
    ap.add_argument("--accumulate", type=int, default=1,
                    help="forward/backward passes per optimizer step (the noise scale needs >= 2; Ultralytics: nbs/batch)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="monitor variants to run (default: all)")
    ap.add_argument("--wandb-sink-file", default=None, metavar="PATH",
                    help="also run each W&B variant with this copy of yolo_gradmon/show/wandb.py (variant <name>@alt), "
                    "interleaved, to compare the W&B sink's cost per logged step (wandb_sink_s) side by side")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time each part of the monitor (device work, the sync, host work by part, each sink) and "
                    "the thread it runs on; the patched timers add a few microseconds per call")
    ap.add_argument("--scaling", action="store_true", help="capture cost vs n/s/m scale and memory bandwidth")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = scaling(args) if args.scaling else measure(args)
    name = "scaling" if args.scaling else (f"overhead-{Path(args.model).stem}-b{args.batch}-{args.imgsz}"
                                           + (f"-acc{args.accumulate}" if args.accumulate > 1 else ""))
    out = Path(args.out or Path(__file__).parent / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if not args.scaling:
        print(f"\n{'variant':<14} {'median step':>12} {'ratio':>7} {'mean ratio':>10} {'monitor added (mean)':>22}")
        for v, r in res["variants"].items():
            add = f"{r['monitor_added_s'] * 1e3:.2f} ms ({r['monitor_added_fraction'] * 100:.2f}%)" if "monitor_added_s" in r else ""
            if "watch_own_s" in r:
                add = f"hooks {r['watch_own_s'] * 1e3:.2f} ms ({r['watch_own_fraction'] * 100:.2f}%)"
            if "noise_s" in r:
                add += f"  noise scale {r['noise_s'] * 1e3:.2f} ms ({r['noise_fraction'] * 100:.3f}%)"
            if "wandb_sink_s" in r:
                add += f"  W&B sink {r['wandb_sink_s'] * 1e3:.2f} ms/step (median {r['wandb_sink_median_s'] * 1e3:.2f})"
            print(f"{v:<14} {r['median_step_s'] * 1e3:>10.1f}ms {r['ratio_to_plain']:>7.3f} "
                  f"{r['mean_ratio_to_plain']:>10.3f} {add:>22}")
    if not args.scaling and args.breakdown:
        print_breakdown(res)
    if not args.scaling:
        print("monitor added = time inside the optimizer_step wrapper plus time inside the flow/health hooks "
              "(forward/backward); on CUDA the hooks' kernels are asynchronous: read the ratio there")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
