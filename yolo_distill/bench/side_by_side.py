"""Every finished row's ONNX model timed side by side, and which row serves which goal.

A row's own latency columns are measured when the row finishes, so rows that ran hours apart, beside other jobs or
on another session's machine, cannot be compared. ``side_by_side`` times every row's ONNX FP32 model (written by
the row's export, ``exports/<row>/``) interleaved, at each thread count, in one run on one machine, and keeps the
result in ``side_by_side.json`` with the machine and each row's cache key: a row recomputed later has no number
there until the next measurement. The report then gives the table, a plot, and per goal (a smaller file, a faster
CPU) the rows no other row beats on both that goal and mAP.

Run folders and exports are not kept in git, so a row that finished in another checkout has no ONNX model here;
each row therefore also leaves a timing copy of its model, weights zeroed and gzip'd (``timing_models/KEY.onnx.gz``,
a few dozen KB, :func:`~yolo_distill.deploy.latency.write_timing_copy`), which is timed in its place and named so in
the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from yolo_distill.bench.rows import seed_name
from yolo_distill.checkpoints import write_text_atomic
from yolo_distill.deploy.latency import compare_onnx, cpu_summary, open_timing_copy, write_timing_copy
from yolo_distill.log import LOGGER

FILE = "side_by_side.json"
#: the folder of the rows' timing copies, kept in git
TIMING = "timing_models"
#: thread counts timed when ``side_by_side=True``
THREADS = (1, 2)
LATENCY_TIE = 0.03  # repeated side-by-side medians of one model differ by up to about this


def onnx_model(out_dir: Path, entry: dict) -> Path | None:
    """The ONNX FP32 model the row's export wrote (``exports/<row>[_seedN]/<checkpoint stem>.onnx``), if present."""
    ckpt = Path(str(entry.get("checkpoint", "")))
    path = out_dir / "exports" / seed_name(entry["name"], int(entry.get("seed", 0))) / f"{ckpt.stem}.onnx"
    return path if path.is_file() else None


def timing_copy(out_dir: Path, key: str) -> Path:
    """Where the timing copy of the row-seed with cache key ``key`` is kept."""
    return out_dir / TIMING / f"{key}.onnx.gz"


def keep_timing_copy(out_dir: Path, key: str, entry: dict) -> None:
    """Write the row-seed's timing copy from its ONNX model, if it has one here and no copy yet."""
    src, dst = onnx_model(out_dir, entry), timing_copy(out_dir, key)
    if src is not None and not dst.is_file():
        write_timing_copy(src, dst)


#: row kinds whose model's shapes the bench can rebuild without training (the compression step alone, or for an
#: export row its checkpoint itself)
REBUILDABLE = ("prune", "carve", "lowrank", "export")


def rebuild_timing_copies(plan: list, table: list[dict], out_dir: Path) -> list[str]:
    """Write the timing copy of each finished row (first seed) that has neither its ONNX model nor a copy here (it
    finished in another checkout, before rows kept copies) by rebuilding its model's shapes: a ``prune``, ``carve``
    or ``lowrank`` row's compression step run again on its source, without fine-tuning (fine-tuning changes weights,
    which the copy zeroes, not shapes), or an ``export`` row's checkpoint itself. A rebuild whose parameter count
    differs from the row's is not used.

    Returns:
        The rows rebuilt.
    """
    import tempfile

    from yolo_distill.bench.rows import compress_step
    from yolo_distill.checkpoints import load_model
    from yolo_distill.compress.pruner import model_stats
    from yolo_distill.deploy.exporter import ultralytics_export

    firsts, rebuilt = first_seeds(table), []
    for row, s, key, _ in plan:
        entry = firsts.get(row.name)
        if entry is None or entry.get("key") != key:
            continue
        if onnx_model(out_dir, entry) or timing_copy(out_dir, key).is_file():
            continue
        if row.kind not in REBUILDABLE or row.refs() or not Path(str(row.start)).is_file():
            LOGGER.warning("bench: side by side: %s has no ONNX model or timing copy here, and its shapes cannot be "
                           "rebuilt without training (rerun=%s makes one)", row.name, row.name)  # fmt: skip
            continue
        imgsz = s.get("imgsz", 256)
        with tempfile.TemporaryDirectory(prefix="yd_rebuild_") as tmp:
            ckpt = compress_step(row, s, str(row.start), Path(tmp), imgsz)
            params = model_stats(load_model(ckpt), imgsz)["params"]
            if params != entry["params"]:
                LOGGER.warning("bench: side by side: %s rebuilt with %d parameters, not the row's %d: not timed",
                               row.name, params, entry["params"])  # fmt: skip
                continue
            onnx = ultralytics_export(Path(ckpt), Path(tmp) / "m.onnx", "onnx", s.get("export_imgsz", imgsz))
            write_timing_copy(onnx, timing_copy(out_dir, key))
        LOGGER.info("bench: side by side: %s rebuilt without fine-tuning for its timing copy", row.name)
        rebuilt.append(row.name)
    return rebuilt


