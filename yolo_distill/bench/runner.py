"""Benchmark runner: rows of train / prune / export runs with one seed and budget, cached and resumable.

A row is recomputed only when what it computes changes: its spec, the bench settings, the yolo_distill version, the
recipe it distils with, or a row it builds on (see ``_key``). ``results.json`` is written after every row, so a
killed bench continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from yolo_distill.config import find_recipe, load_yaml

ROW_KINDS = ("train", "prune", "export")
SETTINGS = ("data", "imgsz", "epochs", "batch", "seed", "export_imgsz", "device")
REF_FIELDS = ("teacher", "from", "model", "distill_model")  # fields that may name an earlier row as "@row"


def _is_ref(v: Any) -> bool:
    """Whether a row field names an earlier row (``"@row"``)."""
    return isinstance(v, str) and v.startswith("@")


def _refs(row: dict) -> list[str]:
    """The ``@row`` references of ``row``, as written."""
    return [v for v in (row.get(f) for f in REF_FIELDS) if _is_ref(v)]


def _key(row: dict, settings: dict, ref_keys: dict[str, str]) -> str | None:
    """Cache key: what the row computes, so a result is reused exactly when it would come out the same.

    That is the row's spec without its name (a label: two rows that compute the same thing share one result), the
    bench settings, the package version, for KD rows the recipe's contents (not its file name or description), and
    for each ``@row`` reference the key of the referenced result, so a row built on a row that was recomputed is
    recomputed too. None when a referenced row has no result yet.
    """
    from yolo_distill import __version__

    spec = {k: v for k, v in row.items() if k not in ("name", "repeats", "recipe")}
    for f in REF_FIELDS:
        v = row.get(f)
        if _is_ref(v):
            if v[1:] not in ref_keys:
                return None
            spec[f] = "@" + ref_keys[v[1:]]
    if row.get("teacher"):  # editing a recipe file must rerun the rows that use it; renaming it must not
        from yolo_distill.config import load_distill_recipe

        resolved = load_distill_recipe(row.get("recipe", "default")).to_dict()
        resolved.pop("description")  # free text
        spec["recipe_resolved"] = resolved
    blob = json.dumps({"row": spec, "settings": settings, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save(res_file: Path, key: str, entry: dict) -> dict:
    """Write one finished row into ``results.json`` and return the whole cache.

    Reads the file again first, so rows that another bench process (``only=`` runs side by side) finished since this
    one started are kept, never overwritten; the write goes through a temporary file, so a kill mid-write leaves the
    previous file intact.
    """
    cache = json.loads(res_file.read_text()) if res_file.exists() else {}
    cache[key] = entry
    tmp = res_file.with_name(res_file.name + ".tmp")
    tmp.write_text(json.dumps(cache, indent=2))
    tmp.replace(res_file)
    return cache


def _validate(recipe: dict, where: str) -> tuple[dict, list[dict]]:
    unknown = sorted(set(recipe) - set(SETTINGS) - {"rows", "description", "repeats"})
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; valid: {sorted(SETTINGS + ('rows', 'repeats'))}")
    rows = recipe.get("rows") or []
    names = set()
    for i, r in enumerate(rows):
        if r.get("kind") not in ROW_KINDS or "name" not in r:
            raise ValueError(f"{where}: rows[{i}] needs a name and kind in {ROW_KINDS}")
        rr = r.get("repeats", 1)
        if not isinstance(rr, int) or isinstance(rr, bool) or rr < 1:
            raise ValueError(f"{where}: rows[{i}] ({r['name']}): repeats must be an integer >= 1, got {rr!r}")
        for ref in _refs(r):
            if ref[1:] not in names:
                raise ValueError(f"{where}: rows[{i}] refers to {ref} before it is defined")
        names.add(r["name"])
    settings = {k: recipe.get(k) for k in SETTINGS if k in recipe}
    return settings, rows


def _resolve(v: Any, done: dict[str, dict]) -> Any:
    return done[v[1:]]["checkpoint"] if _is_ref(v) else v


def _run_name(row: dict, s: dict) -> str:
    """The row's run folder / output name: seeds other than 0 get their own (``NAME_seed1``), never a shared one."""
    seed = int(s.get("seed", 0))
    return row["name"] if seed == 0 else f"{row['name']}_seed{seed}"


