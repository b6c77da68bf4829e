"""Pearson-correlation feature distillation (Cao et al., "PKD: General Distillation Framework for Object
Detectors via Pearson Correlation Coefficient", NeurIPS 2022).

loss = mean((norm(s) - norm(t))^2) / 2, norm = per-image, per-channel standardisation over (H, W); equal to
1 - Pearson correlation averaged over channels, so it ignores the scale of either network's features and works
across architectures. Shapes: student (connected) and teacher features (B, C, H, W).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


def _standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


@LOSSES.register("pkd")
class PearsonKD(KDLoss):
    """MSE of standardised feature maps (= 1 - Pearson correlation)."""

    label: ClassVar[str] = "pkd"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(_standardise(student), _standardise(teacher)) / 2
