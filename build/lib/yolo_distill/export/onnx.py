"""ONNX export through Ultralytics' exporter, a parity check against PyTorch on every export, optional INT8.

Writes next to the checkpoint, as Ultralytics does: ``CKPT.onnx``, ``CKPT_int8.onnx`` and ``CKPT_export.json``.
Existing outputs are never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from yolo_distill.export.latency import time_onnx, time_torch
from yolo_distill.export.quantize import quantize_int8

log = logging.getLogger("yolo_distill")

EXPORT_KEYS = (
    "model", "format", "imgsz", "int8", "data", "half", "dynamic", "opset", "simplify", "threads", "runs",
    "calib_images", "parity_images", "overwrite", "validate", "score_tol", "box_tol", "calib_method",
)  # fmt: skip


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


@dataclass
class ExportReport:
    """What ``CKPT_export.json`` holds."""

    checkpoint: str
    onnx: str
    imgsz: int
    parity: Parity
    precision: str = "fp32"
    latency_ms: dict = field(default_factory=dict)
    int8_onnx: str | None = None
    int8_calibration: str | None = None
    int8_parity: Parity | None = None
    map50_95: dict = field(default_factory=dict)
    map50: dict = field(default_factory=dict)


def letterbox_images(paths: list[Path], imgsz: int) -> np.ndarray:
    """Read images and letterbox them to ``imgsz`` as a float32 RGB NCHW batch in [0, 1], as Ultralytics does."""
    import cv2

    out = []
    for p in paths:
        im = cv2.imread(str(p))
        if im is None:
            raise ValueError(f"could not read image {p}")
        h, w = im.shape[:2]
        r = min(imgsz / h, imgsz / w)
        nh, nw = round(h * r), round(w * r)
        im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else im
        top, left = (imgsz - nh) // 2, (imgsz - nw) // 2
        canvas = np.full((imgsz, imgsz, 3), 114, dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = im
        out.append(canvas[..., ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out)).astype(np.float32) / 255.0


def dataset_images(data: str | None, n: int, split: str = "val") -> list[Path]:
    """Up to ``n`` image paths from a data YAML's split (sorted, so runs are repeatable)."""
    if not data:
        return []
    import yaml

    from yolo_distill.data.builtin import resolve_data
    from yolo_distill.data.checks import IMG_EXT, _split_dirs

    y = Path(resolve_data(data))
    if not y.is_file():
        raise FileNotFoundError(f"data YAML {y} does not exist; pass data= a data YAML or a built-in name (shapes)")
    d = yaml.safe_load(y.read_text())
    root = Path(d.get("path") or y.parent)
    root = root if root.is_absolute() else (y.parent / root)
    files: list[Path] = []
    for folder in _split_dirs(root, d[split]):
        files += sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMG_EXT)
    return files[:n]


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
    from yolo_distill.distill.losses.box_kd import box_iou_pairs

    if len(a) == 0 or len(b) == 0:
        return 0
    ta, tb = torch.from_numpy(a[:, :4]), torch.from_numpy(b[:, :4])
    iou = box_iou_pairs(ta[:, None], tb[None])
    same = torch.from_numpy(a[:, 5])[:, None] == torch.from_numpy(b[:, 5])[None]
    return int(((iou > iou_thr) & same).any(1).sum())