def _finished_run(run_dir: Path, epochs: int, seed: int | None = None) -> Path | None:
    """``best.pt`` of a run in ``run_dir`` that trained all ``epochs`` with ``seed`` (a bench killed after
    training), else None."""
    import csv

    best, results, args = run_dir / "weights" / "best.pt", run_dir / "results.csv", run_dir / "args.yaml"
    if not (best.is_file() and results.is_file()):
        return None
    if seed is not None and (not args.is_file() or (load_yaml(args).get("seed") != seed)):
        return None  # another seed's run: never reuse it as this one
    with open(results) as f:
        return best if len(list(csv.DictReader(f))) >= epochs else None


def _train_row(row: dict, s: dict, done: dict[str, dict], model: str, epochs: int, common: dict) -> Path:
    """Train the row (or reuse its finished run) and return the run folder."""
    from yolo_distill.api import distill

    name = _run_name(row, s)
    run_dir = Path(common["project"]) / name
    if _finished_run(run_dir, epochs, seed=common.get("seed")):
        print(f"bench: {name}: training already finished in {run_dir}; reusing it")
        return run_dir
    if run_dir.exists():  # the bench's own folder of an unfinished or other-seed run: start it afresh
        import shutil

        shutil.rmtree(run_dir)
    if "distill_model" in row:  # the baseline: Ultralytics' own trainer with its native distillation
        from ultralytics.models.yolo.detect import DetectionTrainer

        from yolo_distill.offline import ensure_font

        ensure_font()
        tr = DetectionTrainer(overrides=dict(model=model, data=s["data"], epochs=epochs, name=name,
                                             distill_model=_resolve(row["distill_model"], done), **common))  # fmt: skip
        tr.train()
    else:
        tr = distill(model, s["data"], teacher=_resolve(row.get("teacher"), done), recipe=row.get("recipe", "default"),
                     epochs=epochs, name=name, **common)  # fmt: skip
    return Path(tr.save_dir)


def _run_row(row: dict, s: dict, done: dict[str, dict], out: Path) -> dict:
    import csv

    from ultralytics import YOLO

    from yolo_distill.checkpoints import load_model
    from yolo_distill.export.onnx import ParityError, export_checkpoint
    from yolo_distill.prune.pruner import model_stats, prune_checkpoint

    # exist_ok: run folders are the bench's own, named by row, so a finished training can be found and reused
    common = dict(imgsz=s.get("imgsz", 256), batch=s.get("batch", 16), seed=s.get("seed", 0), workers=0, amp=False,
                  plots=False, project=str((out / "runs").resolve()), device=s.get("device", "cpu"),
                  exist_ok=True)  # fmt: skip
    t0 = time.time()
    res: dict[str, Any] = {"name": row["name"], "kind": row["kind"]}
    model = _resolve(row.get("model") or row.get("from"), done)
    if row["kind"] == "prune":
        dst = out / "pruned" / f"{_run_name(row, s)}.pt"
        dst.unlink(missing_ok=True)  # a stale output of a killed row: the bench's own file
        dst.with_name(f"{dst.stem}_report.json").unlink(missing_ok=True)
        gflops = row.get("gflops")
        if "gflops_ratio" in row:  # a target relative to the source model, at the bench imgsz
            gflops = row["gflops_ratio"] * model_stats(load_model(model), common["imgsz"])["gflops"]
        prune_checkpoint(model, ratio=row.get("ratio", 0.5), gflops=gflops, protect=row.get("protect"),
                         method=row.get("method", "l1"), scope=row.get("scope", "all"), out=str(dst),
                         imgsz=common["imgsz"], data=s["data"],
                         allocation=row.get("allocation", "uniform"))  # fmt: skip
        model = str(dst)
    epochs = row.get("epochs", s.get("epochs", 10))
    if epochs:
        run_dir = _train_row(row, s, done, model, epochs, common)
        res["checkpoint"] = str(run_dir / "weights" / "best.pt")
        with open(run_dir / "results.csv") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        res["curve"] = [float(r["metrics/mAP50-95(B)"]) for r in rows]
        res["train_seconds"] = float(rows[-1]["time"])
    else:
        res["checkpoint"] = model
    m = YOLO(res["checkpoint"]).val(data=s["data"], imgsz=common["imgsz"], batch=common["batch"], plots=False,
                                    device=common["device"], verbose=False)  # fmt: skip
    res.update(map50_95=float(m.box.map), map50=float(m.box.map50))
    st = model_stats(load_model(res["checkpoint"]), common["imgsz"])
    res.update(params=st["params"], gflops=st["gflops"])
    ckpt = Path(res["checkpoint"])
    for f in ckpt.parent.glob(f"{ckpt.stem}*.onnx"):
        f.unlink()  # the bench's own previous export of this row's checkpoint
    json_path = ckpt.with_name(f"{ckpt.stem}_export.json")
    json_path.unlink(missing_ok=True)
    try:
        # export rows also run the ONNX models (FP32 and INT8) over the val split: the INT8 accuracy cost
        rep = export_checkpoint(str(ckpt), imgsz=s.get("export_imgsz", common["imgsz"]), data=s["data"], runs=20,
                                validate=row["kind"] == "export", int8=bool(row.get("int8")))  # fmt: skip
        lat, res["parity_ok"] = rep.latency_ms, True
        res["onnx_map50_95"] = dict(rep.map50_95)
    except ParityError as e:  # recorded in the row, not fatal to the bench
        print(f"bench: {row['name']}: {e}")
        lat, res["parity_ok"] = json.loads(json_path.read_text())["latency_ms"], False
    res["onnx_ms"] = lat["onnx_fp32"]["median"]
    res["torch_ms"] = lat["torch_fp32"]["median"]
    res["int8_ms"] = lat.get("onnx_int8", {}).get("median")
    if _has_step_cost(row):
        res.update(_kd_step_cost(row, s, done))
    res["seconds"] = time.time() - t0
    return res


