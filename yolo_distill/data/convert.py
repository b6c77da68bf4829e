"""Convert COCO-JSON and Pascal-VOC XML annotations into a YOLO-format dataset."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml


def _check_inputs(splits: dict[str, tuple[str | Path, str | Path]], kind: str) -> None:
    """Every split's annotations and image folder exist (checked before anything is written)."""
    for split, (ann, img_dir) in splits.items():
        ok = Path(ann).is_file() if kind == "file" else Path(ann).is_dir()
        if not ok:
            what = "a COCO JSON file" if kind == "file" else "a folder of VOC XML files"
            raise FileNotFoundError(f"{split}={str(ann)!r}: not found; expected {what}")
        if not Path(img_dir).is_dir():
            raise FileNotFoundError(f"{split}_images={str(img_dir)!r}: not found; expected the folder of the images")


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; converters never overwrite, pick a new output folder")
    out.mkdir(parents=True, exist_ok=True)


def _write_yaml(out: Path, names: list[str], splits: list[str]) -> Path:
    data = {"path": str(out.resolve()), "train": f"images/{splits[0]}", "val": f"images/{splits[-1]}"}
    data["names"] = dict(enumerate(names))
    f = out / "data.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return f


def _place(rel: Path, used: set[Path], tag: str) -> Path:
    """A collision-free relative destination for an image: its relative path as given, or, when another image
    already took that path (two folders with the same file names), the same name with ``_<tag>`` added."""
    rel = Path(*[p for p in rel.parts if p not in ("..", "/")]) if rel.is_absolute() or ".." in rel.parts else rel
    if rel in used:
        rel = rel.with_name(f"{rel.stem}_{tag}{rel.suffix}")
    if rel in used:
        raise ValueError(f"two images map to {rel}; give them distinct file names")
    used.add(rel)
    return rel


def _copy(src: Path, out: Path, split: str, rel: Path, lines: list[str]) -> None:
    """Copy one image to ``images/<split>/<rel>`` and write its labels to ``labels/<split>/<rel>.txt``."""
    img, lab = out / "images" / split / rel, (out / "labels" / split / rel).with_suffix(".txt")
    img.parent.mkdir(parents=True, exist_ok=True)
    lab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, img)
    lab.write_text("\n".join(lines) + ("\n" if lines else ""))


def _norm_box(x0: float, y0: float, x1: float, y1: float, w: float, h: float) -> tuple[float, float, float, float]:
    x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
    y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
    return (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h


def coco_to_yolo(splits: dict[str, tuple[str | Path, str | Path]], out: str | Path) -> Path:
    """Convert COCO detection JSON files into YOLO format.

    Args:
        splits: split name -> (annotation JSON, image folder), e.g. ``{"train": (...), "val": (...)}``.
        out: a new or empty folder for ``images/``, ``labels/`` and ``data.yaml``.

    Returns:
        Path of the written ``data.yaml``. Class ids follow the sorted COCO category ids; crowd boxes are skipped.
        Images keep their ``file_name`` relative to the image folder (sub-folders included), so ``a/0001.jpg`` and
        ``b/0001.jpg`` both survive.
    """
    out = Path(out)
    _check_inputs(splits, "file")
    _prepare_out(out)
    names: list[str] | None = None
    for split, (ann, img_dir) in splits.items():
        d = json.loads(Path(ann).read_text())
        cats = sorted(d.get("categories", []), key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{ann} has no 'categories'")
        split_names = [c["name"] for c in cats]
        if names is None:
            names = split_names
        elif names != split_names:
            raise ValueError(f"{ann} lists other categories than the first split; all splits must share them")
        cid = {c["id"]: i for i, c in enumerate(cats)}
        by_img: dict[int, list] = {}
        for a in d.get("annotations", []):
            if not a.get("iscrowd", 0):
                by_img.setdefault(a["image_id"], []).append(a)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        used: set[Path] = set()
        for im in d.get("images", []):
            src = Path(img_dir) / im["file_name"]
            if not src.is_file():
                raise FileNotFoundError(f"{ann} names image {src}, which does not exist")
            w, h = float(im["width"]), float(im["height"])
            lines = []
            for a in by_img.get(im["id"], []):
                x, y, bw, bh = a["bbox"]
                if bw <= 0 or bh <= 0:
                    continue
                xc, yc, nw, nh = _norm_box(x, y, x + bw, y + bh, w, h)
                lines.append(f"{cid[a['category_id']]} {xc:.6f} {yc:.6f} {nw:.6f} {nh:.6f}")
            _copy(src, out, split, _place(Path(im["file_name"]), used, str(im["id"])), lines)
    return _write_yaml(out, names or [], list(splits))


def voc_to_yolo(
    splits: dict[str, tuple[str | Path, str | Path]], out: str | Path, names: list[str] | None = None
) -> Path:
    """Convert Pascal-VOC XML annotations into YOLO format.

    Args:
        splits: split name -> (folder of ``*.xml``, image folder).
        out: a new or empty folder.
        names: class names in id order; by default the sorted set of names found in the XML files.

    Returns:
        Path of the written ``data.yaml``. Objects marked ``difficult`` are kept. Each image is stored under its
        annotation file's name (``0001.xml`` -> ``0001.jpg``), which is unique in the annotation folder.
    """
    out = Path(out)
    _check_inputs(splits, "dir")
    _prepare_out(out)
    parsed: dict[str, list] = {}
    found: set[str] = set()
    for split, (xml_dir, img_dir) in splits.items():
        items = []
        for xf in sorted(Path(xml_dir).glob("*.xml")):
            root = ET.parse(xf).getroot()
            fname = root.findtext("filename") or f"{xf.stem}.jpg"
            size = root.find("size")
            if size is None:
                raise ValueError(f"{xf} has no <size>")
            w, h = float(size.findtext("width")), float(size.findtext("height"))
            objs = []
            for o in root.iter("object"):
                bb = o.find("bndbox")
                n = (o.findtext("name") or "").strip()
                found.add(n)
                objs.append((n, *(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
            items.append((Path(img_dir) / fname, xf.stem, w, h, objs))
        parsed[split] = items
    names = list(names) if names else sorted(found)
    unknown = found - set(names)
    if unknown:
        raise ValueError(f"XML files name classes {sorted(unknown)} that are not in names={names}")
    idx = {n: i for i, n in enumerate(names)}
    for split, items in parsed.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for src, stem, w, h, objs in items:
            if not src.is_file():
                raise FileNotFoundError(f"annotation names image {src}, which does not exist")
            lines = [
                f"{idx[n]} " + " ".join(f"{v:.6f}" for v in _norm_box(x0 - 1, y0 - 1, x1, y1, w, h))
                for n, x0, y0, x1, y1 in objs
            ]
            _copy(src, out, split, Path(f"{stem}{src.suffix}"), lines)
    return _write_yaml(out, names, list(splits))
