"""The export workflow: ONNX, OpenVINO, NCNN and LiteRT through Ultralytics' exporter, a parity check against
PyTorch on every export, optional INT8, latency through each runtime measured side by side, mAP through each runtime.

Writes next to the checkpoint, as Ultralytics does: ``CKPT.onnx``, ``CKPT_int8.onnx``, ``CKPT_openvino_model/``,
``CKPT_int8_openvino_model/``, ``CKPT_ncnn_model/``, ``CKPT.tflite``, ``CKPT_int8.tflite`` and ``CKPT_export.json``.
Existing outputs are never overwritten unless ``overwrite=True``. The workflow is the same for every runtime: it
loops over :data:`~yolo_distill.deploy.targets.TARGETS`, where each runtime's steps are named.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from yolo_distill.checkpoints import load_model, write_text_atomic
from yolo_distill.config import require, require_int
from yolo_distill.data.builtin import require_data
from yolo_distill.data.images import dataset_images, letterbox_images
from yolo_distill.deploy.latency import compare_runners, cpu_summary
from yolo_distill.deploy.parity import Parity, ParityError, check_parity
from yolo_distill.deploy.quantize import CALIBRATION
from yolo_distill.deploy.targets import BY_KEY, TARGETS, Job, Runner, Target
from yolo_distill.evaluation import evaluate
from yolo_distill.log import LOGGER, table

__all__ = ["ExportReport", "Parity", "ParityError", "check_parity", "export_checkpoint"]


#: ``format=`` values; ``all`` is ONNX and every other runtime installed here
FORMATS = (*BY_KEY, "all")


@dataclass
class ExportReport:
    """What ``CKPT_export.json`` holds (``None`` for a format not exported)."""

    checkpoint: str
    onnx: str | None
    imgsz: int
    parity: Parity | None
    precision: str = "fp32"
    openvino: str | None = None
    openvino_parity: Parity | None = None
    openvino_int8: str | None = None
    openvino_int8_parity: Parity | None = None
    ncnn: str | None = None
    ncnn_parity: Parity | None = None
    litert: str | None = None
    litert_parity: Parity | None = None
    litert_int8: str | None = None
    litert_int8_parity: Parity | None = None
    latency_ms: dict = field(default_factory=dict)
    int8_onnx: str | None = None
    int8_calibration: str | None = None
    int8_parity: Parity | None = None
    map50_95: dict = field(default_factory=dict)
    map50: dict = field(default_factory=dict)
    machine: str = ""  # the CPU the latencies were measured on (:func:`~yolo_distill.deploy.latency.cpu_summary`)
    openvino_precision: str | None = None  # what OpenVINO computed float ops in for latency and mAP (its default)


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
        format: ``onnx``, ``openvino`` (the ``openvino`` extra), ``ncnn`` (the ``ncnn`` extra; no INT8), ``litert``
            (the ``litert`` extra; no FP16) or ``all`` (ONNX and every runtime installed; INT8 where the runtime
            offers it, FP16 where it has an FP16 file).
        imgsz: square input size; rounded up to a multiple of the max stride, with a warning.
        int8: also write ``CKPT_int8.onnx`` (static QDQ, per-channel weights, Detect head kept in fp32),
            ``CKPT_int8_openvino_model/`` (NNCF post-training quantization, box/score decoding in float) and/or
            ``CKPT_int8.tflite`` (static INT8 weights and activations, Detect head and graph I/O in float).
        data: data YAML (or built-in name) of the model's classes, for parity images, INT8 calibration and mAP;
            default: the checkpoint's training data when it is on this machine, else none (parity and latency then
            run on Ultralytics' sample images and no mAP is measured). Refused when its classes differ.
        half: export FP16 ONNX (weights and compute in fp16, fp32 inputs and outputs).
        dynamic: dynamic batch and image size.
        opset: ONNX opset (default: Ultralytics' choice).
        simplify: run onnxslim.
        threads: CPU threads of every runtime (ONNX Runtime, OpenVINO, PyTorch) for parity and latency.
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
        ParityError: a runtime disagrees with PyTorch beyond tolerance (the report is written first).
    """
    format = "litert" if format == "tflite" else format  # LiteRT's former name, still accepted by Ultralytics
    require(format in FORMATS, "format", format, f"one of {', '.join(FORMATS)} (with int8=True for INT8)")
    formats = _formats(format, half)
    for t in formats:  # format=all takes INT8 from the runtimes that offer it; one named explicitly must offer it
        t.require(int8 and (t.quantize is not None or format == t.key), half)
    if int8 and half:
        raise ValueError("int8=True and half=True are exclusive (INT8 is calibrated from the FP32 model); export twice")
    for key, value, low in (("imgsz", imgsz, 32), ("threads", threads, 1), ("runs", runs, 1),
                            ("calib_images", calib_images, 1), ("parity_images", parity_images, 1)):  # fmt: skip
        require_int(key, value, low)
    require(calib_method in CALIBRATION, "calib_method", calib_method, f"one of {CALIBRATION}")
    require(opset is None or (isinstance(opset, int) and opset >= 11), "opset", opset, "an ONNX opset >= 11")
    for key, value in (("score_tol", score_tol), ("box_tol", box_tol)):
        require(value is None or (isinstance(value, (int, float)) and value >= 0), key, value, "a number >= 0")
    if data is not None:
        data = require_data(data)
    ckpt = Path(model)
    net = load_model(ckpt)  # clear errors for missing / corrupt / non-.pt files
    if type(net).__name__ != "DetectionModel":
        raise ValueError(f"{ckpt} holds a {type(net).__name__}; yolo_distill exports detection models only")
    imgsz = _fit_imgsz(net, imgsz)
    qat = _is_qat(net)
    if qat:  # its Q/DQ ranges are learned: it exports as an INT8 QDQ ONNX model itself
        require([t.key for t in formats] == ["onnx"], "format", format, "onnx for a QAT checkpoint (only ONNX "
                "and TensorRT read its learned Q/DQ ranges; export the FP32 checkpoint for OpenVINO)")  # fmt: skip
        require(not int8, "int8", int8, "false for a QAT checkpoint (its ONNX model is INT8 already)")
        require(not half, "half", half, "false for a QAT checkpoint (its ONNX model is INT8)")
    out_json = _plan_outputs(ckpt, int8, overwrite, formats, tables=format == "all")
    data = _data_for(net, data)
    if int8 and not data:
        raise ValueError("int8=True needs data= (a dataset of the model's classes: its images calibrate INT8)")
    images = dataset_images(data, max(parity_images, calib_images if int8 else 0)) if data else []
    if int8 and not images:
        raise FileNotFoundError(
            f"no calibration images found for INT8 (data={data!r}); pass data= a dataset with images"
        )
    if not images:  # parity and latency need no dataset: the sample images Ultralytics ships
        from ultralytics.utils import ASSETS

        images = sorted(Path(ASSETS).glob("*.jpg"))
        LOGGER.info("yolo_distill: no data=: parity and latency on Ultralytics' sample images; no mAP measured")
    end2end = bool(getattr(net.model[-1], "end2end", False))
    score_tol = score_tol if score_tol is not None else (5e-3 if half else 1e-4)
    box_tol = box_tol if box_tol is not None else (1.0 if half else 1e-3)

    batch = letterbox_images(images[:parity_images], imgsz) if images else np.random.rand(2, 3, imgsz, imgsz)
    batch = batch.astype(np.float32)
    ref = load_model(ckpt).fuse().eval()
    fp64 = lambda: load_model(ckpt).fuse().eval().double()  # noqa: E731
    prec = "qat_int8" if qat else "fp16" if half else "fp32"
    if qat:  # fake quantization in PyTorch vs integer Q/DQ in the runtime: measured, not judged (as INT8)
        score_tol, box_tol = math.inf, math.inf
    report = ExportReport(str(ckpt), None, imgsz, None, precision=prec)
    calib = letterbox_images(images[:calib_images], imgsz) if int8 else None  # every runtime's INT8 calibrates on it
    job = Job(ckpt, imgsz, half, dynamic, opset, simplify, data, calib, calib_images, calib_method, overwrite)
    models: dict[str, Path] = {}  # latency and mAP keys -> exported model
    runners: dict[str, Runner] = {}  # the same keys -> the model in its runtime, opened once for parity and latency
    for t in formats:
        out, out_int8 = t.outputs(ckpt)
        path = t.export(job, out)
        f_out, f_parity, f_int8, f_int8_parity = t.fields
        run = t.runner(path, threads, end2end, False)  # parity computes in FP32 even for an FP16 file
        setattr(report, f_out, str(path))
        setattr(report, f_parity, check_parity(ref, run, batch, end2end, score_tol, box_tol, fp64_factory=fp64))
        models[f"{t.key}_{prec}"] = path
        apart = t.deployed_precision is not None  # timed in another configuration than parity's
        runners[f"{t.key}_{prec}"] = t.runner(path, threads, end2end, half, True) if half or apart else run
        if int8 and t.quantize is not None:
            note = t.quantize(job, path, out_int8)
            if note is not None:
                report.int8_calibration = note
            run8 = t.runner(out_int8, threads, end2end, False)
            setattr(report, f_int8, str(out_int8))  # INT8 against FP32 PyTorch: measured, not judged
            setattr(report, f_int8_parity, check_parity(ref, run8, batch, end2end, math.inf, math.inf))
            models[f"{t.key}_int8"] = out_int8
            runners[f"{t.key}_int8"] = t.runner(out_int8, threads, end2end, False, True) if apart else run8
        if apart:  # OpenVINO, the one runtime timed in a precision of its own choosing
            report.openvino_precision = t.deployed_precision()
    report.latency_ms = _latency(runners, ref, batch[:1], threads, runs)
    report.machine = cpu_summary()
    if validate and data:
        _validate(report, models, data, imgsz)
    write_text_atomic(out_json, json.dumps(asdict(report), indent=2))
    if format == "all":  # one table and one plot of every runtime x precision
        write_text_atomic(out_json.with_suffix(".md"), runtime_table(report, threads))
        _runtime_plot(report, out_json.with_suffix(".png"))
    LOGGER.info(summary(report))
    for t in formats:
        par = getattr(report, t.fields[1])
        if not par.ok and not qat:  # QAT: INT8 against fake quantization, measured (as INT8)
            raise ParityError(_parity_message(ckpt, par, box_tol, score_tol, out_json, t.display))
    return report


