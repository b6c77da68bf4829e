"""Low-rank factorization: a convolution as two thinner ones, from the SVD of its weight.

A convolution ``W [O, I, kh, kw]`` (stride ``s``) read as the matrix ``M[(i, y), (o, x)] = W[o, i, y, x]`` of shape
``[I*kh, O*kw]`` has the SVD ``M = U S V^T``; keeping rank ``r``,
``W[o, i, y, x] ~= sum_r V1[r, i, y] V2[o, r, x]`` with ``V1 = (U_r sqrt(S_r))^T`` and ``V2 = sqrt(S_r) V_r^T``: a
``kh x 1`` conv ``I -> r`` (stride ``(s, 1)``) then a ``1 x kw`` conv ``r -> O`` (stride ``(1, s)``) (spatial SVD,
Jaderberg et al. 2014, "Speeding up CNNs with Low Rank Expansions"; Tai et al. 2016). For a 1x1 conv this is the
plain SVD into two 1x1 convs. Per output pixel the cost goes from ``O*I*kh*kw`` to ``r*(I*kh*s + O*kw)``
multiply-adds, so a layer gains only below a break-even rank; layers that would keep more than ``1 - min_gain`` of
their FLOPs are skipped and listed.

The rank of each layer comes from ``energy`` (the smallest rank keeping that fraction of ``sum S^2``), a fixed
``rank``, or a ``gflops`` target (one energy for all layers, searched). The factorized layer is
``nn.Sequential(Conv2d(kh x 1), Conv)``: the first conv is plain torch, the second is the layer's own Ultralytics
``Conv`` (its BatchNorm and activation kept) with the ``1 x kw`` conv inside, so stock Ultralytics loads, fuses,
validates and exports it.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from yolo_distill.checkpoints import load_model, write_text_atomic
from yolo_distill.config import require, require_int
from yolo_distill.log import LOGGER, table

#: attributes Ultralytics' DetectionModel reads on each top-level layer (kept when a layer is replaced)
_LAYER_ATTRS = ("f", "i", "type", "np")


@dataclass
class LowRankConfig:
    """How far to factorize.

    Attributes:
        energy: per layer, the smallest rank keeping this fraction of the squared singular values, in (0, 1].
        rank: a fixed rank for every layer (capped at the layer's full rank), >= 1.
        gflops: a GFLOPs target at ``imgsz``: one energy for all layers is searched to reach it.
        scope: ``backbone`` or ``all``.
        protect: layer indices, module names or ``head`` left whole.
        min_gain: a layer is factorized only if it saves at least this fraction of its FLOPs.
        imgsz: image size for GFLOPs.
    """

    energy: float | None = None
    rank: int | None = None
    gflops: float | None = None
    scope: str = "all"
    protect: list[int | str] = field(default_factory=list)
    min_gain: float = 0.1
    imgsz: int = 640

    def __post_init__(self) -> None:
        given = [k for k in ("energy", "rank", "gflops") if getattr(self, k) is not None]
        if not given:
            self.energy = 0.9
        require(len(given) <= 1, given[-1] if given else "energy", getattr(self, given[-1]) if given else None,
                "one of energy=, rank= or gflops=, not several")  # fmt: skip
        num = isinstance(self.energy, (int, float)) and not isinstance(self.energy, bool)
        if self.energy is not None:
            require(num and 0 < self.energy <= 1, "energy", self.energy, "a fraction in (0, 1], e.g. energy=0.9")
        if self.rank is not None:
            require_int("rank", self.rank, 1)
        if self.gflops is not None:
            ok = isinstance(self.gflops, (int, float)) and not isinstance(self.gflops, bool) and self.gflops > 0
            require(ok, "gflops", self.gflops, "a number > 0 (or a fraction of the source's, gflops=0.5x)")
        require(self.scope in ("backbone", "all"), "scope", self.scope, "backbone or all")
        ok = isinstance(self.min_gain, (int, float)) and 0 <= self.min_gain < 1
        require(ok, "min_gain", self.min_gain, "a fraction in [0, 1)")
        require_int("imgsz", self.imgsz, 32)


@dataclass
class _Layer:
    """One candidate convolution: its SVD (computed once) and its output size at ``imgsz``."""

    name: str
    module: nn.Module  # the Ultralytics Conv
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    pixels: int = 0

    @property
    def full(self) -> int:
        return int(self.s.numel())

    def flops(self, r: int | None) -> float:
        """Multiply-adds of the layer at rank ``r`` (``None``: the original conv)."""
        c = self.module.conv
        o, i, kh, kw = c.weight.shape
        if r is None:
            return o * i * kh * kw * self.pixels
        return r * (i * kh * c.stride[1] + o * kw) * self.pixels

    def rank_for(self, energy: float) -> int:
        e = torch.cumsum(self.s**2, 0) / (self.s**2).sum()
        return int(min(self.full, int((e < energy - 1e-9).sum()) + 1))


def _candidates(model: nn.Module, cfg: LowRankConfig) -> dict[str, nn.Module]:
    """Ultralytics ``Conv`` layers that can be factorized: dense (groups 1, no dilation), not attention, not the
    CSP blocks' ``cv1`` (kept whole so the factorized model can still be channel-pruned), not out of scope."""
    from ultralytics.nn.modules.block import Attention
    from ultralytics.nn.modules.conv import Conv

    from yolo_distill.compress.pruner import PruneConfig, _ignored

    n_backbone = len((getattr(model, "yaml", None) or {}).get("backbone", [])) or len(model.model) // 2
    ignored = {id(m) for m in _ignored(model, PruneConfig(scope=cfg.scope, protect=list(cfg.protect)), n_backbone)}
    skip = set()
    for m in model.modules():
        if isinstance(m, Attention):
            skip |= {id(x) for x in m.modules()}
        cv1 = getattr(m, "cv1", None)
        if isinstance(cv1, Conv) and hasattr(m, "c") and cv1.conv.out_channels == 2 * m.c:
            skip.add(id(cv1))  # the CSP split conv (C2f, C3k2, C2PSA)
    out = {}
    for name, m in model.named_modules():
        if type(m) is not Conv or id(m) in skip or not isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            continue
        c = m.conv
        if c.groups != 1 or tuple(c.dilation) != (1, 1) or id(c) in ignored:
            continue
        out[name] = m
    return out


def _measure(model: nn.Module, layers: dict[str, _Layer], imgsz: int) -> None:
    """Each candidate's output pixels at ``imgsz`` (one forward pass with hooks)."""
    hooks = [lay.module.conv.register_forward_hook(lambda mod, i, o, lay=lay: setattr(lay, "pixels", o[0, 0].numel()))
             for lay in layers.values()]  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        for h in hooks:
            h.remove()


def _factor(lay: _Layer, r: int) -> nn.Sequential:
    """``Sequential(Conv2d kh x 1, Conv with a 1 x kw conv)`` of rank ``r`` replacing ``lay.module``."""
    m = deepcopy(lay.module)
    c = m.conv
    o, i, kh, kw = c.weight.shape
    root = lay.s[:r].sqrt()
    v1 = (lay.u[:, :r] * root).T.reshape(r, i, kh, 1)
    v2 = (root[:, None] * lay.vh[:r]).reshape(r, o, kw).permute(1, 0, 2).unsqueeze(2)
    first = nn.Conv2d(i, r, (kh, 1), stride=(c.stride[0], 1), padding=(c.padding[0], 0), bias=False)
    second = nn.Conv2d(r, o, (1, kw), stride=(1, c.stride[1]), padding=(0, c.padding[1]), bias=c.bias is not None)
    with torch.no_grad():
        first.weight.copy_(v1.to(c.weight.dtype))
        second.weight.copy_(v2.to(c.weight.dtype))
        if c.bias is not None:
            second.bias.copy_(c.bias)
    m.conv = second
    seq = nn.Sequential(first, m)
    for a in _LAYER_ATTRS:  # a top-level layer: the model's forward reads these on it
        if a in vars(lay.module):  # Ultralytics' own attributes (not nn.Module.type, a method bound to the old conv)
            setattr(seq, a, getattr(lay.module, a))
    return seq


def _ranks(layers: dict[str, _Layer], energy: float | None, rank: int | None, min_gain: float):
    """Per layer: the rank to use, or the reason it stays whole."""
    ranks, skipped = {}, {}
    for name, lay in layers.items():
        r = min(rank, lay.full) if rank is not None else lay.rank_for(float(energy))
        keep = lay.flops(r) / max(lay.flops(None), 1)
        if keep > 1 - min_gain:
            skipped[name] = f"rank {r} of {lay.full} would keep {keep:.0%} of its FLOPs"
        else:
            ranks[name] = r
    return ranks, skipped


def factorize_model(model: nn.Module, cfg: LowRankConfig) -> tuple[nn.Module, dict]:
    """A factorized copy of ``model`` (``model`` untouched) and its report.

    Returns:
        The model and a report: per-layer ``[rank, full rank, energy kept]``, skipped layers and why, params and
        GFLOPs before and after.
    """
    from yolo_distill.compress.pruner import model_stats

    if type(model).__name__ != "DetectionModel":
        raise ValueError(f"only detection models can be factorized, got a {type(model).__name__}")
    out = deepcopy(model).float().eval()
    layers = {}
    for name, m in _candidates(out, cfg).items():
        w = m.conv.weight.detach()
        o, i, kh, kw = w.shape
        u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(i * kh, o * kw).double(), full_matrices=False)
        layers[name] = _Layer(name, m, u, s, vh)
    _measure(out, layers, cfg.imgsz)
    before = model_stats(out, cfg.imgsz)
    energy = cfg.energy
    if cfg.gflops is not None:
        energy = _search_energy(layers, cfg, before["gflops"])
    ranks, skipped = _ranks(layers, energy, cfg.rank, cfg.min_gain)
    if not ranks:
        raise ValueError(
            f"no layer gains from factorization at energy={energy} rank={cfg.rank} (min_gain={cfg.min_gain}): "
            f"lower energy= or rank=, or lower min_gain="
        )
    named = dict(out.named_modules())
    for name, r in ranks.items():
        parent, _, attr = name.rpartition(".")
        setattr(named[parent], attr, _factor(layers[name], r))
    for p in out.parameters():
        p.requires_grad_(False)
    after = model_stats(out, cfg.imgsz)
    report = {
        "config": asdict(cfg),
        "energy_used": energy,
        "before": before,
        "after": after,
        "params_ratio": after["params"] / before["params"],
        "gflops_ratio": after["gflops"] / before["gflops"],
        "layers": {n: [r, layers[n].full, float((layers[n].s[:r] ** 2).sum() / (layers[n].s ** 2).sum())]
                   for n, r in ranks.items()},  # fmt: skip
        "skipped": skipped,
    }
    return out.eval(), report


