"""The pruning algorithm: structured channel pruning of a DetectionModel with Torch-Pruning's dependency graph.

Pieces kept apart, as in Torch-Pruning: :mod:`~yolo_distill.compress.prepare` (what DepGraph may trace),
:mod:`~yolo_distill.compress.importance` (how filters are scored), :mod:`~yolo_distill.compress.allocation` (how the
ratio is spread over layers) and :func:`prune_model` here (one pruning step, to a ratio or a GFLOPs target).
Files, paths and reports are :mod:`~yolo_distill.compress.checkpoint`'s job.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_distill.compress.prepare import SplitCSP, fit_attention, merge_csp, split_csp
from yolo_distill.log import progress
from yolo_distill.registry import ALLOCATIONS, IMPORTANCE

SCOPES = ("backbone", "all")


@dataclass
class PruneConfig:
    """What to prune and how far.

    Attributes:
        ratio: fraction of channels removed from each prunable layer, in (0, 1).
        gflops: target GFLOPs at ``imgsz`` (instead of ``ratio``): the uniform ratio is searched to reach it.
        method: importance criterion: ``l1``, ``l2`` (filter magnitude), ``bn`` (BN scale), ``taylor``.
        scope: ``backbone`` (classic) or ``all`` (backbone and neck); Detect's output convs never change.
        round_to: channel counts are kept multiples of this.
        max_layer_ratio: no layer loses more than this fraction of its channels.
        protect: layer indices (``3``), module names (``model.3.cv1``) or ``head`` (the Detect layer: its inner
            convs keep their width, as in Torch-Pruning's YOLOv8 example) never pruned.
        imgsz: image size for GFLOPs.
        layer_ratios: per-layer channel ratios by layer index (non-uniform allocation, e.g. from a sensitivity
            scan); layers not listed use ``ratio``.
        allocation: a registered allocation (:mod:`~yolo_distill.compress.allocation`): ``uniform`` (every layer at
            ``ratio``), ``global`` (Torch-Pruning's global importance ranking decides how much each layer loses,
            ``ratio`` overall, capped by ``max_layer_ratio``) or ``sensitivity`` (a per-layer prune-and-validate
            scan gives each layer the largest ratio whose mAP drop stays within ``max_drop``; needs data).
        max_drop: mAP50-95 drop allowed per layer with ``allocation=sensitivity``.
        attention_heads: for carving: the head count of every Attention (in module order) to keep whole heads to;
            default: every head kept, each narrower.
    """

    ratio: float | None = 0.5
    gflops: float | None = None
    method: str = "l1"
    scope: str = "all"
    round_to: int = 8
    max_layer_ratio: float = 0.9
    protect: list[int | str] = field(default_factory=list)
    imgsz: int = 640
    layer_ratios: dict[int, float] = field(default_factory=dict)
    allocation: str = "uniform"
    max_drop: float = 0.02
    attention_heads: list[int] | None = None

    def __post_init__(self) -> None:
        num = (int, float)
        if self.gflops is not None:
            if isinstance(self.gflops, bool) or not isinstance(self.gflops, num) or not self.gflops > 0:
                raise ValueError(f"gflops={self.gflops!r} is not valid: expected a number > 0")
            self.ratio = None
        elif isinstance(self.ratio, bool) or not isinstance(self.ratio, num) or not 0 < float(self.ratio) < 1:
            raise ValueError(
                f"ratio={self.ratio!r} is not valid: expected a number in (0, 1); e.g. ratio=0.5 removes half the "
                f"channels"
            )
        if self.method not in IMPORTANCE:
            raise ValueError(f"method {self.method!r} is not one of {tuple(IMPORTANCE.names())}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation {self.allocation!r} is not one of {tuple(ALLOCATIONS.names())}")
        if not 0 <= self.max_drop < 1:
            raise ValueError(f"max_drop must be in [0, 1) (an mAP50-95 drop), got {self.max_drop}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r} is not one of {SCOPES}")
        if not isinstance(self.max_layer_ratio, num) or not 0 < self.max_layer_ratio < 1:
            raise ValueError(f"max_layer_ratio={self.max_layer_ratio!r} is not valid: expected a number in (0, 1)")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to={self.round_to!r} is not valid: expected an integer >= 1")
        if not isinstance(self.layer_ratios, dict):
            raise ValueError(f"layer_ratios={self.layer_ratios!r} is not valid: expected a mapping {{layer: ratio}}")
        self.layer_ratios = {int(k): float(v) for k, v in self.layer_ratios.items()}
        bad = {k: v for k, v in self.layer_ratios.items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"layer_ratios must be in [0, 1), got {bad}")


def model_stats(model: nn.Module, imgsz: int) -> dict[str, float]:
    """Parameters and GFLOPs (at ``imgsz``) of a detection model."""
    from ultralytics.utils.torch_utils import get_flops

    return {"params": int(sum(p.numel() for p in model.parameters())), "gflops": float(get_flops(model, imgsz))}


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d, by module name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@dataclass
class PlanContext:
    """What an allocation may need beyond the model and the config.

    Attributes:
        n_backbone: number of backbone layers.
        batches: real batches for gradient-based importance (``taylor``).
        data: data YAML, for allocations that validate (``sensitivity``).
        out_dir: where an allocation may write what it measured.
        cache: an allocation's results kept across the ratios of one GFLOPs search.
    """

    n_backbone: int
    batches: list[dict] = field(default_factory=list)
    data: str | None = None
    out_dir: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a Detect output for DepGraph (dicts of branches flattened, the input feature list skipped)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        out = out[1]
    if isinstance(out, dict):
        res: list[torch.Tensor] = []
        for k, v in out.items():
            if k != "feats":
                res += _flat_outputs(v)
        return res
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _ignored(model: nn.Module, cfg: PruneConfig, n_backbone: int) -> list[nn.Module]:
    from ultralytics.nn.modules.block import Attention

    det = model.model[-1]
    ignored: list[nn.Module] = []
    for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        seq = getattr(det, name, None)
        if seq is not None:
            ignored += [s[-1] for s in seq]  # the output convs: box and class channels are fixed
    for a in model.modules():  # DepGraph prunes the attention width; fit_attention then re-cuts the heads
        if isinstance(a, Attention):
            ignored += [a.qkv, a.pe]
    if cfg.scope == "backbone":
        for i, layer in enumerate(model.model):
            if i >= n_backbone:
                ignored += [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    names = dict(model.named_modules())
    for p in cfg.protect:
        if p == "head":  # the Detect layer, whatever its index in this family
            p = len(model.model) - 1
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit()):
            i = int(p)
            if not 0 <= i < len(model.model):
                raise ValueError(f"protect: layer index {i} does not exist (the model has {len(model.model)} layers)")
            ignored += [m for m in model.model[i].modules() if isinstance(m, nn.Conv2d)]
        elif mods := _named(names, p):
            ignored += [m for mod in mods for m in mod.modules() if isinstance(m, nn.Conv2d)]
        else:
            raise ValueError(
                f"protect: no layer named {p!r}; use a layer index, a name like 'model.3.conv', or 'head' (Detect)"
            )
    return ignored


def _named(names: dict[str, nn.Module], name: str) -> list[nn.Module]:
    """The modules a ``protect=`` name means: the module itself, or, for the ``cv1`` of a C2f / C3k2 / C2PSA block
    split for pruning (``model.2.cv1``, ``model.2.cv1.conv``), both of its halves (``cv1a``, ``cv1b``)."""
    if name in names:
        return [names[name]]
    block, sep, rest = name.partition(".cv1")
    if sep and (not rest or rest.startswith(".")) and isinstance(names.get(block), SplitCSP):
        return [names[f"{block}.{half}{rest}"] for half in ("cv1a", "cv1b") if f"{block}.{half}{rest}" in names]
    return []


def _taylor_batches(data: str | None, imgsz: int, batches: int) -> list[dict]:
    """A few real batches of 4 for Taylor importance (letterboxed training images with their labels)."""
    from yolo_distill.data.images import dataset_images, letterbox_images, read_labels

    files = dataset_images(data, batches * 4, split="train")
    if not files:
        raise ValueError("method=taylor needs data= with training images (it scores filters by loss gradients)")
    out = []
    for b in range(0, len(files), 4):
        chunk = files[b : b + 4]
        labels = [torch.from_numpy(read_labels(f)) for f in chunk]
        # letterboxing a square training image to a square size keeps normalised xywh as they are
        lab = torch.cat(labels) if labels else torch.zeros(0, 5)
        out.append(
            {
                "img": torch.from_numpy(letterbox_images(chunk, imgsz)),
                "batch_idx": torch.cat([torch.full((len(lb),), float(j)) for j, lb in enumerate(labels)]),
                "cls": lab[:, :1],
                "bboxes": lab[:, 1:],
            }
        )
    return out


def prune_step(model: nn.Module, cfg: PruneConfig, ratio: float, n_backbone: int, batches: list[dict],
               layer_ratios: dict[int, float], global_pruning: bool = False) -> None:  # fmt: skip
    """Split the CSP blocks of ``model`` and run one Torch-Pruning step on it, in place (left split)."""
    import torch_pruning as tp

    model.eval()
    split_csp(model)
    for p in model.parameters():
        p.requires_grad_(True)
    per_layer = {}
    for i, r in layer_ratios.items():
        if not 0 <= i < len(model.model):
            raise ValueError(f"layer_ratios: layer {i} is not a layer index (0..{len(model.model) - 1})")
        per_layer[model.model[i]] = r  # absolute; a GFLOPs search moves only the unlisted layers
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, 3, 64, 64),
        importance=IMPORTANCE.get(cfg.method)(),
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer or None,
        max_pruning_ratio=cfg.max_layer_ratio,
        ignored_layers=_ignored(model, cfg, n_backbone),
        round_to=cfg.round_to,
        global_pruning=global_pruning,
        output_transform=_flat_outputs,
    )
    if cfg.method == "taylor":
        from ultralytics.cfg import get_cfg

        model.train()
        model.args = get_cfg()
        model.criterion = None
        model.zero_grad()
        for batch in batches:
            loss, _ = model.loss(batch)
            loss.sum().backward()
        model.criterion = None
        model.eval()
    pruner.step()
    model.zero_grad(set_to_none=True)


def layer_widths(model: nn.Module) -> list[int]:
    """Output channels summed over each layer's convolutions, per layer index."""
    return [sum(m.out_channels for m in layer.modules() if isinstance(m, nn.Conv2d)) for layer in model.model]


def _prune_once(model: nn.Module, cfg: PruneConfig, ratio: float, ctx: PlanContext) -> nn.Module:
    """Prune ``model`` in place at channel ``ratio`` with the configured allocation; returns it with stock classes."""
    layer_ratios = {**ALLOCATIONS.get(cfg.allocation)(model, cfg, ratio, ctx), **cfg.layer_ratios}
    prune_step(model, cfg, ratio, ctx.n_backbone, ctx.batches, layer_ratios)
    fit_attention(model, heads=cfg.attention_heads)
    merge_csp(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def prune_model(
    model: nn.Module, cfg: PruneConfig, data: str | None = None, batches: int = 4, out_dir: Path | None = None
) -> tuple[nn.Module, dict]:
    """Prune a DetectionModel (a pruned copy is returned; ``model`` is untouched).

    Args:
        model: the DetectionModel.
        cfg: what to prune and how far.
        data: data YAML, for ``taylor`` batches and the ``sensitivity`` allocation.
        batches: batches of 4 images for ``taylor``.
        out_dir: where an allocation may write what it measured (the sensitivity table and plot).

    Returns:
        The pruned model and a report dict (params/GFLOPs before and after, per-layer channels, ratio used).
    """
    if type(model).__name__ != "DetectionModel":
        raise ValueError(f"only detection models can be pruned, got a {type(model).__name__}")
    n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model) // 2
    before = model_stats(model, cfg.imgsz)
    from yolo_distill.compress.importance import NEEDS_BATCHES

    tb = _taylor_batches(data, 64, batches) if cfg.method in NEEDS_BATCHES else []
    ctx = PlanContext(n_backbone, tb, data, out_dir)
    if cfg.gflops is not None:
        if cfg.gflops >= before["gflops"]:
            raise ValueError(
                f"gflops={cfg.gflops} is not below the model's {before['gflops']:.2f} GFLOPs at imgsz {cfg.imgsz}"
            )

        # GFLOPs is not monotonic in the ratio near the cap (groups that would round to zero are skipped), so
        # scan a coarse grid first, then bisect between the last grid ratio above the target and the first below
        def gflops_at(r: float) -> float:
            return model_stats(_prune_once(deepcopy(model), cfg, r, ctx), cfg.imgsz)["gflops"]

        grid = [r for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8) if r <= cfg.max_layer_ratio]
        seen = {}
        hi = None
        for r in progress(grid, f"GFLOPs search for {cfg.gflops:.2f}"):
            seen[r] = gflops_at(r)
            if seen[r] <= cfg.gflops:
                hi = r
                break
        if hi is None:
            raise ValueError(
                f"gflops={cfg.gflops} is unreachable: with max_layer_ratio={cfg.max_layer_ratio} and scope={cfg.scope} "
                f"the model keeps at least {min(seen.values()):.2f} GFLOPs; raise max_layer_ratio, use scope=all, "
                f"protect fewer layers, or aim higher"
            )
        lo = max([r for r in seen if r < hi], default=0.0)
        for _ in range(5):
            mid = (lo + hi) / 2
            if gflops_at(mid) <= cfg.gflops:
                hi = mid
            else:
                lo = mid
        ratio = hi
    else:
        ratio = float(cfg.ratio)
    pruned = _prune_once(deepcopy(model), cfg, ratio, ctx)
    after = model_stats(pruned, cfg.imgsz)
    ch_before, ch_after = conv_channels(model), conv_channels(pruned)
    report = {
        "config": asdict(cfg),
        "channel_ratio_used": ratio,
        "before": before,
        "after": after,
        "params_ratio": after["params"] / before["params"],
        "gflops_ratio": after["gflops"] / before["gflops"],
        "layers": {k: [ch_before[k], ch_after.get(k)] for k in ch_before if ch_before[k] != ch_after.get(k)},
    }
    return pruned, report