# -- the steps ------------------------------------------------------------------------------------------------------
def _formats(format: str, half: bool) -> list[Target]:
    """The runtimes ``format`` asks for, in :data:`TARGETS` order. ``all`` is ONNX and every optional runtime
    installed here (each one left out is named with its install command), less those without an FP16 file when
    ``half=True``."""
    if format != "all":
        return [BY_KEY[format]]
    chosen = []
    for t in TARGETS:
        if not t.available():
            LOGGER.warning("yolo_distill: format=all leaves out %s, which is not installed: %s", t.key,
                           t.module.INSTALL)  # fmt: skip
        elif half and not t.half:
            LOGGER.warning("yolo_distill: format=all half=True leaves out %s (it has no FP16 file)", t.key)
        else:
            chosen.append(t)
    return chosen


def _data_for(net: nn.Module, data: str | None) -> str | None:
    """The dataset for calibration and mAP: ``data=`` when given (refused unless it has the model's classes), else
    the one the checkpoint was trained on when it is on this machine, else none (a third-party checkpoint)."""
    from yolo_distill.data.checks import check_detection_dataset

    names = dict(getattr(net, "names", {}) or {})
    if data is None:
        stored = (getattr(net, "args", {}) or {}).get("data")
        if not stored or not str(stored).endswith((".yaml", ".yml")) or not Path(str(stored)).is_file():
            return None
        data = str(stored)
    d = check_detection_dataset(data) if Path(data).is_file() else None
    if d is not None and names:
        theirs = [d["names"][k] for k in sorted(d["names"])] if isinstance(d["names"], dict) else list(d["names"])
        ours = [names[k] for k in sorted(names)]
        if theirs != ours:
            raise ValueError(
                f"data={data} has {len(theirs)} classes {theirs[:8]}{'...' if len(theirs) > 8 else ''} but the model "
                f"detects {len(ours)} {ours[:8]}{'...' if len(ours) > 8 else ''}: its mAP would mean nothing; pass the "
                f"model's own data YAML (same classes, same order), or leave data= out to export with parity and "
                f"latency only"
            )
    return data

