"""KD weight schedules: a factor in [0, 1] multiplying every KD term, as a function of training progress.

Each schedule is a function ``(t, final) -> factor`` of the progress ``t`` in [0, 1] (epoch / span, clipped) and
the factor ``final`` reached at the end of a decay, registered by the name a recipe's ``schedule.kind`` uses.
"""

from __future__ import annotations

import math

from yolo_distill.registry import SCHEDULES


@SCHEDULES.register("constant")
def constant(t: float, final: float) -> float:
    """1 throughout."""
    return 1.0


@SCHEDULES.register("linear_warmup")
def linear_warmup(t: float, final: float) -> float:
    """0 -> 1 linearly over the span."""
    return t


@SCHEDULES.register("cosine_warmup")
def cosine_warmup(t: float, final: float) -> float:
    """0 -> 1 along half a cosine over the span."""
    return 0.5 * (1 - math.cos(math.pi * t))


@SCHEDULES.register("linear_decay")
def linear_decay(t: float, final: float) -> float:
    """1 -> ``final`` linearly over the span."""
    return 1 - (1 - final) * t


@SCHEDULES.register("cosine_decay")
def cosine_decay(t: float, final: float) -> float:
    """1 -> ``final`` along half a cosine over the span."""
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
