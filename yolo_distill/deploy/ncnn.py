"""NCNN (Tencent's runtime for ARM phones and boards): export through Ultralytics' exporter (PNNX), and NCNN's own
Python API for parity and latency.

The output sits beside the checkpoint as Ultralytics names it, ``CKPT_ncnn_model/`` (``model.ncnn.param``,
``model.ncnn.bin``, ``metadata.yaml``), so ``YOLO("CKPT_ncnn_model")`` predicts and validates it. FP32, or FP16
weights with ``half=True``; NCNN's INT8 needs its own calibration tools (``ncnn2table``, ``ncnn2int8``), which the
Python package does not ship: not offered here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolo_distill.deploy.exporter import ultralytics_export

INSTALL = 'pip install -e ".[ncnn]"  (or: pip install ncnn pnnx==20260526)'


def available() -> bool:
    """Whether NCNN and PNNX (the converter Ultralytics uses) are installed."""
    return importlib.util.find_spec("ncnn") is not None and importlib.util.find_spec("pnnx") is not None


def require_runtime(int8: bool, half: bool = False) -> None:
    """Raise a clear error, naming the install command, when NCNN is missing or INT8 is asked of it (it has FP16
    files, so ``half`` is always served)."""
    if not available():
        raise ValueError(f"format=ncnn needs NCNN and PNNX, which are not installed: {INSTALL}")
    if int8:
        raise ValueError("int8=True is not offered for format=ncnn (NCNN's INT8 calibration tools are not in "
                         "its Python package); use format=onnx or openvino for INT8, or export ncnn without "
                         "int8")  # fmt: skip


def output_dir(ckpt: Path) -> Path:
    """``CKPT_ncnn_model`` beside the checkpoint."""
    return ckpt.with_name(f"{ckpt.stem}_ncnn_model")


def export_ncnn(ckpt: Path, out: Path, imgsz: int, half: bool = False) -> Path:
    """``CKPT_ncnn_model/`` with FP32 (or, with ``half``, FP16) weights."""
    return ultralytics_export(ckpt, out, "ncnn", imgsz, half=half)


def ncnn_runner(model_dir: str | Path, threads: int = 2, fp16: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a ``(1, 3, H, W)`` float32 array through NCNN on the CPU; returns the raw output.

    NCNN computes in FP16 where the CPU allows unless told not to; ``fp16=False`` keeps storage and arithmetic in
    FP32, which parity against PyTorch needs.
    """
    import ncnn as pyncnn

    net = pyncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = int(threads)
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        if hasattr(net.opt, flag):
            setattr(net.opt, flag, bool(fp16) and "bf16" not in flag)
    param = next(Path(model_dir).glob("*.param"))
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))
    name_in, names_out = net.input_names()[0], sorted(net.output_names())

    def run(x: np.ndarray) -> np.ndarray:
        with net.create_extractor() as ex:
            ex.input(name_in, pyncnn.Mat(np.ascontiguousarray(x[0])))
            return np.array(ex.extract(names_out[0])[1])[None]

    return run
