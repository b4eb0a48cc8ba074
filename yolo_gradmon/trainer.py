"""What the monitor knows of Ultralytics' trainer, in one place: the facts it reads from a running trainer (step
arithmetic, warm-up length, model name, ``compile``, the dataset) and the check of trainer arguments that the CLI and the
ablation grid share.

The rest of the package never reads a trainer attribute: the monitor hands these facts down as plain values (the log
header's ``train`` section, the schedule's warm-up length).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from ultralytics.utils.torch_utils import unwrap_model

from .config import did_you_mean


class TrainerArgError(ValueError):
    """A ``key=value`` that Ultralytics' trainer would reject; the message is one line, with a suggestion."""


# ---------------------------------------------------------------------------------------------- reading a trainer
def train_facts(trainer) -> dict:
    """What sets the number of optimizer steps of a run (read at train start): ``batch`` (the trainer's batch size),
    ``nbs``, ``batches_per_epoch``, ``epochs``, ``accumulate`` (the trainer's, else ``max(round(nbs / batch), 1)``;
    Ultralytics ramps it up from 1 during warm-up) and ``freeze`` (the ``freeze=`` layers). Missing values are left
    out."""
    args = getattr(trainer, "args", None)
    facts = {"batch": getattr(trainer, "batch_size", None) or getattr(args, "batch", None),
             "nbs": getattr(args, "nbs", None), "epochs": getattr(trainer, "epochs", None)}
    try:
        facts["batches_per_epoch"] = len(trainer.train_loader)
    except Exception:  # noqa: BLE001 - no loader yet: the verdict simply says less
        pass
    out = {k: int(v) for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
    acc = getattr(trainer, "accumulate", None)  # the trainer's own (capped at the run's batch count)
    if isinstance(acc, int) and acc > 0:
        out["accumulate"] = acc
    elif "batch" in out and "nbs" in out:
        out["accumulate"] = max(round(out["nbs"] / out["batch"]), 1)
    freeze = getattr(args, "freeze", None)  # names the frozen layers in the verdict
    if isinstance(freeze, int) and not isinstance(freeze, bool) and freeze > 0:
        out["freeze"] = freeze
    elif isinstance(freeze, (list, tuple)) and freeze:
        out["freeze"] = [int(f) for f in freeze if isinstance(f, int)]
    return out


def warmup_iterations(trainer, nb: int) -> int:
    """Ultralytics' warm-up length in batches (``nb``: batches per epoch)."""
    fn = getattr(trainer, "_get_warmup_iterations", None)
    if callable(fn):
        try:
            return int(fn(nb))
        except Exception:  # noqa: BLE001
            pass
    w = float(getattr(trainer.args, "warmup_epochs", 0) or 0)
    return max(round(w * nb), 100) if w > 0 else 0


def model_name(trainer) -> str:
    """The ``model=`` the run was started with (a YAML or weights path), else the model's class name."""
    m = getattr(trainer.args, "model", None)
    return str(m) if m is not None else type(unwrap_model(trainer.model)).__name__


def compiled(trainer) -> bool:
    """Whether the trainer runs a ``torch.compile``'d model (``compile=True``): tensor hooks registered inside a
    compiled forward would break the graph, so the flow and activation-health signals stay off there."""
    args = getattr(trainer, "args", None)
    mode = getattr(args, "compile", False)
    return bool(mode) and str(mode).lower() not in {"false", "0", "none"}


# ---------------------------------------------------------------------------------------------- the dataset
GENERATED_MARKER = "gradmon-generated.json"
"""Written in the root of a dataset generated offline (:func:`yolo_gradmon.demo.synthetic_dataset`), so a run on it
records ``generated: true``."""


DATA_ARG = "_gradmon_data_arg"


def remember_data_arg(trainer) -> None:
    """Keep the ``data`` argument as the user gave it (``on_pretrain_routine_start``: Ultralytics replaces
    ``trainer.args.data`` by the resolved YAML path when it checks the dataset)."""
    given = getattr(getattr(trainer, "args", None), "data", None)
    if given is not None:
        setattr(trainer, DATA_ARG, str(given))


def dataset_facts(trainer) -> dict:
    """Which dataset trains the run, for the log header's ``data``: ``yaml`` (the ``data`` argument as given),
    ``yaml_file`` (the YAML it resolved to), ``root`` (the dataset's resolved root directory), ``train_images``
    (images in the training split) and ``generated`` (true when the data was generated offline, not real images).
    Never raises: a fact that cannot be read is left out."""
    out: dict = {}
    try:
        given = getattr(trainer, DATA_ARG, None) or getattr(getattr(trainer, "args", None), "data", None)
        if given is not None:
            out["yaml"] = str(given)
    except Exception:  # noqa: BLE001 - facts are best effort, never a failure
        pass
    root = None
    try:
        if (getattr(trainer, "data", None) or {}).get("yaml_file"):
            out["yaml_file"] = str(trainer.data["yaml_file"])
    except Exception:  # noqa: BLE001
        pass
    try:
        root = (getattr(trainer, "data", None) or {}).get("path")
        if root:
            root = Path(root).resolve()
            out["root"] = str(root)
    except Exception:  # noqa: BLE001
        root = None
    try:
        dataset = trainer.train_loader.dataset
        files = getattr(dataset, "im_files", None)
        out["train_images"] = int(len(files) if files is not None else len(dataset))
    except Exception:  # noqa: BLE001 - no loader yet
        pass
    try:
        if root is not None:
            out["generated"] = (root / GENERATED_MARKER).is_file()
    except Exception:  # noqa: BLE001
        pass
    return out


# ---------------------------------------------------------------------------------------------- trainer arguments
def trainer_keys() -> frozenset[str]:
    """Every argument Ultralytics' trainer accepts (``check_dict_alignment``'s allowed extras included)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return frozenset(DEFAULT_CFG_DICT) | {"augmentations", "save_dir"}


def is_deprecated_key(key: str, value: Any) -> bool:
    """True when Ultralytics still accepts ``key`` as a deprecated alias (it renames it with a warning)."""
    try:
        from ultralytics.cfg import _handle_deprecation
        from ultralytics.utils import LOGGER

        disabled, LOGGER.disabled = LOGGER.disabled, True  # the trainer warns once; not twice
        try:
            return key not in _handle_deprecation({key: value})
        finally:
            LOGGER.disabled = disabled
    except Exception:  # noqa: BLE001 - a private helper: when it changes, the key is simply unknown
        return False


def check_trainer_args(args: Mapping[str, Any], also_valid: Iterable[str] = ()) -> None:
    """Validate Ultralytics trainer arguments the way ``get_cfg`` will, but as one line with a suggestion.

    Ultralytics' ``check_dict_alignment`` would print its 60-line CLI help and raise a ``SyntaxError`` inside the
    trainer, after the model is built; this runs first. Types and ranges use Ultralytics' own ``check_cfg`` (on a
    copy: it converts in place). ``also_valid``: other names the caller accepts, offered as suggestions only.

    Raises:
        TrainerArgError: naming the first unknown key (with a did-you-mean) or Ultralytics' own type/range message.
    """
    from ultralytics.cfg import check_cfg

    valid = trainer_keys()
    for key, value in args.items():
        if key not in valid and not is_deprecated_key(key, value):
            hint = did_you_mean(key, sorted(valid) + list(also_valid))
            raise TrainerArgError(f"{key!r} is not an Ultralytics trainer argument{hint}; every argument: yolo cfg")
    try:
        check_cfg({k: v for k, v in args.items() if k in valid})
    except (TypeError, ValueError) as e:
        raise TrainerArgError(str(e).strip().replace("\n", " ")) from None
