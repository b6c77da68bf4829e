"""Fine-grained pruning: zeros inside dense weights, at a chosen granularity, kept through fine-tuning.

Filter pruning (:mod:`~yolo_distill.compress.pruner`) removes whole output channels and makes the model smaller.
The granularities here zero parts of a convolution weight ``W`` of shape ``[O, I, kh, kw]`` and leave its shape as
it is (Han et al. 2015, "Learning both Weights and Connections"; Mao et al. 2017, "Exploring the Granularity of
Sparsity in CNNs"; Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" for N:M):

| granularity | unit zeroed | unit score (``l1`` / ``l2``) | score shape |
|---|---|---|---|
| ``kernel`` | one ``kh x kw`` kernel: one input channel of one filter | ``||W[o, i, :, :]||`` | ``[O, I]`` |
| ``vector`` | one kernel row | ``||W[o, i, r, :]||`` | ``[O, I, kh]`` |
| ``weight`` | one weight | ``|W[o, i, r, c]|`` | ``[O, I, kh, kw]`` |
| ``nm`` | all but the ``n`` largest of ``m`` consecutive inputs at one ``(o, r, c)`` | ``|W|`` | ``[O,kh,kw,I/m,m]`` |

Every layer in scope loses the same fraction of its units (``sparsity``; ``1 - n/m`` for ``nm``), the lowest
scored first. The result is a stock checkpoint with zeros in dense weights and a plain-data record of which
weights are sparse (:func:`yolo_distill.checkpoints.mark_sparse`), from which the trainer re-applies the zeros after
every optimizer step. Dense runtimes (ONNX Runtime, OpenVINO on CPU) run the same FLOPs: zeros buy a smaller
compressed file, and speed only where a runtime has sparse kernels (2:4 on NVIDIA Ampere and later).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from yolo_distill.checkpoints import mark_sparse
from yolo_distill.compress.pruner import PruneConfig, _ignored
from yolo_distill.config import require
from yolo_distill.registry import GRANULARITIES

FINE_METHODS = ("l1", "l2")


def _drop_lowest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A keep-mask of ``scores``' shape with the ``round(sparsity * numel)`` lowest scores False."""
    k = int(round(sparsity * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        keep[scores.flatten().argsort(stable=True)[:k]] = False
    return keep.view_as(scores)


@GRANULARITIES.register("kernel")
def kernel_mask(w: torch.Tensor, sparsity: float, p: int = 1, n: int = 2, m: int = 4) -> torch.Tensor:
    """Whole ``kh x kw`` kernels: scores ``[O, I]``."""
    return _drop_lowest(w.norm(p=p, dim=(2, 3)), sparsity)[:, :, None, None].expand_as(w)


@GRANULARITIES.register("vector")
def vector_mask(w: torch.Tensor, sparsity: float, p: int = 1, n: int = 2, m: int = 4) -> torch.Tensor:
    """Kernel rows: scores ``[O, I, kh]``."""
    return _drop_lowest(w.norm(p=p, dim=3), sparsity)[..., None].expand_as(w)


@GRANULARITIES.register("weight")
def weight_mask(w: torch.Tensor, sparsity: float, p: int = 1, n: int = 2, m: int = 4) -> torch.Tensor:
    """Single weights (unstructured magnitude pruning): scores ``[O, I, kh, kw]``."""
    return _drop_lowest(w.abs(), sparsity)


@GRANULARITIES.register("nm")
def nm_mask(w: torch.Tensor, sparsity: float = 0.5, p: int = 1, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M: in every group of ``m`` consecutive input channels at one ``(o, r, c)``, the ``n`` largest ``|W|`` kept.

    ``W [O, I, kh, kw]`` -> ``[O, kh, kw, I/m, m]``; needs ``I % m == 0``.
    """
    o, i, kh, kw = w.shape
    g = w.abs().permute(0, 2, 3, 1).reshape(o, kh, kw, i // m, m)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(-1, g.topk(n, dim=-1).indices, True)
    return keep.reshape(o, kh, kw, i).permute(0, 3, 1, 2)


@dataclass
class SparseConfig:
    """What to zero and how much.

    Attributes:
        granularity: ``kernel``, ``vector``, ``weight`` or ``nm`` (see the module docstring).
        sparsity: fraction of units zeroed in every layer in scope, in (0, 1); ``nm`` uses ``1 - n/m``.
        method: ``l1`` or ``l2`` norm of a unit (for single weights both are ``|w|``).
        n, m: ``nm``: ``n`` weights kept of every ``m`` consecutive input channels (``n < m``).
        scope: ``backbone`` or ``all`` (backbone and neck; Detect's output convs and DFL always stay dense).
        protect: layer indices, module names or ``head`` kept dense.
    """

    granularity: str = "kernel"
    sparsity: float = 0.5
    method: str = "l1"
    n: int = 2
    m: int = 4
    scope: str = "all"
    protect: list[int | str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.granularity in GRANULARITIES, "granularity", self.granularity,
                f"one of filter, {', '.join(GRANULARITIES.names())}")  # fmt: skip
        require(self.method in FINE_METHODS, "method", self.method,
                f"{' or '.join(FINE_METHODS)} with granularity={self.granularity} (bn and taylor score whole "
                f"filters: use granularity=filter)")  # fmt: skip
        for k in ("n", "m"):
            v = getattr(self, k)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, k, v, "an integer >= 1")
        if self.granularity == "nm":
            require(self.n < self.m, "n", self.n, f"fewer kept weights than the group size m={self.m} (e.g. n=2 m=4)")
            self.sparsity = 1 - self.n / self.m
        ok = isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
        require(ok and 0 < self.sparsity < 1, "ratio", self.sparsity,
                "a sparsity in (0, 1): the fraction of weights zeroed in each layer, e.g. ratio=0.5")  # fmt: skip


def sparse_layers(model: nn.Module, cfg: SparseConfig, n_backbone: int) -> dict[str, nn.Conv2d]:
    """The convolutions that get zeros, by module name: trainable ones not ignored by scope or protect."""
    skip = {id(m) for m in _ignored(model, PruneConfig(scope=cfg.scope, protect=list(cfg.protect)), n_backbone)}
    det = model.model[-1]
    dfl = getattr(det, "dfl", None)
    skip |= {id(m) for m in (dfl.modules() if dfl is not None else [])}
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in skip}


def sparsify_model(model: nn.Module, cfg: SparseConfig) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with zeros at ``cfg``'s granularity (``model`` untouched) and its report.

    Returns:
        The sparse model (marked with :func:`~yolo_distill.checkpoints.mark_sparse`) and a report: per-layer
        ``[nonzero, total, sparsity]``, layers skipped and why, total and non-zero parameters.
    """
    if type(model).__name__ != "DetectionModel":
        raise ValueError(f"only detection models can be pruned, got a {type(model).__name__}")
    nonzero_before = sum(int(q.count_nonzero()) for q in model.parameters())
    out = deepcopy(model).float().eval()
    n_backbone = len((getattr(out, "yaml", None) or {}).get("backbone", [])) or len(out.model) // 2
    fn: Callable = GRANULARITIES.get(cfg.granularity)
    p = 1 if cfg.method == "l1" else 2
    layers, skipped, params = {}, {}, []
    with torch.no_grad():
        for name, conv in sparse_layers(out, cfg, n_backbone).items():
            w = conv.weight
            if cfg.granularity == "nm" and w.shape[1] % cfg.m:
                skipped[name] = f"{w.shape[1]} input channels per group, not a multiple of m={cfg.m}"
                continue
            w.mul_(fn(w, cfg.sparsity, p=p, n=cfg.n, m=cfg.m))
            nnz = int(w.count_nonzero())
            layers[name] = [nnz, w.numel(), round(1 - nnz / w.numel(), 4)]
            params.append(f"{name}.weight")
    if not layers:
        raise ValueError(f"granularity={cfg.granularity}: no layer in scope={cfg.scope} can be made sparse ({skipped})")
    mark_sparse(out, {"granularity": cfg.granularity, "sparsity": cfg.sparsity, "params": params})
    total = sum(q.numel() for q in out.parameters())
    nonzero = sum(int(q.count_nonzero()) for q in out.parameters())
    in_scope = sum(v[1] for v in layers.values())
    report = {
        "config": asdict(cfg),
        "params": total,
        "nonzero_params_before": nonzero_before,
        "nonzero_params": nonzero,
        "sparsity_in_scope": 1 - sum(v[0] for v in layers.values()) / in_scope,
        "sparsity_whole_model": 1 - nonzero / total,
        "layers": layers,
        "skipped": skipped,
    }
    return out, report
