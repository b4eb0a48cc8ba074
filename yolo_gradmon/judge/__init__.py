"""Judging the logged numbers: the detection rules (:mod:`.rules`, :mod:`.dying`), the diagnosis of a flag's cause
(:mod:`.cause`), a NaN's origin as one event (:mod:`.nonfinite`) and what the evidence could decide (:mod:`.verdict`).
Plain Python over logged records: no torch, no hooks, so a log can be judged again anywhere (``yolo-gradmon report``)."""

from .rules import KINDS, Flag, RuleEngine, StepView, evaluate

__all__ = ["KINDS", "Flag", "RuleEngine", "StepView", "evaluate"]
