"""Every key of every command, given a bad value: one line naming the key, exit code 2, no traceback, nothing
written, the given checkpoint unchanged. The table is checked against the api signatures, so a new key without a
row here fails too."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from yolo_distill import api
from yolo_distill.cli import keys_of, main

# key -> (bad value, text the message must contain); "{ckpt}" / "{data}" / "{tmp}" are filled in per test
PRUNE = {
    "model": ("{tmp}/missing.pt", "never downloads weights"), "ratio": ("1.5", "ratio=1.5"),
    "gflops": ("0.5", "gflops=0.5"), "method": ("nope", "method"), "scope": ("nope", "scope"),
    "data": ("{tmp}/none.yaml", "data="), "out": ("{tmp}/out.txt", "out="), "round_to": ("0", "round_to=0"),
    "max_layer_ratio": ("2", "max_layer_ratio=2"), "protect": ("nolayer", "protect"), "imgsz": ("16", "imgsz=16"),
    "batches": ("0", "batches=0"), "val": ("maybe", "val='maybe'"), "allocation": ("nope", "allocation"),
    "max_drop": ("-0.5", "max_drop"), "layer_ratios": ("{{2: 1.5}}", "layer_ratios"),
    "granularity": ("row", "granularity='row'"), "n": ("0", "n=0"), "m": ("1", "m=1"),
    "latency": ("fast", "latency='fast'"), "runtime": ("tensorrt", "runtime='tensorrt'"), "threads": ("0", "threads=0"),
}  # fmt: skip
EXPORT = {
    "model": ("{tmp}/missing.pt", "never downloads weights"), "format": ("coreml", "format"),
    "imgsz": ("16", "imgsz=16"), "int8": ("maybe", "int8='maybe'"), "data": ("{tmp}/none.yaml", "data="),
    "half": ("x", "half='x'"), "dynamic": ("x", "dynamic='x'"), "opset": ("5", "opset=5"),
    "simplify": ("x", "simplify='x'"), "threads": ("0", "threads=0"), "runs": ("0", "runs=0"),
    "calib_images": ("0", "calib_images=0"), "parity_images": ("0", "parity_images=0"),
    "overwrite": ("x", "overwrite='x'"), "validate": ("x", "validate='x'"), "score_tol": ("-1", "score_tol=-1"),
    "box_tol": ("-1", "box_tol=-1"), "calib_method": ("median", "calib_method='median'"),
}  # fmt: skip
BENCH = {
    "recipe": ("nope", "no bench recipe named 'nope'"), "out": ("{ckpt}", "out="), "repeats": ("0", "repeats=0"),
    "seed": ("-1", "seed=-1"), "report_only": ("x", "report_only='x'"), "only": ("nope", "only=['nope']"),
    "jobs": ("0", "jobs must be"), "device": ("[1]", "device=[1]"), "dry_run": ("x", "dry_run='x'"),
    "side_by_side": ("[0]", "side_by_side=[0]"), "rerun": ("nope", "rerun=['nope']"),
}  # fmt: skip
DEMO = {
    "data": ("{tmp}/none.yaml", "data="), "epochs": ("0", "epochs=0"), "teacher_epochs": ("0", "teacher_epochs=0"),
    "imgsz": ("16", "imgsz=16"), "batch": ("0", "batch=0"), "project": ("[1]", "project=[1]"),
    "teacher": ("{tmp}/missing.pt", "never downloads weights"), "teacher_model": ("x.txt", "teacher_model="),
    "student": ("x.txt", "student="), "prune_ratio": ("1.5", "prune_ratio=1.5"),
    "export_imgsz": ("16", "export_imgsz=16"), "recipe": ("nope", "no distill recipe named 'nope'"),
    "threads": ("0", "threads=0"),
}  # fmt: skip
TRAIN = {
    "model": ("{tmp}/missing.pt", "never downloads weights"), "data": ("{tmp}/none.yaml", "data="),
    "teacher": ("{tmp}/missing.pt", "never downloads weights"), "recipe": ("nope", "no distill recipe named"),
    "sparsity": ("-1", "sparsity=-1"), "qat": ("maybe", "qat='maybe'"),
    "teacher_precision": ("half", "teacher_precision='half' is not valid"), "threads": ("1.5", "threads=1.5"),
}  # fmt: skip
SHAPES = {
    "n_train": ("0", "n_train"), "n_val": ("0", "n_val"), "imgsz": ("8", "imgsz"), "seed": ("-1", "seed"),
    "min_objects": ("0", "min_objects"), "max_objects": ("x", "max_objects='x'"), "min_size": ("1", "min_size"),
    "max_size": ("1000", "max_size"), "distractors": ("-1", "distractors"), "min_visible": ("0", "min_visible"),
    "classes": ("0", "classes"), "tints": ("5", "tints"), "out": ("[1]", "out=[1]"),
    "overwrite": ("x", "overwrite='x'"),
}  # fmt: skip
CONVERT = {
    "train": ("{tmp}/none.json", "train="), "train_images": ("{tmp}/none", "train_images="),
    "val": ("{tmp}/none.json", "val="), "val_images": ("{tmp}/none", "val_images="), "out": ("{ckpt}", "out="),
}  # fmt: skip
CARVE = {
    "model": ("{tmp}/missing.pt", "never downloads weights"), "target": ("yolo11n.pt", "target='yolo11n.pt'"),
    "out": ("{tmp}/c.txt", "out="), "method": ("taylor", "method='taylor'"), "imgsz": ("big", "imgsz='big'"),
}  # fmt: skip
LOWRANK = {
    "model": ("{tmp}/missing.pt", "never downloads weights"), "energy": ("1.5", "energy=1.5"),
    "gflops": ("0.5", "gflops=0.5"), "rank": ("0", "rank=0"), "scope": ("nope", "scope='nope'"),
    "protect": ("nolayer", "protect"), "min_gain": ("1", "min_gain=1"), "data": ("{tmp}/none.yaml", "data="),
    "out": ("{tmp}/o.txt", "out="), "imgsz": ("16", "imgsz=16"), "val": ("maybe", "val='maybe'"),
}  # fmt: skip
TABLES = {"prune": PRUNE, "export": EXPORT, "bench": BENCH, "demo": DEMO, "train": TRAIN, "carve": CARVE,
          "lowrank": LOWRANK}  # fmt: skip


def test_the_table_covers_every_key():
    """A key added to a command's api function needs a bad-value row here."""
    from dataclasses import fields

    assert set(PRUNE) == keys_of(api.prune)
    assert set(EXPORT) == keys_of(api.export)
    assert set(BENCH) == keys_of(api.run_bench)
    assert set(DEMO) == keys_of(api.run_demo)
    assert set(TRAIN) == keys_of(api.train)
    assert set(CARVE) == keys_of(api.carve)
    assert set(LOWRANK) == keys_of(api.lowrank)
    assert set(SHAPES) == {f.name for f in fields(api.ShapesSpec)} | {"out", "overwrite"}


