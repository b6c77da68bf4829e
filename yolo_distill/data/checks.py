"""Checks of a YOLO-format detection dataset that fail with a message naming the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml

IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset that cannot be trained on as it is."""


def split_dirs(root: Path, entry: str | list[str]) -> list[Path]:
    """The folders (or list files) a data YAML's split entry names, relative to the dataset ``root``."""
    entries = entry if isinstance(entry, list) else [entry]
    return [(root / e) if not Path(e).is_absolute() else Path(e) for e in entries]


def _labels_dir(img_dir: Path) -> Path:
    """Where Ultralytics looks for the labels of the images in ``img_dir`` (its ``img2label_paths`` rule)."""
    from ultralytics.data.utils import img2label_paths

    return Path(img2label_paths([str(img_dir / "x.jpg")])[0]).parent


def check_detection_dataset(data_yaml: str | Path, max_errors: int = 10) -> dict:
    """Validate a data YAML and its YOLO labels before any training starts.

    Checks: the YAML parses to a mapping with ``train``, ``val`` and ``names``; the image folders exist and hold
    images; each image folder has labels; every label line has 5 fields, a known class id and coordinates in
    [0, 1]. Missing label files for some images are allowed (background images), a folder with none is not.

    Args:
        data_yaml: path of the data YAML.
        max_errors: how many label problems to list before stopping.

    Returns:
        The parsed YAML, with ``nc`` filled in.

    Raises:
        DatasetError: naming every problem found (up to ``max_errors``) and how to fix it.
    """
    p = Path(data_yaml)
    if not p.is_file():
        raise DatasetError(
            f"data YAML {p} does not exist; pass a path to a data YAML (or data=shapes for the built-in set)"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise DatasetError(f"data YAML {p} is malformed: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"data YAML {p} must be a mapping with keys train, val and names")
    missing = [k for k in ("train", "val", "names") if k not in data]
    if missing:
        raise DatasetError(f"data YAML {p} lacks {missing}; a detection dataset needs train, val and names")
    names = data["names"]
    nc = len(names)
    if nc == 0:
        raise DatasetError(f"data YAML {p} lists no class names")
    root = Path(data.get("path") or p.parent)
    if not root.is_absolute():
        root = (p.parent / root).resolve()
    errors: list[str] = []
    for split in ("train", "val"):
        for d in split_dirs(root, data[split]):
            errors += _check_split_dir(split, d, p, nc, max_errors - len(errors))
            if len(errors) >= max_errors:
                break
    if errors:
        raise DatasetError(f"{p}: {len(errors)} problem(s):\n  " + "\n  ".join(errors[:max_errors]))
    data["nc"] = nc
    return data


def _check_split_dir(split: str, d: Path, yaml_path: Path, nc: int, budget: int) -> list[str]:
    """Problems of one split folder (or image list file): exists, holds images, has labels, labels are sound."""
    if d.suffix == ".txt":  # a list of image files: trust Ultralytics to check it
        return [] if d.is_file() else [f"{split}: image list {d} does not exist"]
    if not d.is_dir():
        return [f"{split}: image folder {d} does not exist (check 'path' and '{split}' in {yaml_path})"]
    images = [f for f in sorted(d.rglob("*")) if f.suffix.lower() in IMG_EXT]
    if not images:
        return [f"{split}: image folder {d} holds no images"]
    ldir = _labels_dir(d)
    present = [lf for lf in (ldir / f.relative_to(d).with_suffix(".txt") for f in images) if lf.is_file()]
    if not present:
        return [
            f"{split}: none of the {len(images)} images in {d} has a label file in {ldir}; YOLO labels go in "
            f"a 'labels' folder beside 'images' (use 'yolo-distill data action=coco|voc' for COCO JSON or VOC XML)"
        ]
    errors: list[str] = []
    for lf in present:
        errors += _check_label_file(lf, nc)
        if len(errors) >= budget:
            break
    return errors[:budget]


def _check_label_file(lf: Path, nc: int) -> list[str]:
    """Problems of one YOLO label file: 5 numeric fields per line, a known class id, normalised coordinates."""
    errors = []
    for n, line in enumerate(lf.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            errors.append(f"{lf}:{n}: expected 5 fields 'class xc yc w h', got {len(fields)}")
            continue
        try:
            c, *xywh = (float(v) for v in fields)
        except ValueError:
            errors.append(f"{lf}:{n}: fields must be numbers: {line!r}")
            continue
        if c != int(c) or not 0 <= c < nc:
            errors.append(f"{lf}:{n}: class {fields[0]} is not in 0..{nc - 1} (names has {nc})")
        if any(not 0.0 <= v <= 1.0 for v in xywh):
            errors.append(f"{lf}:{n}: coordinates {xywh} are outside [0, 1]; YOLO boxes are normalised")
    return errors
