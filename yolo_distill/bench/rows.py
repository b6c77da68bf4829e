"""Running one bench row: train, prune or export, then measure (mAP, size, ONNX parity and latency, KD step cost).

Everything a row writes stays inside the bench folder: runs under ``runs/``, pruned checkpoints under ``pruned/``,
and exports of a copy of the row's checkpoint under ``exports/<row>/`` (a checkpoint the recipe names by path, a
user's file, is only read).
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

from yolo_distill.bench.cache import finished_run, read_checkpoint
from yolo_distill.bench.spec import Row, is_ref
from yolo_distill.checkpoints import load_model
from yolo_distill.evaluation import evaluate
from yolo_distill.log import LOGGER


def resolve(v: Any, done: dict[str, dict]) -> Any:
    """A row field with ``@row`` replaced by that row's checkpoint."""
    return done[v[1:]]["checkpoint"] if is_ref(v) else v


def run_name(row: Row, s: dict) -> str:
    """The row's run folder / output name: seeds other than 0 get their own (``NAME_seed1``), never a shared one."""
    return seed_name(row.name, int(s.get("seed", 0)))


def seed_name(name: str, seed: int) -> str:
    """``name`` for seed 0, ``NAME_seedN`` for another seed (see :func:`run_name`)."""
    return name if seed == 0 else f"{name}_seed{seed}"


def common_args(s: dict, out: Path) -> dict[str, Any]:
    """Ultralytics train arguments shared by every row of a bench with settings ``s``.

    ``exist_ok``: run folders are the bench's own, named by row, so a finished training can be found and reused.
    """
    return dict(imgsz=s.get("imgsz", 256), batch=s.get("batch", 16), seed=s.get("seed", 0), workers=0, amp=False,
                plots=False, project=str((out / "runs").resolve()), device=s.get("device", "cpu"),
                exist_ok=True)  # fmt: skip


def train_row(row: Row, s: dict, done: dict[str, dict], model: str, epochs: int, common: dict) -> Path:
    """Train the row (or reuse its finished run) and return the run folder."""
    from yolo_distill.distill.run import train

    name = run_name(row, s)
    run_dir = Path(common["project"]) / name
    if finished_run(run_dir, epochs, seed=common.get("seed")):
        LOGGER.info("bench: %s: training already finished in %s; reusing it", name, run_dir)
        return run_dir
    last = run_dir / "weights" / "last.pt"
    if not (row.distill_model or row.qat) and _resumable(last, epochs, common.get("seed")):  # killed: continue it
        from yolo_distill.distill.trainer import DistillationTrainer

        LOGGER.info("bench: %s: resuming the unfinished run in %s", name, run_dir)
        tr = DistillationTrainer(overrides={"resume": str(last)})
        tr.train()
        return Path(tr.save_dir)
    if run_dir.exists():  # the bench's own folder of an unfinished or other-seed run: start it afresh
        shutil.rmtree(run_dir)
    if row.distill_model:  # the baseline: Ultralytics' own trainer with its native distillation
        from ultralytics.models.yolo.detect import DetectionTrainer

        from yolo_distill.offline import ensure_font

        ensure_font()
        tr = DetectionTrainer(overrides=dict(model=model, data=s["data"], epochs=epochs, name=name,
                                             distill_model=resolve(row.distill_model, done), **common))  # fmt: skip
        tr.train()
    else:
        tr = train(model, s["data"], teacher=resolve(row.teacher, done), recipe=row.recipe, epochs=epochs,
                   name=name, qat=row.qat, teacher_precision=row.teacher_precision, **common)  # fmt: skip
    return Path(tr.save_dir)


def _resumable(last: Path, epochs: int, seed: int | None) -> bool:
    """Whether ``last`` is an unfinished run of this row (same epochs and seed) that Ultralytics can resume."""
    ck = read_checkpoint(last)
    if ck is None:  # none, or a torn file of a killed run: start afresh
        return False
    args = ck.get("train_args") or {}
    return (ck.get("ema") is not None and 0 <= int(ck.get("epoch", -1)) < epochs - 1 and args.get("epochs") == epochs
            and (seed is None or args.get("seed") == seed))  # fmt: skip


