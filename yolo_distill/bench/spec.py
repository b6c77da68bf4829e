"""Bench recipes as data: ``configs/bench/*.yaml`` into :class:`BenchRecipe` and :class:`Row`; unknown keys raise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_distill.config import find_recipe, load_yaml
from yolo_distill.deploy.latency import RUNTIMES
from yolo_distill.distill.teacher import TEACHER_PRECISIONS
from yolo_distill.registry import UnknownName

ROW_KINDS = ("train", "prune", "carve", "lowrank", "export")
SETTINGS = ("data", "imgsz", "epochs", "batch", "seed", "export_imgsz", "device")
REF_FIELDS = ("teacher", "from", "model", "distill_model")  # fields that may name an earlier row as "@row"


def is_ref(v: Any) -> bool:
    """Whether a row field names an earlier row (``"@row"``)."""
    return isinstance(v, str) and v.startswith("@")


@dataclass(frozen=True)
class Row:
    """One bench row.

    Attributes:
        name: the row's label (report, run folder); not part of what it computes.
        kind: ``train`` (a student or a teacher), ``prune`` (prune ``from``, then fine-tune), ``carve`` (carve
            ``target`` out of ``from``, then fine-tune), ``lowrank`` (factorize ``from``, then fine-tune) or
            ``export`` (export ``from``, no training with ``epochs: 0``).
        model: the model to train (``*.yaml``, ``*.pt`` or ``@row``).
        source: the checkpoint a prune or export row starts from (``from:`` in YAML; ``@row`` or a path).
        teacher: the KD teacher (``@row`` or a path); absent or null = no distillation.
        recipe: the distillation recipe.
        distill_model: Ultralytics' native feature distillation from this model instead of ours (the baseline).
        epochs: training epochs (default: the bench's); 0 = no training.
        repeats: seeds of this row (default: the bench's).
        ratio, gflops, gflops_ratio, protect, method, scope, allocation: pruning (``prune`` rows).
        int8: also export an INT8 ONNX model.
        target: for ``carve`` rows, the model YAML carved out of ``from`` (e.g. ``yolo11n.yaml``).
        granularity, n, m: ``prune`` rows: ``filter`` (channels) or zeros in dense weights (``kernel``, ``vector``,
            ``weight``, ``nm`` with ``n`` of ``m``); ``ratio`` is then the sparsity.
        energy, rank: ``lowrank`` rows (or ``gflops_ratio``).
        format: the runtimes a row's export measures: ``onnx`` (default) or ``all`` (every runtime x precision).
        latency, runtime, threads: ``prune`` rows: prune to a latency measured on ``runtime`` (``onnxruntime`` or
            ``openvino``) with ``threads`` threads at the bench's imgsz: milliseconds, or ``"0.5x"`` of the source's.
        qat: ``train`` rows: quantization-aware training (INT8 fake quantization, KD from ``teacher``).
        teacher_precision: how the frozen teacher runs (the trainer's ``teacher_precision``: ``auto``, ``fp32``,
            ``bf16``, ``fp16``).
        spec: the row's keys exactly as written: what the cache key is made of.
    """

    name: str
    kind: str
    model: str | None = None
    source: str | None = None
    teacher: str | None = None
    recipe: str = "default"
    distill_model: str | None = None
    epochs: int | None = None
    repeats: int | None = None
    ratio: float | None = None
    gflops: float | None = None
    gflops_ratio: float | None = None
    protect: Any = None
    method: str = "l1"
    scope: str = "all"
    allocation: str = "uniform"
    int8: bool = False
    target: str | None = None
    granularity: str = "filter"
    n: int = 2
    m: int = 4
    energy: float | None = None
    rank: int | None = None
    format: str = "onnx"
    latency: float | str | None = None
    runtime: str = "onnxruntime"
    threads: int = 1
    qat: bool = False
    teacher_precision: str = "auto"
    spec: dict = field(default_factory=dict, compare=False, repr=False)

    def refs(self) -> list[str]:
        """The names of the rows this one builds on (its ``@row`` references)."""
        return [v[1:] for v in (self.spec.get(f) for f in REF_FIELDS) if is_ref(v)]

    @property
    def start(self) -> str | None:
        """The model or checkpoint the row starts from (``model`` or ``from``)."""
        return self.model or self.source


_ROW_KEYS = {f.name for f in dataclasses.fields(Row)} - {"spec", "source"} | {"from"}


@dataclass
class BenchRecipe:
    """A bench recipe: settings shared by every row, and the rows.

    Attributes:
        path: the recipe file.
        settings: ``data``, ``imgsz``, ``epochs``, ``batch``, ``seed``, ``export_imgsz``, ``device`` as given.
        rows: the rows, in order (a row may refer only to rows above it).
        repeats: seeds of every row (a row may set its own).
        description: free text.
    """

    path: Path
    settings: dict[str, Any]
    rows: list[Row]
    repeats: int = 1
    description: str = ""

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        return next(r for r in self.rows if r.name == name)


def _check_int(where: str, key: str, v: Any, low: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{where}: {key} must be an integer >= {low}, got {v!r}")


def parse_row(raw: Any, where: str, defined: set[str]) -> Row:
    """Validate one row mapping and build its :class:`Row`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a row must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - _ROW_KEYS)
    if unknown:
        raise UnknownName(f"{where}: unknown key(s) {unknown}; valid row keys: {sorted(_ROW_KEYS)}")
    if raw.get("kind") not in ROW_KINDS or not isinstance(raw.get("name"), str):
        raise ValueError(f"{where}: a row needs a name and kind in {ROW_KINDS}, got {raw!r}")
    where = f"{where} ({raw['name']})"
    if "repeats" in raw:
        _check_int(where, "repeats", raw["repeats"], 1)
    if "epochs" in raw:
        _check_int(where, "epochs", raw["epochs"], 0)
    for k in ("ratio", "gflops_ratio"):
        v = raw.get(k)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1):
            raise ValueError(f"{where}: {k} must be a number in (0, 1), got {v!r}")
    if raw.get("gflops") is not None and not (isinstance(raw["gflops"], (int, float)) and raw["gflops"] > 0):
        raise ValueError(f"{where}: gflops must be a number > 0, got {raw['gflops']!r}")
    for k in ("int8", "qat"):
        if k in raw and not isinstance(raw[k], bool):
            raise ValueError(f"{where}: {k} must be true or false, got {raw[k]!r}")
    if raw.get("qat") and raw["kind"] != "train":
        raise ValueError(f"{where}: qat applies to train rows (kind: train), not {raw['kind']}")
    if raw.get("latency") is not None and raw["kind"] != "prune":
        raise ValueError(f"{where}: latency applies to prune rows (kind: prune), not {raw['kind']}")
    if "runtime" in raw and raw["runtime"] not in RUNTIMES:
        raise ValueError(f"{where}: runtime must be one of {', '.join(RUNTIMES)}, got {raw['runtime']!r}")
    if "teacher_precision" in raw:
        if raw["teacher_precision"] not in TEACHER_PRECISIONS:
            raise ValueError(f"{where}: teacher_precision must be one of {', '.join(TEACHER_PRECISIONS)}, got "
                             f"{raw['teacher_precision']!r}")
    if raw["kind"] == "train" and not raw.get("model"):
        raise ValueError(f"{where}: a train row needs model= (a *.yaml, a *.pt or @row)")
    if raw["kind"] == "carve" and not str(raw.get("target", "")).endswith((".yaml", ".yml")):
        raise ValueError(f"{where}: a carve row needs target= (a model YAML such as yolo11n.yaml)")
    if "granularity" in raw and raw["granularity"] not in ("filter", "kernel", "vector", "weight", "nm"):
        raise ValueError(f"{where}: granularity must be filter, kernel, vector, weight or nm, got "
                         f"{raw['granularity']!r}")
    if "format" in raw and raw["format"] not in ("onnx", "all"):
        raise ValueError(f"{where}: format must be onnx or all (every runtime), got {raw['format']!r}")
    for k in ("n", "m", "rank", "threads"):
        if k in raw:
            _check_int(where, k, raw[k], 1)
    e = raw.get("energy")
    if e is not None and (not isinstance(e, (int, float)) or isinstance(e, bool) or not 0 < e <= 1):
        raise ValueError(f"{where}: energy must be a number in (0, 1], got {e!r}")
    if raw["kind"] in ("prune", "carve", "lowrank", "export") and not raw.get("from"):
        raise ValueError(f"{where}: a {raw['kind']} row needs from= (a checkpoint path or @row)")
    for f in REF_FIELDS:
        v = raw.get(f)
        if is_ref(v) and v[1:] not in defined:
            raise ValueError(f"{where}: refers to {v} before it is defined")
    values = {k: v for k, v in raw.items() if k != "from" and v is not None}
    return Row(**values, source=raw.get("from"), spec=dict(raw))


