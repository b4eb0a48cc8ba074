"""The recording layer's log format on its own: write, tear, repair, read, resume (no training)."""

import json

import numpy as np
import pytest

from yolo_gradmon.record.logfile import (LOG_NAME, SCHEMA_VERSION, LogSchemaError, LogWriter, drop_torn_tail,
                                         header_record, read_log, resume_log)

MEASURED = {"modules": ["00.Conv", "01.Conv"], "trainable": [True, True], "numel": [10, 20], "layer_index": [0, 1],
            "depth": {"layers": ["00.Conv", "01.Conv"], "flow": False}}


def step(k, epoch=1, g=1.0):
    return {"type": "step", "step": k, "epoch": epoch, "grad_norm": np.array([g, float("nan")]),
            "grad_to_weight": [0.1, float("inf")], "update_to_weight": [None, None], "nonfinite": [0, 3]}


def write(path, lines, append=False):
    w = LogWriter(path, append=append)
    for rec in lines:
        w.write(rec)
    w.close()


def test_header_and_steps_round_trip_as_strict_json(tmp_path):
    path = tmp_path / LOG_NAME
    header = header_record("yolo26n.yaml", "detect", "layer", MEASURED, {"log_every": 1})
    write(path, [header, step(1), step(2), {"type": "epoch_end", "epoch": 1, "step": 2}, {"type": "end"}])
    for line in path.read_text().splitlines():  # NaN/Inf never reach the file: strict JSON, null instead
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    log = read_log(tmp_path)  # the gradmon dir works as well as the file
    assert log.header["schema"] == SCHEMA_VERSION and log.header["layers"] == ["00.Conv", "01.Conv"]
    assert log.modules == ["00.Conv", "01.Conv"] and log.ended and not log.truncated
    assert [s["step"] for s in log.steps] == [1, 2] and log.steps[0]["grad_norm"] == [1.0, None]
    assert log.steps[0]["grad_to_weight"] == [0.1, None] and log.last_step_of_epoch(1) == 2


def test_torn_tail_is_ignored_by_the_reader_and_cut_before_appending(tmp_path):
    path = tmp_path / LOG_NAME
    write(path, [header_record("m", None, "layer", MEASURED, {}), step(1), step(2)])
    intact = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"type": "step", "step": 3, "gra')  # killed mid-write
    log = read_log(path)
    assert log.truncated and [s["step"] for s in log.steps] == [1, 2] and not log.ended
    assert drop_torn_tail(path) == len(b'{"type": "step", "step": 3, "gra') and path.read_bytes() == intact
    assert drop_torn_tail(path) == 0  # an intact file is left alone
    with open(path, "ab") as fh:
        fh.write(b'{"type": "st')
    write(path, [step(3)], append=True)  # the writer repairs before appending: the new line starts on its own
    log = read_log(path)
    assert [s["step"] for s in log.steps] == [1, 2, 3] and not log.truncated


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / LOG_NAME
    write(path, [header_record("m", None, "layer", MEASURED, {}), step(1)])
    path.write_text(path.read_text() + "garbage\n" + json.dumps({"type": "step", "step": 2}) + "\n")
    with pytest.raises(LogSchemaError, match=":3: corrupt line"):
        read_log(path)


def test_resume_supersedes_later_steps_and_resume_log_restores_the_count(tmp_path):
    path = tmp_path / LOG_NAME
    lines = [header_record("m", None, "layer", MEASURED, {}), step(1), step(2),
             {"type": "epoch_end", "epoch": 1, "step": 2}, step(3, epoch=2), step(4, epoch=2)]
    write(path, lines)  # killed during epoch 2: steps 3-4 were logged, epoch 2 never ended
    assert resume_log(path, MEASURED["modules"], "layer", start_epoch=1) == (2, read_log(path).steps[:2])
    write(path, [{"type": "resume", "step": 2, "epoch": 2}, lines[0], step(3, epoch=2, g=7.0), {"type": "end"}],
          append=True)
    log = read_log(path)
    assert [s["step"] for s in log.steps] == [1, 2, 3] and log.steps[-1]["grad_norm"][0] == 7.0 and log.ended
    with pytest.raises(RuntimeError, match="logs other modules"):
        resume_log(path, ["00.Conv"], "module", start_epoch=1)


@pytest.mark.parametrize("schema", [SCHEMA_VERSION + 1, 0, "1", None])
def test_other_schema_versions_are_refused(tmp_path, schema):
    path = tmp_path / LOG_NAME
    write(path, [dict(header_record("m", None, "layer", MEASURED, {}), schema=schema)])
    with pytest.raises(LogSchemaError, match="schema"):
        read_log(path)


def test_a_log_without_header_is_refused(tmp_path):
    path = tmp_path / LOG_NAME
    write(path, [step(1)])
    with pytest.raises(LogSchemaError, match="before any header"):
        read_log(path)
