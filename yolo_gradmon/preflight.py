"""Checks that a run's model, weights and dataset resolve, made before any trainer exists (so a mistake leaves no
run folder behind) and with Ultralytics' own functions (so a dataset Ultralytics can download is downloaded as usual,
and its message is the reason given when it cannot be had).

:func:`check_inputs` is what ``yolo-gradmon train|demo|ablate`` call; it raises :class:`InputError`, whose message
is one line naming the argument as the user typed it, Ultralytics' reason, and what to pass instead.
"""

from __future__ import annotations

from pathlib import Path

CLS_TASK = "classify"
_FALSE = {"", "false", "0", "none"}


class InputError(ValueError):
    """A model, weights or dataset path that does not resolve (reported as one line, exit status 2)."""


def _reason(e: BaseException) -> str:
    """Ultralytics' message of ``e`` on one line (its own text, emojis included)."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.rstrip(".")
    return text if type(e).__name__ in text else f"{type(e).__name__}: {text}"


def check_model(model: str):
    """Build ``YOLO(model)`` (a YAML is parsed, a ``.pt`` found or downloaded as Ultralytics does); return the model.

    Raises:
        InputError: the model does not resolve; the message keeps Ultralytics' reason.
    """
    from ultralytics import YOLO

    try:
        return YOLO(str(model))
    except Exception as e:  # noqa: BLE001 - any failure to build the model is reported, as one line
        raise InputError(f"model={model}: {_reason(e)}. Pass model=<a model YAML or .pt> "
                         "(e.g. model=yolo26n.yaml, built from scratch, no download)") from None


def check_weights(pretrained) -> None:
    """A ``pretrained=<path>.pt`` exists or downloads (``pretrained=True/False`` need no check)."""
    if isinstance(pretrained, bool) or pretrained is None or str(pretrained).strip().lower() in _FALSE | {"true"}:
        return
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        path = Path(attempt_download_asset(str(pretrained)))
        if not path.is_file():
            raise FileNotFoundError(f"'{pretrained}' does not exist")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"pretrained={pretrained}: {_reason(e)}. Pass pretrained=<a .pt file> or "
                         "pretrained=False") from None


def check_data(data, task: str | None) -> dict:
    """Resolve ``data`` with Ultralytics' own dataset check for ``task`` (``check_cls_dataset`` for classify,
    ``check_det_dataset`` otherwise), downloading it when Ultralytics knows how; return the resolved dataset dict.

    Raises:
        InputError: the dataset does not resolve (missing YAML, missing images, failed download, bad YAML).
    """
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    try:
        return check_cls_dataset(data) if task == CLS_TASK else check_det_dataset(data)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises FileNotFoundError, ConnectionError, SyntaxError...
        example = "data=imagenet10" if task == CLS_TASK else "data=coco8.yaml"
        hint = ("(or run where Ultralytics can download it)" if f"data={data}" == example
                else f"(e.g. {example}, which Ultralytics downloads when online)")
        raise InputError(f"data={data}: {_reason(e)}. Pass data=<a dataset on this machine> {hint}") from None


def check_run_data(model, trainer_args: dict) -> dict:
    """Check the dataset one run of ``model`` (a built ``YOLO``) would train on: ``data``, else the task's default
    dataset, the one ``model.train()`` uses (``coco8.yaml`` for detect); return the resolved dataset dict."""
    from ultralytics.cfg import TASK2DATA

    task = trainer_args.get("task") or getattr(model, "task", None)
    return check_data(trainer_args.get("data") or TASK2DATA.get(task, "coco8.yaml"), task)


def check_inputs(model: str, trainer_args: dict):
    """Check the model, ``pretrained`` weights and dataset of one run, in that order; return the built model.

    ``trainer_args`` are the run's Ultralytics arguments (``data``, ``pretrained``, ``task`` are read).
    """
    built = check_model(model)
    check_weights(trainer_args.get("pretrained"))
    check_run_data(built, trainer_args)
    return built
