"""Binary (per-class sigmoid) logit distillation, the form that fits YOLO's BCE classification.

KL_a = T^2 * sum_c [p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))], p = sigmoid(logit / T): the
Bernoulli KL per class, summed over classes. Reduced like YOLO's own classification loss (``normalize="teacher"``):
loss = sum_a KL_a / max(sum_a max_c p_t, 1), i.e. normalised by the teacher's soft count of positives, so the term
has the scale of the detection loss however many background anchors there are; or averaged over anchors
(``normalize="mean"``, optionally weighted by teacher confidence). Shapes: student and teacher logits (B, C, A).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from yolo_distill.distill.losses.base import KDLoss, weighted_mean
from yolo_distill.registry import LOSSES


@LOSSES.register("binary_kd")
class BinaryKD(KDLoss):
    """Per-class Bernoulli KL between sigmoid scores.

    Args:
        temperature: softening temperature T > 0.
        normalize: ``teacher`` (sum over anchors / teacher's soft positive count) or ``mean`` (over anchors).
        conf_weighted: with ``normalize="mean"``, weight each anchor by the teacher's max class probability.
    """

    inputs: ClassVar[str] = "scores"
    label: ClassVar[str] = "bkd"

    def __init__(self, temperature: float = 1.0, normalize: str = "teacher", conf_weighted: bool = False) -> None:
        super().__init__()
        if normalize not in ("teacher", "mean"):
            raise ValueError(f"binary_kd normalize must be 'teacher' or 'mean', got {normalize!r}")
        self.temperature = float(temperature)
        self.normalize = normalize
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
        if self.normalize == "teacher":
            return per_anchor.sum() / teacher.sigmoid().amax(dim=1).sum().clamp(min=1.0)
        return weighted_mean(per_anchor, ctx.get("weight") if self.conf_weighted else None)
