"""``yolo-distill <command> key=value ...``: parse, check the keys, call :mod:`yolo_distill.api`, print.

The valid keys of each command are the parameters of the api function it calls (plus, where that function takes
``**kwargs``, the keys they accept: Ultralytics' train arguments, a pruning recipe's fields, the dataset spec), so
the CLI and the library cannot drift apart. This module imports nothing of the package but :mod:`yolo_distill.api`
(loaded only once a command runs, so ``--help`` is instant) and :mod:`yolo_distill.log`.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import yaml

from yolo_distill.log import to_stdout

USAGE = """usage: yolo-distill <command> key=value ... (or: yolo-distill <command> --help)

commands:
  train    train a student, with distillation when teacher= is given
  prune    channel pruning (to a ratio, GFLOPs or a measured latency) or fine-grained zeros of a checkpoint
  carve    cut a stock smaller model of the family (e.g. yolo11n) out of a trained checkpoint (e.g. a yolo11s)
  lowrank  factorize a checkpoint's convolutions into two thinner ones each (SVD / spatial SVD)
  export   ONNX / OpenVINO / NCNN / LiteRT export with PyTorch parity check, optional INT8, latency and mAP
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
    return out


class BadValue(Exception):
    """A key=value the command cannot take: reported as one line, exit code 2."""


#: what a value is expected to be, for the keys whose type alone does not say it
EXPECTED = {
    "gflops": "a number of GFLOPs (gflops=10.5) or a fraction of the source's (gflops=0.5x)",
    "protect": "layer indices, module names or head (protect=head,3,model.4)",
    "only": "row names (only=ROW or only=ROW,ROW)",
    "layer_ratios": "a mapping of layer index to ratio (layer_ratios={2: 0.5})",
}


def _describe(t: Any) -> str:
    args = [a for a in typing.get_args(t) if a is not type(None)] if _is_union(t) else [t]
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text", list: "a list [a,b]",
             dict: "a mapping {k: v}"}  # fmt: skip
    return " or ".join(dict.fromkeys(names.get(typing.get_origin(a) or a, str(a)) for a in args))


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _matches(v: Any, t: Any) -> bool:
    """Whether a parsed value fits annotation ``t`` (str takes any scalar: ``device=0``, ``name=1``)."""
    if t is Any:
        return True
    if _is_union(t):
        return any(_matches(v, a) for a in typing.get_args(t))
    t = typing.get_origin(t) or t
    if t is type(None):
        return v is None
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is str:
        return isinstance(v, (str, int, float)) and not isinstance(v, bool)
    return isinstance(v, t) if isinstance(t, type) else True


def check_values(fn: Callable, kv: dict[str, Any]) -> None:
    """Check each value against the type annotation of ``fn``'s parameter of that name.

    Raises:
        BadValue: naming the key, the value given and what is expected.
    """
    hints = typing.get_type_hints(fn)
    for k, v in kv.items():
        if k in hints and not _matches(v, hints[k]):
            raise BadValue(f"{k}={v!r} is not valid: expected {EXPECTED.get(k, _describe(hints[k]))}")


