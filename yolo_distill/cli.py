"""``yolo-distill <command> key=value ...``: parse, validate, dispatch. No logic of its own."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from yolo_distill.config import shipped_recipes

USAGE = """usage: yolo-distill <command> key=value ... (or: yolo-distill <command> --help)

commands:
  train    train a student, with distillation when teacher= is given
  prune    structured channel pruning of a detection checkpoint
  export   ONNX export with PyTorch parity check, optional INT8, and latency
  bench    run a benchmark recipe and write its report
  demo     every stage on the built-in dataset, with a summary table
  data     generate the built-in dataset or convert COCO-JSON / VOC-XML labels
"""


def parse_kv(argv: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are read as YAML scalars, as Ultralytics does."""
    out: dict[str, Any] = {}
    for a in argv:
        if "=" not in a:
            raise SystemExit(f"yolo-distill: argument {a!r} is not key=value")
        k, v = a.split("=", 1)
        if not k:
            raise SystemExit(f"yolo-distill: argument {a!r} has no key")
        try:
            out[k] = yaml.safe_load(v) if v != "" else None
        except yaml.YAMLError:
            out[k] = v
        if isinstance(out[k], (dict,)):
            out[k] = v
    return out


def _check_keys(cmd: str, given: dict[str, Any], valid: set[str]) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise SystemExit(f"yolo-distill {cmd}: unknown key(s) {unknown}.\nvalid keys: {', '.join(sorted(valid))}")


# -- commands -------------------------------------------------------------------------------------------------------
def _train(kv: dict[str, Any]) -> None:
    from ultralytics.utils import DEFAULT_CFG_DICT

    from yolo_distill.api import distill
    from yolo_distill.distill.trainer import EXTRA_KEYS

    _check_keys("train", kv, set(DEFAULT_CFG_DICT) | set(EXTRA_KEYS))
    model = kv.pop("model", None)
    data = kv.pop("data", None)
    if not model or not data:
        raise SystemExit("yolo-distill train: model= (the student, *.yaml or *.pt) and data= are required")
    trainer = distill(model=model, data=data, **kv)
    print(f"best checkpoint: {trainer.best}")


def _prune(kv: dict[str, Any]) -> None:
    from yolo_distill.prune.pruner import PRUNE_KEYS, prune_checkpoint

    if "recipe" in kv:  # iterative pruning with fine-tuning between steps
        from dataclasses import fields

        from yolo_distill.prune.iterative import IterativeRecipe, iterative_prune

        _check_keys("prune", kv, {"recipe", "model", "data", "out"} | {f.name for f in fields(IterativeRecipe)})
        iterative_prune(**kv)
        return
    _check_keys("prune", kv, set(PRUNE_KEYS))
    prune_checkpoint(**kv)


def _export(kv: dict[str, Any]) -> None:
    from yolo_distill.export.onnx import EXPORT_KEYS, export_checkpoint

    _check_keys("export", kv, set(EXPORT_KEYS))
    export_checkpoint(**kv)


def _bench(kv: dict[str, Any]) -> None:
    from yolo_distill.bench.runner import run_bench

    _check_keys("bench", kv, {"recipe", "out", "repeats", "seed", "device", "report_only", "only", "jobs"})
    if "recipe" not in kv:
        raise SystemExit("yolo-distill bench: recipe= (a name under configs/bench or a YAML path) is required")
    try:
        run_bench(**kv)
    except RuntimeError as e:  # jobs=N: rows that failed, each with its log; the report holds the others
        raise SystemExit(f"yolo-distill bench: {e}") from None


def _demo(kv: dict[str, Any]) -> None:
    from yolo_distill.demo import DEMO_KEYS, run_demo

    _check_keys("demo", kv, set(DEMO_KEYS))
    run_demo(**kv)


def _data(kv: dict[str, Any]) -> None:
    action = kv.pop("action", "generate")
    if action == "generate":
        from dataclasses import fields

        from yolo_distill.data.shapes import ShapesSpec, generate_shapes

        spec_keys = {f.name for f in fields(ShapesSpec)}
        _check_keys("data", kv, spec_keys | {"out", "overwrite"})
        out = kv.pop("out", "datasets/shapes")
        overwrite = bool(kv.pop("overwrite", False))
        print(generate_shapes(out, ShapesSpec(**kv), overwrite=overwrite))
    elif action in ("coco", "voc"):
        _check_keys("data", kv, {"train", "val", "train_images", "val_images", "out", "names"})
        need = [k for k in ("train", "train_images", "out") if k not in kv]
        if need:
            raise SystemExit(f"yolo-distill data action={action}: missing {need}")
        splits = {"train": (kv["train"], kv["train_images"])}
        if "val" in kv:
            splits["val"] = (kv["val"], kv.get("val_images", kv["train_images"]))
        if action == "coco":
            from yolo_distill.data.convert import coco_to_yolo

            print(coco_to_yolo(splits, kv["out"]))
        else:
            from yolo_distill.data.convert import voc_to_yolo

            names = kv.get("names")
            print(voc_to_yolo(splits, kv["out"], names=names.split(",") if isinstance(names, str) else names))
    elif action == "check":
        from yolo_distill.data.checks import check_detection_dataset

        _check_keys("data", kv, {"data"})
        d = check_detection_dataset(kv["data"])
        print(f"ok: {kv['data']} ({d['nc']} classes)")
    else:
        raise SystemExit("yolo-distill data: action= must be generate, coco, voc or check")


