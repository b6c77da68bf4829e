"""Distillation across regimes, judged: every student row of several benches (best.pt and last.pt mAP50-95, mean and
spread over seeds) and, per bench, whether the default recipe meets issue 14's bar: on best.pt and on last.pt at
least plain training and Ultralytics' native ``distill_model=``, and last.pt at least 0.9 of its best.pt, each on
the mean of two seeds or more. Then one table across the benches: each distillation row's gain over plain training in
each, and its worst gain anywhere, the number that picks a default that never hurts.

Read-only: it reads each bench's ``results.json`` through the bench's own plan (the same cache keys a run uses), so a
result of a row whose recipe line has changed since is not counted; nothing is trained or written.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from yolo_distill.bench import cache
from yolo_distill.bench.runner import plan_rows
from yolo_distill.bench.spec import load_bench_recipe

#: the baselines the bar compares with, by name (a bench may add a suffix to them: see :func:`kd_verdict`); the
#: default's row is found by what it runs (:func:`runs_the_default`), so the bar follows ``default.yaml`` when it moves
PLAIN, NATIVE = "student_11n_plain", "student_11n_ultralytics_distill_model"


def _terms(recipe: str) -> dict:
    """A distillation recipe's resolved terms and settings, without its description."""
    from yolo_distill.config import load_distill_recipe

    return {k: v for k, v in load_distill_recipe(recipe).to_dict().items() if k != "description"}


def runs_the_default(row, default_terms: dict | None = None) -> bool:
    """Whether a bench row trains with the shipped ``default`` recipe as it is now (its terms, however the row names
    the recipe) and otherwise as a user's default run does (no QAT, teacher in ``auto`` precision).

    Args:
        row: a bench row.
        default_terms: ``default``'s resolved terms when the caller has them already (read once per bench).
    """
    if not row.teacher or row.distill_model or row.qat or row.teacher_precision != "auto":
        return False
    return _terms(row.recipe) == (default_terms if default_terms is not None else _terms("default"))


def finished_rows(recipe: str, root: str = "bench") -> dict[str, list[dict]]:
    """Every finished row of a bench (results in ``ROOT/<recipe stem>/``) and its seeds:
    ``{row name: [result with "seed" and "taught" (trained with a teacher), ...]}``.

    Seeds beyond the recipe's ``repeats`` count too: those a run with ``repeats=N`` caches (or, where a row's
    teacher is a path, ``seed=N repeats=1``, which gives the same keys). They are looked for one more repeat at a
    time, under the keys such a run would use, until a repeat finds nothing new; a seed found once is not counted
    again under another repeat count's key (a row with its own ``repeats:`` keeps its teacher's key of that count).
    """
    spec = load_bench_recipe(recipe)
    settings = {"data": "shapes", **spec.settings}
    results = cache.load(Path(root) / spec.path.stem / "results.json")
    rows: dict[str, list[dict]] = {}
    seen: set[tuple[str, int]] = set()
    default_terms = _terms("default")
    reps = int(spec.repeats)
    while True:
        new = 0
        for row, s, key, _ in plan_rows(spec, settings, settings, reps):
            if key in results and (row.name, s["seed"]) not in seen:
                seen.add((row.name, s["seed"]))
                new += 1
                meta = {"seed": s["seed"], "taught": bool(row.teacher or row.distill_model),
                        "default": runs_the_default(row, default_terms)}  # fmt: skip
                rows.setdefault(row.name, []).append({**results[key], **meta})
        if not new:
            return rows
        reps += 1