def first_seeds(table: list[dict]) -> dict[str, dict]:
    """Each row's first finished seed (what the report's single-seed columns show)."""
    out: dict[str, dict] = {}
    for r in table:
        out.setdefault(r["name"], r)
    return out


def measure(table: list[dict], out_dir: Path, imgsz: int, threads: tuple[int, ...] = THREADS, runs: int = 30) -> dict:
    """Time every row's ONNX model interleaved at each thread count and write ``side_by_side.json``.

    Args:
        table: the bench's finished rows (each with ``name``, ``seed``, ``checkpoint`` and its cache ``key``).
        out_dir: the bench folder.
        imgsz: the export size (the models' input).
        threads: ONNX Runtime intra-op thread counts.
        runs: timed runs of each model per thread count.

    Returns:
        What was written: ``machine``, ``imgsz``, ``runs``, ``keys`` (row -> cache key) and ``ms`` (str(threads) ->
        row -> median and p90 ms).

    Raises:
        ValueError: when no finished row has an ONNX model in the bench folder (nothing to compare).
    """
    import tempfile

    firsts = first_seeds(table)
    models = {n: p for n, r in firsts.items() if (p := onnx_model(out_dir, r)) is not None}
    copies = {n: c for n, r in firsts.items() if n not in models and (c := timing_copy(out_dir, r["key"])).is_file()}
    if not models and not copies:
        raise ValueError(f"side_by_side: no finished row of {out_dir} has an ONNX model under exports/ or a timing "
                         f"copy under {TIMING}/; run the rows first (each row's export writes both)")  # fmt: skip
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    ms: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="yd_timing_") as tmp:
        models.update({n: open_timing_copy(c, Path(tmp) / n) for n, c in copies.items()})
        for t in threads:
            LOGGER.info("bench: side by side: %d ONNX models interleaved, %d thread(s)", len(models), t)
            stats = compare_onnx(list(models.values()), x, threads=t, runs=runs)
            ms[str(t)] = {n: {k: stats[str(p)][k] for k in ("median", "p90")} for n, p in models.items()}
    keys = {n: firsts[n].get("key") for n in models}
    result = {"machine": cpu_summary(), "imgsz": imgsz, "runs": runs, "keys": keys, "ms": ms,
              "timing_copies": sorted(copies)}  # fmt: skip
    write_text_atomic(out_dir / FILE, json.dumps(result, indent=2))
    return result


def load(out_dir: Path, table: list[dict]) -> dict | None:
    """``side_by_side.json`` with only the rows whose result is still the one timed (same cache key); None if absent
    or when no row is left."""
    path = out_dir / FILE
    if not path.is_file():
        return None
    sbs = json.loads(path.read_text())
    now = {n: r.get("key") for n, r in first_seeds(table).items()}
    keep = {n for n, k in sbs["keys"].items() if n in now and now[n] == k}
    if not keep:
        return None
    sbs["ms"] = {t: {n: v for n, v in rows.items() if n in keep} for t, rows in sbs["ms"].items()}
    sbs["keys"] = {n: k for n, k in sbs["keys"].items() if n in keep}
    sbs["timing_copies"] = [n for n in sbs.get("timing_copies", []) if n in keep]
    return sbs


