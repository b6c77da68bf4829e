"""Knowledge distillation for Ultralytics YOLO detectors."""

from __future__ import annotations

from yolo_distill.distill.trainer import DistillationTrainer

__all__ = ["DistillationTrainer"]
