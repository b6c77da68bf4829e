"""The pruning workflow for checkpoints: check the request, plan the outputs, prune, validate, write, report.

Everything is checked before any file is written; the source checkpoint is only read. The algorithm itself is
:func:`yolo_distill.compress.pruner.prune_model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from yolo_distill.checkpoints import load_model, save_stock_checkpoint, write_text_atomic
from yolo_distill.compress.pruner import PruneConfig, prune_model
from yolo_distill.config import require, require_int
from yolo_distill.data.builtin import require_data
from yolo_distill.evaluation import evaluate
from yolo_distill.log import LOGGER, table


def report_path(out: Path) -> Path:
    """Where the report of a pruned checkpoint goes: ``<stem>_report.json`` beside it (``pruned.pt`` ->
    ``pruned_report.json``)."""
    return out.with_name(f"{out.stem}_report.json")


def _outputs(src: Path, out: str | None) -> tuple[Path, Path]:
    """The output checkpoint and report paths; refuses the source itself and anything that exists."""
    dst = Path(out) if out else src.with_name(f"{src.stem}_pruned.pt")
    if dst.suffix != ".pt":
        raise ValueError(f"out={dst}: the output checkpoint must be a *.pt path")
    if dst.resolve() == src.resolve():
        raise ValueError("out= must differ from model=: the source checkpoint is never overwritten")
    rep = report_path(dst)
    for p in (dst, rep):
        if p.exists():
            raise FileExistsError(f"{p} already exists; choose another out= or move it away")
    return dst, rep


def _protect_list(protect: list | str | int | None) -> list[int | str]:
    if isinstance(protect, str):
        return [p.strip() for p in protect.split(",") if p.strip()]
    if isinstance(protect, int):
        return [protect]
    return list(protect or [])


def _fraction(key: str, value: str, expected: str) -> float:
    """``"0.5x"`` (or ``"0.5X"``) as 0.5: a fraction of the source's measure, in (0, 1); anything else is refused,
    naming ``key`` and ``expected``."""
    text = value.strip().lower()
    try:
        frac = float(text.removesuffix("x")) if text.endswith("x") else -1.0
    except ValueError:
        frac = -1.0
    require(0 < frac < 1, key, value, expected)
    return frac


def _gflops_target(gflops: float | str | None, net: nn.Module, imgsz: int) -> float | None:
    """``gflops=`` as a number: ``10.5`` as given, ``"0.5x"`` as that fraction of the source's GFLOPs at ``imgsz``."""
    from yolo_distill.compress.pruner import model_stats

    if not isinstance(gflops, str):
        return gflops
    frac = _fraction("gflops", gflops, "a number of GFLOPs (gflops=10.5) or a fraction of the source's (gflops=0.5x)")
    return frac * model_stats(net, imgsz)["gflops"]


