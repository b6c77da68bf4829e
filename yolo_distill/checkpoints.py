"""Reading and writing stock Ultralytics checkpoints (written atomically: a temporary name, then a rename)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_stock_checkpoint(model: nn.Module, path: str | Path, train_args: dict | None = None, **extra) -> Path:
    """Write ``model`` as an Ultralytics checkpoint that ``YOLO(path)`` loads with no import of ours.

    Args:
        model: an Ultralytics DetectionModel (only Ultralytics and torch classes inside, or a QAT model: its
            fake quantization is stored as Ultralytics stores it, under ``modelopt``).
        path: the ``*.pt`` to write; an existing file is never overwritten.
        train_args: Ultralytics train arguments to record (``data``, ``imgsz``...).
        **extra: more top-level keys (plain data), e.g. ``prune_report``.
    """
    from copy import deepcopy

    import ultralytics

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another output path or delete it first")
    from ultralytics.utils.torch_utils import qat_state, strip_qat

    m = deepcopy(model).float().eval()
    if hasattr(m, "criterion"):
        m.criterion = None
    for p in m.parameters():
        p.requires_grad_(False)
    # a QAT model's ModelOpt layers are classes made at runtime that pickle cannot find again: as in Ultralytics'
    # own checkpoints, the fake quantization travels beside the plain module as data, and its loader re-applies it
    qat = qat_state(m)
    strip_qat(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"model": m.half(), "ema": None, "train_args": dict(train_args or {}), "version": ultralytics.__version__}
    if qat is not None:
        ckpt["modelopt"] = qat
    ckpt.update(extra)
    tmp = path.with_name(f".{path.name}.partial")
    try:  # a kill mid-write leaves no torn file at the final name
        torch.save(ckpt, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path: str | Path) -> nn.Module:
    """Load an Ultralytics checkpoint into an fp32 model, with a clear error for a bad file."""
    from ultralytics.nn.tasks import load_checkpoint

    from yolo_distill.offline import resolve_weights

    src = resolve_weights(path)
    if src.endswith((".yaml", ".yml")):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel(src, verbose=False)
    try:
        model, _ = load_checkpoint(src)
    except Exception as e:
        raise ValueError(f"{src} could not be loaded as an Ultralytics checkpoint ({type(e).__name__}: {e})") from e
    return model.float()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so that a kill at any
    moment leaves either the old file or the new one, never a torn one."""
    import os
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own per writer: two processes writing the same file (bench rows side by side) never share one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: the attribute of a model that records its fine-grained sparsity (plain data, so stock Ultralytics unpickles it)
SPARSE_ATTR = "sparse_pattern"


def mark_sparse(model: nn.Module, pattern: dict) -> None:
    """Record on ``model`` which weights hold pruned zeros: ``{"granularity", "sparsity", "params": [names]}``.

    The record travels inside the checkpoint (the model is pickled with it) and through Ultralytics' EMA copies,
    so a fine-tune re-applies the zeros (:func:`sparse_masks`).
    """
    setattr(model, SPARSE_ATTR, dict(pattern))


def sparse_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks (``weight != 0``) of the parameters a sparse model records; empty for a dense model."""
    rec = getattr(model, SPARSE_ATTR, None) or {}
    params = dict(model.named_parameters())
    return {n: params[n].detach() != 0 for n in rec.get("params", []) if n in params}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero again, in place, every weight that ``masks`` (from :func:`sparse_masks`) marks as pruned."""
    if not masks:
        return
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n].to(p.device))
