"""The runtimes an export can target, one :class:`Target` each: where its files go, how it exports and quantizes,
how its own runtime runs a model, and where its results sit in the export report.

The export workflow (:mod:`yolo_distill.deploy.onnx`) loops over :data:`TARGETS`; each runtime's own steps stay in
its module (:mod:`~yolo_distill.deploy.openvino`, :mod:`~yolo_distill.deploy.ncnn`,
:mod:`~yolo_distill.deploy.litert`). A new runtime is such a module plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from yolo_distill.data.images import dataset_images
from yolo_distill.deploy import litert, ncnn
from yolo_distill.deploy import openvino as ov
from yolo_distill.deploy.exporter import ultralytics_export
from yolo_distill.deploy.latency import ort_runner
from yolo_distill.deploy.quantize import quantize_int8

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Job:
    """What any runtime's export or INT8 step may need, fixed once per export."""

    ckpt: Path
    imgsz: int
    half: bool = False
    dynamic: bool = False
    opset: int | None = None
    simplify: bool = True
    data: str | None = None
    calib: np.ndarray | None = None  # (N, 3, H, W) letterboxed float32 images shared by every runtime's INT8
    calib_images: int = 64
    calib_method: str = "minmax"
    overwrite: bool = False


@dataclass(frozen=True)
class Target:
    """One runtime an export writes and checks.

    Attributes:
        key: its ``format=`` value and the prefix of its latency and mAP keys (``openvino_fp32``).
        display: its name in messages and tables.
        module: the optional extra's module (``available()``, ``require_runtime(int8, half)``, ``INSTALL``); ``None``
            for ONNX Runtime, which is always installed.
        outputs: the FP32 (or FP16) output and the INT8 output (``None``: no INT8) beside a checkpoint.
        export: writes the FP32/FP16 output; returns its path.
        quantize: writes the INT8 output from the job and the FP32 output; returns a calibration note or ``None``.
        runner: ``(path, threads, end2end, fp16, deployed)`` -> a function from a ``(1, 3, H, W)`` float32 array to
            the raw output, box coordinates in pixels as PyTorch's. ``deployed``: configured as the runtime runs it
            by default (and as Ultralytics runs it), for latency; otherwise kept in the model's own precision, for
            parity (OpenVINO otherwise computes float ops in bf16 on CPUs that have it).
        fields: the report's attributes for the output, its parity, the INT8 output and its parity.
        half: it has an FP16 file.
        deployed_precision: for a runtime whose ``deployed`` runner differs from its parity runner (OpenVINO), a
            function naming the precision it then computes float ops in on this CPU; ``None``: one runner serves
            parity and latency.
    """

    key: str
    display: str
    module: ModuleType | None
    outputs: Callable[[Path], tuple[Path, Path | None]]
    export: Callable[[Job, Path], Path]
    quantize: Callable[[Job, Path, Path], str | None] | None
    runner: Callable[..., Runner]
    fields: tuple[str, str, str | None, str | None]
    half: bool = True
    deployed_precision: Callable[[], str] | None = None

    def available(self) -> bool:
        """Whether its runtime is installed here."""
        return self.module is None or self.module.available()

    def require(self, int8: bool, half: bool) -> None:
        """Raise a clear error (naming the install command) when its runtime, or what ``int8``/``half`` need of it,
        is missing or not offered."""
        if self.module is not None:
            self.module.require_runtime(int8, half)


# -- ONNX Runtime ---------------------------------------------------------------------------------------------------
def _onnx_outputs(ckpt: Path) -> tuple[Path, Path]:
    return ckpt.with_suffix(".onnx"), ckpt.with_name(f"{ckpt.stem}_int8.onnx")


def _onnx_export(job: Job, out: Path) -> Path:
    """Ultralytics' ONNX exporter (FP32, or FP16 with ``half``), written atomically to ``out``."""
    fp16 = {"quantize": 16} if job.half else {}
    return ultralytics_export(job.ckpt, out, "onnx", job.imgsz, dynamic=job.dynamic, opset=job.opset,
                              simplify=job.simplify, **fp16)  # fmt: skip


def _onnx_quantize(job: Job, fp32: Path, out: Path) -> str:
    """ONNX Runtime's static QDQ INT8 (per-channel weights, Detect head kept in fp32)."""
    return quantize_int8(fp32, out, job.calib, overwrite=job.overwrite, method=job.calib_method)


def _onnx_runner(path: Path, threads: int, end2end: bool, fp16: bool, deployed: bool = False) -> Runner:
    run = ort_runner(path, threads)
    return lambda x: run(x)[0]


# -- OpenVINO, NCNN, LiteRT -----------------------------------------------------------------------------------------
def _ov_quantize(job: Job, fp32: Path, out: Path) -> None:
    """NNCF's post-training INT8 through Ultralytics, calibrated on about as many images as the others use."""
    n_val = max(len(dataset_images(job.data, 10_000, split="val")), 1)
    ov.export_openvino(job.ckpt, out, job.imgsz, int8=True, data=job.data, fraction=min(1.0, job.calib_images / n_val))


def _litert_quantize(job: Job, fp32: Path, out: Path) -> None:
    litert.quantize_litert(fp32, out, job.calib)


def _prefixed(key: str, int8: bool = True) -> tuple[str, str, str | None, str | None]:
    return key, f"{key}_parity", f"{key}_int8" if int8 else None, f"{key}_int8_parity" if int8 else None


#: every runtime, in the order exports run and tables list them
TARGETS: tuple[Target, ...] = (
    Target("onnx", "ONNX Runtime", None, _onnx_outputs, _onnx_export, _onnx_quantize, _onnx_runner,
           ("onnx", "parity", "int8_onnx", "int8_parity")),  # fmt: skip
    Target("openvino", "OpenVINO", ov, ov.output_dirs,
           lambda job, out: ov.export_openvino(job.ckpt, out, job.imgsz, half=job.half), _ov_quantize,
           lambda p, threads, e2e, fp16, deployed=False: ov.ov_runner(p, threads, None if deployed else "f32"),
           _prefixed("openvino"), deployed_precision=ov.default_precision),  # fmt: skip
    Target("ncnn", "NCNN", ncnn, lambda c: (ncnn.output_dir(c), None),
           lambda job, out: ncnn.export_ncnn(job.ckpt, out, job.imgsz, half=job.half), None,
           lambda p, threads, e2e, fp16, deployed=False: ncnn.ncnn_runner(p, threads, fp16=fp16),
           _prefixed("ncnn", int8=False)),  # fmt: skip
    Target("litert", "LiteRT", litert, litert.output_paths,
           lambda job, out: litert.export_litert(job.ckpt, out, job.imgsz), _litert_quantize,
           lambda p, threads, e2e, fp16, deployed=False: litert.litert_runner(p, threads, e2e), _prefixed("litert"),
           half=False),  # fmt: skip
)
BY_KEY = {t.key: t for t in TARGETS}
