"""Knowledge carving: cut a stock small model (a target YAML) out of a trained larger one of the same family.

Every convolution of the target has a namesake in the source with the same kernel, and at most as many channels;
channel importance (the pruner's criteria, through Torch-Pruning's dependency graph) chooses which channels stay.
Layers whose widths already match are kept whole, the others pruned to the target's exact widths, and the result
carries the target's YAML: a plain ``yolo11n`` that stock ``YOLO("carved.pt").train()`` rebuilds with the very
same shapes (no re-inflation), ready for KD from the source.

Where the target is shallower (fewer repeated blocks in a C2f / C3k2 / C2PSA), depth is carved first: each such
block keeps the target's number of its repeated inner blocks, chosen by importance (in C2f and C3k2, whose every
inner block feeds the output conv, the L1 norm of the output conv's weights on that block's channels; in C2PSA's
residual chain, the L1 norm of the block's weights), in their order, with the output conv's input channels of the
dropped ones cut away. Then widths.

Pairs: YOLOv8 x -> l -> m -> s -> n; YOLO11 and YOLO26 x -> l -> m and s -> n. YOLO11/26 m -> s changes the block
kind (C3k inside the m model's C3k2, a plain Bottleneck in s's) and is refused with that reason, as are other
attention head counts that the heads cannot be cut to.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import nn

from yolo_distill.checkpoints import load_model, save_stock_checkpoint, write_text_atomic
from yolo_distill.compress.pruner import PruneConfig, model_stats, prune_model
from yolo_distill.log import LOGGER, table


def _family(yaml_name: str) -> str:
    """``yolo11s.yaml`` -> ``yolo11``; ``yolov8n.yaml`` -> ``yolov8``."""
    m = re.match(r"(yolov?\d+)[nslmx]?", Path(str(yaml_name)).stem)
    return m.group(1) if m else Path(str(yaml_name)).stem


def _repeated(m: nn.Module) -> nn.Module | None:
    """The container of a block's repeated inner blocks (C2f / C3k2 ``m`` list, C2PSA ``m`` chain), else None."""
    inner = getattr(m, "m", None)
    return inner if isinstance(inner, (nn.ModuleList, nn.Sequential)) and hasattr(m, "cv2") else None


def _kinds(container: nn.Module) -> list[str]:
    """Each inner block's kind: its class, or for a Sequential the classes inside it (C3k2's attention blocks)."""
    return ["+".join(type(c).__name__ for c in b) if isinstance(b, nn.Sequential) else type(b).__name__
            for b in container]  # fmt: skip


