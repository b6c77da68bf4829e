"""Knowledge distillation for Ultralytics YOLO detectors.

``DistillationTrainer`` is loaded on first use, so importing a loss or a connector does not import the trainer.
"""

from __future__ import annotations

__all__ = ["DistillationTrainer"]


def __getattr__(name: str):
    if name == "DistillationTrainer":
        from yolo_distill.distill.trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module 'yolo_distill.distill' has no attribute {name!r}")
