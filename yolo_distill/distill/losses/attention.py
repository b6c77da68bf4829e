"""Attention mimicking: spatial attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention",
ICLR 2017) plus channel attention as in FGD (Yang et al., "Focal and Global Knowledge Distillation for Detectors",
CVPR 2022).

spatial: a = normalize_HW(mean_C |F|^p); loss_s = mean_b ||a_s - a_t||_2^2
channel: c = C * softmax_C(mean_HW |F| / T); loss_c = mean |c_s - c_t|
Shapes: student and teacher features (B, C, H, W) with equal (H, W) and, for the channel part, equal C: across
widths the student's features reach it through the term's connector (a 1x1 conv, like every channel-wise term);
with ``channel_weight: 0`` the term is spatial only and needs no connector.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss
from yolo_distill.registry import LOSSES


def spatial_attention(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(B, C, H, W) -> L2-normalised spatial attention (B, H*W)."""
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def channel_attention(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C, H, W) -> channel attention (B, C) that sums to C."""
    c = x.shape[1]
    return c * F.softmax(x.abs().mean(dim=(2, 3)) / temperature, dim=1)


@LOSSES.register("attention")
class AttentionKD(KDLoss):
    """Spatial and channel attention mimicking (never silently spatial only).

    Args:
        p: power of the activation in the spatial map.
        temperature: temperature of the channel attention softmax (> 0).
        channel_weight: weight of the channel part (0: spatial only, no connector needed).
    """

    label: ClassVar[str] = "att"

    def __init__(self, p: float = 2.0, temperature: float = 0.5, channel_weight: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)
        self.temperature = float(temperature)
        self.channel_weight = float(channel_weight)
        if self.channel_weight < 0:
            raise ValueError(f"channel_weight must be >= 0, got {channel_weight}")
        self.needs_same_channels = self.channel_weight > 0  # the channel part compares channels one to one

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        if student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"attention needs equal spatial sizes, got {tuple(student.shape)} vs {tuple(teacher.shape)}"
            )
        loss = (spatial_attention(student, self.p) - spatial_attention(teacher, self.p)).pow(2).sum(1).mean()
        if self.channel_weight:
            if student.shape[1] != teacher.shape[1]:
                raise ValueError(
                    f"attention's channel part needs equal channels, got {student.shape[1]} vs {teacher.shape[1]}: "
                    f"give the term a connector (connector: conv) or set params: {{channel_weight: 0}}"
                )
            cs = channel_attention(student, self.temperature)
            ct = channel_attention(teacher, self.temperature)
            loss = loss + self.channel_weight * (cs - ct).abs().mean()
        return loss
