"""OpenVINO: export through Ultralytics' exporter (FP32, FP16 weights, or INT8 by NNCF post-training quantization),
and the runtime's own Python API for parity and latency.

Outputs sit beside the checkpoint as Ultralytics names them: ``CKPT_openvino_model/`` and
``CKPT_int8_openvino_model/`` (``.xml``, ``.bin``, ``metadata.yaml``), so ``YOLO("CKPT_openvino_model/")`` predicts and
validates them. INT8 is NNCF's post-training quantization as Ultralytics runs it: calibrated on images of ``data``,
with the Detect head's box and score decoding left in float.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolo_distill.deploy.exporter import ultralytics_export

#: the extra that installs the runtime (named in every error about its absence)
INSTALL = 'pip install -e ".[openvino]"  (or: pip install openvino nncf)'


def available() -> bool:
    """Whether the OpenVINO runtime is installed (and NNCF, which INT8 needs)."""
    return importlib.util.find_spec("openvino") is not None


def require_runtime(int8: bool, half: bool = False) -> None:
    """Raise a clear error, naming the install command, when OpenVINO (or NNCF for INT8) is missing (it has FP16
    files, so ``half`` is always served)."""
    if not available():
        raise ValueError(f"format=openvino needs the OpenVINO runtime, which is not installed: {INSTALL}")
    if int8 and importlib.util.find_spec("nncf") is None:
        raise ValueError(f"format=openvino int8=True needs NNCF, which is not installed: {INSTALL}")


def output_dirs(ckpt: Path) -> tuple[Path, Path]:
    """``CKPT_openvino_model`` and ``CKPT_int8_openvino_model`` beside the checkpoint."""
    return ckpt.with_name(f"{ckpt.stem}_openvino_model"), ckpt.with_name(f"{ckpt.stem}_int8_openvino_model")


def export_openvino(ckpt: Path, out: Path, imgsz: int, half: bool = False, int8: bool = False,
                    data: str | None = None, fraction: float = 1.0) -> Path:  # fmt: skip
    """``CKPT_openvino_model/`` (FP32 or FP16 weights) or, with ``int8``, NNCF's INT8 model calibrated on ``data``."""
    kw = {"int8": True, "data": data, "fraction": fraction} if int8 else {"half": half}
    return ultralytics_export(ckpt, out, "openvino", imgsz, **kw)


def default_precision() -> str:
    """The precision OpenVINO computes float ops in on this CPU when not told otherwise (``bf16`` where the CPU has
    AVX-512 BF16 or AMX, else ``f32``): what Ultralytics' OpenVINO backend, and so every OpenVINO mAP here, runs."""
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def ov_runner(model_dir: str | Path, threads: int = 2,
              precision: str | None = "f32") -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """A function running a ``(1, 3, H, W)`` float32 array through OpenVINO on the CPU; returns the raw output.

    ``precision`` is OpenVINO's inference precision hint: ``f32`` keeps an FP32 model in FP32 (some CPUs would
    otherwise compute in bf16), which parity against PyTorch needs; ``None`` leaves OpenVINO's default
    (:func:`default_precision`), as deployed and as Ultralytics runs it. INT8 ops are INT8 either way.
    """
    import openvino as ov

    core = ov.Core()
    xml = next(Path(model_dir).glob("*.xml"))
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        # share_inputs: OpenVINO reads the array in place, as ONNX Runtime does, instead of copying it per call
        # (4.9 MB at 640 px: about 0.4 ms, 4 % of a YOLO11n INT8 run); the output is still copied out
        return np.asarray(request.infer([np.ascontiguousarray(x)], share_inputs=True)[0])

    return run
