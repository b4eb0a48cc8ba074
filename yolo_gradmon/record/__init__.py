"""Recording: the append-only log (:mod:`.logfile`: format, writer, reader, torn-line repair) and the tables derived
from it (:mod:`.tables`: Parquet frames, per-module and per-layer medians, ``summary.json``, rebuilding them)."""

from .logfile import GradLog, LogSchemaError, read_log
from .tables import load_summary, rebuild

__all__ = ["GradLog", "LogSchemaError", "load_summary", "read_log", "rebuild"]
