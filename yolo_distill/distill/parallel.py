"""Keeping the distillation's training-only state identical on every DDP rank.

The connectors (and, online, the co-trained teacher) live beside the student, outside the module
DistributedDataParallel wraps: each rank builds them from its own seed. So before the first step rank 0's values
are broadcast to every rank, and after each backward their gradients are averaged over the ranks, as DDP does for
the student's; with the same optimizer steps, every rank then holds the same values for the whole run.
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_distill.distill.criterion import DistillContext


def _shared(ctx: DistillContext) -> list[nn.Module]:
    return [ctx.connectors, *([ctx.teacher] if ctx.online else [])]


def broadcast_distill_state(ctx: DistillContext, src: int = 0) -> None:
    """Copy rank ``src``'s connector (and online teacher) parameters and buffers to every rank."""
    for module in _shared(ctx):
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, src=src)


def average_distill_grads(ctx: DistillContext, world_size: int) -> list[nn.Parameter]:
    """Average the gradients of the connectors (and online teacher) over the ranks; returns those parameters.

    Every rank holds a gradient for the same parameters (the same recipe runs everywhere): a parameter without one
    takes part as zeros, so no rank waits on a collective another skipped.
    """
    params = [p for module in _shared(ctx) for p in module.parameters() if p.requires_grad]
    if world_size > 1:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= world_size
    return [p for p in params if p.grad is not None]