def prune_checkpoint(
    model: str,
    ratio: float | None = 0.5,
    gflops: float | str | None = None,
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
    granularity: str = "filter",
    n: int = 2,
    m: int = 4,
    latency: float | str | None = None,
    runtime: str = "onnxruntime",
    threads: int = 1,
) -> dict:
    """Prune a checkpoint and write ``out`` (a stock Ultralytics checkpoint) and ``<out stem>_report.json`` beside it.

    Everything is checked before any file is written; the source checkpoint is never modified.

    Args:
        model: the source ``*.pt``.
        ratio: channel ratio removed per layer, in (0, 1) (ignored when ``gflops`` is given); with a fine
            granularity, the fraction of weights zeroed in each layer (the sparsity).
        gflops: GFLOPs target at ``imgsz``: a number, or a fraction of the source's GFLOPs written ``"0.5x"``.
        method: importance criterion: ``l1``, ``l2``, ``bn`` or ``taylor`` (:mod:`~yolo_distill.compress.importance`).
        scope: ``backbone`` or ``all``.
        data: data YAML (for ``taylor``, ``allocation=sensitivity``, and mAP before/after with ``val=True``).
        out: output path (default: ``<model>_pruned.pt``); never overwritten.
        round_to: channel multiple.
        max_layer_ratio: per-layer cap on the removed fraction.
        protect: layer indices, module names or ``head`` never pruned (a list, or comma-separated).
        imgsz: image size for GFLOPs and validation.
        batches: batches of 4 images for ``taylor``.
        val: validate before and after (needs ``data``).
        allocation: ``uniform`` (every layer at ``ratio``), ``global`` (a global importance ranking decides each
            layer's share) or ``sensitivity`` (scan each layer alone, then give each the largest ratio whose mAP
            drop stays within ``max_drop``; writes ``<out stem>_sensitivity/`` beside ``out``).
        max_drop: mAP50-95 drop allowed per layer with ``allocation=sensitivity``.
        layer_ratios: explicit per-layer ratios ``{layer index: ratio}`` (non-uniform allocation).
        granularity: ``filter`` (remove channels: a smaller, faster model) or zeros inside dense weights:
            ``kernel``, ``vector``, ``weight``, ``nm`` (:mod:`~yolo_distill.compress.granularity`).
        n, m: with ``granularity=nm``, ``n`` weights kept of every ``m`` consecutive input channels.
        latency: a latency budget in ms (``25`` or ``"25ms"``) on ``runtime`` at ``imgsz``: per-layer widths chosen
            against latencies measured on this machine (:mod:`~yolo_distill.compress.latency_search`).
        runtime: where ``latency`` is measured: ``onnxruntime`` or ``openvino``.
        threads: CPU threads of ``runtime`` for the latency measurements.

    Returns:
        The report (also logged as a table and written as JSON).
    """
    src = Path(model)
    require_int("imgsz", imgsz, 32)
    require_int("batches", batches, 1)
    require(isinstance(val, bool), "val", val, "true or false")
    if data is not None:
        data = require_data(data)
    from yolo_distill.registry import GRANULARITIES

    grains = ("filter", *GRANULARITIES.names())
    require(granularity in grains, "granularity", granularity, f"one of {', '.join(grains)}")
    require_int("n", n, 1)
    require_int("m", m, 2)
    require_int("threads", threads, 1)
    from yolo_distill.deploy.latency import RUNTIMES

    require(runtime in RUNTIMES, "runtime", runtime, f"one of {', '.join(RUNTIMES)}")
    budget = _latency_budget(latency)
    if budget is not None:
        require(granularity == "filter" and gflops is None, "latency", latency,
                "a budget with granularity=filter and no gflops= (one target at a time)")  # fmt: skip
        if runtime == "openvino":
            from yolo_distill.deploy.openvino import require_runtime

            require_runtime(False)
    if granularity != "filter":
        return _sparse_checkpoint(src, granularity, ratio, n, m, method=method, scope=scope, protect=protect,
                                  gflops=gflops, allocation=allocation, layer_ratios=layer_ratios, data=data, out=out,
                                  imgsz=imgsz, val=val)  # fmt: skip
    net = load_model(src)
    gflops = _gflops_target(gflops, net, imgsz)
    cfg = PruneConfig(ratio=ratio, gflops=gflops, method=method, scope=scope, round_to=round_to,
                      max_layer_ratio=max_layer_ratio, protect=_protect_list(protect), imgsz=imgsz,
                      layer_ratios=dict(layer_ratios or {}), allocation=allocation, max_drop=max_drop)  # fmt: skip
    if allocation == "sensitivity" and not data:
        raise ValueError("allocation=sensitivity needs data= (each layer is validated after pruning it alone)")
    if val and not data:
        raise ValueError("val=True needs data= (the mAP before and after pruning is measured on its val split)")
    dst, rep_path = _outputs(src, out)
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    already = ckpt.get("prune_report") if isinstance(ckpt, dict) else None
    if budget is not None:
        pruned, report = _latency_prune(net, cfg, budget, runtime, threads, imgsz)
    else:
        pruned, report = prune_model(net, cfg, data=data, batches=batches,
                                     out_dir=dst.parent / f"{dst.stem}_sensitivity")  # fmt: skip
    report["source"] = str(src)
    report["already_pruned"] = already is not None
    if val:
        report["map50_95"] = {"before": _map(net, data, imgsz), "after_prune": _map(pruned, data, imgsz)}
    save_like(net, pruned, dst, prune_report=report)
    report["out"] = str(dst)
    write_text_atomic(rep_path, json.dumps(report, indent=2, default=str))
    LOGGER.info(summary(report))
    return report


