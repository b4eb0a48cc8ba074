"""The one way the package reaches W&B: importing ``wandb`` (or saying why not) and opening a run with Ultralytics'
naming convention. The monitor's W&B sink and the ablation runner both open their runs through :func:`open_run`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from ..config import PREFIX

HOW_TO_ENABLE = ("run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline and upload later with "
                 "`wandb sync <save_dir>/wandb/offline-run-*`")


def wandb_disabled() -> bool:
    """``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``): the user turned W&B off on purpose."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return mode == "disabled" or os.environ.get("WANDB_DISABLED", "").strip().lower() in {"true", "1", "yes"}


def import_wandb() -> Any | None:
    """The ``wandb`` module, or None with one line saying why (disabled on purpose: info; not importable: a warning
    naming the fix)."""
    if wandb_disabled():
        LOGGER.info(f"{PREFIX}W&B disabled (WANDB_MODE=disabled); logging gradients locally only.")
        return None
    try:
        import wandb
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything at import
        LOGGER.warning(f"{PREFIX}W&B logging is on (wandb=True) but wandb cannot be imported ({type(e).__name__}: "
                       f"{e}); logging gradients locally only. `pip install wandb`, or pass wandb=False to silence this.")
        return None
    if not hasattr(wandb, "__version__"):  # a directory named "wandb" shadowing the package
        LOGGER.warning(f"{PREFIX}W&B logging is on (wandb=True) but `import wandb` found "
                       f"{getattr(wandb, '__path__', wandb)!r}, not the wandb package; logging gradients locally only.")
        return None
    return wandb


def project_name(project: str | Path | None) -> str:
    """The W&B project of a training whose Ultralytics ``project`` is ``project``, named as Ultralytics' own W&B
    callback names it (``Ultralytics`` when unset; ``/ \\ # ? % :`` replaced, at most 128 characters)."""
    return re.sub(r"[/\\#?%:]", "-", str(project or "Ultralytics"))[-128:]


def resumed_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run in ``save_dir/wandb`` (what a ``resume=True`` training continues), as Ultralytics
    finds it."""
    runs = (Path(save_dir) / "wandb").glob("*run-*/run-*.wandb")
    last = max(runs, key=lambda f: f.stat().st_mtime, default=None)
    return last.stem[4:] if last is not None else None


def open_run(wb: Any, *, project: str | Path | None, name: str | None, config: dict, job_type: str = "train",
             group: str | None = None, save_dir: str | Path | None = None, resume_id: str | None = None):
    """Start a W&B run (``wandb.init``) for one training: the project as Ultralytics names it (:func:`project_name`;
    ``None`` leaves it to W&B, as a sweep agent's run needs), the run named ``name``, ``config`` as its config, in
    ``group`` when given (an ablation grid), its files under ``save_dir``; a ``resume_id`` continues that run.

    A run this process left active is finished first: one run per training, never two interleaved."""
    if getattr(wb, "run", None) is not None:
        wb.run.finish()
    kwargs: dict[str, Any] = dict(config=config, job_type=job_type)
    if project is not None:
        kwargs["project"] = project_name(project)
    if name:
        kwargs["name"] = str(name)
    if group:
        kwargs["group"] = str(group)
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(save_dir)
    if resume_id:
        kwargs.update(id=resume_id, resume="allow")
    return wb.init(**kwargs)


ULTRALYTICS_WB_MODULE = "ultralytics.utils.callbacks.wb"  # Ultralytics' own W&B integration callbacks
ULTRALYTICS_EPOCH_PREFIXES = ("train", "lr", "metrics", "val")  # its per-epoch keys, on its ``epoch`` axis


def ultralytics_wandb_on(callbacks: dict | None) -> bool:
    """Whether Ultralytics' own W&B callback is registered on the trainer (``yolo settings wandb=True``)."""
    return any(getattr(fn, "__module__", None) == ULTRALYTICS_WB_MODULE
               for fns in (callbacks or {}).values() for fn in fns)


def ultralytics_epoch_callbacks(wb: Any) -> dict:
    """Ultralytics' own callbacks that log an epoch's losses and learning rates (``on_train_epoch_end``) and its
    metrics (``on_fit_epoch_end``) on the ``epoch`` axis, for a run where its W&B integration is off (the
    Ultralytics default): the same code, so the same keys, as with ``yolo settings wandb=True``.

    Its module sets its ``wandb`` handle at import time and leaves it unset under pytest (``TESTS_RUNNING``); it is
    set here to the module the sink uses, so the callbacks work there too."""
    from ultralytics.utils.callbacks import wb as ul_wb

    ul_wb.wb = wb  # the same module outside pytest
    if not hasattr(ul_wb, "_processed_plots"):
        ul_wb._processed_plots = {}
    return {"on_train_epoch_end": ul_wb.on_train_epoch_end, "on_fit_epoch_end": ul_wb.on_fit_epoch_end}
