"""Distillation losses, one per file, registered by name in :data:`LOSSES`."""

from __future__ import annotations

from yolo_distill.distill.losses import (  # noqa: F401  (importing registers each loss)
    attention,
    binary_kd,
    box_kd,
    cwd,
    ld,
    logit_kl,
    mgd,
    mimic,
    pkd,
)
from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES

__all__ = ["LOSSES", "KDLoss"]
