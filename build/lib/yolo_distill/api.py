"""The public library calls: one function per pipeline stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolo_distill.data.shapes import generate_shapes  # noqa: F401  (re-exported)


def distill(
    model: str,
    data: str,
    teacher: str | None = None,
    recipe: str | dict | None = "default",
    sparsity: float = 0.0,
    **train_args: Any,
):
    """Train ``model`` (the student) on ``data`` with KD from ``teacher``; without a teacher, train plainly.

    Args:
        model: student ``*.yaml`` (from scratch) or ``*.pt`` (fine-tune; a pruned model keeps its shapes).
        data: data YAML path, or a built-in name (``shapes``, ``shapes-tiny``).
        teacher: a detection checkpoint ``*.pt`` for the same classes and strides.
        recipe: a shipped recipe name (``configs/distill``), a YAML path, or plain data.
        sparsity: L1 strength on BN scales (network-slimming sparsity training; 0 = off).
        **train_args: any Ultralytics train argument (``epochs``, ``imgsz``, ``batch``, ``project``, ``name``...).

    Returns:
        The finished :class:`~yolo_distill.distill.trainer.DistillationTrainer` (``.best``, ``.save_dir``,
        ``.metrics``).
    """
    from yolo_distill.data.builtin import resolve_data
    from yolo_distill.data.checks import check_detection_dataset
    from yolo_distill.distill.trainer import DistillationTrainer

    data = resolve_data(data)
    if str(data).endswith((".yaml", ".yml")) and Path(data).exists():
        check_detection_dataset(data)
    overrides = {"model": model, "data": data, **train_args}
    if teacher is not None:
        overrides["teacher"] = teacher
    if isinstance(recipe, dict):
        from yolo_distill.config import load_distill_recipe

        overrides["distill"] = load_distill_recipe(recipe).to_dict()
    elif recipe is not None:
        overrides["recipe"] = recipe
    if sparsity:
        overrides["sparsity"] = sparsity
    trainer = DistillationTrainer(overrides=overrides)
    trainer.train()
    return trainer


def prune(*args: Any, **kwargs: Any):
    """Structured channel pruning; see :func:`yolo_distill.prune.pruner.prune_checkpoint`."""
    from yolo_distill.prune.pruner import prune_checkpoint

    return prune_checkpoint(*args, **kwargs)


def export(*args: Any, **kwargs: Any):
    """ONNX export with parity check, INT8 and latency; see :func:`yolo_distill.export.onnx.export_checkpoint`."""
    from yolo_distill.export.onnx import export_checkpoint

    return export_checkpoint(*args, **kwargs)
