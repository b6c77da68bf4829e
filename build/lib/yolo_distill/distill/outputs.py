"""Normalise the training outputs of YOLOv8 / YOLO11 / YOLO26 detection heads into one shape.

Everything that depends on the head's family (one2many / one2one branches, ``reg_max``) is handled here, so the
criterion and the losses never branch on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ultralytics.utils.tal import dist2bbox, make_anchors


@dataclass
class HeadOutput:
    """One head branch's raw outputs.

    Attributes:
        scores: class logits (B, nc, A).
        dist: box regression (B, 4 * reg_max, A): edge distributions with DFL, distances without.
        feats: the maps feeding Detect, one (B, C_i, H_i, W_i) per stride.
        reg_max: bins per box edge (1 = no DFL, as in YOLO26).
    """

    scores: torch.Tensor
    dist: torch.Tensor
    feats: list[torch.Tensor]

    @property
    def reg_max(self) -> int:
        return self.dist.shape[1] // 4

    def confidence(self) -> torch.Tensor:
        """Max class probability per anchor (B, A)."""
        return self.scores.sigmoid().amax(dim=1)

    def decoded_boxes(self, strides: torch.Tensor) -> torch.Tensor:
        """Boxes as xyxy in units of each anchor's stride (B, A, 4)."""
        anchors, _ = make_anchors(self.feats, strides, 0.5)
        b, c, a = self.dist.shape
        r = c // 4
        if r > 1:
            proj = torch.arange(r, device=self.dist.device, dtype=self.dist.dtype)
            ltrb = self.dist.view(b, 4, r, a).softmax(2).mul(proj.view(1, 1, r, 1)).sum(2)
        else:
            ltrb = self.dist
        return dist2bbox(ltrb.transpose(1, 2), anchors.unsqueeze(0), xywh=False, dim=-1)


def _branch(d: dict) -> HeadOutput:
    return HeadOutput(scores=d["scores"], dist=d["boxes"], feats=list(d["feats"]))


def head_outputs(preds: dict | tuple | list) -> dict[str, HeadOutput]:
    """Split a Detect head's output (train-mode dict, or eval-mode ``(y, dict)``) into named branches.

    Returns:
        ``{"main": ...}`` for one-branch heads; ``{"main": one2many, "one2one": one2one}`` for end-to-end heads.
        ``main`` is always the branch whose gradients reach the backbone (YOLO26's one2one runs on detached maps).
    """
    if isinstance(preds, (tuple, list)):
        preds = preds[1]
    if not isinstance(preds, dict):
        raise TypeError(f"expected the Detect head's dict output, got {type(preds).__name__}")
    if "one2many" in preds:
        return {"main": _branch(preds["one2many"]), "one2one": _branch(preds["one2one"])}
    return {"main": _branch(preds)}
