"""yolo_gradmon: gradient monitoring for Ultralytics YOLO training.

>>> from ultralytics import YOLO
>>> from yolo_gradmon import GradientMonitor
>>> model = YOLO("yolo26n.yaml")
>>> GradientMonitor(log_every=1).attach(model)
>>> model.train(data="coco8.yaml", epochs=10)
"""

from .config import GradmonConfig, GradmonConfigError
from .monitor import GradientMonitor, HookError
from .record import load_summary, read_log, rebuild

__version__ = "0.1.0"
__all__ = [
    "GradientMonitor",
    "GradmonConfig",
    "GradmonConfigError",
    "HookError",
    "load_summary",
    "read_log",
    "rebuild",
    "__version__",
]
