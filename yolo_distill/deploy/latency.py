"""ONNX Runtime sessions and latency: warm-up, then the median and p90 of many single-image runs."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
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


#: CPU instruction sets that decide how much INT8 (and BF16) buys on a CPU runtime, in the order they matter
SPEED_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_summary(cpuinfo: str | None = None) -> str:
    """The CPU that latencies were measured on, in one line: its model name, logical CPU count, and which of
    :data:`SPEED_FLAGS` it has (an INT8 speed-up measured with AMX or VNNI does not carry over to a CPU without them).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; default: read it (Linux), else the platform's processor name alone.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    first: dict[str, str] = {}  # the first CPU's lines (every CPU repeats them)
    for line in cpuinfo.splitlines():
        k, _, v = line.partition(":")
        first.setdefault(k.strip(), v.strip())
    name = first.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(first.get("flags", "").split())
    has = [f for f in SPEED_FLAGS if f in flags]
    isa = ", ".join(has) if has else ("none of " + ", ".join(SPEED_FLAGS) if flags else "flags unknown")
    return f"{name}, {os.cpu_count()} logical CPUs; {isa}"


def _stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "runs": len(a)}


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
    """ONNX Runtime latency of several models measured interleaved (rounds of :func:`compare_runners`), so that load
    on the machine affects all of them alike and their ratios hold. Returns ``{path: stats}``."""
    runners = {str(p): ort_runner(p, threads) for p in paths}
    return compare_runners(runners, x, runs, warmup, f"{threads} thread(s)")


def ort_runner(path: str | Path, threads: int = 2) -> Callable[[np.ndarray], list]:
    """A function running an input array through an ONNX Runtime session of ``path`` (see :func:`ort_session`)."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


#: timed runs of one model in a row within a round of :func:`compare_runners` (after one untimed run). The hand-over
#: from the previous model can outlast several short runs: ONNX Runtime's default thread pools spin after each run,
#: so at 2 threads on a 2-core CPU eight models of 5-17 ms timed in blocks of 5 gave medians 20-50 % off and
#: unstable from one measurement to the next (the same shapes twice: 6.1 and 9.7 ms); in blocks of 20 every median
#: stayed within 3 % of the model timed alone, repeat after repeat (AMD EPYC, idle, 2026-12-01).
BLOCK = 20


def compare_runners(runners: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, runs: int = 50,
                    warmup: int = 5, note: str = "", block: int = BLOCK) -> dict:  # fmt: skip
    """Latency of several models, each a function of the input (any runtime), measured interleaved in rounds so
    that load on the machine affects all alike. Returns ``{name: {"median", "p90", "runs"}}`` in ms.

    In each round every model runs once untimed, then ``block`` timed runs in a row. A run that directly follows
    another model's is slowed by that model's threads still spinning or winding down (ONNX Runtime's, OpenMP's):
    timed one run of each in turn, a YOLO11n's ONNX Runtime FP32 run measured 53 ms where alone it takes 29-31 ms,
    and two ONNX models' ratio shrank from 2.7x to 1.9x. The untimed run and a long enough block (:data:`BLOCK`)
    absorb that hand-over; rounds keep the interleaving that makes ratios hold under load.
    """
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block={block!r} is not valid: expected an integer >= 1 (timed runs in a row)")
    for _ in range(warmup):
        for run in runners.values():
            run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    rounds = -(-runs // block)
    for r in progress(range(rounds), f"latency, {len(runners)} model(s) interleaved {note}".strip()):
        n = min(block, runs - r * block)
        for k, run in runners.items():
            run(x)  # untimed: the previous model's threads hand the cores over here
            for _ in range(n):
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
    return {k: _stats(t) for k, t in times.items()}


#: runtimes a latency-targeted search can time a model on
RUNTIMES = ("onnxruntime", "openvino")


def model_latency(model: torch.nn.Module, imgsz: int, runtime: str = "onnxruntime", threads: int = 1,
                  runs: int = 20) -> float:  # fmt: skip
    """Median latency (ms) of ``model`` exported as it would be deployed (Ultralytics' exporter, in a temporary
    folder) and run on ``runtime`` with ``threads`` CPU threads, batch 1 at ``imgsz``."""
    import tempfile

    from yolo_distill.checkpoints import save_stock_checkpoint
    from yolo_distill.deploy.exporter import ultralytics_export

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not valid: expected one of {', '.join(RUNTIMES)}")
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="yd_latency_") as tmp:
        ckpt = save_stock_checkpoint(model, Path(tmp) / "m.pt")
        if runtime == "openvino":
            from yolo_distill.deploy.openvino import ov_runner

            path = ultralytics_export(ckpt, Path(tmp) / "m_openvino_model", "openvino", imgsz)
            run = ov_runner(path, threads, precision=None)  # as deployed: OpenVINO's default precision
        else:
            run = ort_runner(ultralytics_export(ckpt, Path(tmp) / "m.onnx", "onnx", imgsz), threads)
        return compare_runners({"m": run}, x, runs, 3)["m"]["median"]


#: ops whose float weight and bias inputs a timing copy zeroes
_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def write_timing_copy(src: str | Path, dst: str | Path) -> Path:
    """A gzip'd copy of the FP32 ONNX model ``src`` at ``dst`` (``.onnx.gz``) with every float weight and bias of its
    convolutions and matrix products set to zero: the same graph, shapes and ops, a few dozen KB instead of MBs, so a
    bench can keep it in git and time the model on another machine after the checkpoint is gone. Every other
    constant (shapes, anchors, strides) is kept. Dense CPU runtimes do not skip zeros: on the AMD EPYC of 2026-11-30,
    idle, the YOLO11s and YOLO11n copies ran within 1.5 % of the real models on ONNX Runtime (1 and 2 threads).
    """
    import gzip

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    weights = {n.input[i] for n in model.graph.node if n.op_type in _WEIGHTED for i in (1, 2) if i < len(n.input)}
    for t in model.graph.initializer:
        if t.name in weights and t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(np.zeros(tuple(t.dims), np.float32), t.name))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f".{dst.name}.partial")
    part.write_bytes(gzip.compress(model.SerializeToString(), 9))
    part.replace(dst)
    return dst


def open_timing_copy(gz: str | Path, folder: str | Path) -> Path:
    """The ONNX model of a timing copy (:func:`write_timing_copy`), unpacked into ``folder``."""
    import gzip

    out = Path(folder) / Path(gz).name.removesuffix(".gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.decompress(Path(gz).read_bytes()))
    return out
