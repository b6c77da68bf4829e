"""yolo_distill: distil, prune and export compact Ultralytics YOLO detectors.

``import yolo_distill`` is cheap and changes nothing in the process but the two offline defaults
(``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0``, each only when unset); the public calls of :mod:`yolo_distill.api`
(and ``DistillationTrainer``) load on first use. A public name never equals a subpackage's (``distill``, ``bench``,
``demo``): Python would replace the function by the module once that module is imported.
"""

from __future__ import annotations

from importlib import metadata

from yolo_distill import offline  # noqa: F401  (first: sets Ultralytics' offline environment before its import)

try:
    __version__ = metadata.version("yolo-distill")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"

_API = (
    "train", "prune", "iterative_prune", "carve", "export", "evaluate", "run_bench", "run_demo", "generate_shapes",
    "coco_to_yolo", "voc_to_yolo", "check_dataset", "kd_step_cost", "prune_speed", "recipes",
)  # fmt: skip


def __getattr__(name: str):
    if name == "DistillationTrainer":
        from yolo_distill.distill.trainer import DistillationTrainer

        return DistillationTrainer
    if name in _API:
        from yolo_distill import api

        return getattr(api, name)
    raise AttributeError(f"module 'yolo_distill' has no attribute {name!r}")


__all__ = ["DistillationTrainer", *_API, "__version__"]
