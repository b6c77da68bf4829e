"""mAP of a model, a checkpoint or an exported runtime model, through Ultralytics' own validator.

The one place every stage measures accuracy (prune's ``val=True``, the sensitivity scan, export, the bench, the
demo). Ultralytics' validator writes a ``runs/detect/valN`` folder; here it goes under ``save_dir`` when given,
else into a temporary folder that is removed, never into the working directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from yolo_distill.offline import ensure_font


def evaluate(
    model: str | Path | nn.Module,
    data: str,
    imgsz: int = 640,
    batch: int = 8,
    device: str = "cpu",
    save_dir: str | Path | None = None,
) -> dict[str, float]:
    """Validate ``model`` on the val split of ``data``.

    Args:
        model: a checkpoint ``*.pt``, an exported model Ultralytics can run (``*.onnx``, an OpenVINO folder...),
            or a DetectionModel (validated through a temporary stock checkpoint).
        data: data YAML path or built-in name (``shapes``).
        imgsz: validation image size.
        batch: validation batch size.
        device: ``cpu``, ``0``, ``0,1``...
        save_dir: folder for the validator's output (a ``val`` subfolder); default: a temporary folder, removed.

    Returns:
        ``{"map50_95": ..., "map50": ...}``.
    """
    from ultralytics import YOLO

    from yolo_distill.checkpoints import save_stock_checkpoint
    from yolo_distill.data.builtin import resolve_data

    ensure_font()
    data = resolve_data(data)
    with tempfile.TemporaryDirectory(prefix="yd_val_") as tmp:
        if isinstance(model, nn.Module):
            model = save_stock_checkpoint(model, Path(tmp) / "model.pt")
        project = Path(save_dir).resolve() if save_dir is not None else Path(tmp)
        task = {} if str(model).endswith(".pt") else {"task": "detect"}
        args = dict(data=data, imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False)
        m = YOLO(str(model), **task).val(**args, project=str(project), name="val", exist_ok=save_dir is None)
        return {"map50_95": float(m.box.map), "map50": float(m.box.map50)}
