"""Post-training static INT8 quantization with ONNX Runtime (QDQ, per-channel weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo_distill.log import LOGGER as log


class _Reader:
    """Feeds calibration images one at a time (ONNX Runtime's CalibrationDataReader protocol), with Ultralytics'
    progress bar over them (calibration runs the model once per image: minutes at 640 px on a CPU)."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        from ultralytics.utils import TQDM

        self.name, self.images, self.i = name, images, 0
        self.bar = TQDM(total=len(images), desc="INT8 calibration")

    def get_next(self):
        if self.i >= len(self.images):
            self.bar.close()
            return None
        x = self.images[self.i : self.i + 1]
        self.i += 1
        self.bar.update(1)
        return {self.name: x}

    def rewind(self) -> None:
        self.i = 0


def head_nodes(model_path: str | Path, convs: bool = True) -> list[str]:
    """Names of the nodes of the Detect head (the last ``/model.N/`` module), to keep in fp32.

    Args:
        model_path: the ONNX model.
        convs: include the head's convolutions; with False only its decoding (DFL, sigmoid, concat...) is kept.
    """
    import onnx

    m = onnx.load(str(model_path))
    idx = [int(n.name.split("/model.")[1].split("/")[0]) for n in m.graph.node if n.name.startswith("/model.")]
    last = max(idx) if idx else -1
    return [
        n.name
        for n in m.graph.node
        if n.name.startswith(f"/model.{last}/") and (convs or n.op_type != "Conv" or "/dfl/" in n.name)
    ]


CALIBRATION = ("minmax", "percentile", "entropy")


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calib: np.ndarray,
    keep_head_fp32: bool | str = "decode",
    overwrite: bool = False,
    method: str = "minmax",
) -> str:
    """Quantize ``src`` to ``dst`` calibrated on ``calib`` (N, 3, H, W) float32 images.

    Args:
        src: FP32 ONNX model.
        dst: output path; never overwritten unless ``overwrite``.
        calib: calibration images, preprocessed as the model expects.
        keep_head_fp32: ``True``: the whole Detect head in fp32 (box decoding and class scores lose most accuracy
            there); ``"decode"``: only its decoding ops, its convolutions quantized (faster); ``False``: nothing.
        overwrite: replace an existing ``dst``.
        method: activation range calibration: ``minmax``, ``percentile`` (99.999th) or ``entropy``. Histogram
            methods fall back to ``minmax`` (with a warning) when an activation has no range to bin.

    Returns:
        The calibration method actually used.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    if method not in CALIBRATION:
        raise ValueError(f"calibration method {method!r} is not one of {CALIBRATION}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True or move it away")
    if len(calib) == 0:
        raise ValueError("no calibration images: INT8 needs a few dozen images from the dataset")
    pre = dst.with_name(f".{dst.stem}_pre.onnx")
    part = dst.with_name(f".{dst.stem}.partial.onnx")  # renamed to dst once complete: never a torn dst
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}  # fmt: skip
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        name = onnx.load(str(pre)).graph.input[0].name
        excluded = head_nodes(pre, convs=keep_head_fp32 is True) if keep_head_fp32 else []

        def run(m: str) -> None:
            quantize_static(
                str(pre),
                str(part),
                _Reader(name, calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=methods[m],
                nodes_to_exclude=excluded,
            )

        try:
            run(method)
        except ValueError as e:
            if method == "minmax" or "bins" not in str(e):
                raise
            log.warning("yolo_distill: %s calibration failed (%s); using minmax", method, e)
            method = "minmax"
            run(method)
        # keep Ultralytics' metadata (names, stride, imgsz) so YOLO("x_int8.onnx") can run and validate it
        fp32, q = onnx.load(str(src)), onnx.load(str(part))
        del q.metadata_props[:]
        q.metadata_props.extend(fp32.metadata_props)
        onnx.save(q, str(part))
        part.replace(dst)
    finally:
        pre.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return method
