"""Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021).

loss = tau^2 / (B * C) * sum_{b,c} KL(softmax_HW(t_bc / tau) || softmax_HW(s_bc / tau)): each channel is turned
into a distribution over spatial positions. Shapes: student (connected) and teacher features (B, C, H, W).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


@LOSSES.register("cwd")
class ChannelWiseKD(KDLoss):
    """KL between per-channel spatial softmax maps.

    Args:
        tau: temperature > 0.
    """

    label: ClassVar[str] = "cwd"

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        b, c, h, w = student.shape
        s = student.reshape(b * c, h * w) / self.tau
        t = teacher.reshape(b * c, h * w) / self.tau
        log_pt = F.log_softmax(t, dim=1)
        kl = (log_pt.exp() * (log_pt - F.log_softmax(s, dim=1))).sum(dim=1)
        return kl.mean() * self.tau**2
