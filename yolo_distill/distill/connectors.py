"""Connectors match student feature channels to the teacher's. Training-only: never part of the student."""

from __future__ import annotations

import torch
from torch import nn

from yolo_distill.registry import CONNECTORS


class ConvConnector(nn.Module):
    """1x1 conv + BN from ``c_in`` student channels to ``c_out`` teacher channels (FitNet's regressor)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MGDConnector(nn.Module):
    """MGD's masking + generation block: align channels, drop random positions, regenerate the teacher map.

    Args:
        c_in: student channels.
        c_out: teacher channels.
        mask_ratio: fraction of spatial positions zeroed in training.
    """

    def __init__(self, c_in: int, c_out: int, mask_ratio: float = 0.65) -> None:
        super().__init__()
        self.align = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.mask_ratio = mask_ratio
        self.generate = nn.Sequential(
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.align(x)
        if self.training and self.mask_ratio > 0:
            b, _, h, w = x.shape
            keep = (torch.rand(b, 1, h, w, device=x.device) >= self.mask_ratio).to(x.dtype)
            x = x * keep
        return self.generate(x)


@CONNECTORS.register("conv")
def conv_connector(c_in: int, c_out: int, needs_same_channels: bool, mask_ratio: float) -> nn.Module:
    """A 1x1 conv + BN when the loss compares channels one to one, else nothing."""
    return ConvConnector(c_in, c_out) if needs_same_channels else nn.Identity()


@CONNECTORS.register("mgd")
def mgd_connector(c_in: int, c_out: int, needs_same_channels: bool, mask_ratio: float) -> nn.Module:
    """MGD's masked generation block."""
    return MGDConnector(c_in, c_out, mask_ratio)


@CONNECTORS.register("none")
def no_connector(c_in: int, c_out: int, needs_same_channels: bool, mask_ratio: float) -> nn.Module:
    """Nothing: the loss sees the student's channels as they are."""
    if needs_same_channels and c_in != c_out:
        raise ValueError(
            f"connector 'none' needs equal channels, but the student has {c_in} and the teacher {c_out}; "
            f"use connector: conv"
        )
    return nn.Identity()


def build_connector(kind: str, c_in: int, c_out: int, needs_same_channels: bool, mask_ratio: float = 0.65) -> nn.Module:
    """The connector for one student/teacher feature pair.

    Args:
        kind: a registered connector name (``conv``, ``mgd``, ``none``).
        c_in: student channels.
        c_out: teacher channels.
        needs_same_channels: whether the loss compares channels one to one.
        mask_ratio: MGD's masking ratio.
    """
    return CONNECTORS.get(kind)(c_in, c_out, needs_same_channels, mask_ratio)
