"""Built-in datasets by name: generated on first use into a folder of the working directory."""

from __future__ import annotations

from pathlib import Path

from yolo_distill.data.shapes import ShapesSpec, generate_shapes

#: name -> spec. ``shapes`` is the measured default; ``shapes-tiny`` is for tests and smoke runs.
BUILTIN = {
    "shapes": ShapesSpec(),
    "shapes-tiny": ShapesSpec(n_train=16, n_val=8, imgsz=96, min_size=8, max_size=40, max_objects=6),
}


def resolve_data(data: str | Path, root: str | Path = "datasets") -> str:
    """Return a data YAML path for ``data``: a built-in name is generated under ``root/<name>`` when missing.

    Args:
        data: a built-in name (``shapes``, ``shapes-tiny``) or a data YAML path / Ultralytics dataset name.
        root: where built-in datasets are generated.
    """
    s = str(data)
    if s in BUILTIN:
        return str(generate_shapes(Path(root) / s, BUILTIN[s]))
    return s
