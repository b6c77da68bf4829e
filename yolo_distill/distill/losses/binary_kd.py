"""Binary (per-class sigmoid) logit distillation, the form that fits YOLO's BCE classification.

loss = T^2 * sum_c [p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))], p = sigmoid(logit / T): the
Bernoulli KL per class, summed over classes and averaged over anchors (optionally weighted by teacher confidence).
Used for dense detectors e.g. in "Distilling Object Detectors via Decoupled Features" and LD's classification KD.
Shapes: student and teacher class logits (B, C, A).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss, weighted_mean
from yolo_distill.distill.losses.registry import LOSSES


@LOSSES.register("binary_kd")
class BinaryKD(KDLoss):
    """Per-class Bernoulli KL between sigmoid scores.

    Args:
        temperature: softening temperature T > 0.
        conf_weighted: weight each anchor by the teacher's max class probability.
    """

    label: ClassVar[str] = "bkd"

    inputs: ClassVar[str] = "scores"

    def __init__(self, temperature: float = 1.0, conf_weighted: bool = False) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.conf_weighted = bool(conf_weighted)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **ctx: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        s, tt = student / t, teacher / t
        pt = tt.sigmoid()
        # KL = BCE(s, pt) - H(pt); both terms in their numerically stable logits form
        kl = F.binary_cross_entropy_with_logits(s, pt, reduction="none") - F.binary_cross_entropy_with_logits(
            tt, pt, reduction="none"
        )
        per_anchor = kl.sum(dim=1) * t * t  # (B, A)
        return weighted_mean(per_anchor, ctx.get("weight") if self.conf_weighted else None)
