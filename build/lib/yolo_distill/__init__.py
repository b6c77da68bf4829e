"""yolo_distill: distil, prune and export compact Ultralytics YOLO detectors."""

from __future__ import annotations

from yolo_distill import offline  # noqa: F401  (first: sets Ultralytics' offline environment before its import)

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy public API: importing yolo_distill stays cheap, and Ultralytics loads only when used
    if name == "DistillationTrainer":
        from yolo_distill.distill.trainer import DistillationTrainer

        return DistillationTrainer
    if name in ("distill", "prune", "export", "generate_shapes"):
        from yolo_distill import api

        return getattr(api, name)
    raise AttributeError(f"module 'yolo_distill' has no attribute {name!r}")


__all__ = ["DistillationTrainer", "distill", "prune", "export", "generate_shapes", "__version__"]
