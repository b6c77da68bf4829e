"""Iterative pruning: N prune steps on a geometric GFLOPs schedule, fine-tuning (with KD) between steps."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from yolo_distill.checkpoints import load_model, write_text_atomic
from yolo_distill.compress.checkpoint import prune_checkpoint
from yolo_distill.compress.pruner import model_stats
from yolo_distill.config import find_recipe, from_dict, load_yaml
from yolo_distill.log import LOGGER, table


@dataclass
class IterativeRecipe:
    """``configs/prune/*.yaml``.

    Attributes:
        steps: prune/fine-tune rounds (>= 1).
        gflops_ratio: final GFLOPs relative to the source, in (0, 1); step k aims at ``gflops_ratio ** (k / steps)``.
        method: importance criterion.
        scope: ``backbone`` or ``all``.
        finetune_epochs: epochs after each step (0 = none).
        distill: fine-tune with KD from the unpruned source.
        recipe: distillation recipe for the fine-tune.
        imgsz: image size for training and GFLOPs.
        batch: batch size.
        description: free text.
    """

    steps: int = 3
    gflops_ratio: float = 0.5
    method: str = "l1"
    scope: str = "all"
    finetune_epochs: int = 5
    distill: bool = True
    recipe: str = "default"
    imgsz: int = 640
    batch: int = 16
    description: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.gflops_ratio < 1:
            raise ValueError(f"gflops_ratio must be in (0, 1), got {self.gflops_ratio}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")


def load_iterative_recipe(recipe: str | Path) -> IterativeRecipe:
    """Load and validate a pruning recipe by shipped name or path."""
    path = find_recipe(recipe, "prune")
    return from_dict(IterativeRecipe, load_yaml(path), str(path))


def iterative_prune(model: str, data: str, recipe: str | Path, out: str | None = None, **overrides) -> dict:
    """Run an iterative pruning recipe on checkpoint ``model`` and write the final model to ``out``.

    Args:
        model: the source ``*.pt`` (also the KD teacher when the recipe distils); never modified.
        data: data YAML or built-in name.
        recipe: a name under ``configs/prune`` or a YAML path.
        out: final checkpoint path (default ``<model>_iterative.pt``); never overwritten.
        **overrides: recipe fields to override (e.g. ``steps=2``, ``imgsz=256``).

    Returns:
        The report (also written as ``<out stem>_report.json``): GFLOPs and mAP after each step.
    """
    from yolo_distill.data.builtin import resolve_data
    from yolo_distill.distill.run import train

    r = load_iterative_recipe(recipe)
    r = from_dict(IterativeRecipe, {**asdict(r), **overrides}, "prune recipe overrides")
    src = Path(model)
    dst = Path(out) if out else src.with_name(f"{src.stem}_iterative.pt")
    report_path = dst.with_name(f"{dst.stem}_report.json")
    for p in (dst, report_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; choose another out= or move it away")
    data = resolve_data(data)
    base = model_stats(load_model(src), r.imgsz)["gflops"]
    work = dst.parent / f"{dst.stem}_steps"
    work.mkdir(parents=True, exist_ok=True)
    current, steps = str(src), []
    for k in range(1, r.steps + 1):
        target = base * r.gflops_ratio ** (k / r.steps)
        step_pt = work / f"step{k}.pt"
        if step_pt.exists():
            raise FileExistsError(f"{step_pt} exists from an earlier run; remove {work} or choose another out=")
        rep = prune_checkpoint(current, ratio=None, gflops=target, method=r.method, scope=r.scope, data=data,
                               out=str(step_pt), imgsz=r.imgsz)  # fmt: skip
        current, m = str(step_pt), None
        if r.finetune_epochs:
            tr = train(current, data, teacher=str(src) if r.distill else None, recipe=r.recipe,
                         epochs=r.finetune_epochs, imgsz=r.imgsz, batch=r.batch, workers=0, amp=False, plots=False,
                         project=str(work.resolve()), name=f"step{k}_ft")  # fmt: skip
            current, m = str(tr.best), float(tr.metrics.get("metrics/mAP50-95(B)", float("nan")))
        steps.append({"step": k, "target_gflops": target, "gflops": rep["after"]["gflops"],
                      "params": rep["after"]["params"], "map50_95": m, "checkpoint": current})  # fmt: skip
    shutil.copyfile(current, dst)
    report = {"source": str(src), "recipe": asdict(r), "base_gflops": base, "steps": steps, "out": str(dst)}
    write_text_atomic(report_path, json.dumps(report, indent=2))
    rows = [[s["step"], s["gflops"], s["params"], s["map50_95"]] for s in steps]
    LOGGER.info("iterative pruning -> %s\n%s", dst, table(rows, ["step", "GFLOPs", "params", "mAP50-95"],
                                                            ["d", ".2f", ",d", ".4f"]))  # fmt: skip
    return report