def prune_row(row: Row, s: dict, model: str, out: Path, imgsz: int) -> str:
    """Prune ``model`` as the row says into the bench's ``pruned/`` folder; returns the pruned checkpoint."""
    from yolo_distill.compress.checkpoint import prune_checkpoint, report_path
    from yolo_distill.compress.pruner import model_stats

    dst = out / "pruned" / f"{run_name(row, s)}.pt"
    dst.unlink(missing_ok=True)  # a stale output of a killed row: the bench's own file
    report_path(dst).unlink(missing_ok=True)
    gflops = row.gflops
    if row.gflops_ratio is not None:  # a target relative to the source model, at the bench imgsz
        gflops = row.gflops_ratio * model_stats(load_model(model), imgsz)["gflops"]
    ratio = row.ratio if row.ratio is not None else 0.5
    fine = {} if row.granularity == "filter" else {"granularity": row.granularity, "n": row.n, "m": row.m}
    if row.latency is not None:  # a budget measured on this machine's runtime (relative: "0.5x" of the source's)
        fine |= {"latency": row.latency, "runtime": row.runtime, "threads": row.threads}
    prune_checkpoint(model, ratio=ratio, gflops=gflops, protect=row.protect, method=row.method, scope=row.scope,
                     out=str(dst), imgsz=imgsz, data=s["data"], allocation=row.allocation, **fine)  # fmt: skip
    return str(dst)


def lowrank_row(row: Row, s: dict, model: str, out: Path, imgsz: int) -> str:
    """Factorize ``model`` as the row says into the bench's ``lowrank/`` folder; returns the checkpoint."""
    from yolo_distill.compress.checkpoint import report_path
    from yolo_distill.compress.lowrank import lowrank_checkpoint

    dst = out / "lowrank" / f"{run_name(row, s)}.pt"
    dst.unlink(missing_ok=True)  # a stale output of a killed row: the bench's own file
    report_path(dst).unlink(missing_ok=True)
    gflops = f"{row.gflops_ratio}x" if row.gflops_ratio is not None else row.gflops
    lowrank_checkpoint(model, energy=row.energy, gflops=gflops, rank=row.rank, scope=row.scope, protect=row.protect,
                       out=str(dst), imgsz=imgsz)  # fmt: skip
    return str(dst)


def carve_row(row: Row, s: dict, model: str, out: Path, imgsz: int) -> str:
    """Carve ``row.target`` out of ``model`` into the bench's ``carved/`` folder; returns the carved checkpoint."""
    from yolo_distill.compress.carve import carve_checkpoint
    from yolo_distill.compress.checkpoint import report_path

    dst = out / "carved" / f"{run_name(row, s)}.pt"
    dst.unlink(missing_ok=True)  # a stale output of a killed row: the bench's own file
    report_path(dst).unlink(missing_ok=True)
    carve_checkpoint(model, row.target, out=str(dst), method=row.method, imgsz=imgsz)
    return str(dst)


def compress_step(row: Row, s: dict, model: str, out: Path, imgsz: int) -> str:
    """A ``prune``, ``carve`` or ``lowrank`` row's compressed checkpoint of ``model`` (before any fine-tuning);
    ``model`` itself for the other kinds."""
    step = {"prune": prune_row, "carve": carve_row, "lowrank": lowrank_row}.get(row.kind)
    return step(row, s, model, out, imgsz) if step else model


def run_row(row: Row, s: dict, done: dict[str, dict], out: Path) -> dict:
    """Run one row with settings ``s`` (one seed) and measure it; ``done`` holds the finished rows it refers to."""
    from yolo_distill.compress.pruner import model_stats

    common = common_args(s, out)
    t0 = time.time()
    res: dict[str, Any] = {"name": row.name, "kind": row.kind}
    model = compress_step(row, s, resolve(row.start, done), out, common["imgsz"])
    epochs = row.epochs if row.epochs is not None else s.get("epochs", 10)

    def val(ckpt: str | Path) -> dict:
        return evaluate(ckpt, s["data"], imgsz=common["imgsz"], batch=common["batch"], device=common["device"])

    if epochs:
        run_dir = train_row(row, s, done, model, epochs, common)
        res["checkpoint"] = str(run_dir / "weights" / "best.pt")
        with open(run_dir / "results.csv") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        res["curve"] = [float(r["metrics/mAP50-95(B)"]) for r in rows]
        res["train_seconds"] = float(rows[-1]["time"])
        last = run_dir / "weights" / "last.pt"  # what a user gets at the end of training, beside the best epoch
        if last.is_file():
            res["last_map50_95"] = val(last)["map50_95"]
        t_last = run_dir / "weights" / "teacher_last.pt"  # online: how the co-trained teacher ended
        if t_last.is_file():
            res["teacher_last_map50_95"] = val(t_last)["map50_95"]
    else:
        res["checkpoint"] = model
    m = val(res["checkpoint"])
    res.update(map50_95=m["map50_95"], map50=m["map50"])
    st = model_stats(load_model(res["checkpoint"]), common["imgsz"])
    res.update(params=st["params"], gflops=st["gflops"])
    res.update(size_stats(res["checkpoint"]))
    res.update(export_row(row, s, res["checkpoint"], out))
    if has_step_cost(row):
        res.update(kd_step_cost(row, s, done))
    res["seconds"] = time.time() - t0
    return res


