"""Load a teacher and check that it can teach a given student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from yolo_distill.offline import resolve_weights


def load_teacher(teacher: str | Path | nn.Module, nc: int | None = None, names: dict | None = None) -> nn.Module:
    """Load a frozen detection teacher from a checkpoint (or a model YAML, untrained: tests and online KD).

    Args:
        teacher: a ``*.pt`` checkpoint, a ``*.yaml`` model definition, or a model.
        nc: for a ``*.yaml``: the number of classes (default: the YAML's).
        names: for a ``*.yaml``: the class names (e.g. the data's).

    Returns:
        The model in eval mode with gradients off.
    """
    if isinstance(teacher, nn.Module):
        model = teacher
    else:
        src = resolve_weights(teacher)
        if src.endswith(".pt"):
            from ultralytics.nn.tasks import load_checkpoint

            try:
                model, _ = load_checkpoint(src)
            except Exception as e:  # torch/pickle raise many types for a bad file
                raise ValueError(
                    f"teacher {src} could not be loaded ({type(e).__name__}: {e}); is it a complete Ultralytics "
                    f"checkpoint? Re-export it or point teacher= at another file"
                ) from e
        else:
            from ultralytics.nn.tasks import DetectionModel

            model = DetectionModel(src, nc=nc, verbose=False)
            if names is not None:
                model.names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fuse_teacher(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm into its convolution (and re-parameterise RepConv / RepVGGDW), in place, as Ultralytics'
    ``fuse()`` does, but keep all of Detect's branches: ``fuse()`` drops YOLO26's one2many head, which is the one
    the student distils from. For a frozen teacher only: its outputs stay equal (fp32 rounding) at less cost.
    """
    from ultralytics.nn.modules import Conv, Conv2, ConvTranspose, DWConv, RepConv, RepVGGDW
    from ultralytics.utils.torch_utils import fuse_conv_and_bn, fuse_deconv_and_bn

    for m in model.modules():
        if isinstance(m, (Conv, Conv2, DWConv)) and hasattr(m, "bn"):
            if isinstance(m, Conv2):
                m.fuse_convs()
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
        elif isinstance(m, ConvTranspose) and hasattr(m, "bn"):
            m.conv_transpose = fuse_deconv_and_bn(m.conv_transpose, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
        elif isinstance(m, RepConv) and not hasattr(m, "conv"):
            m.fuse_convs()
            m.forward = m.forward_fuse
        elif isinstance(m, RepVGGDW) and hasattr(m, "conv1"):
            m.fuse()
            m.forward = m.forward_fuse
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


#: How a frozen teacher may run: ``auto`` is fp16 on CUDA and fp32 elsewhere.
TEACHER_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def teacher_dtype(precision: str, device: str | torch.device, online: bool = False) -> torch.dtype:
    """The dtype the teacher's weights and inputs take for ``precision`` on ``device`` (its outputs are cast back
    to fp32 by the KD terms).

    Its raw head outputs (class logits, DFL logits, features) are all the KD terms read, so a half-precision teacher
    changes them by about the format's rounding (bf16: 2^-8 relative), not its decoded boxes.

    Args:
        precision: one of :data:`TEACHER_PRECISIONS`. ``bf16`` pays on CPUs with native bf16 (AMX, AVX512-BF16) and
            on GPUs; ``fp16`` is for CUDA only.
        device: where the teacher runs.
        online: a co-trained teacher (``mode: online``) trains in fp32 like the student.

    Raises:
        ValueError: an unknown value, or one this device cannot run well (named, with the fix).
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(
            f"teacher_precision={precision!r} is not valid: expected one of {list(TEACHER_PRECISIONS)} "
            f"(auto = fp16 on a GPU, fp32 elsewhere)"
        )
    if online:
        if precision not in ("auto", "fp32"):
            raise ValueError(
                f"teacher_precision={precision!r} is not valid with mode: online: the co-trained teacher trains in "
                f"fp32 like the student; leave teacher_precision=auto"
            )
        return torch.float32
    if precision == "auto":
        return torch.float16 if dev.type == "cuda" else torch.float32
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(
            f"teacher_precision='fp16' is not valid on device {dev.type}: fp16 convolutions need a CUDA GPU; on a "
            f"CPU use bf16 (where it has AMX or AVX512-BF16) or fp32"
        )
    if precision == "bf16" and dev.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError(
            "teacher_precision='bf16' is not valid on this CPU: it has no native bf16 (AMX or AVX512-BF16), so a "
            "bf16 teacher would run slower than fp32; use teacher_precision=fp32"
        )
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def frozen_teacher(teacher: nn.Module, precision: str, device: str | torch.device) -> nn.Module:
    """The frozen teacher as offline distillation runs it: BN folded (:func:`fuse_teacher`), in ``precision``
    (:func:`teacher_dtype`), on ``device``, and on a CPU with channels-last weights (oneDNN's native layout: the
    forward of a fused YOLO11s at 256 px, batch 8, one thread, took 0.84-0.87x the time of the default layout here;
    unmeasured on GPUs, so left as it is there). The trainer and ``kd_step_cost`` both build it here."""
    dtype = teacher_dtype(precision, device)
    teacher = fuse_teacher(teacher).to(device=device, dtype=dtype)
    if torch.device(device).type == "cpu":
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def online_teacher(teacher: nn.Module, args: Any) -> nn.Module:
    """The co-trained teacher of ``mode: online`` as the trainer runs it: trainable, with the student's training
    hyperparameters (``args``, Ultralytics' namespace) for its own detection loss. The trainer and ``kd_step_cost``
    both build it here."""
    for p in teacher.parameters():
        p.requires_grad_(True)
    teacher.args = args
    return teacher


def check_pair(teacher: nn.Module, names: dict[int, str], student_stride: torch.Tensor) -> None:
    """Stop before training when ``teacher`` cannot teach a detector of ``names`` at ``student_stride``.

    Raises:
        ValueError: the teacher is not a detection model, detects other classes (or in another order), or
            predicts at other strides.
    """
    task = getattr(teacher, "task", None) or ("detect" if type(teacher).__name__ == "DetectionModel" else None)
    if type(teacher).__name__ != "DetectionModel" or task not in (None, "detect"):
        raise ValueError(
            f"the teacher is a {type(teacher).__name__} (task {task!r}); a detection student needs a detection "
            f"teacher (a YOLO detect checkpoint)"
        )
    t_names = dict(getattr(teacher, "names", {}) or {})
    want, got = [names[k] for k in sorted(names)], [t_names[k] for k in sorted(t_names)]
    if want != got:
        raise ValueError(
            f"the teacher detects {len(got)} classes {got[:10]}{'...' if len(got) > 10 else ''} but the data has "
            f"{len(want)} {want[:10]}{'...' if len(want) > 10 else ''}; train the teacher on the same data YAML "
            f"(same classes, same order)"
        )
    ts = [int(s) for s in teacher.stride.tolist()]
    ss = [int(s) for s in student_stride.tolist()]
    if ts != ss:
        raise ValueError(
            f"teacher strides {ts} and student strides {ss} differ, so their anchors do not line up; pick a "
            f"teacher and student with the same detection levels (e.g. both P3-P5)"
        )
