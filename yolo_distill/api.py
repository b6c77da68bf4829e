"""The one facade: every stage of the pipeline as a library call, with its real signature.

The CLI, the tools and the tests call these; the CLI derives its valid keys from these signatures. (The bench and the
demo are ``run_bench`` / ``run_demo``: ``yolo_distill.bench`` and ``yolo_distill.demo`` are the modules.)

| call | what it does |
|---|---|
| :func:`train` (``api.distill``) | train a student, with KD when ``teacher=`` is given |
| :func:`prune` | structured channel pruning of a checkpoint into a stock checkpoint |
| :func:`iterative_prune` | prune / fine-tune rounds from a ``configs/prune`` recipe |
| :func:`carve` | cut a stock smaller model of the family (a target YAML) out of a trained checkpoint |
| :func:`lowrank` | low-rank factorization (SVD / spatial SVD) of a checkpoint's convolutions |
| :func:`export` | ONNX / OpenVINO / NCNN / LiteRT export with PyTorch parity, INT8, latency and mAP |
| :func:`evaluate` | mAP of a checkpoint or an exported model |
| :func:`run_bench` | a benchmark recipe, cached and resumable |
| :func:`kd_verdict` | the distillation bar across benches (default vs plain and native, best.pt and last.pt) |
| :func:`run_demo` | every stage on the built-in dataset |
| :func:`generate_shapes`, :func:`coco_to_yolo`, :func:`voc_to_yolo`, :func:`check_dataset` | data |
| :func:`kd_step_cost`, :func:`prune_speed` | the two side studies (KD step cost, pruning speed) |
| :func:`recipes` | the shipped recipes of a kind |
"""

from __future__ import annotations

from yolo_distill.bench.prune_speed import measure as prune_speed
from yolo_distill.bench.runner import run_bench
from yolo_distill.bench.step_cost import measure as kd_step_cost
from yolo_distill.bench.verdict import kd_verdict
from yolo_distill.compress.carve import carve_checkpoint as carve
from yolo_distill.compress.checkpoint import prune_checkpoint as prune
from yolo_distill.compress.iterative import IterativeRecipe, iterative_prune
from yolo_distill.compress.lowrank import lowrank_checkpoint as lowrank
from yolo_distill.config import shipped_recipes as recipes
from yolo_distill.data.checks import check_detection_dataset as check_dataset
from yolo_distill.data.convert import coco_to_yolo, voc_to_yolo
from yolo_distill.data.shapes import ShapesSpec, generate_shapes
from yolo_distill.demo import run_demo
from yolo_distill.deploy.onnx import export_checkpoint as export
from yolo_distill.distill.run import train
from yolo_distill.evaluation import evaluate
from yolo_distill.registry import UnknownName

#: ``api.distill`` is ``api.train`` (top level it is ``yolo_distill.train``: ``yolo_distill.distill`` is the package)
distill = train

__all__ = [
    "IterativeRecipe", "ShapesSpec", "UnknownName", "carve", "check_dataset", "coco_to_yolo", "distill", "evaluate",
    "export", "generate_shapes", "iterative_prune", "kd_step_cost", "kd_verdict", "lowrank", "prune", "prune_speed",
    "recipes", "run_bench", "run_demo", "train", "voc_to_yolo",
]  # fmt: skip
