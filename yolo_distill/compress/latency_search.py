"""Latency-targeted pruning: per-layer widths chosen against latencies measured on the target runtime.

NetAdapt-style (Yang et al. 2018, "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications"), in
two measured passes instead of NetAdapt's many fine-tuned ones:

1. **What each layer buys.** Every prunable layer is pruned alone at ``probe`` (channel ratio) and the model is timed
   on the runtime: ``dlat_i`` ms saved, ``dimp_i`` the fraction of the model's filter magnitude (the pruning
   criterion) removed. A layer's value is ``v_i = max(dlat_i, 0) / dimp_i``: latency bought per unit of lost
   importance. A layer whose lone gain is lost in the timer's noise (nothing measurable) is valued below every layer
   that buys time: it shrinks last, only where those at ``max_layer_ratio`` cannot reach the budget (on a small
   input a lone layer may save less than the noise while many together save plenty).
2. **How far.** Each layer gets ``r_i = min(s * v_i / max(v), max_layer_ratio)``; the scale ``s`` is bisected on the
   measured latency of the whole pruned model until it lands in ``[(1 - tol) * budget, budget]``.

``measure(model) -> ms`` is supplied by the caller (the checkpoint workflow times an exported model on the runtime);
every measurement made is returned in the report as the latency curve.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

from torch import nn

from yolo_distill.compress.pruner import PruneConfig, prune_model
from yolo_distill.log import progress


def _magnitude(model: nn.Module) -> float:
    return float(sum(m.weight.detach().abs().sum() for m in model.modules() if isinstance(m, nn.Conv2d)))


def latency_prune(model: nn.Module, cfg: PruneConfig, budget_ms: float | Callable[[float], float],
                  measure: Callable[[nn.Module], float],
                  probe: float = 0.5, tol: float = 0.05, steps: int = 10,
                  layers: list[int] | None = None) -> tuple[nn.Module, dict]:  # fmt: skip
    """Prune ``model`` (a copy; ``model`` untouched) so that ``measure`` gives at most ``budget_ms``, within ``tol``.

    Args:
        model: the DetectionModel.
        cfg: the pruning config (method, scope, protect, round_to, max_layer_ratio); its ratio is not used.
        budget_ms: the latency to reach, or a function of the source's measured latency giving it (a relative
            budget such as half the source's).
        measure: model -> milliseconds on the target runtime.
        probe: channel ratio at which each layer is pruned alone to measure what it buys.
        tol: landing band below the budget (0.05: within 5 %).
        steps: bisection steps on the scale.
        layers: the layer indices the search may shrink (default: every prunable layer and Detect's inner convs).

    Returns:
        The pruned model and a report: source and final latency, per-layer ``[ms saved, importance lost, ratio]``,
        the layers whose lone gain was not measurable (``unmeasured``: valued below the rest, so shrunk last), and
        every measurement as ``[scale, ms]``.
    """
    from yolo_distill.compress.sensitivity import prunable_layers

    base = measure(model)
    budget_ms = float(budget_ms(base)) if callable(budget_ms) else budget_ms
    if budget_ms >= base:
        raise ValueError(f"latency={budget_ms} ms is not below the source's {base:.2f} ms on this runtime; aim lower")
    every = prunable_layers(model) + [len(model.model) - 1]  # Detect's inner convs: a layer of their own
    layers = layers or every
    mag0 = _magnitude(model)

    def pruned_at(ratios: dict[int, float]) -> nn.Module:
        lr = {j: 0.0 for j in every} | {i: r for i, r in ratios.items() if r > 0}  # unlisted layers stay whole
        c = PruneConfig(ratio=0.5, method=cfg.method, scope=cfg.scope, round_to=cfg.round_to, imgsz=cfg.imgsz,
                        max_layer_ratio=max(cfg.max_layer_ratio, probe), protect=list(cfg.protect),
                        layer_ratios=lr)  # fmt: skip
        return prune_model(deepcopy(model), c)[0]

    floor = measure(pruned_at({i: cfg.max_layer_ratio for i in layers}))  # one measurement rejects the impossible
    if floor > budget_ms:
        raise ValueError(
            f"latency={budget_ms} ms is unreachable: with every layer at max_layer_ratio={cfg.max_layer_ratio} the "
            f"model runs {floor:.2f} ms; raise max_layer_ratio, use scope=all, protect fewer layers, or aim higher"
        )
    gains: dict[int, list[float]] = {}
    unmeasured: list[int] = []  # layers that lose importance but whose lone gain the timer did not show
    for i in progress(layers, f"latency of each layer pruned alone (probe {probe})"):
        try:
            m = pruned_at({i: probe})
        except ValueError:
            continue  # a layer the config protects or cannot prune
        saved, lost = base - measure(m), 1 - _magnitude(m) / mag0
        if lost > 0:
            gains[i] = [max(saved, 0.0), lost]
            if saved <= 0:
                unmeasured.append(i)
    if len(unmeasured) == len(gains):
        raise ValueError("no layer pruned alone made the model measurably faster on this runtime; the latency "
                         "search cannot steer (try more threads of noise-free timing, a larger imgsz, or gflops=)")
    value = {i: s / lost for i, (s, lost) in gains.items() if i not in unmeasured}
    top, least = max(value.values()), min(value.values())
    value |= {i: least / 2 for i in unmeasured}  # shrunk last, once every measured layer is near its cap

    def ratios(scale: float) -> dict[int, float]:
        return {i: min(scale * v / top, cfg.max_layer_ratio) for i, v in value.items()}

    curve: list[list[float]] = []
    hi_scale = cfg.max_layer_ratio * top / min(value.values())  # every chosen layer at the cap
    floor_model = pruned_at(ratios(hi_scale))
    floor = measure(floor_model)
    curve.append([hi_scale, floor])
    if floor > budget_ms:
        raise ValueError(
            f"latency={budget_ms} ms is unreachable: the smallest model this search makes (every layer it may shrink "
            f"at max_layer_ratio={cfg.max_layer_ratio}) runs {floor:.2f} ms; raise max_layer_ratio, use "
            f"scope=all, protect fewer layers, or aim higher"
        )
    lo, hi, best = 0.0, hi_scale, (hi_scale, floor, floor_model)
    for _ in progress(range(steps), f"latency search for {budget_ms} ms"):
        mid = (lo + hi) / 2
        m = pruned_at(ratios(mid))
        ms = measure(m)
        curve.append([mid, ms])
        if ms <= budget_ms:
            hi = mid
            if ms > best[1] or best[1] > budget_ms:
                best = (mid, ms, m)
            if ms >= (1 - tol) * budget_ms:
                break
        else:
            lo = mid
    scale, ms, pruned = best
    report = {
        "budget_ms": budget_ms,
        "source_ms": base,
        "final_ms": ms,
        "within_tol": (1 - tol) * budget_ms <= ms <= budget_ms,
        "layers": {i: [gains[i][0], gains[i][1], r] for i, r in ratios(scale).items()},
        "unmeasured": unmeasured,
        "curve": curve,
    }
    return pruned, report