def keys_of(fn: Callable, extra: set[str] = frozenset()) -> set[str]:
    """The keyword parameters of ``fn`` (``**kwargs`` excluded), plus ``extra`` (what its ``**kwargs`` accept)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} | set(extra)


def _check_keys(cmd: str, given: dict[str, Any], valid: set[str]) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise SystemExit(f"yolo-distill {cmd}: unknown key(s) {unknown}.\nvalid keys: {', '.join(sorted(valid))}")


def _ultralytics_train_keys() -> set[str]:
    from ultralytics.utils import DEFAULT_CFG_DICT

    return set(DEFAULT_CFG_DICT)


# -- commands -------------------------------------------------------------------------------------------------------
def _train(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("train", kv, keys_of(api.train, _ultralytics_train_keys()))
    if not kv.get("model") or not kv.get("data"):
        raise BadValue("model= (the student, *.yaml or *.pt) and data= are required")
    check_values(api.train, kv)  # Ultralytics' own keys: checked once, by api.train (its check_cfg)
    trainer = api.train(**kv)
    print(f"best checkpoint: {trainer.best}")


def _prune(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    if "recipe" in kv:  # iterative pruning with fine-tuning between steps
        _check_keys("prune", kv, keys_of(api.iterative_prune, {f.name for f in fields(api.IterativeRecipe)}))
        check_values(api.iterative_prune, kv)
        check_values(api.IterativeRecipe, kv)
        api.iterative_prune(**kv)
        return
    _check_keys("prune", kv, keys_of(api.prune))
    if "model" not in kv:
        raise BadValue("model= (the checkpoint to prune, *.pt) is required")
    check_values(api.prune, kv)
    api.prune(**kv)


def _carve(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("carve", kv, keys_of(api.carve))
    if "model" not in kv or "target" not in kv:
        raise BadValue("model= (the trained checkpoint, *.pt) and target= (a smaller model YAML) are required")
    check_values(api.carve, kv)
    api.carve(**kv)


def _lowrank(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("lowrank", kv, keys_of(api.lowrank))
    if "model" not in kv:
        raise BadValue("model= (the checkpoint to factorize, *.pt) is required")
    check_values(api.lowrank, kv)
    api.lowrank(**kv)


def _export(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("export", kv, keys_of(api.export))
    if "model" not in kv:
        raise BadValue("model= (the checkpoint to export, *.pt) is required")
    check_values(api.export, kv)
    api.export(**kv)


def _bench(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("bench", kv, keys_of(api.run_bench))
    if "recipe" not in kv:
        raise BadValue("recipe= (a name under configs/bench or a YAML path) is required")
    check_values(api.run_bench, kv)
    try:
        api.run_bench(**kv)
    except RuntimeError as e:  # jobs=N: rows that failed, each with its log; the report holds the others
        raise SystemExit(f"yolo-distill bench: {e}") from None


def _demo(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    _check_keys("demo", kv, keys_of(api.run_demo))
    check_values(api.run_demo, kv)
    api.run_demo(**kv)


def _data(kv: dict[str, Any]) -> None:
    from yolo_distill import api

    action = kv.pop("action", "generate")
    if action == "generate":
        _check_keys("data", kv, {f.name for f in fields(api.ShapesSpec)} | {"out", "overwrite"})
        check_values(api.ShapesSpec, kv)
        out = kv.pop("out", "datasets/shapes")
        if not isinstance(out, str):
            raise BadValue(f"out={out!r} is not valid: expected a folder path")
        overwrite = kv.pop("overwrite", False)
        if not isinstance(overwrite, bool):
            raise BadValue(f"overwrite={overwrite!r} is not valid: expected true or false")
        print(api.generate_shapes(out, api.ShapesSpec(**kv), overwrite=overwrite))
    elif action in ("coco", "voc"):
        convert = api.coco_to_yolo if action == "coco" else api.voc_to_yolo
        _check_keys("data", kv, {"train", "val", "train_images", "val_images"} | keys_of(convert) - {"splits"})
        need = [k for k in ("train", "train_images", "out") if k not in kv]
        if need:
            raise BadValue(f"action={action} needs {need}")
        splits = {"train": (kv.pop("train"), kv.pop("train_images"))}
        if "val" in kv:
            splits["val"] = (kv.pop("val"), kv.pop("val_images", splits["train"][1]))
        kv.pop("val_images", None)
        if isinstance(kv.get("names"), str):
            kv["names"] = kv["names"].split(",")
        print(convert(splits, **kv))
    elif action == "check":
        _check_keys("data", kv, keys_of(api.check_dataset) - {"data_yaml", "max_errors"} | {"data"})
        if "data" not in kv:
            raise BadValue("action=check needs data= (a data YAML)")
        d = api.check_dataset(kv["data"])
        print(f"ok: {kv['data']} ({d['nc']} classes)")
    else:
        raise BadValue(f"action={action!r} is not valid: expected generate, coco, voc or check")


@dataclass(frozen=True)
class Command:
    run: Callable[[dict[str, Any]], None]
    help: str | Callable[[], str]

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help


def _train_help() -> str:
    from yolo_distill import api

    return (
        "yolo-distill train model=STUDENT.yaml|.pt data=DATA.yaml|shapes [teacher=TEACHER.pt] [recipe=NAME|PATH.yaml]\n"
        "                   [sparsity=0.0] [teacher_precision=auto|fp32|bf16|fp16] [threads=N]\n"
        "                   [any Ultralytics train key: epochs= imgsz= batch= project= name= ...]\n"
        f"Recipes: configs/distill/*.yaml ({', '.join(api.recipes('distill'))}).\n"
        "A *.pt student (e.g. pruned.pt) is trained as the module it is: its pruned shapes are kept.\n"
        "teacher_precision: auto = fp16 on a GPU, fp32 elsewhere; bf16 = a cheaper teacher forward on CPUs with AMX\n"
        "or AVX512-BF16 (KD terms within bf16 rounding of fp32).\n"
        "threads: CPU threads for this training (default: Ultralytics' cpu_count-1, at most 8); a lone run on a\n"
        "2-core machine trains faster with threads=2."
    )


COMMANDS: dict[str, Command] = {
    "train": Command(_train, _train_help),
    "prune": Command(
        _prune,
        "yolo-distill prune model=CKPT.pt (ratio=0.5 | gflops=G) [method=l1|l2|bn|taylor] [scope=backbone|all]\n"
        "                   [data=DATA.yaml] [out=PRUNED.pt] [round_to=8] [max_layer_ratio=0.9]\n"
        "                   [protect=head,3,model.4] [allocation=uniform|global|sensitivity max_drop=0.02] [val=True]\n"
        "                   [imgsz=640]\n"
        "yolo-distill prune model=CKPT.pt latency=25ms|0.5x [runtime=onnxruntime|openvino] [threads=1] imgsz=640\n"
        "                   per-layer widths chosen against latencies measured on that runtime, on this machine\n"
        "yolo-distill prune model=CKPT.pt granularity=kernel|vector|weight ratio=0.5 | granularity=nm n=2 m=4\n"
        "                   zeros inside dense weights (same shapes; kept at zero when fine-tuned with train)\n"
        "Writes PRUNED.pt (a stock Ultralytics checkpoint) and PRUNED_report.json beside it.\n"
        "yolo-distill prune model=CKPT.pt data=DATA.yaml recipe=iterative|oneshot|PATH.yaml [out=..] [steps=..]\n"
        "                   iterative pruning (configs/prune/): prune, fine-tune with KD from CKPT, repeat.",
    ),
    "lowrank": Command(
        _lowrank,
        "yolo-distill lowrank model=CKPT.pt (energy=0.9 | gflops=G | gflops=0.6x | rank=R) [scope=backbone|all]\n"
        "                     [protect=head,3] [min_gain=0.1] [data=DATA.yaml val=True] [out=LOWRANK.pt] [imgsz=640]\n"
        "Writes LOWRANK.pt (a stock Ultralytics checkpoint) and LOWRANK_report.json beside it; fine-tune it with\n"
        "yolo-distill train model=LOWRANK.pt teacher=CKPT.pt (its shapes are kept).",
    ),
    "carve": Command(
        _carve,
        "yolo-distill carve model=TEACHER.pt target=yolo11n.yaml [out=CARVED.pt] [method=l1|l2|bn] [imgsz=640]\n"
        "Writes CARVED.pt: exactly the target YAML's architecture (a stock model Ultralytics rebuilds with the same\n"
        "shapes), its channels chosen by importance from the teacher, and CARVED_report.json beside it.\n"
        "Same-family pairs with the same blocks: YOLOv8, YOLO11, YOLO26 s -> n. Then: yolo-distill train\n"
        "model=CARVED.pt teacher=TEACHER.pt data=...",
    ),
    "export": Command(
        _export,
        "yolo-distill export model=CKPT.pt [format=onnx|openvino|ncnn|litert|all] [imgsz=640]\n"
        "                    [int8=False data=DATA.yaml] [half=False]\n"
        "                    [dynamic=False] [opset=None] [simplify=True] [threads=2] [runs=50] [overwrite=False]\n"
        "                    [calib_method=minmax|percentile|entropy] [calib_images=64]\n"
        "Writes CKPT.onnx (CKPT_int8.onnx), CKPT_openvino_model/ (CKPT_int8_openvino_model/), CKPT_ncnn_model/\n"
        "and CKPT_export.json\n"
        "with parity, latency (all runtimes side by side) and mAP beside the checkpoint. OpenVINO needs\n"
        "pip install -e \".[openvino]\", NCNN pip install -e \".[ncnn]\".",
    ),
    "bench": Command(
        _bench,
        "yolo-distill bench recipe=cpu-small|PATH.yaml [out=bench/NAME] [repeats=1] [seed=0] [report_only=False]\n"
        "                   [only=ROW,ROW] [rerun=ROW,ROW] [jobs=1] [dry_run=False] [side_by_side=False]\n"
        "Rows already finished (same spec, settings and version) are skipped; a killed bench continues.\n"
        "rerun= computes those rows again although finished (an export row's latency on another machine).\n"
        "jobs=N runs N rows at once, each in its own process (logs in OUT/logs/); on a CPU each row trains with\n"
        "cpu_count-1 threads (at most 8), so jobs=2 uses both cores of a 2-core machine.\n"
        "A row may set its own repeats (more seeds for the rows whose difference matters).\n"
        "dry_run=True resolves every row (paths, device, references, recipes, cache keys) and trains nothing.\n"
        "side_by_side=True (or [1,4]: thread counts) runs no row: it times every finished row's ONNX model\n"
        "interleaved on this machine (run it idle) and adds that table and which row serves which goal.",
    ),
    "demo": Command(
        _demo,
        "yolo-distill demo [epochs=5] [imgsz=256] [project=runs/demo] [teacher=PATH|train] [data=shapes] [threads=N]\n"
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
        print(COMMANDS[cmd].help_text())
        return 0
    to_stdout()
    try:
        COMMANDS[cmd].run(parse_kv(rest))
    except BadValue as e:  # a value the CLI itself rejected: nothing has run
        print(f"yolo-distill {cmd}: {e}", file=sys.stderr)
        return 2
    except (ValueError, LookupError, FileNotFoundError, FileExistsError) as e:  # the library's checks of the input
        from yolo_distill.api import UnknownName

        if isinstance(e, LookupError) and not isinstance(e, UnknownName):
            raise  # a KeyError / IndexError from a bug keeps its traceback
        print(f"yolo-distill {cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
