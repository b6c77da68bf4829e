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
    teacher_precision: str = "auto",
    threads: int | None = None,
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
        teacher_precision: how the frozen teacher runs: ``auto`` (fp16 on a GPU, fp32 elsewhere), ``fp32``, ``bf16``
            (a cheaper teacher forward on CPUs with AMX or AVX512-BF16, and on GPUs) or ``fp16`` (CUDA).
        threads: CPU threads for this training (``torch.set_num_threads`` after Ultralytics picks its device). Unset:
            Ultralytics' ``cpu_count - 1`` (at most 8), which leaves a core for a second run; a lone run on a small
            machine trains faster with every core. No effect on a GPU.
        **train_args: any Ultralytics train argument (``epochs``, ``imgsz``, ``batch``, ``project``, ``name``...).

    Returns:
        The finished trainer (``.best``, ``.save_dir``, ``.metrics``).
    """
    from yolo_distill.config import load_distill_recipe, require, require_int
    from yolo_distill.data.builtin import require_data
    from yolo_distill.data.checks import check_detection_dataset
    from yolo_distill.distill.teacher import teacher_dtype
    from yolo_distill.offline import resolve_weights

    # every input is checked before Ultralytics creates the run folder
    if isinstance(model, str):
        resolve_weights(model)
    if isinstance(teacher, str):
        resolve_weights(teacher)
    require(isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and sparsity >= 0, "sparsity",
            sparsity, "a number >= 0 (L1 strength on BN scales)")  # fmt: skip
    require(isinstance(qat, bool), "qat", qat, "true or false")
    if threads is not None:
        require_int("threads", threads, 1)
    if qat:
        import importlib.util

        if importlib.util.find_spec("modelopt") is None:
            raise ValueError('qat=True needs NVIDIA ModelOpt, which is not installed: pip install -e ".[qat]"')
        require(train_args.get("quantize", 8) == 8, "quantize", train_args.get("quantize"), "8 with qat=True")
        train_args["quantize"] = 8
    _check_train_args(train_args)
    online = False
    if teacher is not None and recipe is not None:
        online = load_distill_recipe(recipe).mode == "online"
    teacher_dtype(teacher_precision, _device_type(train_args.get("device")), online=online)
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
    if teacher_precision != "auto":
        overrides["teacher_precision"] = teacher_precision
    if threads is not None:
        overrides["threads"] = threads
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


def _device_type(device: Any) -> str:
    """The device type a ``device=`` train argument selects (as Ultralytics reads it), without touching CUDA state."""
    import torch

    d = str(device if device is not None else "").strip().lower()
    if d in ("cpu", "mps"):
        return d
    return "cuda" if torch.cuda.is_available() else "cpu"