def size_stats(checkpoint: str) -> dict[str, float]:
    """Non-zero parameters, and the size of the model as a stock fp16 checkpoint on disk, raw and gzip-compressed
    (what zeros from fine-grained pruning save; a training checkpoint's extra state is left out)."""
    import tempfile
    import zlib

    from yolo_distill.checkpoints import save_stock_checkpoint

    model = load_model(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_stock_checkpoint(model, Path(tmp) / "m.pt")
        raw = path.read_bytes()
    return {"nonzero_params": int(sum(int(p.count_nonzero()) for p in model.parameters())),
            "size_mb": len(raw) / 1e6, "gzip_mb": len(zlib.compress(raw, 6)) / 1e6}  # fmt: skip


def export_row(row: Row, s: dict, checkpoint: str, out: Path) -> dict[str, Any]:
    """Export a copy of ``checkpoint`` in the bench's ``exports/<row>/`` folder: parity, latency (and with
    ``int8``, the INT8 model), and for export rows the mAP of the ONNX models run by ONNX Runtime."""
    from yolo_distill.deploy.onnx import ParityError, export_checkpoint

    folder = out / "exports" / run_name(row, s)
    if folder.exists():  # the bench's own exports of an earlier attempt at this row
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ckpt = folder / Path(checkpoint).name
    shutil.copy2(checkpoint, ckpt)
    res: dict[str, Any] = {}
    try:
        rep = export_checkpoint(str(ckpt), imgsz=s.get("export_imgsz", s.get("imgsz", 256)), data=s["data"], runs=20,
                                validate=row.kind == "export", int8=row.int8, format=row.format)  # fmt: skip
        lat, res["parity_ok"], res["machine"] = rep.latency_ms, True, rep.machine
        if rep.openvino_precision:
            res["openvino_precision"] = rep.openvino_precision
        res["onnx_map50_95"] = {k: v for k, v in rep.map50_95.items() if k.startswith("onnx")}
        if row.format == "all":  # every runtime x precision, timed side by side in one run
            res["runtimes"] = {k: {"ms": v["median"], "map50_95": rep.map50_95.get(k)} for k, v in lat.items()}
    except ParityError as e:  # recorded in the row, not fatal to the bench
        import json

        LOGGER.warning("bench: %s: %s", row.name, e)
        lat, res["parity_ok"] = json.loads(ckpt.with_name(f"{ckpt.stem}_export.json").read_text())["latency_ms"], False
    qat = "onnx_qat_int8" in lat  # a QAT model exports its INT8 (QDQ) ONNX model only
    res["onnx_ms"] = lat["onnx_qat_int8" if qat else "onnx_fp32"]["median"]
    res["torch_ms"] = lat["torch_fp32"]["median"]
    res["int8_ms"] = lat.get("onnx_qat_int8" if qat else "onnx_int8", {}).get("median")
    return res


def has_step_cost(row: Row) -> bool:
    """KD student rows (a YAML student and a teacher) get the KD step overhead column."""
    return row.kind == "train" and bool(row.teacher) and str(row.model or "").endswith(".yaml")


def kd_step_cost(row: Row, s: dict, done: dict[str, dict]) -> dict[str, float]:
    """One training step of this row's student with our KD, plain, and with Ultralytics' ``distill_model=``.

    Interleaved steps at the bench's imgsz and batch (ratios hold under machine noise; absolute times do not).
    """
    from yolo_distill.bench.step_cost import measure

    r = measure(student=row.model, teacher=resolve(row.teacher, done), imgsz=s.get("imgsz", 256),
                batch=s.get("batch", 16), steps=4, recipe=row.recipe, device=s.get("device", "cpu"),
                memory=False, teacher_precision=row.teacher_precision)  # fmt: skip
    return {"kd_step_vs_plain": r["ours_vs_plain_time"], "kd_step_vs_native": r["ours_vs_native_time"]}