def save_like(source: nn.Module, model: nn.Module, dst: Path, **report) -> None:
    """Write ``model`` (compressed from ``source``) as a stock checkpoint at ``dst`` with the source's class names and
    training data, image size and task, and ``report`` as extra top-level keys (e.g. ``prune_report=...``)."""
    train_args = {k: v for k, v in (getattr(source, "args", {}) or {}).items() if k in ("data", "imgsz", "task")}
    model.names = getattr(source, "names", None)
    save_stock_checkpoint(model, dst, train_args=train_args, **report)


def _latency_budget(latency: float | str | None) -> float | Callable[[float], float] | None:
    """``latency=`` as milliseconds (``25``, ``25.0`` or ``"25ms"``), or relative to the source's measured latency
    (``"0.5x"``: a function of it)."""
    if latency is None:
        return None
    expected = ("a latency budget in milliseconds, e.g. latency=25 or latency=25ms, or a fraction of the source's "
                "measured latency below 1, e.g. latency=0.5x")  # fmt: skip
    v = latency
    if isinstance(v, str) and v.strip().lower().endswith("x"):
        r = _fraction("latency", v, expected)
        return lambda source_ms: r * source_ms
    if isinstance(v, str):
        try:
            v = float(v.strip().lower().removesuffix("ms"))
        except ValueError:
            v = -1.0
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    require(ok, "latency", latency, expected)
    return float(v)


def _latency_prune(net: nn.Module, cfg: PruneConfig, budget: float | Callable[[float], float], runtime: str,
                   threads: int,
                   imgsz: int) -> tuple[nn.Module, dict]:  # fmt: skip
    """Latency-targeted pruning measured on ``runtime``; the report in the form :func:`summary` prints."""
    from dataclasses import asdict

    from yolo_distill.compress.latency_search import latency_prune
    from yolo_distill.compress.pruner import conv_channels, model_stats
    from yolo_distill.deploy.latency import model_latency

    pruned, lat = latency_prune(net, cfg, budget, lambda m: model_latency(m, imgsz, runtime, threads))
    before, after = model_stats(net, imgsz), model_stats(pruned, imgsz)
    ch0, ch1 = conv_channels(net), conv_channels(pruned)
    report = {"config": asdict(cfg) | {"allocation": f"latency on {runtime}, {threads} thread(s)"},
              "channel_ratio_used": 1 - sum(ch1.values()) / sum(ch0.values()), "before": before, "after": after,
              "params_ratio": after["params"] / before["params"], "gflops_ratio": after["gflops"] / before["gflops"],
              "layers": {k: [ch0[k], ch1.get(k)] for k in ch0 if ch0[k] != ch1.get(k)}, "latency": lat}  # fmt: skip
    LOGGER.info("latency on %s (%d thread(s), imgsz %d): %.2f ms -> %.2f ms for a budget of %.2f ms (%s)", runtime,
                threads, imgsz, lat["source_ms"], lat["final_ms"], lat["budget_ms"],
                "within 5 %" if lat["within_tol"] else "outside the 5 % band")  # fmt: skip
    return pruned, report