def _state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}  # fmt: skip


def _run(argv: list[str], tmp: Path, capsys) -> tuple[int, str]:
    before = _state(tmp)
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert _state(tmp) == before, f"{argv}: something was written or changed"
    return rc, err


def _fill(v: str, tmp: Path, ckpt: Path, data: Path) -> str:
    return v.format(tmp=tmp, ckpt=ckpt, data=data)


def _cases():
    for cmd, table in TABLES.items():
        for key in table:
            yield pytest.param(cmd, key, id=f"{cmd}-{key}")


@pytest.mark.parametrize("cmd,key", list(_cases()))
def test_a_bad_value_is_one_line_exit_2_and_writes_nothing(cmd, key, tmp_path, tiny_data, ckpt_factory, capsys,
                                                          monkeypatch):  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    ckpt = work / "model.pt"
    ckpt.write_bytes(ckpt_factory("yolo11n.yaml").read_bytes())
    monkeypatch.chdir(work)
    good = {
        "prune": {"model": str(ckpt), "ratio": "0.5", "imgsz": "64", "out": str(work / "p.pt")},
        "export": {"model": str(ckpt), "imgsz": "64", "validate": "False"},
        "bench": {"recipe": "mini", "out": str(work / "b")},
        "demo": {"data": str(tiny_data), "epochs": "1", "imgsz": "64", "project": str(work / "d")},
        "train": {"model": "yolo11n.yaml", "data": str(tiny_data), "epochs": "1", "imgsz": "64",
                  "project": str(work / "r")},
        "carve": {"model": str(ckpt), "target": "yolo11n.yaml", "out": str(work / "c.pt")},
        "lowrank": {"model": str(ckpt), "imgsz": "64", "out": str(work / "l.pt")},
    }[cmd]  # fmt: skip
    value, expected = TABLES[cmd][key]
    args = {**good, key: _fill(value, work, ckpt, tiny_data)}
    if cmd == "demo" and key != "teacher":
        args["teacher"] = str(ckpt)  # a given teacher: the demo trains nothing before its checks
    rc, err = _run([cmd, *(f"{k}={v}" for k, v in args.items())], work, capsys)
    assert rc == 2, f"{cmd} {key}: exit code {rc}, stderr {err!r}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert key in err or expected.split("=")[0] in err, err
    assert _fill(expected, work, ckpt, tiny_data) in err, err


@pytest.mark.parametrize("key", list(SHAPES))
def test_data_generate_bad_values(key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value, expected = SHAPES[key]
    args = {"out": str(tmp_path / "ds"), "n_train": "2", "n_val": "1", "imgsz": "64", "min_size": "8",
            "max_size": "32", key: value}  # fmt: skip
    rc, err = _run(["data", *(f"{k}={v}" for k, v in args.items())], tmp_path, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("key", list(CONVERT))
def test_data_convert_bad_values(key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ann.json").write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("a user's file")
    ann, imgs = str(tmp_path / "ann.json"), str(tmp_path / "imgs")
    good = {"action": "coco", "train": ann, "train_images": imgs, "val": ann, "val_images": imgs,
            "out": str(tmp_path / "o")}  # fmt: skip
    value, expected = CONVERT[key]
    bad = str(tmp_path / "taken") if key == "out" else _fill(value, tmp_path, tmp_path, tmp_path)
    rc, err = _run(["data", *(f"{k}={v}" for k, v in {**good, key: bad}.items())], tmp_path, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and (expected in err or "not empty" in err), err


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    """Only input errors become one line: a TypeError or KeyError from a bug propagates with its traceback."""

    def buggy(**kw):
        return {}["missing"]

    monkeypatch.setattr(api, "run_demo", buggy)
    with pytest.raises(KeyError):
        main(["demo"])


def test_gflops_as_a_fraction_of_the_source(tmp_path, ckpt_factory):
    src = ckpt_factory("yolo11n.yaml")
    rep = api.prune(str(src), gflops="0.5x", imgsz=64, out=str(tmp_path / "half.pt"))
    assert rep["after"]["gflops"] <= 0.5 * rep["before"]["gflops"] + 1e-6
    assert (tmp_path / "half_report.json").is_file()