def _has_step_cost(row: dict) -> bool:
    """KD student rows (a YAML student and a teacher) get the KD step overhead column."""
    return row["kind"] == "train" and bool(row.get("teacher")) and str(row.get("model", "")).endswith(".yaml")


def _kd_step_cost(row: dict, s: dict, done: dict[str, dict]) -> dict[str, float]:
    """One training step of this row's student with our KD, plain, and with Ultralytics' ``distill_model=``.

    Interleaved steps at the bench's imgsz and batch (ratios hold under machine noise; absolute times do not).
    """
    from yolo_distill.bench.step_cost import measure

    r = measure(student=row["model"], teacher=_resolve(row["teacher"], done), imgsz=s.get("imgsz", 256),
                batch=s.get("batch", 16), steps=4, recipe=row.get("recipe", "default"), device=s.get("device", "cpu"),
                memory=False)  # fmt: skip
    return {"kd_step_vs_plain": r["ours_vs_plain_time"], "kd_step_vs_native": r["ours_vs_native_time"]}


def _run_jobs(path: Path, out_dir: Path, rows: list[dict], names: list[str], jobs: int, overrides: dict) -> list[str]:
    """Run the rows ``names`` as ``only=ROW`` bench processes, up to ``jobs`` at once.

    A row starts once every row it refers to (``@row``) and that is among ``names`` has finished; one whose
    reference failed is skipped. Each process writes ``out_dir/logs/ROW.log`` and its results into the shared
    ``results.json`` (merged on write, see ``_save``). A bench killed here stops its row processes; their finished
    rows are cached and a finished training is picked up again.

    Returns:
        ``"ROW (why; log)"`` for each row that failed or was skipped; empty when all finished.
    """
    import subprocess
    import sys

    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    todo = [r for r in rows if r["name"] in names]
    deps = {r["name"]: {ref[1:] for ref in _refs(r)} & set(names) for r in todo}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished: set[str] = set()
    failed: dict[str, str] = {}
    args = [f"{k}={v}" for k, v in overrides.items() if v is not None]
    try:
        while todo or running:
            for r in list(todo):
                n = r["name"]
                if broken := deps[n] & failed.keys():
                    failed[n] = f"skipped: {sorted(broken)} failed"
                    todo.remove(r)
                elif len(running) < jobs and deps[n] <= finished:
                    cmd = [sys.executable, "-m", "yolo_distill.cli", "bench", f"recipe={path}", f"out={out_dir}",
                           f"only={n}", *args]  # fmt: skip
                    with open(logs / f"{n}.log", "w") as log:
                        running[n] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time())
                    print(f"bench: started {n} (log: {log.name})", flush=True)
                    todo.remove(r)
            time.sleep(0.5)
            for n, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[n]
                if proc.returncode == 0:
                    finished.add(n)
                    print(f"bench: {n} finished in {time.time() - t0:.0f} s", flush=True)
                else:
                    log = logs / f"{n}.log"
                    tail = log.read_text().strip().splitlines()[-1:] or [""]
                    failed[n] = f"exit code {proc.returncode}: {tail[0]}; log {log}"
                    print(f"bench: {n} FAILED ({failed[n]})", flush=True)
    finally:
        for proc, _ in running.values():  # the bench itself was stopped: stop its rows too
            proc.terminate()
    return [f"{n} ({why})" for n, why in failed.items()]


