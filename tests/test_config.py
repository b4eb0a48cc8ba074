"""Options: defaults file == dataclass, and every invalid value is an error before training."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from yolo_gradmon import GradientMonitor, GradmonConfig, GradmonConfigError
from yolo_gradmon.config import OPTION_HELP, OPTION_SECTIONS, config_from_cli, did_you_mean, split_cli_args

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_matches_dataclass():
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert data == GradmonConfig().to_dict()


def test_default_yaml_comments_start_with_the_option_help():
    """Each option line's inline comment starts with the one line of meaning the CLI help shows."""
    lines = (ROOT / "configs" / "default.yaml").read_text().splitlines()
    seen = {}
    for line in lines:
        m = re.match(r"^(\w+):\s*\S+\s+#\s?(.*)$", line)
        if m:
            seen[m.group(1)] = m.group(2)
    assert set(seen) == set(OPTION_HELP)  # every option has a line, each with an inline comment
    for name, comment in seen.items():
        assert comment.startswith(OPTION_HELP[name]), f"configs/default.yaml {name}: {comment!r} != {OPTION_HELP[name]!r}"


def test_option_help_is_one_short_line_per_field():
    fields = [f.name for f in dataclasses.fields(GradmonConfig)]
    assert list(OPTION_HELP) == fields
    assert [n for names in OPTION_SECTIONS.values() for n in names] == fields  # every option in one section, in order
    for name, text in OPTION_HELP.items():
        assert text and "\n" not in text and len(text) <= 100 and "``" not in text, name


def test_did_you_mean():
    assert did_you_mean("epoch", ["epochs", "patience", "batch"]) == " (did you mean 'epochs'?)"
    assert did_you_mean("zzz", ["epochs", "batch"]) == ""
    assert did_you_mean("gradmon_log_evry", ["gradmon_log_every", "gradmon_flow_every"]) == \
        " (did you mean 'gradmon_log_every'?)"  # near-ties only: not every *_every


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
    with pytest.raises(GradmonConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        GradientMonitor(**opts)
    assert "''" not in str(e.value)  # a value is quoted once


def test_python_typo_suggests_the_keyword():
    """In Python the suggestion has no prefix (keywords have none); with the CLI prefix, it keeps it."""
    with pytest.raises(GradmonConfigError) as e:
        GradientMonitor(log_evry=1)
    assert "unknown gradmon option 'log_evry' (did you mean 'log_every'?)" in str(e.value)
    with pytest.raises(GradmonConfigError) as e:
        GradmonConfig.from_dict({"gradmon_log_evry": 1})
    assert "(did you mean 'gradmon_log_every'?)" in str(e.value)


def test_value_quoted_once():
    with pytest.raises(GradmonConfigError) as e:
        GradientMonitor(granularity="bogus")
    msg = str(e.value)
    assert msg.count("bogus") == 1 and "'bogus'" in msg and "''" not in msg, msg
    with pytest.raises(GradmonConfigError, match=r"got 'layers' \(did you mean 'layer'\?\)"):
        GradientMonitor(granularity="layers")


def test_cli_convention(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("log_every: 4\n")
    g, t = split_cli_args({"gradmon_log_every": 2, "epochs": 3, "gradmon_config": str(p), "imgsz": 320})
    assert t == {"epochs": 3, "imgsz": 320}
    assert config_from_cli(g).log_every == 2  # explicit pair beats the file
    with pytest.raises(GradmonConfigError, match="unknown gradmon option 'gradmon_bogus'"):
        config_from_cli({"gradmon_bogus": 1})
