"""``run_bench``: the orchestration of a bench recipe (rows of train / prune / export runs, cached and resumable).

The pieces: :mod:`~yolo_distill.bench.spec` (the recipe), :mod:`~yolo_distill.bench.cache` (what is done),
:mod:`~yolo_distill.bench.rows` (running one row), :mod:`~yolo_distill.bench.jobs` (rows side by side) and
:mod:`~yolo_distill.bench.report` (the report). ``results.json`` is written after every row, so a killed bench
continues where it stopped.
"""

from __future__ import annotations

import functools
from pathlib import Path

from yolo_distill.bench import cache, rows
from yolo_distill.bench import side_by_side as sbs
from yolo_distill.bench.jobs import run_jobs
from yolo_distill.bench.report import write_report
from yolo_distill.bench.spec import BenchRecipe, Row, load_bench_recipe
from yolo_distill.log import LOGGER


def run_bench(recipe: str, out: str | None = None, repeats: int | None = None, seed: int | None = None,
              device: str | None = None, report_only: bool = False, only: str | list[str] | None = None,
              jobs: int = 1, dry_run: bool = False, side_by_side: bool | list[int] = False,
              rerun: str | list[str] | None = None) -> dict:  # fmt: skip
    """Run (or continue) a benchmark recipe and write ``report.md``, ``results.json`` and plots.

    Args:
        recipe: a name under ``configs/bench`` or a YAML path.
        out: output folder (default ``bench/<name>``).
        repeats: override the recipe's repeats (seeds ``seed .. seed+repeats-1``). A row may set its own
            ``repeats`` (e.g. the rows whose difference is the claim); a row of a later seed that refers to a row
            with fewer seeds uses that row's last seed (students of seed 1 distil from the seed-0 teacher).
        seed: override the recipe's seed.
        device: override the device (``cpu``, ``0``, ``0,1``...).
        report_only: run nothing; write the report from the rows already finished.
        only: run only these rows (names, a list or comma-separated); the others enter the report if finished.
        jobs: rows run at once, each in its own process, a row as soon as the rows it builds on are done. On a
            CPU Ultralytics trains with ``cpu_count - 1`` threads (at most 8), so on a 2-core machine one row uses
            one core and ``jobs=2`` halves the wall time; keep ``jobs * 8 <= cores`` on larger CPUs.
        dry_run: resolve every row (paths, device, references, recipes, cache keys), log them with what is missing
            on this machine, and return; nothing is trained or written.
        side_by_side: run no row; time every finished row's ONNX model interleaved in one run (``True``: at 1 and 2
            threads; or a list of thread counts), keep it in ``side_by_side.json`` and write the report with that
            table and which row serves which goal. Run it on an idle machine once the rows are done.
        rerun: rows (names, a list or comma-separated) to compute again, every seed, although cached (an export
            row's latency on another machine, say); their new results replace the old. They run with the ``only``
            rows and no others; the rows they build on are computed again only where their checkpoint is gone.

    Returns:
        ``{"rows": [...], "out": folder}``: one entry per finished row and seed.

    Raises:
        RuntimeError: with ``jobs > 1``, after writing the report, when a row failed (naming it and its log).
    """
    from yolo_distill.config import require, require_int
    from yolo_distill.data.builtin import resolve_data

    for key, value, low in (("repeats", repeats, 1), ("seed", seed, 0)):
        if value is not None:
            require_int(key, value, low)
    require(isinstance(report_only, bool), "report_only", report_only, "true or false")
    require(isinstance(dry_run, bool), "dry_run", dry_run, "true or false")
    sbs_threads = _side_by_side_threads(side_by_side)
    spec = load_bench_recipe(recipe)
    settings = dict(spec.settings)
    if seed is not None:
        settings["seed"] = seed
    if device is not None:
        settings["device"] = str(device)
    reps = int(repeats or spec.repeats)
    only, rerun = _row_names(spec, "only", only), _row_names(spec, "rerun", rerun)
    if rerun and (report_only or sbs_threads):
        raise ValueError(f"rerun={rerun} runs rows; drop it, or drop report_only / side_by_side")
    if rerun:
        only = list(dict.fromkeys([*(only or []), *rerun]))
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (rows run at once), got {jobs!r}")
    out_dir = Path(out or Path("bench") / spec.path.stem)
    settings.setdefault("data", "shapes")
    if dry_run:  # the same plan as a run, but nothing generated, trained or written
        from yolo_distill.bench.dry_run import dry_run as resolve

        return {**resolve(spec, settings, lambda: plan_rows(spec, settings, settings, reps)), "out": str(out_dir)}
    require(not out_dir.is_file(), "out", str(out_dir), "a folder for the bench's results (this is a file)")
    if sbs_threads and not (out_dir / "results.json").is_file():
        raise ValueError(f"side_by_side: {out_dir} has no finished rows (no results.json); run the bench first")
    run_settings = {**settings, "data": resolve_data(settings["data"])}
    out_dir.mkdir(parents=True, exist_ok=True)
    if sbs_threads:
        table = _run_rows(spec, settings, run_settings, reps, out_dir, True, None)
        sbs.rebuild_timing_copies(plan_rows(spec, settings, run_settings, reps), table, out_dir)
        sbs.measure(table, out_dir, int(settings.get("export_imgsz", settings.get("imgsz", 256))), sbs_threads)
        write_report(table, out_dir, spec.path.name)
        return {"rows": table, "out": str(out_dir)}
    if jobs > 1 and not report_only:
        failed = run_jobs(spec.path, out_dir, spec.rows, only or [r.name for r in spec.rows], jobs,
                          {"repeats": repeats, "seed": seed, "device": device}, rerun)  # fmt: skip
        res = run_bench(recipe, out=str(out_dir), repeats=repeats, seed=seed, device=device, report_only=True)
        if failed:
            raise RuntimeError(f"bench rows did not finish: {'; '.join(failed)}")
        return res
    table = _run_rows(spec, settings, run_settings, reps, out_dir, report_only, only, rerun)
    write_report(table, out_dir, spec.path.name)
    return {"rows": table, "out": str(out_dir)}