def carve_depth(source: nn.Module, target: nn.Module) -> tuple[nn.Module, dict[int, list[int]]]:
    """A copy of ``source`` whose repeated blocks are cut to ``target``'s counts; and per layer, the kept indices.

    Raises:
        ValueError: a layer's inner blocks are of another kind in the target, or more of them.
    """
    from copy import deepcopy

    import torch_pruning as tp

    out, kept = deepcopy(source), {}
    for i, (sm, tm) in enumerate(zip(out.model, target.model)):
        s_in, t_in = _repeated(sm), _repeated(tm)
        if s_in is None or t_in is None or type(sm) is not type(tm):
            continue
        if set(_kinds(t_in)) - set(_kinds(s_in)):
            raise ValueError(
                f"layer {i} ({type(sm).__name__}) holds {_kinds(s_in)[0]} blocks in the source and {_kinds(t_in)[0]} "
                f"in the target: carving keeps blocks, it cannot turn one kind into another (e.g. YOLO11/26 m -> s); "
                f"carve to the next size that keeps the block kind (l -> m, s -> n) or prune to a GFLOPs target"
            )
        n_s, n_t = len(s_in), len(t_in)
        if n_t > n_s:
            raise ValueError(f"the target is deeper than the source at layer {i}: carve to a smaller model")
        if n_t == n_s:
            continue
        cv2 = sm.cv2.conv
        concat = isinstance(s_in, nn.ModuleList)  # C2f / C3k2: every inner block's output feeds cv2
        if concat:
            c = cv2.in_channels // (2 + n_s)
            score = [float(cv2.weight[:, (2 + k) * c : (3 + k) * c].detach().abs().sum()) for k in range(n_s)]
        else:  # a residual chain (C2PSA): what each block adds
            score = [sum(float(p.detach().abs().mean()) for p in b.parameters()) for b in s_in]
        keep = sorted(sorted(range(n_s), key=lambda k: -score[k])[:n_t])
        kept[i] = keep
        blocks = [s_in[k] for k in keep]
        sm.m = nn.ModuleList(blocks) if concat else nn.Sequential(*blocks)
        if concat:  # cv2 no longer sees the dropped blocks' channels
            dropped = [k for k in range(n_s) if k not in keep]
            tp.prune_conv_in_channels(cv2, [j for k in dropped for j in range((2 + k) * c, (3 + k) * c)])
        if hasattr(sm, "n"):
            sm.n = n_t
    return out, kept


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def carve_plan(source: nn.Module, target: nn.Module) -> tuple[dict[int, float], list[str]]:
    """Per-layer channel ratios and the convolutions to keep whole, so that ``source`` pruned becomes ``target``.

    Raises:
        ValueError: the structures differ (other blocks or depth), the target is wider, or one layer would need
            different ratios for different convolutions.
    """
    s, t = _convs(source), _convs(target)
    missing, extra = sorted(set(t) - set(s)), sorted(set(s) - set(t))
    odd = [n for n in set(s) & set(t) if (s[n].kernel_size, s[n].groups > 1) != (t[n].kernel_size, t[n].groups > 1)]
    if missing or extra or odd:
        raise ValueError(
            f"the target's blocks differ from the source's ({(missing or extra or odd)[:3]}...): carving keeps "
            f"blocks and cuts channels and repeats out of them; it cannot build blocks the source does not have"
        )
    wider = [n for n in t if t[n].out_channels > s[n].out_channels]
    if wider:
        raise ValueError(f"the target is wider than the source at {wider[:3]}: carve to a smaller model of the family")
    keep = [n for n in t if t[n].out_channels == s[n].out_channels]
    ratios: dict[int, float] = {}
    for n in t:
        if n in keep:
            continue
        i = int(n.split(".")[1])
        r = 1 - t[n].out_channels / s[n].out_channels
        if i in ratios and abs(ratios[i] - r) > 1e-6:
            raise ValueError(f"layer {i} would need channel ratios {ratios[i]:.3f} and {r:.3f}: not carvable")
        ratios[i] = r
    return ratios, keep


