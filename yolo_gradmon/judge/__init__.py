"""Judging the logged numbers: the detection rules (:mod:`.rules`) and the diagnosis of a flag's cause (:mod:`.cause`).
Plain Python over logged records: no torch, no hooks, so a log can be judged again anywhere (``yolo-gradmon report``)."""

from .rules import KINDS, Flag, RuleEngine, StepView, evaluate

__all__ = ["KINDS", "Flag", "RuleEngine", "StepView", "evaluate"]
