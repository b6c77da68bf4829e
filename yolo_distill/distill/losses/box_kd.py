"""Box-regression distillation for heads without DFL (YOLO26, ``reg_max=1``) or with unequal ``reg_max``.

loss = sum_a w_a * (1 - IoU(s_a, t_a) + |s_a - t_a|_1 / stride_a) / sum_a w_a, over anchors where the teacher is
confident (w = teacher max class probability, zero below ``min_conf``); the prediction-mimicking form of box KD
(as in "Distilling Object Detectors with Fine-grained Feature Imitation"'s region focus, applied to outputs).
Shapes: decoded student and teacher boxes (B, A, 4) as xyxy in stride units; ``weight`` (B, A).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of paired xyxy boxes (..., 4) -> (...)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


@LOSSES.register("box_kd")
class BoxKD(KDLoss):
    """IoU + L1 between decoded student and teacher boxes at confident teacher anchors.

    Args:
        min_conf: anchors whose teacher confidence is below this get no weight.
        l1_weight: weight of the L1 part relative to the IoU part.
    """

    label: ClassVar[str] = "box"

    inputs: ClassVar[str] = "boxes"

    def __init__(self, min_conf: float = 0.05, l1_weight: float = 0.25) -> None:
        super().__init__()
        self.min_conf = float(min_conf)
        self.l1_weight = float(l1_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        w = ctx.get("weight")
        if w is None:
            w = torch.ones(student.shape[:2], device=student.device, dtype=student.dtype)
        w = w * (w >= self.min_conf)
        per = (1 - box_iou_pairs(student, teacher)) + self.l1_weight * (student - teacher).abs().mean(-1)
        return (per * w).sum() / w.sum().clamp(min=1e-6)
