"""Softmax logit distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

loss = T^2 * KL(softmax(t / T) || softmax(s / T)), over classes, averaged over anchors (optionally weighted by
teacher confidence). Shapes: student and teacher class logits (B, C, A).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss, weighted_mean
from yolo_distill.registry import LOSSES


@LOSSES.register("logit_kl")
class SoftmaxKD(KDLoss):
    """Temperature-scaled KL divergence between softmax class distributions.

    Args:
        temperature: softening temperature T > 0.
        conf_weighted: weight each anchor by the teacher's max class probability (focuses on objects).
    """

    label: ClassVar[str] = "kl"

    inputs: ClassVar[str] = "scores"

    def __init__(self, temperature: float = 2.0, conf_weighted: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.conf_weighted = bool(conf_weighted)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_ps = F.log_softmax(student / t, dim=1)
        log_pt = F.log_softmax(teacher / t, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1) * t * t  # (B, A)
        return weighted_mean(kl, ctx.get("weight") if self.conf_weighted else None)