def _row_names(spec: BenchRecipe, key: str, value: str | list[str] | None) -> list[str] | None:
    """``only=`` / ``rerun=`` as a list of the recipe's row names (comma-separated text accepted)."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value)
    unknown = sorted(set(names) - {r.name for r in spec.rows})
    if unknown or not names:
        raise ValueError(f"{key}={unknown or value!r}: no such row in {spec.path.name}; rows: "
                         f"{[r.name for r in spec.rows]}")  # fmt: skip
    return names


def _side_by_side_threads(value: bool | list[int]) -> tuple[int, ...]:
    """The thread counts ``side_by_side=`` asks for (empty: none)."""
    if value is True:
        return sbs.THREADS
    if value is False:
        return ()
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in value
    ):
        return tuple(dict.fromkeys(value))
    raise ValueError(f"side_by_side={value!r} is not valid: expected true (1 and 2 threads), false, or a list of "
                     f"thread counts >= 1 such as [1, 4]")  # fmt: skip


def plan_rows(spec: BenchRecipe, settings: dict, run_settings: dict, reps: int) -> list[tuple[Row, dict, str, dict]]:
    """Every (row, run settings with its seed, cache key, keys of the rows it refers to) in run order.

    The key is made from the settings as the recipe writes them (``data: shapes``), not as resolved on this machine
    (an absolute dataset path), so a bench folder keeps its results wherever the repository is cloned.
    """
    base_seed = settings.get("seed", 0)
    row_reps = {r.name: int(r.repeats or reps) for r in spec.rows}
    keys: dict[str, str] = {}  # the latest seed of each row, for "@row" references
    plan = []
    for rep in range(max([reps, *row_reps.values()])):
        s = {**settings, "seed": base_seed + rep}
        for row in spec.rows:
            if rep < row_reps[row.name]:
                k = cache.key(row, s, keys)
                plan.append((row, {**run_settings, "seed": s["seed"]}, k, {n: keys[n] for n in row.refs()}))
                keys[row.name] = k
    return plan


def _to_compute(plan: list, results: dict, to_run: set[str]) -> set[str]:
    """Cache keys to compute: rows asked for that have no result, and, transitively, the rows they build on whose
    result is cached but whose checkpoint is gone (run folders are not kept with the results) or is the mid-run save
    of a killed rerun (:func:`cache.usable_checkpoint`; the rerun then resumes)."""
    need = {k for row, _, k, _ in plan if row.name in to_run and k not in results}

    @functools.cache  # each checkpoint read once, however many rows build on it
    def usable(rk: str) -> bool:
        return cache.usable_checkpoint(results.get(rk, {}).get("checkpoint", ""))

    for _, _, k, ref_keys in reversed(plan):
        if k in need:
            need |= {rk for rk in ref_keys.values() if not usable(rk)}
    return need


def _run_rows(spec: BenchRecipe, settings: dict, run_settings: dict, reps: int, out_dir: Path, report_only: bool,
              only: list[str] | None, rerun: list[str] | None = None) -> list[dict]:  # fmt: skip
    """Every row and seed in order: run what is asked and missing (or in ``rerun``), reuse a cached result, leave
    out the rest."""
    res_file = out_dir / "results.json"
    results = cache.load(res_file)
    to_run = set() if report_only else {r.name for r in spec.rows if not only or r.name in only}
    plan = plan_rows(spec, settings, run_settings, reps)
    again = {k for row, _, k, _ in plan if row.name in (rerun or [])}
    compute = _to_compute(plan, {k: v for k, v in results.items() if k not in again}, to_run)
    done: dict[str, dict] = {}  # the latest finished seed of each row, for "@row" references
    for row, s, k, _ in plan:
        if k in compute:
            missing = [f"@{n}" for n in row.refs() if n not in done]
            if missing:
                raise ValueError(f"{row.name} needs {missing} finished first; add them to only= or drop only=")
            why = ("rerun asked" if k in again else "its checkpoint is gone or unfinished, a row to run builds on it"
                   if k in results else "running")  # fmt: skip
            LOGGER.info("bench: %s (seed %s): %s", row.name, s["seed"], why)
            results = cache.save(res_file, k, rows.run_row(row, s, done, out_dir))
        elif k in results:
            LOGGER.info("bench: %s (seed %s) cached", row.name, s["seed"])
            if rows.has_step_cost(row) and "kd_step_vs_plain" not in results[k] and row.name in to_run:
                # a row finished before the column existed: measure it (a few steps, no training)
                results = cache.save(res_file, k, {**results[k], **rows.kd_step_cost(row, s, done)})
        else:
            LOGGER.info("bench: %s (seed %s) not run yet: left out of the report", row.name, s["seed"])
            continue
        # for side_by_side in a checkout without this row's exports
        sbs.keep_timing_copy(out_dir, k, {**results[k], "name": row.name, "seed": s["seed"]})
        done[row.name] = results[k]
        # after every row, from everything finished (later rows and seeds included): a killed bench's report still
        # shows every result it has, each row's seeds averaged as in a complete run
        write_report(_finished(plan, results), out_dir, spec.path.name)
    return _finished(plan, results)


def _finished(plan: list, results: dict) -> list[dict]:
    """The report's table: every planned row-seed with a cached result, in plan order."""
    return [{**results[k], "name": row.name, "seed": s["seed"], "key": k} for row, s, k, _ in plan if k in results]