def pareto(points: dict[str, tuple[float, float]], tol: float = 0.0) -> list[str]:
    """The rows no other row beats: ``points`` maps a row to (cost, mAP); a row is left out when another has a cost
    no higher and a mAP no lower, one of them strictly. Costs within ``tol`` (relative) of each other count as equal,
    so a timer's noise between models of the same shapes cannot make one of them a winner. Sorted by cost."""

    def beaten(c: float, m: float) -> bool:
        return any(c2 <= c * (1 + tol) and m2 >= m and (c2 < c * (1 - tol) or m2 > m) for c2, m2 in points.values())

    front = [n for n, (c, m) in points.items() if not beaten(c, m)]
    return sorted(front, key=lambda n: points[n][0])


def lines(sbs: dict, table: list[dict]) -> list[str]:
    """The report's side-by-side table and its "which row for which goal" section."""
    rows = first_seeds(table)
    threads = list(sbs["ms"])
    names = [n for n in rows if n in sbs["keys"]]
    out = ["", f"Side by side: every row's ONNX FP32 model timed interleaved in one run ({sbs['runs']} runs each, "
                f"{sbs['imgsz']} px, ONNX Runtime), on {sbs['machine']}. File: the stock fp16 checkpoint; gzip shows "
                "what zeros save. mAP50-95: first seed.", "",
           "| row | params | non-zero params | GFLOPs | file MB | gzip MB | "
           + " | ".join(f"ms {t} thread(s)" for t in threads) + " | mAP50-95 |",
           "|---|---|---|---|---|---|" + "---|" * len(threads) + "---|"]  # fmt: skip
    if sbs.get("timing_copies"):
        out[2:2] = ["", f"Timed from their timing copy (the row's model with its convolution weights zeroed, kept in "
                    f"{TIMING}/; its checkpoint is not on this machine): {', '.join(sbs['timing_copies'])}. Such "
                    "copies ran within 1.5 % of the real models where both were timed."]  # fmt: skip
    for n in names:
        r = rows[n]
        cells = " | ".join(f"{sbs['ms'][t][n]['median']:.2f}" for t in threads)
        nz = f"{r['nonzero_params']:,}" if r.get("nonzero_params") is not None else "-"
        size = " | ".join(f"{r[k]:.2f}" if r.get(k) is not None else "-" for k in ("size_mb", "gzip_mb"))
        out.append(f"| {n} | {r['params']:,} | {nz} | {r['gflops']:.2f} | {size} | {cells} | {r['map50_95']:.4f} |")
    goals = [("a smaller file (gzip MB)", {n: (rows[n]["gzip_mb"], rows[n]["map50_95"]) for n in names
                                            if rows[n].get("gzip_mb") is not None}, 0.0)]  # fmt: skip
    goals += [(f"a faster CPU, {t} thread(s) (ONNX Runtime ms)",
               {n: (sbs["ms"][t][n]["median"], rows[n]["map50_95"]) for n in names}, LATENCY_TIE)
              for t in threads]  # fmt: skip
    out += ["", "Which row for which goal: the rows that no other row beats on both the goal and mAP50-95 (cheapest "
                "first); any row not listed is worse on both than one that is. Latencies within "
                f"{LATENCY_TIE:.0%} of each other count as equal (what repeated measurements of one model differ by).",
            ""]  # fmt: skip
    for goal, points, tol in goals:
        front = pareto(points, tol)
        out.append(f"- {goal}: " + ", ".join(f"{n} ({points[n][0]:.2f}, {points[n][1]:.4f})" for n in front))
    return out


def plot(sbs: dict, table: list[dict], path: Path) -> None:
    """mAP50-95 against side-by-side latency, one series per thread count."""
    from matplotlib.figure import Figure

    rows = first_seeds(table)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for t, ms in sbs["ms"].items():
        xs = [ms[n]["median"] for n in ms]
        ax.scatter(xs, [rows[n]["map50_95"] for n in ms], label=f"{t} thread(s)")
        for n in ms:
            ax.annotate(n, (ms[n]["median"], rows[n]["map50_95"]), fontsize=6)
    ax.set_xlabel("ONNX Runtime ms (side by side)")
    ax.set_ylabel("mAP50-95")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
