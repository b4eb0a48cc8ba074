"""Recording: the append-only log (:mod:`.logfile`: format, writer, reader, torn-line repair), the frames derived from
it (:mod:`.tables`), ``summary.json`` (:mod:`.summary`), train end's results built once (:mod:`.outputs`) and the depth
summaries (:mod:`.depth`)."""

from .logfile import GradLog, LogSchemaError, read_log
from .outputs import TrainEnd, load_summary, rebuild

__all__ = ["GradLog", "LogSchemaError", "TrainEnd", "load_summary", "read_log", "rebuild"]