def carve_model(source: nn.Module, target_yaml: str, method: str = "l1") -> tuple[nn.Module, dict]:
    """``source`` cut down to ``target_yaml``'s architecture (``source`` untouched); returns it and a report."""
    from ultralytics.nn.tasks import DetectionModel

    src_yaml = (getattr(source, "yaml", None) or {}).get("yaml_file", "")
    if src_yaml and _family(src_yaml) != _family(target_yaml):
        raise ValueError(
            f"target={target_yaml} is a {_family(target_yaml)} model but the source is {_family(src_yaml)}: carve "
            f"within one family (e.g. {_family(src_yaml)}s -> {_family(src_yaml)}n)"
        )
    nc = int(source.model[-1].nc)
    target = DetectionModel(target_yaml, nc=nc, verbose=False)
    n_s, n_t = (sum(p.numel() for p in m.parameters()) for m in (source, target))
    if n_t > n_s:  # before the block-by-block checks, whose messages would name a symptom (other blocks, width)
        raise ValueError(
            f"target={target_yaml} ({n_t / 1e6:.2f}M parameters) is larger than the source "
            f"{src_yaml or ''} ({n_s / 1e6:.2f}M): carving cuts a smaller model out of a larger one; pick a smaller "
            f"target of the family (e.g. {_family(target_yaml)}s -> {_family(target_yaml)}n)"
        )
    from ultralytics.nn.modules.block import Attention

    source, depth = carve_depth(source, target)  # a copy: the caller's model is never changed
    ratios, keep = carve_plan(source, target)
    heads = [m.num_heads for m in target.modules() if isinstance(m, Attention)]
    cfg = PruneConfig(ratio=0.5, method=method, imgsz=64, layer_ratios=ratios, protect=keep, round_to=1,
                      max_layer_ratio=0.95, attention_heads=heads or None)  # fmt: skip
    if not ratios:  # every width already matches (e.g. YOLO11 l -> m): depth was all there was to carve
        carved, report = source.eval(), {}
    else:
        try:
            carved, report = prune_model(source, cfg)
        except RuntimeError as e:  # the heads cannot be cut to the target's layout
            raise ValueError(f"carving to {target_yaml}: {e}") from None
    got, want = carved.state_dict(), target.state_dict()
    bad = [k for k in want if k not in got or got[k].shape != want[k].shape]
    layout = [(m.num_heads, m.head_dim, m.key_dim) for m in carved.modules() if isinstance(m, Attention)]
    if bad or set(got) != set(want) or layout != [(m.num_heads, m.head_dim, m.key_dim) for m in target.modules()
                                                    if isinstance(m, Attention)]:  # fmt: skip
        raise ValueError(f"carving {src_yaml or 'the source'} to {target_yaml} did not reach its shapes: {bad[:3]}")
    carved.yaml = target.yaml  # the stock model it now is: Ultralytics rebuilds exactly these shapes from it
    carved.names = getattr(source, "names", None)
    return carved, {**report, "target": str(target_yaml), "depth_kept": depth}


def carve_checkpoint(model: str, target: str, out: str | None = None, method: str = "l1", imgsz: int = 640) -> dict:
    """Carve checkpoint ``model`` into a stock ``target`` (a model YAML of its family) and write ``out`` with
    ``<out stem>_report.json`` beside it; everything is checked first, the source is never modified.

    Args:
        model: the trained source ``*.pt`` (e.g. a YOLO11s).
        target: the smaller model YAML of the same family (e.g. ``yolo11n.yaml``).
        out: output path (default ``<model stem>_<target stem>.pt`` beside the source); never overwritten.
        method: the importance criterion choosing the channels that stay (``l1``, ``l2``, ``bn``).
        imgsz: image size for the GFLOPs in the report.

    Returns:
        The report (params and GFLOPs before and after, per-layer channels, the target).
    """
    from yolo_distill.compress.checkpoint import report_path
    from yolo_distill.config import require
    from yolo_distill.offline import resolve_weights

    require(str(target).endswith((".yaml", ".yml")), "target", target, "a model YAML such as yolo11n.yaml")
    require(method in ("l1", "l2", "bn"), "method", method, "l1, l2 or bn (taylor needs data: prune instead)")
    src = Path(resolve_weights(model))
    dst = Path(out) if out else src.with_name(f"{src.stem}_{Path(target).stem}.pt")
    require(dst.suffix == ".pt", "out", str(dst), "a *.pt path")
    require(dst.resolve() != src.resolve(), "out", str(dst), "a path other than model= (the source is only read)")
    for p in (dst, report_path(dst)):
        if p.exists():
            raise FileExistsError(f"{p} already exists; choose another out= or move it away")
    net = load_model(src)
    carved, report = carve_model(net, target, method=method)
    report.update(source=str(src), out=str(dst), before=model_stats(net, imgsz), after=model_stats(carved, imgsz))
    train_args = {k: v for k, v in (getattr(net, "args", {}) or {}).items() if k in ("data", "imgsz", "task")}
    save_stock_checkpoint(carved, dst, train_args=train_args, carve_report=report)
    write_text_atomic(report_path(dst), json.dumps(report, indent=2, default=str))
    b, a = report["before"], report["after"]
    LOGGER.info("carved %s -> %s (%s)\n%s", src, dst, target, table(
        [["source", b["params"], b["gflops"]], ["carved", a["params"], a["gflops"]]], ["", "params", "GFLOPs"],
        ["", ",d", ".2f"]))  # fmt: skip
    return report
