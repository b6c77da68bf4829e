"""Allocations: how a pruning ratio is spread over the layers, by name (``allocation=``).

Each is a function ``(model, cfg, ratio, ctx) -> {layer index: ratio}`` returning per-layer ratios for the layers
it decides (absolute; a GFLOPs search then moves only the unlisted ones); ``cfg.layer_ratios`` given by the user
take precedence over it.
"""

from __future__ import annotations

from copy import deepcopy

from torch import nn

from yolo_distill.compress.pruner import PlanContext, PruneConfig, layer_widths, prune_step
from yolo_distill.registry import ALLOCATIONS


@ALLOCATIONS.register("uniform")
def uniform(model: nn.Module, cfg: PruneConfig, ratio: float, ctx: PlanContext) -> dict[int, float]:
    """Every prunable layer at ``ratio``."""
    return {}


@ALLOCATIONS.register("global")
def global_ranking(model: nn.Module, cfg: PruneConfig, ratio: float, ctx: PlanContext) -> dict[int, float]:
    """Per-layer ratios from Torch-Pruning's global importance ranking, read off a throwaway copy.

    A global ranking may keep different counts in the two halves of a CSP block, which the stock block cannot
    hold; applying the plan per layer (every group of a layer at that layer's ratio) keeps them equal.
    """
    plan = deepcopy(model)
    before = layer_widths(plan)
    prune_step(plan, cfg, ratio, ctx.n_backbone, ctx.batches, {}, global_pruning=True)
    after = layer_widths(plan)
    return {i: 1 - a / b for i, (a, b) in enumerate(zip(after, before)) if b}


@ALLOCATIONS.register("sensitivity")
def by_sensitivity(model: nn.Module, cfg: PruneConfig, ratio: float, ctx: PlanContext) -> dict[int, float]:
    """Scan each layer alone (prune, validate), then give each the largest ratio within ``cfg.max_drop``.

    The scan runs once per :func:`~yolo_distill.compress.pruner.prune_model` call (kept in ``ctx.cache``) and writes
    ``sensitivity.csv``/``.json``/``.png`` into ``ctx.out_dir`` when given.
    """
    from yolo_distill.compress import sensitivity

    if not ctx.data:
        raise ValueError("allocation=sensitivity needs data= (each layer is validated after pruning it alone)")
    if "sensitivity" not in ctx.cache:
        result = sensitivity.scan(model, ctx.data, method=cfg.method, imgsz=cfg.imgsz, out_dir=ctx.out_dir)
        ctx.cache["sensitivity"] = sensitivity.allocate(result, cfg.max_drop, cap=cfg.max_layer_ratio)
    return dict(ctx.cache["sensitivity"])