def _is_qat(net: nn.Module) -> bool:
    """Whether ``net`` carries Ultralytics' QAT fake quantization (a ``qat=True`` training)."""
    from ultralytics.utils.torch_utils import is_qat

    return bool(is_qat(net))


def _fit_imgsz(net: nn.Module, imgsz: int) -> int:
    """``imgsz`` rounded up to a multiple of the model's max stride (with a warning when it changes)."""
    stride = int(max(net.stride.max().item(), 32))
    if imgsz % stride:
        new = math.ceil(imgsz / stride) * stride
        LOGGER.warning("yolo_distill: imgsz=%d is not a multiple of the max stride %d; using %d", imgsz, stride, new)
        return new
    return imgsz


def _plan_outputs(ckpt: Path, int8: bool, overwrite: bool, formats: list[Target], tables: bool = False) -> Path:
    """Every output of ``formats`` beside the checkpoint, and ``CKPT_export.json`` (returned); refuses existing
    outputs, and removes an existing export folder only with ``overwrite``."""
    out_json = ckpt.with_name(f"{ckpt.stem}_export.json")
    planned = [out_json] + ([out_json.with_suffix(".md"), out_json.with_suffix(".png")] if tables else [])
    for t in formats:
        out, out_int8 = t.outputs(ckpt)
        planned += [out] + ([out_int8] if int8 and t.quantize is not None else [])
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{[str(p) for p in existing]} already exist; pass overwrite=True or move them away")
    for p in existing:
        if p.is_dir():  # an export folder of ours being replaced (overwrite=True)
            import shutil

            shutil.rmtree(p)
    return out_json