def _search_energy(layers: dict[str, _Layer], cfg: LowRankConfig, gflops: float) -> float:
    """The largest energy whose factorized model has at most ``cfg.gflops`` GFLOPs (analytic count, bisection)."""

    def gflops_at(e: float) -> float:
        ranks, _ = _ranks(layers, e, None, cfg.min_gain)
        saved = sum(layers[n].flops(None) - layers[n].flops(r) for n, r in ranks.items())
        return gflops - 2 * saved / 1e9  # Ultralytics counts 2 FLOPs per multiply-add

    if cfg.gflops >= gflops:
        raise ValueError(f"gflops={cfg.gflops} is not below the model's {gflops:.2f} GFLOPs at imgsz {cfg.imgsz}")
    lo, hi = 1e-3, 1.0
    if gflops_at(lo) > cfg.gflops:
        raise ValueError(
            f"gflops={cfg.gflops} is unreachable by factorization: even rank 1 everywhere keeps "
            f"{gflops_at(lo):.2f} GFLOPs (the convs it cannot factorize stay); aim higher, or prune channels first"
        )
    for _ in range(30):
        mid = (lo + hi) / 2
        if gflops_at(mid) <= cfg.gflops:
            lo = mid
        else:
            hi = mid
    return lo


def lowrank_checkpoint(
    model: str,
    energy: float | None = None,
    gflops: float | str | None = None,
    rank: int | None = None,
    scope: str = "all",
    protect: list | str | int | None = None,
    min_gain: float = 0.1,
    data: str | None = None,
    out: str | None = None,
    imgsz: int = 640,
    val: bool = False,
) -> dict:
    """Factorize checkpoint ``model`` and write ``out`` (a stock checkpoint) with ``<out stem>_report.json``.

    Everything is checked before any file is written; the source is never modified. Fine-tune the result with
    ``yolo-distill train model=OUT.pt [teacher=model]`` (its shapes are kept).

    Args:
        model: the source ``*.pt``.
        energy: per-layer fraction of the squared singular values kept, in (0, 1] (default 0.9).
        gflops: a GFLOPs target at ``imgsz``: a number, or a fraction of the source's written ``"0.5x"``.
        rank: a fixed rank for every factorized layer.
        scope: ``backbone`` or ``all``.
        protect: layer indices, module names or ``head`` left whole (a list, or comma-separated).
        min_gain: factorize a layer only if it saves at least this fraction of its FLOPs.
        data: data YAML for ``val=True``.
        out: output path (default ``<model>_lowrank.pt``); never overwritten.
        imgsz: image size for GFLOPs and validation.
        val: validate before and after (needs ``data``).

    Returns:
        The report (also logged as a table and written as JSON).
    """
    from yolo_distill.compress.checkpoint import _gflops_target, _map, _outputs, _protect_list, save_like
    from yolo_distill.data.builtin import require_data

    require(isinstance(val, bool), "val", val, "true or false")
    require_int("imgsz", imgsz, 32)
    if val and not data:
        raise ValueError("val=True needs data= (the mAP before and after factorization is measured on its val split)")
    if data is not None:
        data = require_data(data)
    src = Path(model)
    prot = _protect_list(protect)
    # every key is checked before the source is read (a GFLOPs string is checked when resolved below)
    LowRankConfig(energy=energy, rank=rank, gflops=1.0 if gflops is not None else None, scope=scope, protect=prot,
                  min_gain=min_gain, imgsz=imgsz)  # fmt: skip
    dst = Path(out) if out else src.with_name(f"{src.stem}_lowrank.pt")
    dst, rep_path = _outputs(src, str(dst))
    net = load_model(src)
    target = _gflops_target(gflops, net, imgsz) if gflops is not None else None
    cfg = LowRankConfig(energy=energy, rank=rank, gflops=target, scope=scope, protect=prot, min_gain=min_gain,
                        imgsz=imgsz)  # fmt: skip
    fact, report = factorize_model(net, cfg)
    report["source"] = str(src)
    if val:
        report["map50_95"] = {"before": _map(net, data, imgsz), "after_factorize": _map(fact, data, imgsz)}
    save_like(net, fact, dst, lowrank_report=report)
    report["out"] = str(dst)
    write_text_atomic(rep_path, json.dumps(report, indent=2, default=str))
    b, a = report["before"], report["after"]
    lines = [
        f"factorized {src} -> {dst} ({len(report['layers'])} convs, {len(report['skipped'])} skipped; energy "
        f"{report['energy_used'] if report['energy_used'] is not None else '-'}, rank {rank or '-'})",
        table([["before", b["params"], b["gflops"]], ["after", a["params"], a["gflops"]]], ["", "params", "GFLOPs"],
              ["", ",d", ".2f"]),  # fmt: skip
    ]
    if val:
        m = report["map50_95"]
        lines.append(f"mAP50-95 before {m['before']:.4f}, right after factorization {m['after_factorize']:.4f}")
    LOGGER.info("\n".join(lines))
    return report