def _stats(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _students(rows: dict[str, list[dict]], suffix: str) -> dict[str, list[dict]]:
    """Student rows by name; with ``suffix``, a row ``NAME+suffix`` stands for ``NAME`` (e.g. the students of another
    teacher in the same bench), and of the rows without it only those trained without a teacher (plain) are kept."""
    out = {}
    for name, rs in rows.items():
        if not name.startswith("student_"):
            continue
        if suffix and name.endswith(suffix):
            out[name[: -len(suffix)]] = rs
        elif not suffix or not rs[0]["taught"]:
            out.setdefault(name, rs)
    return out


def kd_verdict(benches: list[str] | str, root: str = "bench") -> str:
    """The markdown table and verdict of each bench in ``benches``.

    Args:
        benches: bench recipe names, each optionally ``NAME:SUFFIX`` to read the rows ``student_*SUFFIX`` as the
            students (``cpu-small:_long_teacher``: the students of the converged teacher). A comma-separated string
            is split.
        root: the folder holding each bench's results (``ROOT/<recipe stem>/results.json``).

    Returns:
        Markdown: per bench, one line per student row (seeds; best.pt and last.pt mean ± spread; last / best) and
        the bar's five checks for the default recipe (``provisional`` where a row has fewer than 2 seeds); then,
        with more than one bench, the gains over plain across them (:func:`_across`).
    """
    if isinstance(benches, str):
        benches = [b.strip() for b in benches.split(",") if b.strip()]
    lines = []
    per_bench: dict[str, dict[str, tuple[float, float | None, int]]] = {}
    for bench in benches:
        name, _, suffix = str(bench).partition(":")
        students = _students(finished_rows(name, root), suffix)
        lines += [f"## {bench}", "", "| row | seeds | best.pt mAP50-95 | last.pt mAP50-95 | last / best |",
                  "|---|---|---|---|---|"]  # fmt: skip
        means: dict[str, tuple[float, float | None, int]] = {}
        defaults = sorted((r for r, rs in students.items() if rs[0].get("default")), key=lambda r: -len(students[r]))
        for row, rs in sorted(students.items()):
            best = [r["map50_95"] for r in rs]
            last = [r["last_map50_95"] for r in rs if r.get("last_map50_95") is not None]
            (bm, bs), lm = _stats(best), _stats(last) if last else None
            if row == PLAIN or rs[0]["taught"]:
                means[row] = (bm, lm[0] if lm else None, len(rs))
            last_txt = f"{lm[0]:.4f} ± {lm[1]:.4f}" if lm else "-"
            ratio = f"{lm[0] / bm:.2f}" if lm and bm > 0 else "-"
            lines.append(f"| {row} | {len(rs)} | {bm:.4f} ± {bs:.4f} | {last_txt} | {ratio} |")
        lines += ["", *_bar(means, defaults[0] if defaults else None), ""]
        per_bench[bench] = means
    if len(per_bench) > 1:
        lines += _across(per_bench)
    return "\n".join(lines)


def _across(per_bench: dict[str, dict[str, tuple[float, float | None, int]]]) -> list[str]:
    """One line per distillation row (and native): its gain over plain's mean in each bench, in % of plain, on
    best.pt / last.pt with its seeds, and the worst of those gains. Rows judged in more benches first (a row that ran
    in one regime has not shown that it never hurts), then best worst first."""
    gains: dict[str, dict[str, str]] = {}
    worst: dict[str, float] = {}
    for bench, means in per_bench.items():
        if PLAIN not in means:
            continue
        pb, pl, _ = means[PLAIN]
        for row, (bm, lm, n) in means.items():
            if row == PLAIN or pb <= 0:
                continue
            g = [100 * (bm / pb - 1)] + ([100 * (lm / pl - 1)] if lm is not None and pl else [])
            gains.setdefault(row, {})[bench] = " / ".join(f"{x:+.1f} %" for x in g) + f" ({n})"
            worst[row] = min([worst.get(row, float("inf")), *g])
    if not gains:
        return []
    benches = [b for b in per_bench if PLAIN in per_bench[b]]
    out = ["## Across regimes: gain over plain", "",
           "Each cell: mean best.pt / last.pt mAP50-95 over plain's, in % (seeds). Worst: the smallest gain anywhere; "
           "the recipe that never hurts has the highest worst. A row missing from a bench is not judged there: its "
           "worst names how many benches it is judged in, and rows judged in fewer benches rank below.", "",
           "| row | " + " | ".join(benches) + " | worst |", "|---|" + "---|" * (len(benches) + 1)]  # fmt: skip
    for row in sorted(gains, key=lambda r: (-len(gains[r]), -worst[r])):
        cells = [gains[row].get(b, "-") for b in benches]
        part = "" if len(gains[row]) == len(benches) else f" (in {len(gains[row])} of {len(benches)})"
        out.append(f"| {row} | " + " | ".join(cells) + f" | {worst[row]:+.1f} %{part} |")
    return [*out, ""]


def _bar(means: dict[str, tuple[float, float | None, int]], default: str | None) -> list[str]:
    """The five checks of the bar for ``default`` (the row that runs the default recipe), each ``yes``, ``NO`` or
    why it cannot be judged yet."""
    missing = [r for r in (PLAIN, NATIVE) if r not in means] + ([] if default else ["row with the default recipe"])
    if missing:
        return [f"Bar: not judged yet: no finished {', '.join(missing)}."]
    few = [r for r in (default, PLAIN, NATIVE) if means[r][2] < 2]
    (db, dl, _), (pb, pl, _), (nb, nl, _) = means[default], means[PLAIN], means[NATIVE]

    def check(what: str, a: float | None, b: float | None) -> str:
        if a is None or b is None:
            return f"- {what}: no last.pt measured"
        return f"- {what}: {'yes' if a >= b else 'NO'} ({a:.4f} vs {b:.4f})"

    out = [
        f"Bar for `default` ({default})" + (f" (provisional: fewer than 2 seeds of {', '.join(few)})" if few else "")
        + ":",
        check("best.pt >= plain", db, pb),
        check("best.pt >= native", db, nb),
        check("last.pt >= plain", dl, pl),
        check("last.pt >= native", dl, nl),
        check("last.pt >= 0.9 x best.pt", dl, 0.9 * db),
    ]
    return out
