"""The dataset a run trained on, as recorded in the log header's ``data`` (and ``summary.json["data"]``), in words."""

from __future__ import annotations


def describe_data(data: dict | None) -> str:
    """The dataset of a run in words, from the header's / summary's ``data``: ``coco8.yaml (4 train images,
    /datasets/coco8)``, marked ``GENERATED offline`` for data made by ``yolo_gradmon.demo.synthetic_dataset``."""
    data = data or {}
    if not data:
        return "not recorded"
    parts = [f"{data['train_images']} train images"] if data.get("train_images") is not None else []
    if data.get("generated"):
        parts.insert(0, "GENERATED offline: synthetic shapes, not real images")
    if data.get("root"):
        parts.append(str(data["root"]))
    return f"{data.get('yaml') or '?'}" + (f" ({', '.join(parts)})" if parts else "")
