"""Deterministic generator of the built-in ``shapes`` detection dataset.

Eight classes of geometric glyphs (some of them deliberately alike at small scale: circle, pentagon, hexagon)
in random colours (or, with ``tints > 1``, one class per glyph and hue band: up to 32 fine-grained classes), on
textured and cluttered backgrounds, with scale variation from tiny to large, rotation, occlusion by other objects
and unlabeled distractor blobs. Every image is drawn from its own seeded random generator, so a split is
reproducible image by image whatever its size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
)
GENERATOR_VERSION = 1
#: most hue bands a glyph can be split into (``ShapesSpec.tints``); more would make neighbouring bands too alike
MAX_TINTS = 4


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate. Equal specs give byte-identical datasets.

    Attributes:
        n_train: number of training images.
        n_val: number of validation images.
        imgsz: side of the square images in pixels.
        seed: base seed; image ``i`` of split ``s`` uses its own generator derived from it.
        min_objects: fewest labeled objects per image.
        max_objects: most labeled objects per image.
        min_size: smallest object side in pixels.
        max_size: largest object side in pixels.
        distractors: most unlabeled clutter blobs per image.
        min_visible: an occluded object keeps its label while at least this fraction of it is visible.
        classes: how many glyph kinds (the first ``classes`` of :data:`CLASS_NAMES`) are drawn and labelled; 1 makes
            a one-class detection set.
        tints: 1 (glyphs in random colours, a class per glyph) or up to :data:`MAX_TINTS` hue bands: a class per
            glyph and band (``classes * tints`` classes, e.g. ``square_hue2``), so classes differ by colour as well
            as by shape, as fine-grained real classes do.
    """

    n_train: int = 400
    n_val: int = 100
    imgsz: int = 320
    seed: int = 0
    min_objects: int = 3
    max_objects: int = 12
    min_size: int = 10
    max_size: int = 96
    distractors: int = 6
    min_visible: float = 0.4
    classes: int = len(CLASS_NAMES)
    tints: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.classes <= len(CLASS_NAMES):
            raise ValueError(f"classes must be in 1..{len(CLASS_NAMES)}, got {self.classes}")
        if not 1 <= self.tints <= MAX_TINTS:
            raise ValueError(f"tints must be in 1..{MAX_TINTS} (hue bands per glyph), got {self.tints}")
        if self.n_train < 1 or self.n_val < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {self.n_train} and {self.n_val}")
        if self.imgsz < 32:
            raise ValueError(f"imgsz must be >= 32, got {self.imgsz}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 4 <= self.min_size <= self.max_size <= self.imgsz:
            raise ValueError(f"need 4 <= min_size <= max_size <= imgsz, got {self.min_size}, {self.max_size}")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.distractors < 0 or self.seed < 0:
            raise ValueError(f"distractors and seed must be >= 0, got {self.distractors} and {self.seed}")


def class_names(spec: ShapesSpec) -> list[str]:
    """The dataset's class names in class-id order: a glyph each, or with ``tints > 1`` a glyph and hue band each
    (class ``glyph * tints + band``)."""
    glyphs = CLASS_NAMES[: spec.classes]
    return list(glyphs) if spec.tints == 1 else [f"{g}_hue{t}" for g in glyphs for t in range(spec.tints)]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a glyph of circumradius ``r`` centred at (cx, cy), rotated by ``angle`` radians."""
    if kind == "circle":
        n, radii = 48, [1.0]
    elif kind == "square":
        n, radii, angle = 4, [1.0], angle + math.pi / 4
    elif kind == "diamond":  # a rhombus, elongated, so it differs from a rotated square
        n, radii = 4, [1.0, 0.55]
    elif kind == "triangle":
        n, radii = 3, [1.0]
    elif kind == "pentagon":
        n, radii = 5, [1.0]
    elif kind == "hexagon":
        n, radii = 6, [1.0]
    elif kind == "star":
        n, radii = 10, [1.0, 0.45]
    elif kind == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        p = np.array(pts, dtype=np.float64) * r
        c, s = math.cos(angle), math.sin(angle)
        p = p @ np.array([[c, s], [-s, c]])
        return p + (cx, cy)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    t = angle + np.arange(n) * 2 * math.pi / n
    rr = np.array([radii[i % len(radii)] for i in range(n)]) * r
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background: a colour gradient, low-frequency noise, lines and fine grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * math.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t) + c1 * t
    cells = int(rng.integers(4, 16))
    noise = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img = img + noise * rng.uniform(10, 45)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 12))):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(img, p1, p2, tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour with enough contrast to the mean colour ``under`` it."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c.astype(np.float32) - under).sum() > 120:
            break
    return tuple(int(v) for v in c)


def tint_colour(rng: np.random.Generator, band: int, tints: int, under: np.ndarray) -> tuple[int, int, int]:
    """A BGR colour whose hue lies in band ``band`` of ``tints`` (OpenCV hue, 0-180, the middle half of the band so
    neighbouring bands never meet), saturated and bright enough to read as that hue, with contrast to ``under``."""
    width = 180 / tints
    for _ in range(20):
        h = (band + rng.uniform(0.25, 0.75)) * width
        hsv = np.array([[[h, rng.uniform(170, 255), rng.uniform(140, 255)]]], dtype=np.float32)
        c = cv2.cvtColor(hsv.round().clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
        if np.abs(c.astype(np.float32) - under).sum() > 120:
            break
    return tuple(int(v) for v in c)


def render_image(
    spec: ShapesSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw one image and its labels.

    Args:
        spec: the dataset specification.
        rng: the image's own random generator.

    Returns:
        The BGR image (H, W, 3) uint8 and its labels as ``(class, xc, yc, w, h)`` normalised to [0, 1].
    """
    size = spec.imgsz
    img = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)  # which labeled object is on top of each pixel
    objects: list[tuple[int, int]] = []  # (class, full pixel area)
    n_obj = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    n_dis = int(rng.integers(0, spec.distractors + 1))
    order = rng.permutation(n_obj + n_dis)  # interleave objects and distractors so clutter occludes too
    log_lo, log_hi = math.log(spec.min_size), math.log(spec.max_size)
    for k in order:
        side = math.exp(rng.uniform(log_lo, log_hi))
        r = side / 2
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
        mask = np.zeros((size, size), dtype=np.uint8)
        if k < n_obj:
            cls = int(rng.integers(0, spec.classes * spec.tints))
            pts = _polygon(CLASS_NAMES[cls // spec.tints], cx, cy, r, rng.uniform(0, 2 * math.pi))
        else:  # an irregular blob: clutter that is not any class
            cls = -1
            m = int(rng.integers(5, 9))
            t = np.sort(rng.uniform(0, 2 * math.pi, m))
            rr = r * rng.uniform(0.3, 1.0, m)
            pts = np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], axis=1)
        poly = np.round(pts).astype(np.int32)
        cv2.fillPoly(mask, [poly], 1)
        area = int(mask.sum())
        if area < 6:
            continue
        ys, xs = np.nonzero(mask)
        under = img[ys, xs].mean(axis=0)
        colour = tint_colour(rng, cls % spec.tints, spec.tints, under) if cls >= 0 and spec.tints > 1 else _colour(
            rng, under
        )
        if cls >= 0 and rng.random() < 0.25:  # a two-tone glyph: outline in another colour
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA)
            cv2.polylines(
                img, [poly], True, _colour(rng, np.array(colour, np.float32)), max(1, int(side / 16)), cv2.LINE_AA
            )
        else:
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA)
        if cls >= 0:
            owner[mask > 0] = len(objects)
            objects.append((cls, area))
        else:
            owner[mask > 0] = -1
    labels = []
    for i, (cls, area) in enumerate(objects):
        ys, xs = np.nonzero(owner == i)
        if len(xs) < spec.min_visible * area:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    # camera effects: blur, grain and a global contrast change
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.2))
    grain = rng.normal(0, rng.uniform(2, 12), img.shape)
    img = np.clip(img.astype(np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25) + grain, 0, 255).astype(
        np.uint8
    )
    return img, labels


