"""Images of a dataset split, letterboxed as Ultralytics' predictor does, with their YOLO labels.

Used wherever a stage needs real images outside training: parity and latency inputs, INT8 calibration, Taylor
importance batches. Letterboxing is Ultralytics' own ``LetterBox``; label paths are Ultralytics' ``img2label_paths``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo_distill.data.checks import IMG_EXT, split_dirs


def letterbox_images(paths: list[Path], imgsz: int) -> np.ndarray:
    """Read images and letterbox them to ``imgsz`` as a float32 RGB NCHW batch in [0, 1], as Ultralytics does."""
    import cv2
    from ultralytics.data.augment import LetterBox

    lb = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    out = []
    for p in paths:
        im = cv2.imread(str(p))
        if im is None:
            raise ValueError(f"could not read image {p}")
        out.append(lb(image=im)[..., ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out)).astype(np.float32) / 255.0


def dataset_images(data: str | None, n: int, split: str = "val") -> list[Path]:
    """Up to ``n`` image paths from a data YAML's split (sorted, so runs are repeatable); ``[]`` without data."""
    if not data:
        return []
    import yaml

    from yolo_distill.data.builtin import resolve_data

    y = Path(resolve_data(data))
    if not y.is_file():
        raise FileNotFoundError(f"data YAML {y} does not exist; pass data= a data YAML or a built-in name (shapes)")
    d = yaml.safe_load(y.read_text())
    root = Path(d.get("path") or y.parent)
    root = root if root.is_absolute() else (y.parent / root)
    files: list[Path] = []
    for folder in split_dirs(root, d[split]):
        files += sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMG_EXT)
    return files[:n]


def read_labels(image: Path) -> np.ndarray:
    """The YOLO label rows (N, 5: class, xc, yc, w, h) of ``image``, found where Ultralytics looks for them."""
    from ultralytics.data.utils import img2label_paths

    lf = Path(img2label_paths([str(image)])[0])
    if not lf.is_file():
        return np.zeros((0, 5), dtype=np.float32)
    rows = [line.split() for line in lf.read_text().splitlines() if line.strip()]
    return np.array([[float(v) for v in r] for r in rows if len(r) == 5], dtype=np.float32).reshape(-1, 5)
