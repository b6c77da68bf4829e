"""Masked generative distillation (Yang et al., "Masked Generative Distillation", ECCV 2022).

loss = sum((G(M * s) - t)^2) / B, where M randomly masks student positions and G is a small generator; both
live in the ``mgd`` connector (training only), so this loss receives the generated map. Shapes: generated
student and teacher features (B, C, H, W).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


@LOSSES.register("mgd")
class MaskedGenerativeKD(KDLoss):
    """Summed squared error between the generated student map and the teacher map, per image.

    Args:
        mask_ratio: fraction of student positions the ``mgd`` connector masks (read by the trainer).
    """

    label: ClassVar[str] = "mgd"

    def __init__(self, mask_ratio: float = 0.65) -> None:
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mgd mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        return (student - teacher).pow(2).sum() / student.shape[0]
