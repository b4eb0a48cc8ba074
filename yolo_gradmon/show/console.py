"""Console output, as a sink: one line at start, a warning per new flag, one compact table at train end (the
``console`` option). Nothing per step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ultralytics.utils import LOGGER

from ..config import PREFIX
from ..judge.rules import Flag
from ..record.dataset import describe_data
from ..record.outputs import TrainEnd
from .html import REPORT_NAME
from .sink import RunInfo, Sink


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_table(summary: dict) -> list[str]:
    """Rows: module, logged steps, median grad norm, median grad/weight, flags."""
    flags_of: dict[str, list[str]] = {}
    for f in summary.get("flags", []):
        flags_of.setdefault(f["module"], []).append(f["kind"])
    stats = {s["module"]: s for s in summary.get("module_stats", [])}
    flow = {s["layer"]: s.get("median_flow_attenuation") for s in summary.get("layer_stats") or []}
    width = max([len(m) for m in summary["modules"]] + [6])
    fcol = f" {'flow/head':>10}" if flow else ""
    head = f"{'module':<{width}} {'steps':>6} {'grad norm':>10} {'grad/w':>10}{fcol}  flags"
    lines = [head]
    for m, trainable in zip(summary["modules"], summary.get("trainable") or [True] * len(summary["modules"])):
        s = stats.get(m)
        if s is None:
            note = "frozen, not judged" if not trainable else "no gradient"
            lines.append(f"{m:<{width}} {0:>6} {'-':>10} {'-':>10}{' ' * len(fcol)}  ({note})")
            continue
        fl = ",".join(sorted(set(flags_of.get(m, [])))) or "-"
        fv = f" {_g(flow.get(m)):>10}" if flow else ""
        lines.append(
            f"{m:<{width}} {s['steps']:>6} {_g(s['median_grad_norm']):>10} {_g(s['median_grad_to_weight']):>10}{fv}  {fl}"
        )
    return lines


def print_start(n_modules: int, n_trainable: int, granularity: str, log_every: int, where: str) -> None:
    every = "every optimizer step" if log_every == 1 else f"every {log_every} optimizer steps"
    LOGGER.info(
        f"{PREFIX}watching gradients of {n_modules} {granularity}s with parameters ({n_trainable} trainable) {every}, "
        f"before clipping; writing {where}"
    )


def print_end(summary: dict, where: str, report: Path | None = None) -> None:
    n = summary["steps_logged"]
    verdict = (
        summary.get("verdict", "too few steps to judge") if summary.get("too_few_steps")
        else f"{len(summary['flagged_modules'])} module(s) flagged"
    )
    lead = summary.get("lead") or []
    LOGGER.info(f"\n{PREFIX}{n} optimizer step(s) logged on {describe_data(summary.get('data'))}"
                + ("." if lead else f", {verdict}."))
    for line in lead:  # the non-finite event first (yolo_gradmon.judge.verdict.lead_lines)
        LOGGER.info(f"{PREFIX}{line}")
    LOGGER.info(f"{PREFIX}medians over logged steps:")
    for line in format_table(summary):
        LOGGER.info(f"  {line}")
    LOGGER.info(f"{PREFIX}results in {where}")
    if report is not None:
        LOGGER.info(f"{PREFIX}report: {report}")


def warn_flag(flag: Flag) -> None:
    LOGGER.warning(f"{PREFIX}{flag.describe()}")


class ConsoleSink(Sink):
    """The console: the start line and flag warnings always; the end table when ``table`` (the ``console`` option).

    Args:
        table: print the per-module table at train end.
        local_ok: whether the local files are being written (else the end line says the results are in memory only).
    """

    name = "console"

    def __init__(self, table: bool = True, local_ok: Callable[[], bool] = lambda: True):
        self.table = table
        self.local_ok = local_ok
        self.out_dir = None

    def start(self, run: RunInfo) -> None:
        self.out_dir = run.out_dir
        h = run.header
        print_start(len(h["modules"]), sum(h["trainable"]), h["granularity"], run.cfg.log_every, str(run.out_dir))

    def on_flag(self, flag: Flag) -> None:
        warn_flag(flag)

    def finish(self, end: TrainEnd) -> None:
        if self.table:
            ok = self.local_ok()
            where = str(self.out_dir) if ok else f"memory only (the local log in {self.out_dir} failed, see above)"
            report = end.out_dir / REPORT_NAME
            print_end(end.summary, where, report if ok and report.is_file() else None)
