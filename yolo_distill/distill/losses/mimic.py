"""Feature mimicking (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

loss = mean((connector(s) - t)^2). Shapes: student (already connected) and teacher features (B, C, H, W).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


@LOSSES.register("mimic")
class FeatureMSE(KDLoss):
    """Mean squared error between matched feature maps."""

    label: ClassVar[str] = "mse"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)
