"""Does pruning turn into speed? Prune one checkpoint to several GFLOPs targets and channel multiples, and time
all variants (and optional natively small references) side by side in ONNX Runtime.

Latency does not depend on the weights, so nothing is fine-tuned: each variant is pruned, exported to ONNX and
timed interleaved with the others (one run of each in turn), so machine load affects all alike and the ratios
hold, once per thread count. ``efficiency`` is the speed-up divided by the GFLOPs reduction: 1.0 means every GFLOP
removed turned into time saved; the pruning issue asks for at least 0.8. Small models gain little from a second
intra-op thread, so compare efficiencies per thread count.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolo_distill.log import LOGGER


def _export(pt: Path, imgsz: int) -> Path:
    from ultralytics import YOLO

    return Path(YOLO(str(pt)).export(format="onnx", imgsz=imgsz, simplify=True, verbose=False))


def _channel_multiple_share(model: torch.nn.Module, k: int) -> float:
    """Share of conv output channels that sit in layers whose width is a multiple of ``k``."""
    from yolo_distill.compress.pruner import conv_channels

    widths = list(conv_channels(model).values())
    return sum(w for w in widths if w % k == 0) / max(1, sum(widths))


def cpu_block() -> int:
    """Channel block ONNX Runtime's CPU convolutions (NCHWc) use on this machine: 16 with AVX-512, else 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if "avx512f" in flags else 8


def measure(
    model: str,
    gflops_ratios: tuple[float, ...] | list[float] = (0.5, 0.3),
    round_to: tuple[int, ...] | list[int] = (8, 16),
    references: tuple[str, ...] | list[str] = (),
    imgsz: int = 640,
    threads: int | tuple[int, ...] | list[int] = (1, 2),
    runs: int = 30,
    torch_runs: int = 10,
    method: str = "l1",
    out: str = "bench/prune_speed",
) -> dict[str, Any]:
    """Prune ``model`` to each GFLOPs ratio with each channel multiple, export, time, log and save a table.

    Args:
        model: the source checkpoint (copied into the output folder; never modified).
        gflops_ratios: GFLOPs targets as fractions of the source's.
        round_to: channel multiples to compare.
        references: model YAMLs (e.g. ``yolo11n.yaml``) built with the source's classes, timed alongside.
        imgsz: input size for GFLOPs, export and timing.
        threads: ONNX Runtime intra-op thread count(s); every count is timed.
        runs: interleaved timed runs per model.
        torch_runs: PyTorch CPU timed runs per model (one model after another, at the largest thread count).
        method: pruning criterion (does not change latency; kept for completeness).
        out: parent folder; each call writes a new numbered subfolder.

    Returns:
        ``{"rows": [...], "out": folder}``; also written as ``speed.json`` and ``speed.md``.
    """
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.files import increment_path

    from yolo_distill.checkpoints import load_model, save_stock_checkpoint
    from yolo_distill.compress.checkpoint import prune_checkpoint
    from yolo_distill.compress.pruner import model_stats
    from yolo_distill.deploy.latency import compare_onnx, time_torch

    src = Path(model)
    if not src.is_file():
        raise FileNotFoundError(f"model={src} does not exist; pass a trained *.pt checkpoint")
    bad = [r for r in gflops_ratios if not 0 < float(r) < 1]
    if bad:
        raise ValueError(f"gflops_ratios must lie in (0, 1), got {bad}")
    folder = Path(increment_path(Path(out) / src.stem, mkdir=True))
    base_pt = folder / "source.pt"
    shutil.copy2(src, base_pt)  # exports land beside their checkpoint: keep them off the user's folder
    net = load_model(base_pt)
    base = model_stats(net, imgsz)
    variants: list[tuple[str, Path, dict]] = [("source", base_pt, {})]
    for ref in references:
        ref_model = DetectionModel(ref, nc=int(net.yaml.get("nc", 80)), verbose=False)
        ref_model.names = getattr(net, "names", None)
        ref_pt = save_stock_checkpoint(ref_model, folder / f"{Path(ref).stem}.pt")
        variants.append((f"{Path(ref).stem} (reference)", ref_pt, {}))
    for r in gflops_ratios:
        for k in round_to:
            dst = folder / f"gflops{int(round(100 * r))}_round{k}.pt"
            rep = prune_checkpoint(str(base_pt), gflops=float(r) * base["gflops"], round_to=int(k), imgsz=imgsz,
                                   method=method, out=str(dst))  # fmt: skip
            meta = {"target": float(r), "round_to": int(k), "ratio": rep["channel_ratio_used"]}
            variants.append((dst.stem, dst, meta))
    onnx = {name: str(_export(pt, imgsz)) for name, pt, _ in variants}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    thread_counts = [int(t) for t in ([threads] if isinstance(threads, int) else threads)]
    lat = {t: compare_onnx(list(onnx.values()), x, threads=t, runs=runs) for t in thread_counts}
    block = cpu_block()
    rows = []
    for name, pt, meta in variants:
        m = load_model(pt).eval()
        st = model_stats(m, imgsz)
        fewer = base["gflops"] / st["gflops"]
        row = {"name": name, **meta, "params": st["params"], "gflops": st["gflops"], "gflops_reduction": fewer,
               f"width_multiple_of_{block}": _channel_multiple_share(m, block),
               "torch_ms": time_torch(m, x, threads=max(thread_counts), runs=torch_runs)["median"]}  # fmt: skip
        for t in thread_counts:
            ms = lat[t][onnx[name]]["median"]
            speedup = lat[t][onnx["source"]]["median"] / ms
            row.update(
                {f"ms_t{t}": ms, f"speedup_t{t}": speedup, f"efficiency_t{t}": speedup / fewer if fewer > 1 else None}
            )
        rows.append(row)
    result = {"rows": rows, "out": str(folder), "imgsz": imgsz, "threads": thread_counts, "runs": runs,
              "cpu_block": block, "machine": platform.processor() or platform.machine()}  # fmt: skip
    (folder / "speed.json").write_text(json.dumps(result, indent=2))
    table = _table(rows, block, imgsz, thread_counts, runs)
    (folder / "speed.md").write_text(table + "\n")
    LOGGER.info(table)
    return result


def _table(rows: list[dict], block: int, imgsz: int, threads: list[int], runs: int) -> str:
    cols = "".join(f" ms {t}T | speed-up {t}T | efficiency {t}T |" for t in threads)
    head = (
        f"ONNX Runtime, batch 1, {imgsz} px, median of {runs} interleaved runs per thread count"
        " (T = intra-op threads)\n\n"
        f"| model | params | GFLOPs | GFLOPs reduction |{cols} PyTorch ms {max(threads)}T | width % of {block} |\n"
        "|---|---|---|---|" + "---|---|---|" * len(threads) + "---|---|"
    )
    lines = [head]
    for r in rows:
        cells = ""
        for t in threads:
            eff = r[f"efficiency_t{t}"]
            cells += f" {r[f'ms_t{t}']:.1f} | {r[f'speedup_t{t}']:.2f}x | {f'{eff:.2f}' if eff else '-'} |"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflops']:.2f} | {r['gflops_reduction']:.2f}x |{cells} "
            f"{r['torch_ms']:.1f} | {100 * r[f'width_multiple_of_{block}']:.0f} |"
        )
    return "\n".join(lines)
