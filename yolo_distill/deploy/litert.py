"""LiteRT (formerly TensorFlow Lite; Android, Coral, microcontrollers): export through Ultralytics' exporter
(``litert-torch``, no TensorFlow needed), and LiteRT's own Python interpreter for parity and latency.

Outputs sit beside the checkpoint as Ultralytics names them: ``CKPT.tflite`` (FP32) and ``CKPT_int8.tflite``, each
with its metadata embedded, so ``YOLO("CKPT.tflite")`` predicts and validates it. INT8 is ``ai-edge-quantizer``'s
static INT8 (weights per channel, activations calibrated by min/max on the same letterboxed images as ONNX Runtime's
INT8) for the convolutions only, outside the Detect head; the activation functions and element-wise ops (SiLU's
LOGISTIC and MUL, ADD, CONCATENATION, ...), the head and the graph's input and output stay float. Quantizing those
too (the quantizer's whole-model recipe) ran 7 % faster on cpu-edge's YOLO11s at 640 px but lost 3.7 points of
mAP50-95 (0.4136 against 0.4504 FP32); convolutions alone lost none (0.4549). On the shipped YOLO11s at 256 px,
quantizing the head too (Ultralytics' own ``int8`` LiteRT export) ran 1.6x faster again than the whole-model recipe
but lost 2.3 points of mAP50-95 instead of 1.0. Box coordinates leave the
graph divided by the input size (so INT8 keeps the scores' resolution); :func:`litert_runner` scales them back, as
Ultralytics' LiteRT backend does. FP16 is not a separate file in LiteRT (its GPU delegate runs an FP32 model in
FP16), so ``half=True`` is refused for it.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolo_distill.deploy.exporter import ultralytics_export

#: the extra that installs the converter and the runtime (named in every error about their absence)
INSTALL = 'pip install -e ".[litert]"  (or: pip install litert-torch ai-edge-litert ai-edge-quantizer)'


def available() -> bool:
    """Whether the LiteRT converter (``litert_torch``) and runtime (``ai_edge_litert``) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))


def require_runtime(int8: bool, half: bool) -> None:
    """Raise a clear error, naming the install command, when LiteRT (or its quantizer for INT8) is missing, or FP16
    is asked of it."""
    if not available():
        raise ValueError(f"format=litert needs litert-torch and ai-edge-litert, which are not installed: {INSTALL}")
    if int8 and importlib.util.find_spec("ai_edge_quantizer") is None:
        raise ValueError(f"format=litert int8=True needs ai-edge-quantizer, which is not installed: {INSTALL}")
    if half:
        raise ValueError("half=True is not offered for format=litert (LiteRT has no FP16 file: its GPU delegate runs "
                         "the FP32 model in FP16); export litert without half, or use int8=True for a smaller "
                         "model")  # fmt: skip


def output_paths(ckpt: Path) -> tuple[Path, Path]:
    """``CKPT.tflite`` and ``CKPT_int8.tflite`` beside the checkpoint."""
    return ckpt.with_suffix(".tflite"), ckpt.with_name(f"{ckpt.stem}_int8.tflite")


def export_litert(ckpt: Path, out: Path, imgsz: int) -> Path:
    """``CKPT.tflite``: the FP32 model, through Ultralytics' exporter."""
    return ultralytics_export(ckpt, out, "litert", imgsz)


#: ops left in float by :func:`quantize_litert` among those it quantizes: everything under the Detect head (its convs
#: and the box and score decoding) and the output scaling of Ultralytics' export wrapper (names are module paths)
FLOAT_OPS = r".*(Detect_\d+.*|_NormalizeCoords;\d+)$"
#: the op types :func:`quantize_litert` runs in INT8 (every other op stays float)
QUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def quantize_litert(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """Static INT8 of the FP32 ``.tflite``'s convolutions (weights per channel, activations with the min/max of
    ``calib``, ``(N, 3, H, W)`` float32 images in [0, 1]); element-wise ops, the Detect head and the graph's input and
    output stay float (see the module docstring); the FP32 file's metadata is carried over. Written under a temporary
    name, then renamed to ``out``."""
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager

    qt = quantizer.Quantizer(str(fp32))
    convs = recipe_manager.RecipeManager()
    for op in QUANTIZED_OPS:
        convs.add_static_config(regex=".*", operation_name=getattr(qtyping.TFLOperationName, op),
                                activation_num_bits=8, weight_num_bits=8)  # fmt: skip
    qt.load_quantization_recipe(convs.get_quantization_recipe())
    keep = recipe.AlgorithmName.NO_QUANTIZE
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        qt.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=keep)
    qt.update_quantization_recipe(regex=FLOAT_OPS, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                  algorithm_key=keep)  # fmt: skip
    samples = [{"args_0": calib[i : i + 1]} for i in range(len(calib))]  # litert-torch's one input, one batch
    calibrated = qt.calibrate({"serving_default": samples})
    tmp = out.with_name(f".{out.name}.partial")
    qt.quantize(calibration_result=calibrated).export_model(str(tmp), overwrite=True)
    with zipfile.ZipFile(fp32) as src:
        meta = src.read("metadata.json") if "metadata.json" in src.namelist() else None
    if meta is not None:  # Ultralytics' loader reads names, stride and imgsz from it
        with zipfile.ZipFile(tmp, "a", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("metadata.json", meta)
    tmp.replace(out)
    return out


def litert_runner(path: str | Path, threads: int = 2, end2end: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a ``(1, 3, H, W)`` float32 array through LiteRT's interpreter (XNNPACK on the CPU);
    returns the raw output with box coordinates in pixels, comparable with PyTorch's.

    Args:
        path: the ``.tflite`` file (FP32 or INT8, float input and output, NCHW as ``litert-torch`` writes it).
        threads: interpreter threads.
        end2end: the model's head is end-to-end (YOLO26): its post-NMS boxes are already in pixels.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(path), num_threads=int(threads))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=np.float32))
        interp.invoke()
        y = np.array(interp.get_tensor(out["index"]), dtype=np.float32)  # a copy: the buffer is reused
        if not end2end and y.ndim == 3:  # exported divided by the input size (see the module docstring)
            h, w = x.shape[2:4]
            y[:, [0, 2]] *= w
            y[:, [1, 3]] *= h
        return y

    return run
