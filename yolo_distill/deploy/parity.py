"""Parity of an exported model with PyTorch: raw outputs and final detections on the same letterboxed images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yolo_distill.deploy.latency import ort_session


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond tolerance."""


@dataclass
class Parity:
    """Raw-output and detection agreement between PyTorch and ONNX Runtime on the same images."""

    images: int
    max_abs_box: float
    max_abs_score: float
    detections_torch: int
    detections_onnx: int
    detections_matched: int
    ok: bool
    fp32_noise_box: float | None = None
    onnx_vs_fp64_box: float | None = None
    fp32_noise_score: float | None = None
    onnx_vs_fp64_score: float | None = None
    judged_by: str = "tolerance"


def _split_output(y: np.ndarray, end2end: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores of a raw output: (B, 4+nc, A) for NMS heads, (B, max_det, 6) for end-to-end heads."""
    if end2end:
        return y[..., :4], y[..., 4:5]
    return y[:, :4], y[:, 4:]


def _detections(y: np.ndarray, end2end: bool, conf: float = 0.25) -> list[np.ndarray]:
    """Per-image detections (N, 6) xyxy, score, class."""
    from ultralytics.utils.nms import non_max_suppression

    t = torch.from_numpy(y)
    if end2end:
        return [r[r[:, 4] > conf].numpy() for r in t]
    return [r.numpy() for r in non_max_suppression(t, conf_thres=conf, iou_thres=0.7, max_det=300)]


def _match(a: np.ndarray, b: np.ndarray, iou_thr: float = 0.99) -> int:
    """Detections of ``a`` that have a same-class detection in ``b`` with IoU > ``iou_thr``."""
    from torchvision.ops import box_iou

    if len(a) == 0 or len(b) == 0:
        return 0
    iou = box_iou(torch.from_numpy(a[:, :4]).double(), torch.from_numpy(b[:, :4]).double())
    same = torch.from_numpy(a[:, 5])[:, None] == torch.from_numpy(b[:, 5])[None]
    return int(((iou > iou_thr) & same).any(1).sum())


def check_parity(
    torch_model: torch.nn.Module,
    runtime: Path | Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    end2end: bool,
    score_tol: float,
    box_tol: float,
    threads: int = 2,
    fp64_factory: Callable[[], torch.nn.Module] | None = None,
) -> Parity:
    """Run ``images`` through PyTorch and a runtime and compare raw outputs and final detections.

    ``runtime`` is an ONNX file (run by ONNX Runtime) or any function from a ``(1, 3, H, W)`` float32 array to the
    model's raw output (e.g. :func:`yolo_distill.deploy.openvino.ov_runner`).

    The raw outputs agree when their max abs differences are within ``score_tol`` and ``box_tol``. When they are
    not and ``fp64_factory`` is given (it builds the same model in float64, and is only called then), they still
    agree if ONNX Runtime is within twice PyTorch-fp32's own distance from the fp64 outputs: a difference inside
    fp32's rounding noise (which grows with box coordinates times stride at large ``imgsz``) is not a
    disagreement. Detections must always match.
    """
    if callable(runtime):
        run = runtime
    else:
        sess = ort_session(runtime, threads)
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0]

    mb, ms, n_t, n_o, n_m = 0.0, 0.0, 0, 0, 0
    outputs = []  # (torch fp32, onnx) per image, reused by the fp64 judgement
    for i in range(len(images)):
        x = images[i : i + 1]
        with torch.no_grad():
            yt = torch_model(torch.from_numpy(x))
        yt = (yt[0] if isinstance(yt, (tuple, list)) else yt).float().numpy()
        yo = run(x)
        outputs.append((yt, yo))
        bt, st = _split_output(yt, end2end)
        bo, so_ = _split_output(yo, end2end)
        mb, ms = max(mb, float(np.abs(bt - bo).max())), max(ms, float(np.abs(st - so_).max()))
        dt, do = _detections(yt, end2end)[0], _detections(yo, end2end)[0]
        n_t, n_o, n_m = n_t + len(dt), n_o + len(do), n_m + _match(dt, do)
    dets_ok = n_t == n_o == n_m
    par = Parity(len(images), mb, ms, n_t, n_o, n_m, ms <= score_tol and mb <= box_tol and dets_ok)
    if not par.ok and dets_ok and fp64_factory is not None and np.isfinite(box_tol):
        fp64_model = fp64_factory()
        nb = ns = ob = os_ = 0.0
        for i, (yt, yo) in enumerate(outputs):
            with torch.no_grad():
                y64 = fp64_model(torch.from_numpy(images[i : i + 1]).double())
            y64 = (y64[0] if isinstance(y64, (tuple, list)) else y64).numpy()
            (b64, s64), (bt, st), (bo, so_) = (_split_output(y, end2end) for y in (y64, yt, yo))
            nb, ns = max(nb, float(np.abs(bt - b64).max())), max(ns, float(np.abs(st - s64).max()))
            ob, os_ = max(ob, float(np.abs(bo - b64).max())), max(os_, float(np.abs(so_ - s64).max()))
        par.fp32_noise_box, par.onnx_vs_fp64_box, par.fp32_noise_score, par.onnx_vs_fp64_score = nb, ob, ns, os_
        par.ok = ob <= max(box_tol, 2 * nb) and os_ <= max(score_tol, 2 * ns)
        par.judged_by = "fp64 reference"
    return par
