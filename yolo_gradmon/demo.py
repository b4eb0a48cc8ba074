"""Offline-capable demo data: COCO8 when Ultralytics has it, otherwise a small generated dataset.

Ultralytics downloads ``coco8.yaml`` on first use; on a machine without internet that fails, so the
demo checks the Ultralytics ``datasets_dir`` first and, when COCO8 is not there, writes a small labelled
detection dataset (coloured squares and discs on noise, YOLO txt labels) and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from ultralytics.utils import DATASETS_DIR, LOGGER

from .config import PREFIX
from .trainer import GENERATED_MARKER

SYNTH_NAMES = {0: "square", 1: "disc"}


def coco8_available(datasets_dir: Path = DATASETS_DIR) -> bool:
    """True when ``<datasets_dir>/coco8`` holds COCO8's images (no download needed)."""
    return (Path(datasets_dir) / "coco8" / "images" / "train").is_dir()


def synthetic_dataset(root: str | Path, n_train: int = 16, n_val: int = 8, imgsz: int = 320, seed: int = 0,
                      objects: tuple[int, int] = (1, 5), size: tuple[int, int] = (10, 3)) -> Path:
    """Write a small two-class detection dataset in Ultralytics layout; return its data YAML path.

    Each image holds ``objects[0]`` to ``objects[1] - 1`` squares and discs whose side is ``imgsz / size[0]`` to
    ``imgsz / size[1]`` (the defaults: 1-4 objects, a tenth to a third of the image; ``objects=(25, 41),
    size=(40, 8)`` gives a crowded scene)."""
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = rng.integers(0, 80, size=(imgsz, imgsz, 3), dtype=np.uint8)
            labels = []
            for _ in range(int(rng.integers(*objects))):
                cls = int(rng.integers(0, 2))
                s = int(rng.integers(imgsz // size[0], imgsz // size[1]))
                x0, y0 = (int(v) for v in rng.integers(0, imgsz - s, size=2))
                color = tuple(int(c) for c in rng.integers(120, 256, size=3))
                if cls == 0:
                    cv2.rectangle(img, (x0, y0), (x0 + s, y0 + s), color, -1)
                else:
                    cv2.circle(img, (x0 + s // 2, y0 + s // 2), s // 2, color, -1)
                labels.append(f"{cls} {(x0 + s / 2) / imgsz:.6f} {(y0 + s / 2) / imgsz:.6f} {s / imgsz:.6f} {s / imgsz:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{split}{k:03d}.jpg"), img)
            (root / "labels" / split / f"{split}{k:03d}.txt").write_text("\n".join(labels) + "\n")
    (root / GENERATED_MARKER).write_text(json.dumps({  # a run on this data records data.generated = true
        "generator": "yolo_gradmon.demo.synthetic_dataset", "seed": seed, "imgsz": imgsz, "train": n_train,
        "val": n_val, "names": SYNTH_NAMES}) + "\n")
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": SYNTH_NAMES}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def demo_data(work_dir: str | Path) -> str:
    """``"coco8.yaml"`` if COCO8 is in the Ultralytics datasets dir, else a generated dataset's YAML."""
    if coco8_available():
        LOGGER.info(f"{PREFIX}demo: using COCO8 from {DATASETS_DIR / 'coco8'}")
        return "coco8.yaml"
    path = synthetic_dataset(Path(work_dir) / "gradmon-synthetic")
    LOGGER.warning(
        f"{PREFIX}demo: COCO8 is not in the Ultralytics datasets dir ({DATASETS_DIR}) and may not be downloadable "
        f"here; training on a generated 2-class dataset instead ({path}). Pass data=coco8.yaml to use COCO8."
    )
    return str(path)