def check_parity(
    torch_model: torch.nn.Module,
    onnx_path: Path,
    images: np.ndarray,
    end2end: bool,
    score_tol: float,
    box_tol: float,
    threads: int = 2,
    fp64_factory: Callable[[], torch.nn.Module] | None = None,
) -> Parity:
    """Run ``images`` through PyTorch and ONNX Runtime and compare raw outputs and final detections.

    The raw outputs agree when their max abs differences are within ``score_tol`` and ``box_tol``. When they are
    not and ``fp64_factory`` is given (it builds the same model in float64, and is only called then), they still
    agree if ONNX Runtime is within twice PyTorch-fp32's own distance from the fp64 outputs: a difference inside
    fp32's rounding noise (which grows with box coordinates times stride at large ``imgsz``) is not a
    disagreement. Detections must always match.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mb, ms, n_t, n_o, n_m = 0.0, 0.0, 0, 0, 0
    outputs = []  # (torch fp32, onnx) per image, reused by the fp64 judgement
    for i in range(len(images)):
        x = images[i : i + 1]
        with torch.no_grad():
            yt = torch_model(torch.from_numpy(x))
        yt = (yt[0] if isinstance(yt, (tuple, list)) else yt).float().numpy()
        yo = sess.run(None, {name: x})[0]
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


def export_checkpoint(
    model: str,
    format: str = "onnx",
    imgsz: int = 640,
    int8: bool = False,
    data: str | None = None,
    half: bool = False,
    dynamic: bool = False,
    opset: int | None = None,
    simplify: bool = True,
    threads: int = 2,
    runs: int = 50,
    calib_images: int = 64,
    parity_images: int = 8,
    overwrite: bool = False,
    validate: bool = True,
    score_tol: float | None = None,
    box_tol: float | None = None,
    calib_method: str = "minmax",
) -> ExportReport:
    """Export a detection checkpoint to ONNX, prove parity with PyTorch, optionally quantize to INT8, time both.

    Args:
        model: the ``*.pt`` checkpoint (plain, distilled or pruned).
        format: only ``onnx``.
        imgsz: square input size; rounded up to a multiple of the max stride, with a warning.
        int8: also write ``CKPT_int8.onnx`` (static QDQ, per-channel weights, Detect head kept in fp32).
        data: data YAML (or built-in name) for parity images, INT8 calibration and mAP; default: the
            checkpoint's training data.
        half: export FP16 ONNX (weights and compute in fp16, fp32 inputs and outputs).
        dynamic: dynamic batch and image size.
        opset: ONNX opset (default: Ultralytics' choice).
        simplify: run onnxslim.
        threads: ONNX Runtime / PyTorch CPU threads for parity and latency.
        runs: timed runs for latency (after warm-up).
        calib_images: calibration images for INT8.
        parity_images: images for the parity check.
        overwrite: replace existing outputs.
        validate: measure mAP of the ONNX models over the val split (needs ``data``).
        score_tol: max abs difference allowed for class scores (default 1e-4 for FP32, 5e-3 for FP16).
        box_tol: max abs difference allowed for box coordinates in pixels (default 1e-3 for FP32, 1.0 for FP16).
        calib_method: INT8 activation calibration: ``minmax``, ``percentile`` or ``entropy``.

    Returns:
        The report, also written to ``CKPT_export.json``.

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch beyond tolerance (the report is written first).
    """
    from ultralytics import YOLO

    from yolo_distill.checkpoints import load_model
    from yolo_distill.data.builtin import resolve_data

    if format != "onnx":
        raise ValueError(
            f"format {format!r} is not supported; yolo_distill exports format=onnx (with int8=True for INT8)"
        )
    if int8 and half:
        raise ValueError("int8=True and half=True are exclusive (INT8 is calibrated from the FP32 model); export twice")
    ckpt = Path(model)
    net = load_model(ckpt)  # clear errors for missing / corrupt / non-.pt files
    if type(net).__name__ != "DetectionModel":
        raise ValueError(f"{ckpt} holds a {type(net).__name__}; yolo_distill exports detection models only")
    stride = int(max(net.stride.max().item(), 32))
    if imgsz % stride:
        new = math.ceil(imgsz / stride) * stride
        log.warning("yolo_distill: imgsz=%d is not a multiple of the max stride %d; using %d", imgsz, stride, new)
        imgsz = new
    out_onnx, out_int8 = ckpt.with_suffix(".onnx"), ckpt.with_name(f"{ckpt.stem}_int8.onnx")
    out_json = ckpt.with_name(f"{ckpt.stem}_export.json")
    existing = [p for p in (out_onnx, out_json, out_int8 if int8 else None) if p is not None and p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{[str(p) for p in existing]} already exist; pass overwrite=True or move them away")
    data = data or (getattr(net, "args", {}) or {}).get("data")
    images = dataset_images(data, max(parity_images, calib_images if int8 else 0))
    if int8 and not images:
        raise FileNotFoundError(
            f"no calibration images found for INT8 (data={data!r}); pass data= a dataset with images"
        )
    if not images:
        log.warning("yolo_distill: no dataset images (data=%r); parity runs on random images", data)
    end2end = bool(getattr(net.model[-1], "end2end", False))

    score_tol = score_tol if score_tol is not None else (5e-3 if half else 1e-4)
    box_tol = box_tol if box_tol is not None else (1.0 if half else 1e-3)
    fp16 = {"quantize": 16} if half else {}
    exported = YOLO(str(ckpt)).export(
        format="onnx", imgsz=imgsz, dynamic=dynamic, opset=opset, simplify=simplify, device="cpu", **fp16
    )
    onnx_path = Path(exported)
    if onnx_path != out_onnx:
        onnx_path.replace(out_onnx)
        onnx_path = out_onnx
    batch = letterbox_images(images[:parity_images], imgsz) if images else np.random.rand(2, 3, imgsz, imgsz)
    batch = batch.astype(np.float32)
    ref = load_model(ckpt).fuse().eval()
    parity = check_parity(
        ref, onnx_path, batch, end2end, score_tol, box_tol, threads,
        fp64_factory=lambda: load_model(ckpt).fuse().eval().double(),
    )  # fmt: skip
    report = ExportReport(str(ckpt), str(onnx_path), imgsz, parity, precision="fp16" if half else "fp32")
    x1 = batch[:1]
    key = "onnx_fp16" if half else "onnx_fp32"
    report.latency_ms[key] = time_onnx(onnx_path, x1, threads, runs)
    report.latency_ms["torch_fp32"] = time_torch(ref, x1, threads, max(runs // 2, 10))
    if int8:
        calib = letterbox_images(images[:calib_images], imgsz)
        report.int8_calibration = quantize_int8(onnx_path, out_int8, calib, overwrite=overwrite, method=calib_method)
        report.int8_onnx = str(out_int8)
        report.latency_ms["onnx_int8"] = time_onnx(out_int8, x1, threads, runs)
        report.int8_parity = check_parity(ref, out_int8, batch, end2end, math.inf, math.inf, threads)
    if validate and data:
        for k, path in ((key, onnx_path), ("onnx_int8", out_int8 if int8 else None)):
            if path is None:
                continue
            m = YOLO(str(path), task="detect").val(
                data=resolve_data(data), imgsz=imgsz, batch=1, device="cpu", plots=False, verbose=False
            )
            report.map50_95[k], report.map50[k] = float(m.box.map), float(m.box.map50)
    out_json.write_text(json.dumps(asdict(report), indent=2))
    _print(report)
    if not parity.ok:
        noise = (
            f"; vs an fp64 reference ONNX is off by {parity.onnx_vs_fp64_box:.3g} px, PyTorch fp32 by "
            f"{parity.fp32_noise_box:.3g} px"
            if parity.onnx_vs_fp64_box is not None
            else ""
        )
        raise ParityError(
            f"ONNX Runtime and PyTorch disagree on {ckpt}{noise}: max |box diff| {parity.max_abs_box:.3g} px "
            f"(tol {box_tol}), "
            f"max |score diff| {parity.max_abs_score:.3g} (tol {score_tol}), detections {parity.detections_torch} vs "
            f"{parity.detections_onnx} ({parity.detections_matched} matched); see {out_json}"
        )
    return report


def _print(r: ExportReport) -> None:
    p = r.parity
    print(f"\nexport {r.checkpoint} -> {r.onnx} (imgsz {r.imgsz})")
    verdict = "OK" if p.ok else "FAIL"
    print(f"parity on {p.images} images: max|box| {p.max_abs_box:.2e} px, max|score| {p.max_abs_score:.2e}, ")
    print(f"detections {p.detections_torch}/{p.detections_onnx} matched {p.detections_matched}: {verdict}")
    if p.judged_by == "fp64 reference":
        print(f"judged against fp64: ONNX max|box| {p.onnx_vs_fp64_box:.2e} px, PyTorch-fp32 {p.fp32_noise_box:.2e} px")
    print(f"{'model':<12}{'median ms':>10}{'p90 ms':>10}{'mAP50-95':>10}")
    for k, v in r.latency_ms.items():
        print(f"{k:<12}{v['median']:>10.2f}{v['p90']:>10.2f}{r.map50_95.get(k, float('nan')):>10.4f}")