def parse_recipe(data: dict[str, Any], path: Path) -> BenchRecipe:
    """Validate a bench recipe mapping (settings, rows) and build it."""
    where = str(path)
    unknown = sorted(set(data) - set(SETTINGS) - {"rows", "description", "repeats"})
    if unknown:
        raise UnknownName(f"{where}: unknown key(s) {unknown}; valid: {sorted(SETTINGS + ('rows', 'repeats'))}")
    if "repeats" in data:
        _check_int(where, "repeats", data["repeats"], 1)
    rows: list[Row] = []
    for i, raw in enumerate(data.get("rows") or []):
        row = parse_row(raw, f"{where}: rows[{i}]", {r.name for r in rows})
        if any(r.name == row.name for r in rows):
            raise ValueError(f"{where}: rows[{i}]: a row named {row.name!r} already exists")
        rows.append(row)
    settings = {k: data[k] for k in SETTINGS if k in data}
    return BenchRecipe(Path(path), settings, rows, int(data.get("repeats", 1)), str(data.get("description", "")))


def load_bench_recipe(recipe: str | Path) -> BenchRecipe:
    """Load and validate a bench recipe by shipped name (``configs/bench``) or path."""
    path = find_recipe(recipe, "bench")
    return parse_recipe(load_yaml(path), path)