def _split_seed(spec: ShapesSpec, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([spec.seed, 0 if split == "train" else 1, index, GENERATOR_VERSION])


def generate_shapes(root: str | Path, spec: ShapesSpec | None = None, overwrite: bool = False) -> Path:
    """Generate the shapes dataset in YOLO format and return the path of its data YAML.

    A folder that already holds the same spec is reused as it is; one that holds anything else is never
    overwritten unless ``overwrite`` is set.

    Args:
        root: the folder to write ``images/``, ``labels/``, ``data.yaml`` and ``spec.json`` into.
        spec: what to generate (defaults to :class:`ShapesSpec`).
        overwrite: replace a folder that holds a different dataset.

    Returns:
        Path of ``data.yaml``.
    """
    spec = spec or ShapesSpec()
    root = Path(root).resolve()
    stamp = {"generator_version": GENERATOR_VERSION, **asdict(spec)}
    if spec.classes == len(CLASS_NAMES):  # the field came later: datasets generated before it keep their stamp
        del stamp["classes"]
    if spec.tints == 1:  # likewise
        del stamp["tints"]
    spec_file, data_yaml = root / "spec.json", root / "data.yaml"

    def holds_it() -> bool:  # root holds this very dataset, complete
        return spec_file.exists() and data_yaml.exists() and json.loads(spec_file.read_text()) == stamp

    if holds_it():
        return data_yaml
    if spec_file.exists() and data_yaml.exists():
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a shapes dataset with another spec; pick another folder or pass overwrite=True"
            )
    elif root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty and holds no shapes dataset; pick an empty or new folder")
    # written in a hidden folder beside it and renamed into place when complete: a run killed while generating leaves
    # no half dataset behind, and two runs generating the same set at once (two bench rows) both end with it
    work = root.parent / f".{root.name}.generating-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(work, spec, stamp, root)
        if holds_it():  # another process finished the same set meanwhile
            return data_yaml
        if root.exists():
            shutil.rmtree(root)  # overwrite=True (checked above), or an empty folder
        try:
            work.replace(root)
        except OSError:
            if not holds_it():  # another process renamed its copy into place in between
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data_yaml


def _write(work: Path, spec: ShapesSpec, stamp: dict, root: Path) -> None:
    """Render every image and label of ``spec`` into ``work``, with a data YAML whose ``path`` is ``root``."""
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        (work / "images" / split).mkdir(parents=True, exist_ok=True)
        (work / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(_split_seed(spec, split, i))
            img, labels = render_image(spec, rng)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(work / "images" / split / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (work / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(class_names(spec))),
    }
    (work / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (work / "spec.json").write_text(json.dumps(stamp, indent=2))