@dataclass(frozen=True)
class Command:
    run: Callable[[dict[str, Any]], None]
    help: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        _train,
        "yolo-distill train model=STUDENT.yaml|.pt data=DATA.yaml|shapes [teacher=TEACHER.pt] [recipe=NAME|PATH.yaml]\n"
        "                   [sparsity=0.0] [any Ultralytics train key: epochs= imgsz= batch= project= name= ...]\n"
        f"Recipes: configs/distill/*.yaml ({', '.join(shipped_recipes('distill'))}).\n"
        "A *.pt student (e.g. pruned.pt) is trained as the module it is: its pruned shapes are kept.",
    ),
    "prune": Command(
        _prune,
        "yolo-distill prune model=CKPT.pt (ratio=0.5 | gflops=G) [method=l1|l2|bn|taylor] [scope=backbone|all]\n"
        "                   [data=DATA.yaml] [out=PRUNED.pt] [round_to=8] [max_layer_ratio=0.9]\n"
        "                   [protect=head,3,model.4] [allocation=uniform|global|sensitivity max_drop=0.02] [val=True]\n"
        "                   [imgsz=640]\n"
        "Writes PRUNED.pt (a stock Ultralytics checkpoint) and prune_report.json beside it.\n"
        "yolo-distill prune model=CKPT.pt data=DATA.yaml recipe=iterative|oneshot|PATH.yaml [out=..] [steps=..]\n"
        "                   iterative pruning (configs/prune/): prune, fine-tune with KD from CKPT, repeat.",
    ),
    "export": Command(
        _export,
        "yolo-distill export model=CKPT.pt [format=onnx] [imgsz=640] [int8=False data=DATA.yaml] [half=False]\n"
        "                    [dynamic=False] [opset=None] [simplify=True] [threads=2] [runs=50] [overwrite=False]\n"
        "                    [calib_method=minmax|percentile|entropy] [calib_images=64]\n"
        "Writes CKPT.onnx (CKPT_int8.onnx) and CKPT_export.json with parity and latency beside the checkpoint.",
    ),
    "bench": Command(
        _bench,
        "yolo-distill bench recipe=cpu-small|PATH.yaml [out=bench/NAME] [repeats=1] [seed=0] [report_only=False]\n"
        "                   [only=ROW,ROW] [jobs=1]\n"
        "Rows already finished (same spec, settings and version) are skipped; a killed bench continues.\n"
        "jobs=N runs N rows at once, each in its own process (logs in OUT/logs/); on a CPU each row trains with\n"
        "cpu_count-1 threads (at most 8), so jobs=2 uses both cores of a 2-core machine.\n"
        "A row may set its own repeats (more seeds for the rows whose difference matters).",
    ),
    "demo": Command(
        _demo,
        "yolo-distill demo [epochs=5] [imgsz=256] [project=runs/demo] [teacher=PATH|train] [data=shapes]\n"
        "All stages on the built-in dataset with the shipped YOLO11s teacher (teacher=train trains one).",
    ),
    "data": Command(
        _data,
        "yolo-distill data [action=generate] out=datasets/shapes [n_train=400 n_val=100 imgsz=320 seed=0 ...]\n"
        "yolo-distill data action=coco train=instances_train.json train_images=DIR [val=.. val_images=..] out=DIR\n"
        "yolo-distill data action=voc  train=XML_DIR train_images=DIR [val=.. val_images=..] [names=a,b] out=DIR\n"
        "yolo-distill data action=check data=DATA.yaml",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``yolo-distill`` console script."""
    import yolo_distill  # noqa: F401  (offline environment first)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"yolo-distill: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        print(COMMANDS[cmd].help)
        return 0
    try:
        COMMANDS[cmd].run(parse_kv(rest))
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"yolo-distill {cmd}: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
