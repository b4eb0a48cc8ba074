"""Where gradient statistics go: the local log files and Weights & Biases."""

from .base import GuardedSink, RunContext, Sink
from .local import LocalSink

__all__ = ["GuardedSink", "LocalSink", "RunContext", "Sink"]