def run_bench(recipe: str, out: str | None = None, repeats: int | None = None, seed: int | None = None,
              device: str | None = None, report_only: bool = False, only: str | list[str] | None = None,
              jobs: int = 1) -> dict:  # fmt: skip
    """Run (or continue) a benchmark recipe and write ``report.md``, ``results.json`` and plots.

    Args:
        recipe: a name under ``configs/bench`` or a YAML path.
        out: output folder (default ``bench/<name>``).
        repeats: override the recipe's repeats (seeds ``seed .. seed+repeats-1``). A row may set its own
            ``repeats`` (e.g. the rows whose difference is the claim); a row of a later seed that refers to a row
            with fewer seeds uses that row's last seed (students of seed 1 distil from the seed-0 teacher).
        seed: override the recipe's seed.
        device: override the device.
        report_only: run nothing; write the report from the rows already finished.
        only: run only these rows (names, a list or comma-separated); the others enter the report if finished.
        jobs: rows run at once, each in its own process, a row as soon as the rows it builds on are done. On a
            CPU Ultralytics trains with ``cpu_count - 1`` threads (at most 8), so on a 2-core machine one row uses
            one core and ``jobs=2`` halves the wall time; keep ``jobs * 8 <= cores`` on larger CPUs.

    Raises:
        RuntimeError: with ``jobs > 1``, after writing the report, when a row failed (naming it and its log).
    """
    from yolo_distill.data.builtin import resolve_data

    path = find_recipe(recipe, "bench")
    raw = load_yaml(path)
    settings, rows = _validate(raw, str(path))
    if seed is not None:
        settings["seed"] = seed
    if device is not None:
        settings["device"] = device
    reps = int(repeats or raw.get("repeats", 1))
    settings["data"] = resolve_data(settings.get("data", "shapes"))
    out_dir = Path(out or Path("bench") / path.stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    res_file = out_dir / "results.json"
    cache: dict[str, dict] = json.loads(res_file.read_text()) if res_file.exists() else {}
    if isinstance(only, str):
        only = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(only or []) - {r["name"] for r in rows})
    if unknown:
        raise ValueError(f"only={unknown}: no such row in {path.name}; rows: {[r['name'] for r in rows]}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (rows run at once), got {jobs!r}")
    if jobs > 1 and not report_only:
        failed = _run_jobs(path, out_dir, rows, only or [r["name"] for r in rows], jobs,
                           {"repeats": repeats, "seed": seed, "device": device})  # fmt: skip
        res = run_bench(recipe, out=str(out_dir), repeats=repeats, seed=seed, device=device, report_only=True)
        if failed:
            raise RuntimeError(f"bench rows did not finish: {'; '.join(failed)}")
        return res
    base_seed = settings.get("seed", 0)
    table: list[dict] = []
    done: dict[str, dict] = {}  # the latest finished seed of each row, for "@row" references
    done_keys: dict[str, str] = {}  # and its cache key
    row_reps = {r["name"]: int(r.get("repeats", reps)) for r in rows}
    for rep in range(max([reps, *row_reps.values()])):
        s = {**settings, "seed": base_seed + rep}
        for row in rows:
            if rep >= row_reps[row["name"]]:
                continue
            key = _key(row, s, done_keys)
            if key in cache and Path(cache[key].get("checkpoint", "")).exists():
                print(f"bench: {row['name']} (seed {s['seed']}) cached")
                if (
                    _has_step_cost(row)
                    and "kd_step_vs_plain" not in cache[key]
                    and not report_only
                    and (not only or row["name"] in only)
                ):  # a row finished before the column existed: measure it (a few steps, no training)
                    cache = _save(res_file, key, {**cache[key], **_kd_step_cost(row, s, done)})
            elif report_only or (only and row["name"] not in only):
                print(f"bench: {row['name']} (seed {s['seed']}) not run yet: left out of the report")
                continue
            else:
                missing = [v for v in _refs(row) if v[1:] not in done]
                if missing:
                    raise ValueError(f"{row['name']} needs {missing} finished first; add them to only= or drop only=")
                print(f"bench: running {row['name']} (seed {s['seed']})", flush=True)
                cache = _save(res_file, key, _run_row(row, s, done, out_dir))
            done[row["name"]], done_keys[row["name"]] = cache[key], key
            table.append({**cache[key], "name": row["name"], "seed": s["seed"]})
            write_report(table, out_dir, path.name)  # after every row: a killed bench still has its report
    write_report(table, out_dir, path.name)
    return {"rows": table, "out": str(out_dir)}


