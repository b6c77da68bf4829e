"""The bench report: ``report.md`` (mean and spread over seeds), its plots, and the side-by-side latency table when
one was measured (:mod:`~yolo_distill.bench.side_by_side`)."""

from __future__ import annotations

import statistics
from pathlib import Path

from yolo_distill.bench import side_by_side
from yolo_distill.checkpoints import write_text_atomic


def write_report(table: list[dict], out_dir: Path, recipe_name: str) -> Path:
    """``report.md`` (mean and spread over seeds) and the plots."""
    names = list(dict.fromkeys(r["name"] for r in table))
    lines = [
        f"# Benchmark `{recipe_name}`",
        "",
        "Latency columns are measured per row, one row after another: compare them only for rows that ran on an idle",
        "machine, or run the bench again with `side_by_side=True` (idle) for every row timed in one run. Train s:",
        "training time of the row (a resumed row keeps the time of the run that trained it). KD step: one training",
        "step of a KD student with our recipe, as a multiple of a plain step / of an Ultralytics `distill_model=`",
        "step (same teacher, imgsz and batch; measured interleaved).",
        "",
        "| row | params | GFLOPs | mAP50 | mAP50-95 | ONNX ms | INT8 ms | PyTorch ms | train s "
        "| KD step x plain / x native | seeds | last.pt mAP50-95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for n in names:
        line, point = _row_line(n, [r for r in table if r["name"] == n])
        lines.append(line)
        summary.append(point)
    lines += _onnx_lines(names, table)
    lines += _runtime_lines(names, table)
    lines += _online_teacher_lines(names, table)
    sizes = _size_lines(names, table)
    lines += sizes
    sbs = side_by_side.load(out_dir, table)
    if sbs is not None:
        lines += side_by_side.lines(sbs, table)
        side_by_side.plot(sbs, table, out_dir / "map_vs_latency_side_by_side.png")
    plots = "![mAP vs GFLOPs](map_vs_gflops.png) ![mAP vs latency](map_vs_latency.png)"
    plots += " ![mAP vs size](map_vs_size.png)" if sizes else ""
    plots += " ![mAP vs side-by-side latency](map_vs_latency_side_by_side.png)" if sbs is not None else ""
    lines += ["", plots, ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))
    _plots(summary, out_dir)
    if sizes:
        _size_plot(names, table, out_dir)
    return out_dir / "report.md"


def _online_teacher_lines(names: list[str], table: list[dict]) -> list[str]:
    """The co-trained teacher of online rows: its mAP at the end (``teacher_last.pt``) beside the student's."""
    rows = [(n, r) for n in names for r in table if r["name"] == n and r.get("teacher_last_map50_95") is not None]
    if not rows:
        return []
    lines = ["", "Online rows: the co-trained teacher at the end of training (`weights/teacher_last.pt`, mAP50-95):",
             "", "| row | seed | teacher_last.pt | student best.pt |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {r.get('seed', 0)} | {r['teacher_last_map50_95']:.4f} | {r['map50_95']:.4f} |" for n, r in rows]
    return lines


def _sized(names: list[str], table: list[dict]) -> list[tuple[str, dict, float]]:
    """``(row, first seed, mean mAP50-95)`` for the rows that measured their size on disk."""
    out = []
    for n in names:
        rs = [r for r in table if r["name"] == n]
        if rs[0].get("gzip_mb") is not None:
            out.append((n, rs[0], statistics.fmean(r["map50_95"] for r in rs)))
    return out


def _runtime_lines(names: list[str], table: list[dict]) -> list[str]:
    """Export rows with ``format: all``: every runtime x precision, latency timed side by side
    within the row, the speed-up over ONNX Runtime FP32, and mAP run by that runtime (first seed)."""
    lines: list[str] = []
    machines: dict[str, str] = {}
    for n in names:
        r = next((r for r in table if r["name"] == n and r.get("runtimes")), None)
        if r is None:
            continue
        ov = f" (OpenVINO's default precision there: {r['openvino_precision']})" if r.get("openvino_precision") else ""
        machines[n] = (r.get("machine") or "a machine not recorded") + ov
        if not lines:
            lines += ["", "Every runtime x precision of the export rows (latency of one row's models timed "
                      "interleaved; mAP50-95 of each model run by its own runtime):", "",
                      "| row | model | median ms | x ONNX FP32 | mAP50-95 |", "|---|---|---|---|---|"]  # fmt: skip
        base = r["runtimes"].get("onnx_fp32", {}).get("ms")
        for k, v in r["runtimes"].items():
            sp = f"{base / v['ms']:.2f}x" if base else "-"
            m = f"{v['map50_95']:.4f}" if v.get("map50_95") is not None else "-"
            lines.append(f"| {n} | {k} | {v['ms']:.2f} | {sp} | {m} |")
    if machines:
        lines.append("")
    by_machine: dict[str, list[str]] = {}
    for n, m in machines.items():  # a cached row may come from another session's machine; INT8 speed depends on it
        by_machine.setdefault(m, []).append(n)
    lines += [f"Measured on {m}: {', '.join(ns)}." for m, ns in by_machine.items()]
    return lines


