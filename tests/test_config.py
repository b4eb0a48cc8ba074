"""Options: defaults file == dataclass, and every invalid value is an error before training."""

import math
from pathlib import Path

import pytest
import yaml

from yolo_gradmon import GradientMonitor, GradmonConfig, GradmonConfigError
from yolo_gradmon.config import config_from_cli, split_cli_args

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_dataclass():
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert data == GradmonConfig().to_dict()


def test_yaml_and_keywords(tmp_path):
    p = tmp_path / "opts.yaml"
    p.write_text("log_every: 5\ngranularity: module\n")
    cfg = GradmonConfig.from_yaml(p, granularity="param")
    assert cfg.log_every == 5 and cfg.granularity == "param"
    assert GradientMonitor(p).cfg.log_every == 5
    assert GradientMonitor(log_every=3).cfg.log_every == 3


@pytest.mark.parametrize(
    "opts, needle",
    [
        ({"log_evry": 1}, "unknown gradmon option 'log_evry'"),
        ({"log_every": -1}, "'log_every' must be >= 1"),
        ({"log_every": 0}, "'log_every' must be >= 1"),
        ({"health_every": 0}, "'health_every' must be >= 1"),
        ({"log_every": 1.5}, "'log_every' must be an integer"),
        ({"log_every": True}, "'log_every' must be an integer"),
        ({"granularity": "layers"}, "valid values: layer, module, param"),
        ({"vanish_grad_to_weight": math.nan}, "finite number"),
        ({"explode_factor": -3.0}, "finite number > 0"),
        ({"wandb": "yes"}, "must be true or false"),
    ],
)
def test_invalid_options_raise(opts, needle):
    with pytest.raises(GradmonConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        GradientMonitor(**opts)


def test_cli_convention(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("log_every: 4\n")
    g, t = split_cli_args({"gradmon_log_every": 2, "epochs": 3, "gradmon_config": str(p), "imgsz": 320})
    assert t == {"epochs": 3, "imgsz": 320}
    assert config_from_cli(g).log_every == 2  # explicit pair beats the file
    with pytest.raises(GradmonConfigError, match="unknown gradmon option 'gradmon_bogus'"):
        config_from_cli({"gradmon_bogus": 1})
