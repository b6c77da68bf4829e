"""Built-in datasets by name: generated on first use into a folder of the working directory."""

from __future__ import annotations

from pathlib import Path

from yolo_distill.data.shapes import ShapesSpec, generate_shapes

#: name -> spec. ``shapes`` is the measured default; ``shapes-tiny`` is for tests and smoke runs; ``shapes-small``
#: is the distillation regime where overfitting shows (80 training images, one class, dense small objects);
#: ``shapes-many`` the one of many fine-grained classes and large objects (32 classes: 8 glyphs x 4 hue bands, 2-8
#: objects of 40-200 px per image)
BUILTIN = {
    "shapes": ShapesSpec(),
    "shapes-tiny": ShapesSpec(n_train=16, n_val=8, imgsz=96, min_size=8, max_size=40, max_objects=6),
    "shapes-small": ShapesSpec(n_train=80, n_val=40, imgsz=320, seed=1, classes=1, min_objects=15, max_objects=40,
                               min_size=10, max_size=30),  # fmt: skip
    "shapes-many": ShapesSpec(n_train=400, n_val=100, imgsz=320, seed=2, tints=4, min_objects=2, max_objects=8,
                              min_size=40, max_size=200, distractors=3),  # fmt: skip
}


#: short names of public datasets -> (Ultralytics' data YAML, its folder under Ultralytics' datasets_dir)
PUBLIC = {"coco": ("coco.yaml", "coco"), "coco128": ("coco128.yaml", "coco128"), "voc": ("VOC.yaml", "VOC")}


def resolve_data(data: str | Path, root: str | Path = "datasets") -> str:
    """Return a data YAML path for ``data``.

    Args:
        data: a built-in name (``shapes``, ``shapes-tiny``: generated under ``root/<name>`` when missing), a public
            dataset name (``coco``, ``coco128``, ``voc``: Ultralytics' own YAMLs, downloaded by Ultralytics when
            online), or a data YAML path.
        root: where built-in datasets are generated.

    Raises:
        FileNotFoundError: a public dataset that is not on disk while offline.
    """
    import os

    s = str(data)
    if s in BUILTIN:
        return str(generate_shapes(Path(root) / s, BUILTIN[s]))
    key = s.lower().removesuffix(".yaml")
    if key in PUBLIC:
        from ultralytics.utils import SETTINGS

        yaml_name, folder = PUBLIC[key]
        on_disk = (Path(SETTINGS["datasets_dir"]) / folder).is_dir()
        if not on_disk and os.environ.get("YOLO_OFFLINE", "1").lower() in ("1", "true"):
            raise FileNotFoundError(
                f"{yaml_name} is not under {SETTINGS['datasets_dir']} and yolo_distill runs offline "
                f"(YOLO_OFFLINE=1); set YOLO_OFFLINE=0 to let Ultralytics download it, or pass a local data YAML"
            )
        return yaml_name
    return s


def require_data(data: str | Path, key: str = "data") -> str:
    """:func:`resolve_data`, then check that the data YAML exists (public names are Ultralytics' own YAMLs).

    Raises:
        FileNotFoundError: naming the key, the value and the fix.
    """
    resolved = resolve_data(data)
    if resolved.endswith((".yaml", ".yml")) and not Path(resolved).is_file() and Path(resolved).name == resolved:
        return resolved  # a bare YAML name: one of Ultralytics' own dataset YAMLs (resolved by Ultralytics)
    if not Path(resolved).is_file():
        raise FileNotFoundError(
            f"{key}={str(data)!r}: no such data YAML; pass a data YAML path or a built-in name ({', '.join(BUILTIN)})"
        )
    return resolved
