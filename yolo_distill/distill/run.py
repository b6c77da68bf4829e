"""One training run: check the inputs, build a :class:`DistillationTrainer` from overrides alone, train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolo_distill.distill.trainer import DistillationTrainer


def train(
    model: str,
    data: str,
    teacher: str | None = None,
    recipe: str | dict | None = "default",
    sparsity: float = 0.0,
    qat: bool = False,
    **train_args: Any,
) -> DistillationTrainer:
    """Train ``model`` (the student) on ``data`` with KD from ``teacher``; without a teacher, train plainly.

    Args:
        model: student ``*.yaml`` (from scratch) or ``*.pt`` (fine-tune; a pruned model keeps its shapes).
        data: data YAML path, or a built-in name (``shapes``, ``shapes-tiny``).
        teacher: a detection checkpoint ``*.pt`` for the same classes and strides.
        recipe: a shipped recipe name (``configs/distill``), a YAML path, or plain data.
        sparsity: L1 strength on BN scales (network-slimming sparsity training; 0 = off).
        qat: quantization-aware training: Ultralytics' INT8 fake quantization (``quantize=8``, NVIDIA ModelOpt; the
            ``qat`` extra) with KD from ``teacher`` as usual (pass the FP32 model itself as the teacher); the
            result exports to an INT8 QDQ ONNX model.
        **train_args: any Ultralytics train argument (``epochs``, ``imgsz``, ``batch``, ``project``, ``name``...).

    Returns:
        The finished trainer (``.best``, ``.save_dir``, ``.metrics``).
    """
    from yolo_distill.config import load_distill_recipe, require
    from yolo_distill.data.builtin import require_data
    from yolo_distill.data.checks import check_detection_dataset
    from yolo_distill.offline import resolve_weights

    # every input is checked before Ultralytics creates the run folder
    if isinstance(model, str):
        resolve_weights(model)
    if isinstance(teacher, str):
        resolve_weights(teacher)
    require(isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and sparsity >= 0, "sparsity",
            sparsity, "a number >= 0 (L1 strength on BN scales)")  # fmt: skip
    require(isinstance(qat, bool), "qat", qat, "true or false")
    if qat:
        import importlib.util

        if importlib.util.find_spec("modelopt") is None:
            raise ValueError('qat=True needs NVIDIA ModelOpt, which is not installed: pip install -e ".[qat]"')
        require(train_args.get("quantize", 8) == 8, "quantize", train_args.get("quantize"), "8 with qat=True")
        train_args["quantize"] = 8
    _check_train_args(train_args)
    data = require_data(data)
    if str(data).endswith((".yaml", ".yml")) and Path(data).exists():
        check_detection_dataset(data)
    overrides = {"model": model, "data": data, **train_args}
    if teacher is not None:
        overrides["teacher"] = teacher
    if isinstance(recipe, dict):
        overrides["distill"] = load_distill_recipe(recipe).to_dict()
    elif recipe is not None:
        load_distill_recipe(recipe)  # a bad recipe stops here, before Ultralytics creates the run folder
        overrides["recipe"] = recipe
    if sparsity:
        overrides["sparsity"] = sparsity
    trainer = DistillationTrainer(overrides=overrides)
    trainer.train()
    return trainer


def _check_train_args(train_args: dict[str, Any]) -> None:
    """Ultralytics' own type and range check of its train arguments, as a ValueError naming the key."""
    from ultralytics.cfg import check_cfg

    try:
        check_cfg(dict(train_args), hard=True)
    except TypeError as e:
        raise ValueError(str(e)) from None
