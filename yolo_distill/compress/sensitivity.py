"""Per-layer sensitivity: prune one layer at a time, validate, and turn the mAP drops into per-layer ratios."""

from __future__ import annotations

import csv
import json
from copy import deepcopy
from pathlib import Path

from torch import nn

from yolo_distill.compress.pruner import PruneConfig, prune_model
from yolo_distill.evaluation import evaluate
from yolo_distill.log import progress


def _map(model: nn.Module, data: str, imgsz: int) -> float:
    return evaluate(model, data, imgsz=imgsz, batch=8)["map50_95"]


def prunable_layers(model: nn.Module) -> list[int]:
    """Indices of layers with their own convolutions (Detect excluded)."""
    return [i for i, m in enumerate(model.model[:-1]) if any(isinstance(c, nn.Conv2d) for c in m.modules())]


def scan(
    model: nn.Module,
    data: str,
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
    method: str = "l1",
    imgsz: int = 256,
    layers: list[int] | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Prune each layer alone at each ratio (every other layer protected) and measure the mAP50-95 drop.

    Args:
        model: a DetectionModel (untouched).
        data: data YAML for validation.
        ratios: channel ratios tried per layer.
        method: importance criterion.
        imgsz: validation image size.
        layers: layer indices to scan (default: all prunable).
        out_dir: where to write ``sensitivity.csv``, ``sensitivity.json`` and ``sensitivity.png``.

    Returns:
        ``{"base": mAP, "drops": {layer: {ratio: drop}}}``.
    """
    all_layers = prunable_layers(model)
    layers = layers or all_layers
    base = _map(model, data, imgsz)
    drops: dict[int, dict[float, float]] = {}
    for i in progress(layers, "sensitivity scan (layers)"):
        others = [j for j in all_layers if j != i] + [len(model.model) - 1]  # Detect too: one layer alone
        drops[i] = {}
        for r in ratios:
            cfg = PruneConfig(ratio=r, method=method, imgsz=imgsz, protect=others, max_layer_ratio=0.95)
            pruned, _ = prune_model(deepcopy(model), cfg, data=data)
            drops[i][r] = base - _map(pruned, data, imgsz)
    result = {"base": base, "method": method, "drops": drops}
    if out_dir is not None:
        write(result, Path(out_dir))
    return result


def allocate(result: dict, max_drop: float, cap: float = 0.8) -> dict[int, float]:
    """Per-layer ratios: for each layer the largest scanned ratio whose mAP drop stays within ``max_drop``."""
    out = {}
    for i, by_ratio in result["drops"].items():
        ok = [float(r) for r, d in by_ratio.items() if d <= max_drop and float(r) <= cap]
        out[int(i)] = max(ok) if ok else 0.0
    return out


def write(result: dict, out_dir: Path) -> None:
    """``sensitivity.csv`` (layer x ratio table), ``sensitivity.json`` and ``sensitivity.png`` (drop vs ratio)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drops = {int(i): {float(r): float(v) for r, v in d.items()} for i, d in result["drops"].items()}
    result = {**result, "drops": drops}  # also accepts a result read back from sensitivity.json (string keys)
    (out_dir / "sensitivity.json").write_text(json.dumps(result, indent=2))
    ratios = sorted({float(r) for d in result["drops"].values() for r in d})
    with open(out_dir / "sensitivity.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", *[f"drop@{r:g}" for r in ratios]])
        for i, d in result["drops"].items():
            w.writerow([i, *[f"{d[r]:.4f}" for r in ratios]])
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    tab20 = colormaps["tab20"]
    for k, (i, d) in enumerate(result["drops"].items()):
        style = "-" if k < 10 else "--"
        ax.plot(ratios, [d[r] for r in ratios], style, marker="o", color=tab20(k % 20), label=f"layer {i}")
    ax.set_xlabel("channel ratio removed (this layer only)")
    ax.set_ylabel(f"mAP50-95 drop (base {result['base']:.3f})")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "sensitivity.png", dpi=100)
