"""The bench cache: a result is identified by what its row computes, and ``results.json`` is merged on write.

A row is recomputed only when what it computes changes: its spec (without its name), the bench settings, the
yolo_distill version, the recipe it distils with (contents, not file name or description), or a row it builds on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from yolo_distill.bench.spec import REF_FIELDS, Row, is_ref
from yolo_distill.checkpoints import write_text_atomic
from yolo_distill.config import load_distill_recipe, load_yaml


def key(row: Row, settings: dict, ref_keys: dict[str, str]) -> str | None:
    """Cache key: what the row computes, so a result is reused exactly when it would come out the same.

    That is the row's spec as written, without its name (a label: two rows that compute the same thing share one
    result), the bench settings, the package version, for KD rows the recipe's contents (not its file name or
    description), and for each ``@row`` reference the key of the referenced result, so a row built on a row that
    was recomputed is recomputed too. None when a referenced row has no result yet.
    """
    from yolo_distill import __version__

    spec = {k: v for k, v in row.spec.items() if k not in ("name", "repeats", "recipe")}
    for f in REF_FIELDS:
        v = row.spec.get(f)
        if is_ref(v):
            if v[1:] not in ref_keys:
                return None
            spec[f] = "@" + ref_keys[v[1:]]
    if row.spec.get("teacher"):  # editing a recipe file must rerun the rows that use it; renaming it must not
        resolved = load_distill_recipe(row.spec.get("recipe", "default")).to_dict()
        resolved.pop("description")  # free text
        spec["recipe_resolved"] = resolved
    blob = json.dumps({"row": spec, "settings": settings, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load(res_file: Path) -> dict[str, dict]:
    """Every finished result in ``results.json`` (empty when there is none yet).

    A checkpoint inside the bench folder is stored relative to it (so a moved or cloned bench folder keeps its
    results usable) and returned as an absolute path.
    """
    cache = json.loads(res_file.read_text()) if res_file.exists() else {}
    root = res_file.parent.resolve()
    for entry in cache.values():
        ck = entry.get("checkpoint")
        if ck and not Path(ck).is_absolute():
            entry["checkpoint"] = str(root / ck)
    return cache


def _relative(entry: dict, root: Path) -> dict:
    ck = entry.get("checkpoint")
    if ck and Path(ck).is_absolute() and Path(ck).resolve().is_relative_to(root):
        return {**entry, "checkpoint": Path(ck).resolve().relative_to(root).as_posix()}
    return entry


def save(res_file: Path, k: str, entry: dict) -> dict[str, dict]:
    """Write one finished row into ``results.json`` and return the whole cache.

    Reads the file again first, so rows that another bench process (``only=`` runs side by side) finished since this
    one started are kept, never overwritten; the write goes through a temporary file and a rename, so a kill
    mid-write leaves the previous file intact.
    """
    cache = load(res_file)
    cache[k] = entry
    root = res_file.parent.resolve()
    stored = {key_: _relative(e, root) for key_, e in cache.items()}
    write_text_atomic(res_file, json.dumps(stored, indent=2))
    return cache


def usable_checkpoint(path: str | Path) -> bool:
    """Whether a cached row's checkpoint can stand for its result: the file is there and is not a training run's
    mid-run save.

    Ultralytics writes best.pt and last.pt after every epoch with the optimizer's state and the epoch, and strips both
    (optimizer None, epoch -1) only when the run ends. A rerun of a cached row that was killed (its first epochs
    done) leaves such a file where the cached result's checkpoint was; a row built on it would distil from or prune
    a model of a few epochs while the report shows the finished row's numbers (a regime (d) student distilled from a
    1-epoch teacher ended at 0.0 mAP). Files that are not Ultralytics training checkpoints count as usable.
    """
    if not Path(path).is_file():
        return False
    ck = read_checkpoint(path)  # None: not a torch zip file (a stub, another format): not ours to judge
    return ck is None or not (ck.get("optimizer") is not None and int(ck.get("epoch", -1)) >= 0)


def read_checkpoint(path: str | Path) -> dict | None:
    """The dict a torch checkpoint file holds (memory-mapped), or None when there is none to read: no file, a torn
    file of a killed run, another format."""
    import torch

    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    return ck if isinstance(ck, dict) else None


def finished_run(run_dir: Path, epochs: int, seed: int | None = None) -> Path | None:
    """``best.pt`` of a run in ``run_dir`` that trained all ``epochs`` with ``seed`` (a bench killed after
    training), else None."""
    best, results, args = run_dir / "weights" / "best.pt", run_dir / "results.csv", run_dir / "args.yaml"
    if not (best.is_file() and results.is_file()):
        return None
    if seed is not None and (not args.is_file() or (load_yaml(args).get("seed") != seed)):
        return None  # another seed's run: never reuse it as this one
    with open(results) as f:
        return best if len(list(csv.DictReader(f))) >= epochs else None
