"""ONNX Runtime sessions and latency: warm-up, then the median and p90 of many single-image runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from yolo_distill.log import progress


def ort_session(path: str | Path, threads: int = 2):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (one inter-op thread): the one way
    parity, latency and comparisons open a model, so they all run it alike."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "runs": len(a)}


def time_onnx(path: str | Path, x: np.ndarray, threads: int = 2, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """ONNX Runtime CPU latency of ``path`` on input ``x`` (1, 3, H, W)."""
    return compare_onnx([path], x, threads, runs, warmup)[str(path)]


def time_torch(model: torch.nn.Module, x: np.ndarray, threads: int = 2, runs: int = 25, warmup: int = 3) -> dict:
    """PyTorch eager CPU latency of ``model`` on input ``x``."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t_in = torch.from_numpy(x)
        with torch.inference_mode():
            for _ in range(warmup):
                model(t_in)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                model(t_in)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(prev)
    return _stats(times)


def compare_onnx(paths: list[str | Path], x: np.ndarray, threads: int = 2, runs: int = 50, warmup: int = 5) -> dict:
    """ONNX Runtime latency of several models measured interleaved (one run of each in turn), so that load on the
    machine affects all of them alike and their ratios hold. Returns ``{path: stats}``."""
    sessions = {str(p): ort_session(p, threads) for p in paths}
    names = {p: s.get_inputs()[0].name for p, s in sessions.items()}
    for _ in range(warmup):
        for p, s in sessions.items():
            s.run(None, {names[p]: x})
    times: dict[str, list[float]] = {p: [] for p in sessions}
    for _ in progress(range(runs), f"latency, {len(sessions)} model(s) interleaved, {threads} thread(s)"):
        for p, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {names[p]: x})
            times[p].append(time.perf_counter() - t)
    return {p: _stats(t) for p, t in times.items()}
