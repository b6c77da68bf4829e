"""Localization distillation (Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022).

loss = T^2 * mean_edges KL(softmax(t_e / T) || softmax(s_e / T)) per anchor, weighted by teacher confidence,
where each of the 4 box edges has a discrete distribution over R = reg_max bins (DFL heads).
Shapes: student and teacher box distributions (B, 4 * R, A), with the same R.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss, weighted_mean
from yolo_distill.registry import LOSSES


@LOSSES.register("ld")
class LocalizationKD(KDLoss):
    """KL divergence between box-edge distributions.

    Args:
        temperature: softening temperature T > 0.
        conf_weighted: weight each anchor by the teacher's max class probability.
    """

    label: ClassVar[str] = "ld"

    inputs: ClassVar[str] = "dist"

    def __init__(self, temperature: float = 2.0, conf_weighted: bool = True) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.conf_weighted = bool(conf_weighted)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(
                f"ld needs equal box-distribution shapes, got {tuple(student.shape)} vs {tuple(teacher.shape)}"
            )
        b, c, a = student.shape
        t = self.temperature
        s = student.view(b, 4, c // 4, a)
        tt = teacher.view(b, 4, c // 4, a)
        log_ps = F.log_softmax(s / t, dim=2)
        log_pt = F.log_softmax(tt / t, dim=2)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=2).mean(dim=1) * t * t  # (B, A)
        return weighted_mean(kl, ctx.get("weight") if self.conf_weighted else None)