def write_report(table: list[dict], out_dir: Path, recipe_name: str) -> Path:
    """``report.md`` (mean and spread over seeds) and ``map_vs_gflops.png`` / ``map_vs_latency.png``."""
    import statistics

    names = list(dict.fromkeys(r["name"] for r in table))
    lines = [
        f"# Benchmark `{recipe_name}`",
        "",
        "Latency columns are measured per row, one row after another: compare them only for rows that ran on an idle",
        "machine, or use `yolo_distill.export.latency.compare_onnx` for side-by-side ratios. Train s: training time",
        "of the row (a resumed row keeps the time of the run that trained it). KD step: one training step of a KD",
        "student with our recipe, as a multiple of a plain step / of an Ultralytics `distill_model=` step (same",
        "teacher, imgsz and batch; measured interleaved).",
        "",
        "| row | params | GFLOPs | mAP50 | mAP50-95 | ONNX ms | INT8 ms | PyTorch ms | train s "
        "| KD step x plain / x native | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for n in names:
        rs = [r for r in table if r["name"] == n]
        maps = [r["map50_95"] for r in rs]
        mean = statistics.fmean(maps)
        spread = f" ± {statistics.stdev(maps):.4f}" if len(maps) > 1 else ""
        r0 = rs[0]
        int8 = f"{r0['int8_ms']:.2f}" if r0.get("int8_ms") else "-"
        pt = f"{r0['torch_ms']:.1f}" if r0.get("torch_ms") else "-"
        secs = statistics.fmean(r.get("train_seconds", r["seconds"]) for r in rs)
        kd = f"{r0['kd_step_vs_plain']:.2f} / {r0['kd_step_vs_native']:.2f}" if "kd_step_vs_plain" in r0 else "-"
        lines.append(
            f"| {n} | {r0['params']:,} | {r0['gflops']:.2f} | {statistics.fmean(r['map50'] for r in rs):.4f} | "
            f"{mean:.4f}{spread} | {r0['onnx_ms']:.2f} | {int8} | {pt} | {secs:.0f} | {kd} "
            f"| {len(rs)} |"
        )
        summary.append((n, r0["gflops"], r0["onnx_ms"], mean, r0.get("curve", [])))
    onnx_rows = []
    for n in names:  # export rows carry ONNX-run mAPs (first seed shown)
        r = next((r for r in table if r["name"] == n and r.get("onnx_map50_95")), None)
        if r is not None:
            onnx_rows.append((n, r))
    if onnx_rows:
        lines += ["", "ONNX models run by ONNX Runtime over the val split at the export size (export rows):", "",
                  "| row | ONNX FP32 mAP50-95 | ONNX INT8 mAP50-95 | FP32 ms | INT8 ms | INT8 speed-up |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for n, r in onnx_rows:
            m, i8 = r["onnx_map50_95"], r.get("int8_ms")
            fp = next((v for k, v in m.items() if k != "onnx_int8"), float("nan"))
            q = f"{m['onnx_int8']:.4f}" if "onnx_int8" in m else "-"
            sp = f"{r['onnx_ms'] / i8:.2f}x" if i8 else "-"
            lines.append(f"| {n} | {fp:.4f} | {q} | {r['onnx_ms']:.2f} | {f'{i8:.2f}' if i8 else '-'} | {sp} |")
    lines += ["", "![mAP vs GFLOPs](map_vs_gflops.png) ![mAP vs latency](map_vs_latency.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for fname, idx, xlabel in (("map_vs_gflops.png", 1, "GFLOPs"), ("map_vs_latency.png", 2, "ONNX FP32 ms")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, *vals in summary:
            ax.scatter(vals[idx - 1], vals[2])
            ax.annotate(n, (vals[idx - 1], vals[2]), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50-95")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, *_, curve in summary:
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, label=n)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    if any(curve for *_, curve in summary):
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "map_curves.png", dpi=100)
    plt.close(fig)
    return out_dir / "report.md"