def _sparse_checkpoint(src: Path, granularity: str, ratio: float | None, n: int, m: int, *, method: str, scope: str,
                       protect: list | str | int | None, gflops: float | str | None, allocation: str,
                       layer_ratios: dict | None, data: str | None, out: str | None, imgsz: int, val: bool) -> dict:
    """``prune_checkpoint`` with a fine granularity: zeros in dense weights, sizes and sparsity in the report."""
    from yolo_distill.compress.granularity import SparseConfig, sparsify_model
    from yolo_distill.compress.pruner import SCOPES

    fine = f"granularity={granularity} zeros weights inside dense layers"
    require(gflops is None, "gflops", gflops, f"no gflops= ({fine}: a dense runtime runs the same FLOPs); give a "
            f"sparsity with ratio=, or use granularity=filter for a GFLOPs target")  # fmt: skip
    require(allocation == "uniform", "allocation", allocation, f"uniform ({fine} at the same sparsity per layer)")
    require(not layer_ratios, "layer_ratios", layer_ratios, f"none ({fine} at the same sparsity per layer)")
    require(scope in SCOPES, "scope", scope, f"one of {SCOPES}")
    if granularity == "nm" and ratio not in (None, 0.5, 1 - n / m):
        raise ValueError(f"ratio={ratio}: with granularity=nm the sparsity is 1 - n/m; drop ratio= and choose n= m=")
    cfg = SparseConfig(granularity=granularity, sparsity=0.5 if ratio is None else ratio, method=method, n=n, m=m,
                       scope=scope, protect=_protect_list(protect))  # fmt: skip
    if val and not data:
        raise ValueError("val=True needs data= (the mAP before and after pruning is measured on its val split)")
    dst, rep_path = _outputs(src, out)
    net = load_model(src)
    sparse, report = sparsify_model(net, cfg)
    report["source"] = str(src)
    if val:
        report["map50_95"] = {"before": _map(net, data, imgsz), "after_prune": _map(sparse, data, imgsz)}
    save_like(net, sparse, dst, prune_report=report)
    report["size_mb"] = {"before": _size_mb(src), "after": _size_mb(dst)}
    report["gzip_mb"] = {"before": _size_mb(src, gz=True), "after": _size_mb(dst, gz=True)}
    report["out"] = str(dst)
    write_text_atomic(rep_path, json.dumps(report, indent=2, default=str))
    LOGGER.info(sparse_summary(report))
    return report


def _size_mb(path: Path, gz: bool = False) -> float:
    """Size of a file in MB; with ``gz``, of its gzip-compressed bytes (what zeros save in storage or download)."""
    if not gz:
        return path.stat().st_size / 1e6
    import zlib

    return len(zlib.compress(path.read_bytes(), 6)) / 1e6


def sparse_summary(r: dict) -> str:
    """A fine-grained pruning report as a few lines: sparsity, non-zero parameters, file sizes, mAP."""
    c = r["config"]
    how = f"n={c['n']} m={c['m']}" if c["granularity"] == "nm" else f"sparsity {c['sparsity']:.2f}"
    lines = [
        f"pruned {r['source']} -> {r.get('out')} (granularity {c['granularity']}, {how}, method {c['method']}, "
        f"scope {c['scope']}; {len(r['layers'])} layers sparse, {len(r['skipped'])} skipped)",
        table([["before", r["nonzero_params_before"], r["size_mb"]["before"], r["gzip_mb"]["before"]],
               ["after", r["nonzero_params"], r["size_mb"]["after"], r["gzip_mb"]["after"]]],
              ["", "non-zero params", "file MB", "gzip MB"], ["", ",d", ".2f", ".2f"]),  # fmt: skip
        f"sparsity {r['sparsity_in_scope']:.3f} in the layers pruned, {r['sparsity_whole_model']:.3f} of the whole "
        f"model; shapes and GFLOPs unchanged (dense runtimes run the same FLOPs)",
    ]
    if "map50_95" in r:
        m = r["map50_95"]
        lines.append(f"mAP50-95 before {m['before']:.4f}, right after pruning {m['after_prune']:.4f}")
    return "\n".join(lines)


def _map(model: nn.Module, data: str, imgsz: int) -> float:
    return evaluate(model, data, imgsz=imgsz, batch=8)["map50_95"]


def summary(r: dict) -> str:
    """The report as a few lines of text: what was pruned, params and GFLOPs before and after, mAP."""
    b, a, c = r["before"], r["after"], r["config"]
    again = ", already pruned before" if r["already_pruned"] else ""
    lines = [
        f"pruned {r['source']} -> {r.get('out')} (method {c['method']}, scope {c['scope']}, allocation "
        f"{c['allocation']}, channel ratio {r['channel_ratio_used']:.3f}{again})",
        table([["before", b["params"], b["gflops"]], ["after", a["params"], a["gflops"]]],
              ["", "params", "GFLOPs"], ["", ",d", ".2f"]),  # fmt: skip
    ]
    if "map50_95" in r:
        m = r["map50_95"]
        lines.append(f"mAP50-95 before {m['before']:.4f}, right after pruning {m['after_prune']:.4f}")
    return "\n".join(lines)
