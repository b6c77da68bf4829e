"""``yolo-distill demo``: every stage on the built-in dataset, then one summary table and a picture.

teacher (trained, or given) -> a stock YOLO11n carved out of it, distilled from it -> the teacher pruned and
fine-tuned with KD from itself unpruned -> ONNX + INT8 export of the better compact model with parity, latency and
mAP -> every model timed in ONNX Runtime, interleaved, with its speed-up over the teacher -> the detections of the
teacher, that model and its INT8 version on 4 val images. Every row starts from the teacher's knowledge, so a few
epochs give real accuracy; from-scratch students are the benchmark's business.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from yolo_distill.checkpoints import load_model
from yolo_distill.compress.carve import carve_checkpoint
from yolo_distill.compress.checkpoint import prune_checkpoint
from yolo_distill.compress.pruner import model_stats
from yolo_distill.config import load_distill_recipe, require, require_int
from yolo_distill.data.builtin import require_data, resolve_data
from yolo_distill.data.images import dataset_images
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
    threads: int | None = None,
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
        threads: CPU threads for each training (default: every core, as the demo runs alone; Ultralytics alone would
            leave one idle).

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
    if threads is not None:
        require_int("threads", threads, 1)
    load_distill_recipe(recipe)
    require_data(data)
    t0 = time.time()
    n = 6
    project = str(Path(project).resolve())  # Ultralytics would nest a relative project under runs/detect/
    common = dict(imgsz=imgsz, batch=batch, workers=0, amp=False, plots=False, project=project, seed=0, exist_ok=False,
                  threads=threads or os.cpu_count() or 1)  # fmt: skip
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

    _stage(3, n, f"carve a stock {student} out of the teacher, then distil it ({recipe}) for {epochs} epochs", t0)
    work = Path(project) / "compact"
    work.mkdir(parents=True, exist_ok=True)
    k = 0
    while any((work / f"{stem}{k or ''}.pt").exists() for stem in ("carved", "pruned", "teacher")):
        k += 1  # a second demo in the same project: new names, nothing overwritten
    carved_pt, pruned_pt = work / f"carved{k or ''}.pt", work / f"pruned{k or ''}.pt"
    carve_checkpoint(str(t_ckpt), student, out=str(carved_pt), imgsz=imgsz)
    kd = train(str(carved_pt), data_yaml, teacher=str(t_ckpt), recipe=recipe, epochs=epochs, name="carved_kd",
               **common)  # fmt: skip
    row(f"{Path(student).stem} carved from the teacher + KD", Path(kd.best), _metric(kd))

    _stage(4, n, f"prune the teacher (ratio {prune_ratio}), fine-tune {epochs} epochs with KD from it unpruned", t0)
    prune_checkpoint(str(t_ckpt), ratio=prune_ratio, out=str(pruned_pt), imgsz=imgsz)
    ft = train(str(pruned_pt), data_yaml, teacher=str(t_ckpt), recipe=recipe, epochs=epochs, name="pruned_kd",
               **common)  # fmt: skip
    row("teacher pruned + KD fine-tune", Path(ft.best), _metric(ft))

    # export the most accurate compact model
    best = max(rows[1:3], key=lambda r: r["map"])
    _stage(5, n, f"export the most accurate compact model ({best['model']}): ONNX (parity) + INT8; every model timed",
           t0)  # fmt: skip
    size = export_imgsz or imgsz
    rep = export_checkpoint(best["checkpoint"], imgsz=size, int8=True, data=data_yaml, runs=3)  # timed below
    rows.append(
        {
            "model": f"{best['model']}, INT8 ONNX",
            "checkpoint": rep.int8_onnx,
            "params": best["params"],
            "gflops": best["gflops"],
            "map": rep.map50_95.get("onnx_int8", float("nan")),
        }
    )
    _time_every_row(rows, best, rep, work, k, size, data_yaml)

    _stage(6, n, "summary and a picture of the detections", t0)
    cells = [[r["model"], r["params"], r["gflops"], r["map"], r["onnx_ms"], r["speedup"]] for r in rows]
    header = ["model", "params", "GFLOPs", "mAP50-95", "ONNX ms", "x teacher speed"]
    LOGGER.info("\n%s", table(cells, header, ["", ",d", ".2f", ".4f", ".2f", ".2f"]))
    picture = Path(project) / f"detections{k or ''}.png"
    detections_picture([rows[0], best, rows[-1]], dataset_images(data_yaml, 4), export_imgsz or imgsz, picture)
    LOGGER.info("detections of the teacher, %s and its INT8 model on 4 val images: %s", best["model"], picture)
    LOGGER.info("\ndemo finished in %.0fs; runs under %s", time.time() - t0, project)
    return rows


def _time_every_row(rows: list[dict[str, Any]], best: dict[str, Any], rep, work: Path, k: int, imgsz: int,
                    data: str) -> None:  # fmt: skip
    """Give every row its ONNX Runtime latency (2 threads, one val image) and its speed-up over the teacher, all
    models timed interleaved so that their ratios hold on a busy machine. The teacher and the other compact model are
    exported (with their parity check, no INT8, no mAP) into ``work``: a user's teacher is copied there first, so
    nothing is ever written beside it."""
    import shutil

    from yolo_distill.data.images import letterbox_images
    from yolo_distill.deploy.latency import compare_onnx

    onnx = {id(best): rep.onnx, id(rows[-1]): rep.int8_onnx}
    for r in rows[:-1]:
        if id(r) in onnx:
            continue
        src = Path(r["checkpoint"])
        if r is rows[0]:  # the teacher may be the user's file: export a copy
            src = Path(shutil.copy2(src, work / f"teacher{k or ''}.pt"))
        onnx[id(r)] = export_checkpoint(str(src), imgsz=imgsz, data=data, runs=3, validate=False).onnx
    x = letterbox_images(dataset_images(data, 1), imgsz)
    ms = compare_onnx([onnx[id(r)] for r in rows], x, threads=2, runs=30)
    for r in rows:
        r["onnx_ms"] = ms[str(onnx[id(r)])]["median"]
        r["speedup"] = rows[0]["onnx_ms"] / r["onnx_ms"]


def detections_picture(rows: list[dict[str, Any]], images: list[Path], imgsz: int, out: Path) -> Path:
    """One row per model (its name, mAP50-95 and ONNX latency ``onnx_ms`` written above it), one column per
    image: each model's detections drawn by Ultralytics' own plotting, side by side; written atomically as ``out``
    (PNG)."""
    import cv2
    import numpy as np
    from ultralytics import YOLO

    cell, strips = 256, []
    for r in rows:
        task = {} if str(r["checkpoint"]).endswith(".pt") else {"task": "detect"}
        results = YOLO(str(r["checkpoint"]), **task).predict([str(p) for p in images], imgsz=imgsz, verbose=False)
        tiles = [cv2.resize(res.plot(), (cell, cell)) for res in results]
        title = np.full((28, cell * len(tiles), 3), 255, np.uint8)
        text = f"{r['model']}: mAP50-95 {r['map']:.3f}, {r['onnx_ms']:.1f} ms ONNX"
        cv2.putText(title, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        strips += [title, np.concatenate(tiles, axis=1)]
    part = out.with_name(f".{out.stem}.partial.png")
    cv2.imwrite(str(part), np.concatenate(strips, axis=0))
    part.replace(out)
    return out
