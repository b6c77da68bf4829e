"""Structured channel pruning of Ultralytics detection checkpoints with Torch-Pruning's dependency graph.

Pieces kept apart, as in Torch-Pruning: :mod:`~yolo_distill.prune.prepare` (what DepGraph may trace),
:func:`importance` (how filters are scored) and :func:`prune_model` (allocation to a ratio or a GFLOPs target).
"""

from __future__ import annotations

import json
import logging
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_distill.prune.prepare import fit_attention, merge_csp, split_csp

log = logging.getLogger("yolo_distill")

METHODS = ("l1", "l2", "bn", "taylor")
SCOPES = ("backbone", "all")
PRUNE_KEYS = (
    "model", "ratio", "gflops", "method", "scope", "data", "out", "round_to", "max_layer_ratio", "protect",
    "imgsz", "batches", "val", "allocation", "max_drop", "layer_ratios",
)  # fmt: skip


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
        allocation: ``uniform`` (every layer at ``ratio``) or ``global`` (Torch-Pruning's global importance
            ranking decides how much each layer loses, ``ratio`` overall, capped by ``max_layer_ratio``).
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

    def __post_init__(self) -> None:
        if self.gflops is not None:
            if not self.gflops > 0:
                raise ValueError(f"gflops must be > 0, got {self.gflops}")
            self.ratio = None
        elif self.ratio is None or not 0 < float(self.ratio) < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}; e.g. ratio=0.5 removes half the channels")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")
        if self.allocation not in ("uniform", "global"):
            raise ValueError(f"allocation must be 'uniform' or 'global' here, got {self.allocation!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r} is not one of {SCOPES}")
        if not 0 < self.max_layer_ratio < 1:
            raise ValueError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
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


def importance(method: str):
    """The Torch-Pruning importance for ``method``."""
    import torch_pruning as tp

    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.TaylorImportance()


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
        elif p in names:
            ignored += [m for m in names[p].modules() if isinstance(m, nn.Conv2d)]
        else:
            raise ValueError(
                f"protect: no layer named {p!r}; use a layer index, a name like 'model.3.conv', or 'head' (Detect)"
            )
    return ignored