def _size_lines(names: list[str], table: list[dict]) -> list[str]:
    """The size table: non-zero parameters and the stock fp16 checkpoint's size, raw and gzip-compressed."""
    sized = _sized(names, table)
    if not sized:
        return []
    lines = ["", "Size on disk (the model as a stock fp16 checkpoint; gzip shows what zeros save in storage and "
             "download; rows from before this column have none):", "",
             "| row | params | non-zero params | file MB | gzip MB | mAP50-95 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for n, r, m in sized:
        lines.append(f"| {n} | {r['params']:,} | {r['nonzero_params']:,} | {r['size_mb']:.2f} | {r['gzip_mb']:.2f} "
                     f"| {m:.4f} |")  # fmt: skip
    return lines


def _size_plot(names: list[str], table: list[dict], out_dir: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for n, r, m in _sized(names, table):
        ax.scatter(r["gzip_mb"], m)
        ax.annotate(n, (r["gzip_mb"], m), fontsize=7)
    ax.set_xlabel("gzip MB (stock fp16 checkpoint)")
    ax.set_ylabel("mAP50-95")
    fig.tight_layout()
    fig.savefig(out_dir / "map_vs_size.png", dpi=100)


def _row_line(n: str, rs: list[dict]) -> tuple[str, tuple]:
    """One row's table line (mean and spread over its seeds) and its point for the plots."""
    maps = [r["map50_95"] for r in rs]
    mean = statistics.fmean(maps)
    spread = f" ± {statistics.stdev(maps):.4f}" if len(maps) > 1 else ""
    r0 = rs[0]
    int8 = f"{r0['int8_ms']:.2f}" if r0.get("int8_ms") else "-"
    pt = f"{r0['torch_ms']:.1f}" if r0.get("torch_ms") else "-"
    secs = statistics.fmean(r.get("train_seconds", r["seconds"]) for r in rs)
    kd = f"{r0['kd_step_vs_plain']:.2f} / {r0['kd_step_vs_native']:.2f}" if "kd_step_vs_plain" in r0 else "-"
    line = (
        f"| {n} | {r0['params']:,} | {r0['gflops']:.2f} | {statistics.fmean(r['map50'] for r in rs):.4f} | "
        f"{mean:.4f}{spread} | {r0['onnx_ms']:.2f} | {int8} | {pt} | {secs:.0f} | {kd} "
        f"| {len(rs)} | {_last(rs)} |"
    )
    return line, (n, r0["gflops"], r0["onnx_ms"], mean, r0.get("curve", []))


def _last(rs: list[dict]) -> str:
    """Mean (and spread) of last.pt's mAP50-95 over the seeds that measured it; ``-`` for rows from before."""
    vals = [r["last_map50_95"] for r in rs if r.get("last_map50_95") is not None]
    if not vals:
        return "-"
    return f"{statistics.fmean(vals):.4f}" + (f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else "")


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _onnx_lines(names: list[str], table: list[dict]) -> list[str]:
    """The table of export rows: mAP of the ONNX models run by ONNX Runtime, FP32 and INT8 (first seed)."""
    lines: list[str] = []
    onnx_rows = []
    for n in names:  # export rows carry ONNX-run mAPs (first seed shown)
        r = next((r for r in table if r["name"] == n and r.get("onnx_map50_95")), None)
        if r is not None:
            onnx_rows.append((n, r))
    if onnx_rows:
        lines += ["", "ONNX models run by ONNX Runtime over the val split at the export size (export rows):", "",
                  "| row | ONNX FP32 mAP50-95 | ONNX INT8 mAP50-95 | FP32 ms | INT8 ms | INT8 speed-up |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for n, r in onnx_rows:
            m, i8 = r["onnx_map50_95"], r.get("int8_ms")
            qat = "onnx_qat_int8" in m  # a QAT model has an INT8 (QDQ) ONNX model only
            fp = next((v for k, v in m.items() if k not in ("onnx_int8", "onnx_qat_int8")), None)
            q = m.get("onnx_qat_int8" if qat else "onnx_int8")
            fp_ms = None if qat else r["onnx_ms"]
            sp = f"{fp_ms / i8:.2f}x" if fp_ms and i8 else "-"
            lines.append(f"| {n}{' (QAT)' if qat else ''} | {_num(fp, 4)} | {_num(q, 4)} | {_num(fp_ms, 2)} | "
                         f"{_num(i8, 2)} | {sp} |")  # fmt: skip
    return lines


def _plots(summary: list[tuple], out_dir: Path) -> None:
    """``map_vs_gflops.png``, ``map_vs_latency.png`` and ``map_curves.png`` (matplotlib's object API: no backend
    switch, no global state)."""
    from matplotlib.figure import Figure

    for fname, idx, xlabel in (("map_vs_gflops.png", 1, "GFLOPs"), ("map_vs_latency.png", 2, "ONNX FP32 ms")):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for n, *vals in summary:
            ax.scatter(vals[idx - 1], vals[2])
            ax.annotate(n, (vals[idx - 1], vals[2]), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50-95")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for n, *_, curve in summary:
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, label=n)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    if any(curve for *_, curve in summary):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "map_curves.png", dpi=100)