def _latency(runners: dict, ref: nn.Module, x1: np.ndarray, threads: int, runs: int) -> dict:
    """Every exported model and PyTorch eager, timed interleaved (their ratios hold under machine load)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            t_in = torch.from_numpy(x1)
            return compare_runners({**runners, "torch_fp32": lambda x: ref(t_in)}, x1, runs, 5, f"{threads} thread(s)")
    finally:
        torch.set_num_threads(prev)


def _validate(report: ExportReport, models: dict[str, Path | None], data: str, imgsz: int) -> None:
    """mAP of each exported model, run by its runtime over the val split (through Ultralytics' validator)."""
    for k, path in models.items():
        if path is not None:
            m = evaluate(path, data, imgsz=imgsz, batch=1)
            report.map50_95[k], report.map50[k] = m["map50_95"], m["map50"]


def runtime_table(r: ExportReport, threads: int) -> str:
    """``CKPT_export.md``: every exported model (runtime x precision) with its latency, speed-up over ONNX Runtime
    FP32, mAP run by its own runtime, and parity against PyTorch."""
    base = r.latency_ms.get("onnx_fp32", {}).get("median")
    lines = [f"# Export of `{r.checkpoint}` at {r.imgsz} px, {threads} CPU thread(s)", "",
             f"Measured on: {r.machine or 'not recorded'}.", "",
             *([f"OpenVINO ran with its default inference precision on this CPU, {r.openvino_precision}, for latency "
                "and mAP, as Ultralytics runs it (float ops in that precision, INT8 ops in INT8); its parity check "
                "runs in f32.", ""] if r.openvino_precision else []),  # fmt: skip
             "Latency: median and p90 of single-image runs, every model timed interleaved with the others (their "
             "ratios hold under machine load). mAP50-95: the exported model run by its own runtime over the val "
             "split. Parity: max abs box difference against PyTorch on the same images (INT8: measured, not judged).",
             "", "| model | median ms | p90 ms | x ONNX FP32 | mAP50-95 | parity max box px |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for k, v in r.latency_ms.items():
        p = _parity_of(r, k)
        m = r.map50_95.get(k)
        speed = f"{base / v['median']:.2f}x" if base else "-"
        lines.append(f"| {k} | {v['median']:.2f} | {v['p90']:.2f} | {speed} | {f'{m:.4f}' if m is not None else '-'} "
                     f"| {f'{p.max_abs_box:.2e}' if p is not None else '-'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _runtime_plot(r: ExportReport, path: Path) -> None:
    """mAP50-95 against median latency, one point per runtime x precision (``CKPT_export.png``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for k, v in r.latency_ms.items():
        if k in r.map50_95:
            ax.scatter(v["median"], r.map50_95[k])
            ax.annotate(k, (v["median"], r.map50_95[k]), fontsize=7)
    ax.set_xlabel("median latency, ms")
    ax.set_ylabel("mAP50-95 (own runtime)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def _parity_message(ckpt: Path, parity: Parity, box_tol: float, score_tol: float, out_json: Path,
                    runtime: str = "ONNX Runtime") -> str:  # fmt: skip
    noise = (
        f"; vs an fp64 reference ONNX is off by {parity.onnx_vs_fp64_box:.3g} px, PyTorch fp32 by "
        f"{parity.fp32_noise_box:.3g} px"
        if parity.onnx_vs_fp64_box is not None
        else ""
    )
    return (
        f"{runtime} and PyTorch disagree on {ckpt}{noise}: max |box diff| {parity.max_abs_box:.3g} px "
        f"(tol {box_tol}), max |score diff| {parity.max_abs_score:.3g} (tol {score_tol}), detections "
        f"{parity.detections_torch} vs {parity.detections_onnx} ({parity.detections_matched} matched); see {out_json}"
    )


def _parity_of(r: ExportReport, key: str) -> Parity | None:
    """The parity of the model behind a latency key (``openvino_int8`` -> ``r.openvino_int8_parity``)."""
    runtime, prec = key.split("_", 1)
    fields = BY_KEY[runtime].fields if runtime in BY_KEY else (None, None, None, None)
    name = fields[3] if prec == "int8" else fields[1]
    return getattr(r, name) if name else None


def summary(r: ExportReport) -> str:
    """The report as text: parity verdict, then latency and mAP per model."""
    outs = ", ".join(getattr(r, f) for t in TARGETS for f in (t.fields[0], t.fields[2]) if f and getattr(r, f))
    lines = [f"export {r.checkpoint} -> {outs} (imgsz {r.imgsz})"]
    for name, p in ((t.display, getattr(r, t.fields[1])) for t in TARGETS):
        if p is None:
            continue
        lines.append(
            f"{name} parity on {p.images} images: max|box| {p.max_abs_box:.2e} px, max|score| {p.max_abs_score:.2e}, "
            f"detections {p.detections_torch}/{p.detections_onnx} matched {p.detections_matched}: "
            f"{'OK' if p.ok else 'FAIL'}"
        )
        if p.judged_by == "fp64 reference":
            lines.append(f"  judged against fp64: {name} max|box| {p.onnx_vs_fp64_box:.2e} px, PyTorch-fp32 "
                         f"{p.fp32_noise_box:.2e} px")  # fmt: skip
    rows = [[k, v["median"], v["p90"], r.map50_95.get(k)] for k, v in r.latency_ms.items()]
    lines.append(table(rows, ["model", "median ms", "p90 ms", "mAP50-95"], ["", ".2f", ".2f", ".4f"]))
    return "\n".join(lines)
