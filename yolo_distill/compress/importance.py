"""Importance criteria: how a filter (output channel group) is scored, by recipe name (``method=``).

Each entry is a factory returning a Torch-Pruning importance object; DepGraph sums it over every layer a channel
group couples.
"""

from __future__ import annotations

from typing import Any

from yolo_distill.registry import IMPORTANCE


@IMPORTANCE.register("l1")
def l1() -> Any:
    """Filter magnitude, L1 norm."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1)


@IMPORTANCE.register("l2")
def l2() -> Any:
    """Filter magnitude, L2 norm."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=2)


@IMPORTANCE.register("bn")
def bn() -> Any:
    """BatchNorm scale (network slimming; pair with ``sparsity=`` in training)."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()


@IMPORTANCE.register("taylor")
def taylor() -> Any:
    """First-order Taylor: |weight x gradient| from a few real batches (needs ``data=``)."""
    import torch_pruning as tp

    return tp.importance.TaylorImportance()


#: criteria that score filters from loss gradients on real batches
NEEDS_BATCHES = ("taylor",)