def _taylor_batches(model: nn.Module, data: str | None, imgsz: int, batches: int) -> list[dict]:
    """A few real batches for Taylor importance (letterboxed images with their labels)."""
    from yolo_distill.export.onnx import dataset_images, letterbox_images

    files = dataset_images(data, batches * 4, split="train")
    if not files:
        raise ValueError("method=taylor needs data= with training images (it scores filters by loss gradients)")
    out = []
    for b in range(0, len(files), 4):
        chunk = files[b : b + 4]
        img = torch.from_numpy(letterbox_images(chunk, imgsz))
        idx, cls, boxes = [], [], []
        for j, f in enumerate(chunk):
            lf = Path(str(f).replace("/images/", "/labels/")).with_suffix(".txt")
            if lf.exists():
                for line in lf.read_text().splitlines():
                    v = line.split()
                    if len(v) == 5:
                        idx.append(j)
                        cls.append(float(v[0]))
                        boxes.append([float(x) for x in v[1:]])
        out.append(
            {
                "img": img,
                "batch_idx": torch.tensor(idx, dtype=torch.float32),
                "cls": torch.tensor(cls, dtype=torch.float32).view(-1, 1),
                "bboxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            }
        )
    return out


def _step(model: nn.Module, cfg: PruneConfig, ratio: float, n_backbone: int, batches: list[dict],
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
        importance=importance(cfg.method),
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


def _layer_widths(model: nn.Module) -> list[int]:
    return [sum(m.out_channels for m in layer.modules() if isinstance(m, nn.Conv2d)) for layer in model.model]


def _global_plan(model: nn.Module, cfg: PruneConfig, ratio: float, n_backbone: int, batches: list[dict]) -> dict:
    """Per-layer ratios from Torch-Pruning's global ranking, read off a throwaway copy.

    A global ranking may keep different counts in the two halves of a CSP block, which the stock block cannot
    hold; applying the plan per layer (every group of a layer at that layer's ratio) keeps them equal.
    """
    plan = deepcopy(model)
    before = _layer_widths(plan)
    _step(plan, cfg, ratio, n_backbone, batches, {}, global_pruning=True)
    after = _layer_widths(plan)
    return {i: 1 - a / b for i, (a, b) in enumerate(zip(after, before)) if b}


def _prune_once(model: nn.Module, cfg: PruneConfig, ratio: float, n_backbone: int, batches: list[dict]) -> nn.Module:
    """Prune ``model`` in place at channel ``ratio`` (uniform or global); returns it with stock classes only."""
    layer_ratios = dict(cfg.layer_ratios)
    if cfg.allocation == "global":
        layer_ratios = {**_global_plan(model, cfg, ratio, n_backbone, batches), **layer_ratios}
    _step(model, cfg, ratio, n_backbone, batches, layer_ratios)
    fit_attention(model)
    merge_csp(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def prune_model(
    model: nn.Module, cfg: PruneConfig, data: str | None = None, batches: int = 4
) -> tuple[nn.Module, dict]:
    """Prune a DetectionModel (a pruned copy is returned; ``model`` is untouched).

    Returns:
        The pruned model and a report dict (params/GFLOPs before and after, per-layer channels, ratio used).
    """
    if type(model).__name__ != "DetectionModel":
        raise ValueError(f"only detection models can be pruned, got a {type(model).__name__}")
    n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model) // 2
    before = model_stats(model, cfg.imgsz)
    tb = _taylor_batches(model, data, 64, batches) if cfg.method == "taylor" else []
    if cfg.gflops is not None:
        if cfg.gflops >= before["gflops"]:
            raise ValueError(
                f"gflops={cfg.gflops} is not below the model's {before['gflops']:.2f} GFLOPs at imgsz {cfg.imgsz}"
            )

        # GFLOPs is not monotonic in the ratio near the cap (groups that would round to zero are skipped), so
        # scan a coarse grid first, then bisect between the last grid ratio above the target and the first below
        def gflops_at(r: float) -> float:
            return model_stats(_prune_once(deepcopy(model), cfg, r, n_backbone, tb), cfg.imgsz)["gflops"]

        grid = [r for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8) if r <= cfg.max_layer_ratio]
        seen = {}
        hi = None
        for r in grid:
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
    pruned = _prune_once(deepcopy(model), cfg, ratio, n_backbone, tb)
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


def prune_checkpoint(
    model: str,
    ratio: float | None = 0.5,
    gflops: float | None = None,
    method: str = "l1",
    scope: str = "all",
    data: str | None = None,
    out: str | None = None,
    round_to: int = 8,
    max_layer_ratio: float = 0.9,
    protect: list | str | int | None = None,
    imgsz: int = 640,
    batches: int = 4,
    val: bool = False,
    allocation: str = "uniform",
    max_drop: float = 0.02,
    layer_ratios: dict | None = None,
) -> dict:
    """Prune a checkpoint and write ``out`` (a stock Ultralytics checkpoint) and ``prune_report.json`` beside it.

    Everything is checked before any file is written; the source checkpoint is never modified.

    Args:
        model: the source ``*.pt``.
        ratio: channel ratio removed per layer, in (0, 1) (ignored when ``gflops`` is given).
        gflops: GFLOPs target at ``imgsz``.
        method: ``l1``, ``l2``, ``bn`` or ``taylor``.
        scope: ``backbone`` or ``all``.
        data: data YAML (for ``taylor``, and for mAP before/after with ``val=True``).
        out: output path (default: ``<model>_pruned.pt``); never overwritten.
        round_to: channel multiple.
        max_layer_ratio: per-layer cap on the removed fraction.
        protect: layer indices, module names or ``head`` never pruned (a list, or comma-separated).
        imgsz: image size for GFLOPs and validation.
        batches: batches of 4 images for ``taylor``.
        val: validate before and after (needs ``data``).
        allocation: ``uniform`` (every layer at ``ratio``), ``global`` (a global importance ranking decides each
            layer's share) or ``sensitivity`` (scan each layer alone, then give each the largest ratio whose mAP
            drop stays within ``max_drop``; writes ``sensitivity.*`` beside ``out``).
        max_drop: mAP50-95 drop allowed per layer with ``allocation=sensitivity``.
        layer_ratios: explicit per-layer ratios ``{layer index: ratio}`` (non-uniform allocation).

    Returns:
        The report (also printed as a table and written as JSON).
    """
    from yolo_distill.checkpoints import load_model, save_stock_checkpoint

    src = Path(model)
    if isinstance(protect, str):
        protect = [p.strip() for p in protect.split(",") if p.strip()]
    elif isinstance(protect, int):
        protect = [protect]
    if allocation not in ("uniform", "global", "sensitivity"):
        raise ValueError(f"allocation must be 'uniform', 'global' or 'sensitivity', got {allocation!r}")
    if allocation == "sensitivity" and not data:
        raise ValueError("allocation=sensitivity needs data= (each layer is validated after pruning it alone)")
    cfg = PruneConfig(ratio=ratio, gflops=gflops, method=method, scope=scope, round_to=round_to,
                      max_layer_ratio=max_layer_ratio, protect=list(protect or []), imgsz=imgsz,
                      layer_ratios=dict(layer_ratios or {}),
                      allocation="global" if allocation == "global" else "uniform")  # fmt: skip
    dst = Path(out) if out else src.with_name(f"{src.stem}_pruned.pt")
    report_path = (
        dst.with_name("prune_report.json") if dst.stem == "pruned" else dst.with_name(f"{dst.stem}_report.json")
    )
    if dst.resolve() == src.resolve():
        raise ValueError("out= must differ from model=: the source checkpoint is never overwritten")
    for p in (dst, report_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; choose another out= or move it away")
    net = load_model(src)
    if allocation == "sensitivity":
        from yolo_distill.prune import sensitivity

        result = sensitivity.scan(net, data, method=method, imgsz=imgsz, out_dir=dst.parent / f"{dst.stem}_sensitivity")
        cfg.layer_ratios = sensitivity.allocate(result, max_drop, cap=max_layer_ratio)
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    already = ckpt.get("prune_report") if isinstance(ckpt, dict) else None
    pruned, report = prune_model(net, cfg, data=data, batches=batches)
    report["source"] = str(src)
    report["already_pruned"] = already is not None
    if val:
        if not data:
            raise ValueError("val=True needs data=")
        report["map50_95"] = {"before": _val(net, data, imgsz), "after_prune": _val(pruned, data, imgsz)}
    train_args = {k: v for k, v in (getattr(net, "args", {}) or {}).items() if k in ("data", "imgsz", "task")}
    pruned.names = getattr(net, "names", None)
    save_stock_checkpoint(pruned, dst, train_args=train_args, prune_report=report)
    report["out"] = str(dst)
    report_path.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    return report


def _val(model: nn.Module, data: str, imgsz: int) -> float:
    """mAP50-95 of ``model`` on ``data``'s val split (through a temporary stock checkpoint)."""
    import tempfile

    from ultralytics import YOLO

    from yolo_distill.checkpoints import save_stock_checkpoint
    from yolo_distill.data.builtin import resolve_data

    with tempfile.TemporaryDirectory() as d:
        p = save_stock_checkpoint(model, Path(d) / "m.pt")
        m = YOLO(str(p)).val(data=resolve_data(data), imgsz=imgsz, batch=8, device="cpu", plots=False, verbose=False)
        return float(m.box.map)


def _print(r: dict) -> None:
    b, a = r["before"], r["after"]
    again = ", already pruned before" if r["already_pruned"] else ""
    c = r["config"]
    print(f"\npruned {r['source']} -> {r.get('out')} (method {c['method']}, scope {c['scope']}, ", end="")
    print(f"channel ratio {r['channel_ratio_used']:.3f}{again})")
    print(f"{'':<10}{'params':>12}{'GFLOPs':>10}")
    print(f"{'before':<10}{b['params']:>12,}{b['gflops']:>10.2f}")
    print(f"{'after':<10}{a['params']:>12,}{a['gflops']:>10.2f}")
    if "map50_95" in r:
        print(f"mAP50-95 before {r['map50_95']['before']:.4f}, right after pruning {r['map50_95']['after_prune']:.4f}")
