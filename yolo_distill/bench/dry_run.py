"""``bench dry_run=True``: resolve every row of a recipe (paths, devices, references, recipes, keys) without
training or writing anything, so a recipe that cannot run fails in seconds, not after hours of training.

Problems of the recipe itself (an unknown model YAML, distillation recipe, pruning method, or a device string that
is not one) raise; inputs that are simply not on this machine (a user's checkpoint, a public dataset, a GPU) are
listed as missing, since the recipe is right and the machine that runs it will have them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from yolo_distill.bench.spec import BenchRecipe, Row, is_ref
from yolo_distill.log import LOGGER, table


def _device(device: Any, problems: list[str], missing: list[str]) -> str:
    import torch

    from yolo_distill.bench.step_cost import torch_device

    try:
        dev = torch_device(device)
    except (RuntimeError, ValueError) as e:
        problems.append(f"device={device!r}: {e}; use cpu, 0 or 0,1,2,3")
        return str(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        missing.append(f"device={device}: needs CUDA, not available on this machine")
    return str(dev)


def _model(v: str | None, where: str, problems: list[str], missing: list[str]) -> None:
    """A model field that is not a reference: a model YAML Ultralytics knows, or a checkpoint on disk."""
    if v is None or is_ref(v):
        return
    if str(v).endswith((".yaml", ".yml")):
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(v)
        except FileNotFoundError:
            problems.append(f"{where}={v}: no such model YAML (Ultralytics' own, e.g. yolo11n.yaml, or a path)")
    elif not Path(v).is_file():
        missing.append(f"{where}={v}: checkpoint not on disk (yolo_distill never downloads weights)")


def _data(data: str, missing: list[str]) -> str:
    from yolo_distill.data.builtin import BUILTIN, resolve_data

    if data in BUILTIN:
        return f"{data} (built-in, generated on first use)"
    try:
        resolved = resolve_data(data)
    except FileNotFoundError as e:
        missing.append(f"data={data}: {e}")
        return data
    if Path(resolved).name != resolved and not Path(resolved).is_file():
        missing.append(f"data={data}: no such data YAML")
    return resolved


def _row_problems(row: Row, problems: list[str], missing: list[str]) -> None:
    from yolo_distill.compress.pruner import SCOPES
    from yolo_distill.config import load_distill_recipe
    from yolo_distill.registry import ALLOCATIONS, IMPORTANCE

    for f in ("model", "from", "teacher", "distill_model"):
        _model(row.spec.get(f), f"{row.name}: {f}", problems, missing)
    if row.teacher:
        try:
            load_distill_recipe(row.recipe)
        except (FileNotFoundError, ValueError, KeyError) as e:
            problems.append(f"{row.name}: recipe={row.recipe}: {e}")
    if row.kind == "carve":
        _model(row.target, f"{row.name}: target", problems, missing)
    if row.kind == "prune":
        for key, value, known in (("method", row.method, IMPORTANCE.names()), ("scope", row.scope, list(SCOPES)),
                                  ("allocation", row.allocation, ALLOCATIONS.names())):  # fmt: skip
            if value not in known:
                problems.append(f"{row.name}: {key}={value!r} is not one of {known}")


def dry_run(spec: BenchRecipe, settings: dict, make_plan: Callable[[], list]) -> dict[str, Any]:
    """Check every row, then resolve the runner's plan (``make_plan``: rows, seeds, cache keys) and report it.

    Raises:
        ValueError: listing every problem of the recipe (before any key is computed).

    Returns:
        ``{"rows": [{name, seed, kind, key, starts_from, teacher}], "device": ..., "data": ..., "missing": [...]}``.
    """
    problems: list[str] = []
    missing: list[str] = []
    device = _device(settings.get("device", "cpu"), problems, missing)
    data = _data(str(settings.get("data", "shapes")), missing)
    for row in spec.rows:
        _row_problems(row, problems, missing)
    if problems:
        raise ValueError(f"{spec.path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    rows = [{"name": row.name, "seed": s["seed"], "kind": row.kind, "key": k, "starts_from": row.start,
             "teacher": row.teacher or row.distill_model} for row, s, k, _ in make_plan()]  # fmt: skip
    cells = [[r["name"], r["seed"], r["kind"], r["starts_from"], r["teacher"], r["key"]] for r in rows]
    LOGGER.info(
        "bench %s (dry run): %d row-seeds, device %s, data %s\n%s%s",
        spec.path.name, len(rows), device, data,
        table(cells, ["row", "seed", "kind", "starts from", "teacher", "cache key"]),
        "".join(f"\nmissing here: {m}" for m in dict.fromkeys(missing)),
    )  # fmt: skip
    return {"rows": rows, "device": device, "data": data, "missing": list(dict.fromkeys(missing))}
