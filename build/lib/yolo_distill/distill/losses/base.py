"""Base class of distillation losses: pure tensor math, ``forward(student, teacher, **ctx) -> Tensor``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class KDLoss(nn.Module):
    """A distillation loss. It knows tensors, never layers or module paths.

    Attributes:
        inputs: which tensors the trainer pairs for it: ``"scores"`` (class logits, (B, C, A)), ``"dist"``
            (box-edge distributions, (B, 4*R, A)), ``"boxes"`` (decoded boxes, (B, A, 4)) or ``"feature"``
            (feature maps, (B, C, H, W), already matched in channels by a connector).
        needs_same_channels: for ``"feature"`` inputs, whether student channels must be matched to the teacher's.
    """

    inputs: ClassVar[str] = "feature"
    needs_same_channels: ClassVar[bool] = True
    registry_name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # short name for log columns (kd_<label> fits an 11-character column)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss (>= 0, zero when ``student`` equals ``teacher``)."""
        raise NotImplementedError


def weighted_mean(per_item: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_item`` (B, A), weighted by ``weight`` (B, A) when given."""
    if weight is None:
        return per_item.mean()
    return (per_item * weight).sum() / weight.sum().clamp(min=1e-6)
