"""Ultralytics' exporter, run so that nothing appears half-written: on a copy of the checkpoint in a hidden folder
beside it, its output renamed into place at the end (a file or a model folder alike)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def ultralytics_export(ckpt: Path, out: Path, fmt: str, imgsz: int, **kw: Any) -> Path:
    """Export ``ckpt`` to ``fmt`` with Ultralytics and move the result to ``out``; returns ``out``.

    A kill at any moment leaves no torn file or folder at ``out``, and nothing else beside the checkpoint.
    """
    from ultralytics import YOLO

    work = out.parent / f".{out.name}.exporting"
    shutil.rmtree(work, ignore_errors=True)  # our own leftover of a killed export
    work.mkdir(parents=True)
    try:
        copy = work / ckpt.name
        shutil.copy2(ckpt, copy)
        exported = Path(YOLO(str(copy)).export(format=fmt, imgsz=imgsz, device="cpu", **kw))
        exported = exported if exported.is_absolute() else work / exported.name
        exported.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
