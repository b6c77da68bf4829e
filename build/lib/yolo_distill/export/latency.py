"""Latency: warm-up, then the median and p90 of many single-image runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def _stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "runs": len(a)}


def time_onnx(path: str | Path, x: np.ndarray, threads: int = 2, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """ONNX Runtime CPU latency of ``path`` on input ``x`` (1, 3, H, W)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return _stats(times)


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
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sessions = {str(p): ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in paths}
    names = {p: s.get_inputs()[0].name for p, s in sessions.items()}
    for _ in range(warmup):
        for p, s in sessions.items():
            s.run(None, {names[p]: x})
    times: dict[str, list[float]] = {p: [] for p in sessions}
    for _ in range(runs):
        for p, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {names[p]: x})
            times[p].append(time.perf_counter() - t)
    return {p: _stats(t) for p, t in times.items()}
