"""``yolo-distill demo``: every stage on the built-in dataset, then one summary table.

teacher (trained, or given) -> plain student -> distilled student -> teacher pruned and fine-tuned with KD from
itself unpruned -> ONNX + INT8 export of the distilled student with parity and latency.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from yolo_distill.checkpoints import load_model
from yolo_distill.compress.checkpoint import prune_checkpoint
from yolo_distill.compress.pruner import model_stats
from yolo_distill.config import load_distill_recipe, require, require_int
from yolo_distill.data.builtin import require_data, resolve_data
from yolo_distill.deploy.onnx import export_checkpoint
from yolo_distill.distill.run import train
from yolo_distill.evaluation import evaluate
from yolo_distill.log import LOGGER, table
from yolo_distill.offline import resolve_weights


def _stage(i: int, n: int, text: str, t0: float) -> None:
    LOGGER.info("\n[%d/%d] %s  (elapsed %.0fs)", i, n, text, time.time() - t0)


def _metric(trainer) -> float:
    return float((trainer.metrics or {}).get("metrics/mAP50-95(B)", float("nan")))


#: the YOLO11s teacher for ``shapes`` made by the project's own recipe (see datasets/shapes-teacher/README.md)
SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "datasets" / "shapes-teacher" / "yolo11s.pt"


def run_demo(
    data: str = "shapes",
    epochs: int = 5,
    teacher_epochs: int = 30,
    imgsz: int = 256,
    batch: int = 16,
    project: str = "runs/demo",
    teacher: str | None = None,
    teacher_model: str = "yolo11s.yaml",
    student: str = "yolo11n.yaml",
    prune_ratio: float = 0.5,
    export_imgsz: int | None = None,
    recipe: str = "default",
) -> list[dict[str, Any]]:
    """Run the whole pipeline and log a summary table.

    Args:
        data: built-in name or data YAML.
        epochs: epochs for the students and the pruned fine-tune.
        teacher_epochs: epochs for the teacher (when ``teacher`` is not given).
        imgsz: training image size.
        batch: batch size.
        project: where runs go (each stage gets its own run folder; existing runs are never overwritten).
        teacher: an existing teacher checkpoint (skips training one). Default for ``data=shapes``: the shipped
            YOLO11s teacher; pass ``teacher=train`` to train one (``teacher_epochs``; about 40 min on 2 cores).
        teacher_model: the teacher YAML to train when ``teacher`` is not given.
        student: the student YAML.
        prune_ratio: channel ratio removed from the teacher in the pruning stage.
        export_imgsz: image size for export and latency (default: ``imgsz``).
        recipe: distillation recipe.

    Returns:
        The summary rows.
    """
    for key, value, low in (("epochs", epochs, 1), ("teacher_epochs", teacher_epochs, 1), ("imgsz", imgsz, 32),
                            ("batch", batch, 1)):  # fmt: skip
        require_int(key, value, low)
    if export_imgsz is not None:
        require_int("export_imgsz", export_imgsz, 32)
    require(isinstance(prune_ratio, (int, float)) and 0 < prune_ratio < 1, "prune_ratio", prune_ratio,
            "a number in (0, 1)")  # fmt: skip
    if teacher not in (None, "train"):
        resolve_weights(teacher)
    for key, value in (("student", student), ("teacher_model", teacher_model)):
        require(str(value).endswith((".yaml", ".yml")), key, value, "a model YAML such as yolo11n.yaml")
    load_distill_recipe(recipe)
    require_data(data)
    t0 = time.time()
    n = 6
    project = str(Path(project).resolve())  # Ultralytics would nest a relative project under runs/detect/
    common = dict(imgsz=imgsz, batch=batch, workers=0, amp=False, plots=False, project=project, seed=0, exist_ok=False)
    _stage(1, n, f"dataset {data}", t0)
    data_yaml = resolve_data(data)
    LOGGER.info("data: %s", data_yaml)
    rows: list[dict[str, Any]] = []

    def row(name: str, ckpt: Path, m: float) -> None:
        st = model_stats(load_model(ckpt), imgsz)
        rows.append({"model": name, "checkpoint": str(ckpt), "params": st["params"], "gflops": st["gflops"], "map": m})

    if teacher is None and data == "shapes" and SHIPPED_TEACHER.is_file():
        teacher = str(SHIPPED_TEACHER)
    if teacher == "train":
        teacher = None
    if teacher:
        _stage(2, n, f"teacher: given {teacher}", t0)
        t_map = evaluate(teacher, data_yaml, imgsz=imgsz, batch=batch, save_dir=Path(project) / "teacher_val")
        t_map = t_map["map50_95"]
        t_ckpt = Path(teacher)
    else:
        _stage(2, n, f"teacher: train {teacher_model} for {teacher_epochs} epochs", t0)
        tr = train(teacher_model, data_yaml, teacher=None, epochs=teacher_epochs, name="teacher", **common)
        t_ckpt, t_map = Path(tr.best), _metric(tr)
    row("teacher", t_ckpt, t_map)

    _stage(3, n, f"student {student}: plain, then distilled ({recipe}), {epochs} epochs each", t0)
    plain = train(student, data_yaml, teacher=None, epochs=epochs, name="student_plain", **common)
    row("student (plain)", Path(plain.best), _metric(plain))
    kd = train(student, data_yaml, teacher=str(t_ckpt), recipe=recipe, epochs=epochs, name="student_kd", **common)
    row(f"student (KD: {recipe})", Path(kd.best), _metric(kd))

    _stage(4, n, f"prune the teacher (ratio {prune_ratio}), fine-tune {epochs} epochs with KD from it unpruned", t0)
    pruned_dir = Path(kd.save_dir).parent / "pruned"
    pruned_dir.mkdir(parents=True, exist_ok=True)
    k = 0
    while (pruned_dir / f"pruned{k or ''}.pt").exists():
        k += 1
    pruned_pt = pruned_dir / f"pruned{k or ''}.pt"
    prune_checkpoint(str(t_ckpt), ratio=prune_ratio, out=str(pruned_pt), imgsz=imgsz)
    ft = train(
        str(pruned_pt), data_yaml, teacher=str(t_ckpt), recipe=recipe, epochs=epochs, name="pruned_ft", **common
    )
    row("teacher pruned + KD fine-tune", Path(ft.best), _metric(ft))

    # export the most accurate compact model: the distilled student, or the pruned teacher when it is ahead
    best = max(rows[2:4], key=lambda r: r["map"])
    _stage(5, n, f"export the most accurate compact model ({best['model']}): ONNX (parity) + INT8, latency", t0)
    rep = export_checkpoint(best["checkpoint"], imgsz=export_imgsz or imgsz, int8=True, data=data_yaml, runs=30)
    for r in rows:
        r["onnx_ms"] = float("nan")
    best["onnx_ms"] = rep.latency_ms["onnx_fp32"]["median"]
    rows.append(
        {
            "model": f"{best['model']}, INT8 ONNX",
            "checkpoint": rep.int8_onnx,
            "params": best["params"],
            "gflops": best["gflops"],
            "map": rep.map50_95.get("onnx_int8", float("nan")),
            "onnx_ms": rep.latency_ms["onnx_int8"]["median"],
        }
    )

    _stage(6, n, "summary", t0)
    cells = [[r["model"], r["params"], r["gflops"], r["map"], r["onnx_ms"]] for r in rows]
    header = ["model", "params", "GFLOPs", "mAP50-95", "ONNX ms"]
    LOGGER.info("\n%s", table(cells, header, ["", ",d", ".2f", ".4f", ".2f"]))
    if rows[1]["map"] < 0.01 and epochs < 20:
        LOGGER.info(
            f"\nThe from-scratch students are near 0 after {epochs} epochs: YOLO11n needs about 20 epochs on `shapes` "
            "(see the README's benchmark); pruning the trained teacher and fine-tuning it with KD is the fast route."
        )
    LOGGER.info("\ndemo finished in %.0fs; runs under %s", time.time() - t0, project)
    return rows
