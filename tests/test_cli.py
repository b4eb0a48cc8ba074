"""The command line a newcomer meets: help that lists every command and option, errors that teach.

A user mistake is ONE line on stderr and exit status 2, never a traceback, and nothing trains or is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yolo_gradmon.cli import COMMANDS, main
from yolo_gradmon.config import OPTION_HELP, format_value

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv: str) -> str:
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert "Traceback" not in err and "Traceback" not in out
    return err.strip()


# ---------------------------------------------------------------------------------------------------- help
def test_top_level_help_lists_each_command_on_one_line(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    assert "``" not in out
    for name in ("train", "demo", "report", "ablate", "sweep-run"):
        lines = [ln for ln in out.splitlines() if ln.split()[:1] == [name]]
        assert len(lines) == 1, (name, out)
        assert COMMANDS[name] in lines[0]
    assert "--help" in out and "gradmon_" in out


@pytest.mark.parametrize("command", ["train", "demo", "ablate"])
def test_command_help_lists_every_monitor_option_with_default_and_meaning(capsys, command):
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0
    assert out.startswith(f"usage: yolo-gradmon {command} ")  # the usage is not glued onto the program name
    assert "``" not in out
    lines = out.splitlines()
    for name, value in DEFAULTS.items():  # the defaults FILE, so help and file cannot disagree
        typed = f"gradmon_{name}={format_value(value)}"
        line = [ln for ln in lines if ln.split()[:1] == [typed]]
        assert len(line) == 1, f"{command} --help has no line '{typed} ...'"
        assert line[0].rstrip().endswith(OPTION_HELP[name])
    assert any(ln.split()[:1] == ["gradmon_config=<file.yaml>"] for ln in lines)


@pytest.mark.parametrize("command, usage", [("report", "usage: yolo-gradmon report <save_dir>"),
                                            ("sweep-run", "usage: yolo-gradmon sweep-run grid=<grid.yaml>")])
def test_other_commands_show_their_usage(capsys, command, usage):
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0 and out.startswith(usage) and "``" not in out


def test_installed_entry_point_help():
    exe = shutil.which("yolo-gradmon")
    if exe is None:
        pytest.skip("the yolo-gradmon entry point is not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: yolo-gradmon <command>")
    for name, line in COMMANDS.items():
        assert f"  {name}" in out.stdout and line in out.stdout
    assert out.stderr == ""


# ---------------------------------------------------------------------------------------------------- mistakes
@pytest.mark.parametrize("command", ["train", "demo"])
def test_monitor_option_without_prefix(capsys, tmp_path, command):
    err = one_line_error(capsys, command, "log_every=2", f"project={tmp_path / 'p'}")
    assert err == "log_every is a gradmon option: write gradmon_log_every=2"
    assert not (tmp_path / "p").exists()
    err = one_line_error(capsys, command, "health_eps=1e-4")
    assert err == "health_eps is a gradmon option: write gradmon_health_eps=1e-4"  # the value as typed


def test_monitor_option_without_prefix_in_ablate_and_sweep_run(capsys, tmp_path):
    err = one_line_error(capsys, "ablate", str(ROOT / "configs" / "ablation-activations.yaml"), "flow_every=4",
                         f"project={tmp_path / 'p'}")
    assert err == "flow_every is a gradmon option: write gradmon_flow_every=4"
    err = one_line_error(capsys, "sweep-run", "grid=g.yaml", "activation=relu", "log_every=3")
    assert err == "log_every is a gradmon option: write gradmon_log_every=3"
    assert not (tmp_path / "p").exists()


def test_unknown_monitor_option_suggests_the_prefixed_name(capsys):
    err = one_line_error(capsys, "train", "gradmon_log_evry=2")
    assert err.startswith("unknown gradmon option 'gradmon_log_evry' (did you mean 'gradmon_log_every'?)"), err
    err = one_line_error(capsys, "ablate", str(ROOT / "configs" / "ablation-activations.yaml"), "gradmon_flow_evry=2")
    assert "did you mean 'gradmon_flow_every'?" in err


def test_value_error_quotes_the_value_once(capsys):
    err = one_line_error(capsys, "train", "gradmon_granularity=bogus")
    assert err == "gradmon option 'granularity' got 'bogus'; valid values: layer, module, param"
    err = one_line_error(capsys, "train", "gradmon_log_every=-1")
    assert err == "gradmon option 'log_every' must be >= 1, got -1"


@pytest.mark.parametrize("pair, needles", [
    ("epohcs=3", ["'epohcs' is not an Ultralytics trainer argument", "(did you mean 'epochs'?)"]),
    ("log_evry=2", ["'log_evry' is not an Ultralytics trainer argument", "(did you mean 'gradmon_log_every'?)"]),
    ("epochs=many", ["'epochs=many'", "int"]),
    ("lr0=-1", ["'lr0=-1' is an invalid value"]),
    ("bogus", ["argument 'bogus' is not key=value"]),
])
def test_invalid_trainer_arguments_caught_before_training(capsys, tmp_path, pair, needles):
    err = one_line_error(capsys, "train", "model=yolo26n.yaml", pair, f"project={tmp_path / 'p'}")
    for needle in needles:
        assert needle in err, err
    assert "Similar arguments" not in err and "not a valid YOLO argument" not in err  # not Ultralytics' dump
    assert not (tmp_path / "p").exists()


def test_deprecated_trainer_alias_is_not_an_error(capsys):
    """Ultralytics still accepts (and renames) deprecated keys: the check lets them through to it."""
    from yolo_gradmon.cli import check_trainer_args

    check_trainer_args({"hide_labels": True, "epochs": 1}, {})


@pytest.mark.parametrize("argv, needle", [
    (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
    ([], "the following arguments are required: command"),
    (["ablate"], "yolo-gradmon ablate: the following arguments are required: grid.yaml (see yolo-gradmon ablate --help)"),
    (["train", "--epochs", "3"], "unrecognized arguments: --epochs"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["ablate", "/nonexistent/grid.yaml"], "ablation grid '/nonexistent/grid.yaml' not found"),
])
def test_usage_mistakes_are_one_line(capsys, argv, needle):
    assert needle in one_line_error(capsys, *argv)


def test_module_entry_point_exit_status():
    """``python -m yolo_gradmon.cli`` (what the other tests' subprocesses run) exits 2 with one line."""
    out = subprocess.run([sys.executable, "-m", "yolo_gradmon.cli", "train", "log_every=2"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert out.returncode == 2
    assert out.stderr == "log_every is a gradmon option: write gradmon_log_every=2\n"
