"""The one place that makes Ultralytics quiet and network-free.

Imported first by :mod:`yolo_distill`, before Ultralytics reads its environment. It sets ``YOLO_OFFLINE`` and
``YOLO_AUTOINSTALL`` (only when unset: Ultralytics reads them once, at its own import) and nothing else. On
demand it provides the plotting font Ultralytics would otherwise download on every train/val call, from the
DejaVu Sans that matplotlib ships.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from yolo_distill.log import LOGGER as log

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

_FONT_READY = False


def ensure_font(name: str = "Arial.ttf") -> Path | None:
    """Make sure Ultralytics finds ``name`` locally, so ``check_font`` never tries to download it.

    Ultralytics' ``check_det_dataset`` calls ``check_font("Arial.ttf")`` on every train and val, even with
    ``plots=False``, and ``YOLO_OFFLINE`` does not stop that download attempt. When the font is neither in
    Ultralytics' config dir nor among the system fonts, this copies matplotlib's DejaVu Sans there under that
    name and says so once. Set ``YOLO_CONFIG_DIR`` to keep it out of your home directory.

    Returns:
        Path of the font file in use, or None when matplotlib's font is not available.
    """
    global _FONT_READY
    from ultralytics.utils import USER_CONFIG_DIR

    target = Path(USER_CONFIG_DIR) / name
    if _FONT_READY or target.exists():
        _FONT_READY = True
        return target
    from matplotlib import font_manager

    if any(name in f.fname for f in font_manager.fontManager.ttflist):
        _FONT_READY = True
        return None
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not src.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    log.warning(
        "yolo_distill: wrote %s (a copy of matplotlib's DejaVu Sans) so Ultralytics does not try to download %s; "
        "delete it to undo, or set YOLO_CONFIG_DIR to keep it elsewhere",
        target,
        name,
    )
    _FONT_READY = True
    return target


def resolve_weights(model: str | Path) -> str:
    """Check that a model argument can be used without a download.

    Args:
        model: a ``*.pt`` path, or a ``*.yaml`` name or path (Ultralytics resolves the names it ships).

    Returns:
        The argument as a string, unchanged.

    Raises:
        FileNotFoundError: a ``*.pt`` that is not on disk (Ultralytics would try to download it).
        ValueError: anything that is neither ``*.pt`` nor ``*.yaml``.
    """
    s = str(model)
    if s.endswith((".yaml", ".yml")):
        return s
    if s.endswith(".pt"):
        if not Path(s).is_file():
            raise FileNotFoundError(
                f"model {s!r} is not on disk, and yolo_distill never downloads weights. Pass a local path to a "
                f"checkpoint (e.g. runs/detect/train/weights/best.pt) or a model YAML (e.g. {Path(s).stem}.yaml) "
                f"to start from scratch."
            )
        return s
    raise ValueError(f"model {s!r} must be a *.pt checkpoint or a *.yaml model definition")
