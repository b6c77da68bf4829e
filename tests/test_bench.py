"""A miniature bench: report structure, and a killed bench skipping finished rows."""

from __future__ import annotations

import json

import pytest
import torch

from yolo_distill.bench import cache, rows, runner
from yolo_distill.bench.spec import load_bench_recipe, parse_row


class Killed(Exception):
    """Stands for the bench process being killed mid-row."""


def test_mini_bench_report_and_resume(tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tmp_path)
    calls, killed = [], []
    real = rows.run_row

    def counting(row, s, done, out):
        calls.append(row.name)
        if row.name == "pruned_noft" and not killed:
            killed.append(True)
            raise Killed  # the bench is killed during its last row
        return real(row, s, done, out)

    monkeypatch.setattr(rows, "run_row", counting)
    with pytest.raises(Killed):
        runner.run_bench("mini", out=str(tmp_path / "b"))
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    partial = runner.run_bench("mini", out=str(tmp_path / "b"), report_only=True)
    assert [r["name"] for r in partial["rows"]] == ["teacher", "student_kd", "student_native"]
    assert "| student_native |" in (tmp_path / "b" / "report.md").read_text()
    assert sorted(r["name"] for r in saved.values()) == ["student_kd", "student_native", "teacher"]
    calls.clear()
    res = runner.run_bench("mini", out=str(tmp_path / "b"))
    assert calls == ["pruned_noft", "compact_int8", "carved_noft", "sparse_noft", "lowrank_noft"], calls
    report = (tmp_path / "b" / "report.md").read_text()
    for col in ("params", "GFLOPs", "mAP50-95", "ONNX ms", "INT8 ms", "last.pt mAP50-95"):
        assert col in report
    for name in ("teacher", "student_kd", "student_native", "pruned_noft"):
        assert f"| {name} |" in report
    assert all((tmp_path / "b" / f).stat().st_size > 0 for f in ("map_vs_gflops.png", "map_vs_latency.png"))
    by = {r["name"]: r for r in res["rows"]}
    assert all(r["parity_ok"] for r in by.values())
    assert by["pruned_noft"]["params"] < by["teacher"]["params"]
    assert by["carved_noft"]["params"] == 3_012_408, "the carved row is exactly a stock 8-class YOLOv8n"
    # fine-grained zeros: same shapes, half the weights of the layers in scope, a smaller compressed file
    sp, t = by["sparse_noft"], by["teacher"]
    assert sp["params"] == t["params"] and sp["nonzero_params"] < 0.6 * t["nonzero_params"]
    assert sp["gzip_mb"] < 0.8 * t["gzip_mb"] and "Size on disk" in report
    assert (tmp_path / "b" / "map_vs_size.png").stat().st_size > 0
    assert by["lowrank_noft"]["gflops"] == pytest.approx(0.6 * t["gflops"], rel=0.03)
    # what a user gets at the end of training is measured beside the best epoch (trained rows only)
    assert by["student_kd"]["last_map50_95"] >= 0 and "last_map50_95" not in by["pruned_noft"]
    assert by["pruned_noft"]["gflops"] <= 0.5 * by["teacher"]["gflops"] * 1.01
    assert by["compact_int8"]["int8_ms"] > 0 and by["compact_int8"]["params"] == by["student_kd"]["params"]
    assert set(by["compact_int8"]["onnx_map50_95"]) == {"onnx_fp32", "onnx_int8"}
    assert "| compact_int8 | " in report.split("ONNX models run by ONNX Runtime")[1]
    # the KD step overhead column: measured for the KD student only
    assert by["student_kd"]["kd_step_vs_plain"] > 0 and by["student_kd"]["kd_step_vs_native"] > 0
    assert "kd_step_vs_plain" not in by["student_native"] and "KD step x plain / x native" in report
    kd_line = next(line for line in report.splitlines() if line.startswith("| student_kd |"))
    assert kd_line.split("|")[10].strip() != "-", kd_line
    # a row finished before the column existed gets it measured on the next run, without training again
    cache_file = tmp_path / "b" / "results.json"
    cache = json.loads(cache_file.read_text())
    for entry in cache.values():
        entry.pop("kd_step_vs_plain", None)
        entry.pop("kd_step_vs_native", None)
    cache_file.write_text(json.dumps(cache))
    calls.clear()
    again = {r["name"]: r for r in runner.run_bench("mini", out=str(tmp_path / "b"))["rows"]}
    assert calls == [] and again["student_kd"]["kd_step_vs_plain"] > 0


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("data: shapes\nrowz: []\n", KeyError, "rowz"),
        ("rows:\n  - {name: a, kind: train, model: m.yaml, teacher: '@b'}\n", ValueError, "before it is defined"),
        # a typo is an error, not a silently ignored key that still changes the cache key
        ("rows:\n  - {name: a, kind: prune, from: x.pt, gflop_ratio: 0.5}\n", KeyError,
         r"rows\[0\]: unknown key\(s\) \['gflop_ratio'\].*gflops_ratio"),
        ("rows:\n  - {name: a, kind: prune, from: x.pt, gflops_ratio: 1.5}\n", ValueError,
         r"gflops_ratio must be a number in \(0, 1\), got 1.5"),
        ("rows:\n  - {name: a, kind: train}\n", ValueError, "a train row needs model="),
        ("rows:\n  - {name: a, kind: train, model: m.yaml, distill_model: '@b'}\n", ValueError,
         "refers to @b before it is defined"),
        ("rows:\n  - {name: a, kind: train, model: m.yaml, teacher: t.pt, teacher_precision: half}\n", ValueError,
         r"\(a\): teacher_precision must be one of auto, fp32, bf16, fp16, got 'half'"),
    ],
)  # fmt: skip
def test_a_bad_bench_recipe_is_refused_naming_the_key(tmp_path, monkeypatch, text, error, match):
    """Refused before anything is written: no ``bench/<name>`` folder appears."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(error, match=match):
        runner.run_bench("b.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml"]


@pytest.mark.parametrize("recipe", ["default", "online"])
def test_step_cost_table_has_all_configs(ckpt_factory, capsys, recipe):
    """Every configuration is measured, for a frozen teacher and for the co-trained one of ``online`` (built as the
    trainer builds it: its own detection loss needs the student's hyperparameters)."""
    from yolo_distill.api import kd_step_cost as measure
    from yolo_distill.log import to_stdout

    to_stdout(verbose=True)
    res = measure(student="yolo11n.yaml", teacher=str(ckpt_factory("yolo11s.yaml")), imgsz=128, batch=2, steps=3,
                  memory=False, recipe=recipe)  # fmt: skip
    assert all(res[c]["median_s"] > 0 for c in ("plain", "floor", "ours", "native"))
    assert res["ours_above_floor"] == pytest.approx(res["ours"]["median_s"] / res["floor"]["median_s"] - 1)
    assert res["ours_vs_native_time"] == pytest.approx(res["ours"]["median_s"] / res["native"]["median_s"])
    # no speed assertion (a KD step is slower than a plain one; with 3 steps on a loaded machine a timed claim flakes):
    # the ratios are the measured medians' own
    assert res["ours_vs_plain_time"] == pytest.approx(res["ours"]["median_s"] / res["plain"]["median_s"])
    out = capsys.readouterr().out
    assert "ours / native" in out and "floor" in out


def test_cache_key_follows_what_the_row_computes(monkeypatch):
    from yolo_distill.config import load_distill_recipe

    def key(raw, settings, refs):
        return cache.key(parse_row({"model": "m.yaml", **raw}, "test", {"t"}), settings, refs)

    row, settings, refs = {"name": "s", "kind": "train", "teacher": "@t", "recipe": "cwd"}, {"imgsz": 64}, {"t": "k0"}
    k1 = key(row, settings, refs)
    assert key(dict(row), settings, dict(refs)) == k1
    assert key({**row, "name": "renamed"}, settings, refs) == k1, "a row's name is a label, not its identity"
    assert key(row, settings, {"t": "k1"}) != k1, "a row built on a recomputed row must be recomputed"
    assert key(row, settings, {}) is None, "no key while the referenced row has no result"
    assert key({**row, "recipe": "pkd"}, settings, refs) != k1
    cwd = load_distill_recipe("cwd")
    monkeypatch.setattr(cache, "load_distill_recipe", lambda r: cwd)
    assert key({**row, "recipe": "cwd_copy"}, settings, refs) == k1, "a renamed recipe file is the same recipe"
    cwd.description = "reworded"
    assert key(row, settings, refs) == k1, "a recipe's description is not what it computes"
    edited = load_distill_recipe("cwd")
    edited.losses[0].weight = 2.0
    monkeypatch.setattr(cache, "load_distill_recipe", lambda r: edited)
    assert key(row, settings, refs) != k1, "editing the recipe file must rerun the row"
    plain = {"name": "t", "kind": "train", "teacher": None}
    assert key(plain, settings, {}) == key({**plain, "recipe": "ignored"}, settings, {})


def test_results_written_by_another_bench_process_are_kept(tmp_path):
    """Two ``only=`` benches side by side: each one's finished rows survive the other's writes."""
    res = tmp_path / "results.json"
    mine = cache.save(res, "a", {"name": "a"})
    res.write_text(json.dumps({**mine, "b": {"name": "b"}}))  # the other process finished row b meanwhile
    cache.save(res, "c", {"name": "c"})
    assert sorted(json.loads(res.read_text())) == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "no temporary file is left behind"


def test_shipped_bench_recipes_validate():
    from yolo_distill.config import CONFIG_ROOT

    spec_kinds = ("train", "prune", "carve", "lowrank", "export")
    for path in sorted((CONFIG_ROOT / "bench").glob("*.yaml")):
        spec = load_bench_recipe(path)
        assert spec.rows and all(r.kind in spec_kinds for r in spec.rows), path.name


def test_finished_training_is_reused_not_rerun(tmp_path, monkeypatch):
    """A bench killed after a row's training but before caching it picks the finished run up again."""
    run = tmp_path / "runs" / "teacher"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"x")
    (run / "results.csv").write_text("epoch,time\n1,1.0\n2,2.0\n")
    assert cache.finished_run(run, 2) == run / "weights" / "best.pt"
    assert cache.finished_run(run, 3) is None, "an unfinished run must be trained again"
    (run / "args.yaml").write_text("seed: 0\n")
    assert cache.finished_run(run, 2, seed=0) == run / "weights" / "best.pt"
    assert cache.finished_run(run, 2, seed=1) is None, "another seed's run must never stand in for this one"
    teacher = parse_row({"name": "teacher", "kind": "train", "model": "m.yaml"}, "test", set())
    assert rows.run_name(teacher, {"seed": 0}) == "teacher"
    assert rows.run_name(teacher, {"seed": 1}) == "teacher_seed1"
    monkeypatch.setattr("yolo_distill.distill.run.train", lambda *a, **k: pytest.fail("retrained a finished row"))
    got = rows.train_row(teacher, {"data": "x"}, {}, "m.yaml", 2, {"project": str(tmp_path / "runs")})
    assert got == run


def test_a_row_s_teacher_precision_reaches_the_trainer_and_the_cache_key(tmp_path, monkeypatch):
    """``teacher_precision:`` on a row is passed to training (and to its KD step cost), and is part of what the row
    computes; a row without it keeps the key it always had (no cached row is rerun)."""
    raw = {"name": "s", "kind": "train", "model": "m.yaml", "teacher": "t.pt"}
    plain, bf16 = parse_row(raw, "test", set()), parse_row(raw | {"teacher_precision": "bf16"}, "test", set())
    assert plain.teacher_precision == "auto" and "teacher_precision" not in plain.spec
    keys = {cache.key(r, {"seed": 0}, {}) for r in (plain, bf16)}
    assert len(keys) == 2
    seen = {}

    class Done:
        save_dir = tmp_path / "runs" / "s"

    monkeypatch.setattr("yolo_distill.distill.run.train", lambda *a, **k: seen.update(k) or Done())
    rows.train_row(bf16, {"data": "x"}, {}, "m.yaml", 2, {"project": str(tmp_path / "runs")})
    assert seen["teacher_precision"] == "bf16"
    monkeypatch.setattr("yolo_distill.bench.step_cost.measure", lambda **k: seen.update(step=k) or
                        {"ours_vs_plain_time": 1.0, "ours_vs_native_time": 1.0})  # fmt: skip
    rows.kd_step_cost(bf16, {}, {})
    assert seen["step"]["teacher_precision"] == "bf16"


def test_prune_speed_table(tmp_path, ckpt_factory, capsys):
    """The pruning speed study prunes to the target, times every variant and leaves the source untouched."""
    import hashlib

    from yolo_distill.api import prune_speed as measure
    from yolo_distill.log import to_stdout

    to_stdout(verbose=True)
    src = ckpt_factory("yolo11n.yaml")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    res = measure(str(src), gflops_ratios=[0.5], round_to=[8, 16], references=["yolov8n.yaml"], imgsz=64, runs=2,
                  threads=[1, 2], torch_runs=1, out=str(tmp_path / "speed"))  # fmt: skip
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, "the source checkpoint was modified"
    by = {r["name"]: r for r in res["rows"]}
    assert set(by) == {"source", "yolov8n (reference)", "gflops50_round8", "gflops50_round16"}
    for k in (8, 16):
        r = by[f"gflops50_round{k}"]
        assert r["gflops"] <= 0.5 * by["source"]["gflops"] + 1e-6, r
        assert r["gflops_reduction"] >= 2 and r["torch_ms"] > 0, r
        assert all(r[f"efficiency_t{t}"] > 0 and r[f"ms_t{t}"] > 0 for t in (1, 2)), r
    assert by["source"]["efficiency_t1"] is None and by["source"]["speedup_t2"] == 1.0
    out = tmp_path / "speed" / src.stem
    assert json.loads((out / "speed.json").read_text())["rows"] == res["rows"]
    assert "| gflops50_round16 |" in (out / "speed.md").read_text() and "efficiency" in capsys.readouterr().out
    again = measure(str(src), gflops_ratios=[0.5], round_to=[8], imgsz=64, runs=1, threads=1, torch_runs=1,
                    out=str(tmp_path / "speed"))  # fmt: skip
    assert again["out"] != res["out"], "a second study must not overwrite the first"
    with pytest.raises(ValueError, match="gflops_ratios"):
        measure(str(src), gflops_ratios=[1.5], out=str(tmp_path / "speed"))


def test_row_repeats_and_only(tmp_path, monkeypatch):
    """A row with its own repeats gets more seeds without rerunning its finished seed; only= runs just those rows."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: shapes-tiny\nseed: 0\nrows:\n"
        "  - {name: teacher, kind: train, model: a.yaml}\n"
        "  - {name: plain, kind: train, model: b.yaml}\n"
        "  - {name: kd, kind: train, model: b.yaml, teacher: '@teacher'}\n"
    )
    calls = []

    def fake(row, s, done, out):
        calls.append((row.name, s["seed"], rows.resolve(row.teacher, done)))
        ck = out / f"{row.name}_{s['seed']}.pt"
        ck.write_bytes(b"x")
        m = 0.1 + 0.01 * s["seed"] + (0.05 if row.name == "kd" else 0)
        return {"name": row.name, "kind": "train", "checkpoint": str(ck), "map50_95": m, "map50": m, "params": 1,
                "gflops": 1.0, "onnx_ms": 1.0, "seconds": 1.0}  # fmt: skip

    step_costs = []

    def fake_step_cost(row, s, done):
        step_costs.append((row.name, s["seed"]))
        return {"kd_step_vs_plain": 2.0, "kd_step_vs_native": 1.0}

    monkeypatch.setattr(rows, "run_row", fake)
    monkeypatch.setattr(rows, "kd_step_cost", fake_step_cost)
    monkeypatch.setattr("yolo_distill.data.builtin.resolve_data", lambda d: d)
    runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert [c[:2] for c in calls] == [("teacher", 0), ("plain", 0), ("kd", 0)]
    assert step_costs == [], "the fake rows carry no step cost until they are found cached"
    # two seeds for the rows whose difference is the claim: seed 0 stays cached, seed 1 distils from teacher seed 0
    recipe.write_text(recipe.read_text().replace("model: b.yaml}", "model: b.yaml, repeats: 2}").replace(
        "teacher: '@teacher'}", "teacher: '@teacher', repeats: 2}"))  # fmt: skip
    calls.clear()
    with pytest.raises(ValueError, match="only=\\['nope'\\]"):
        runner.run_bench(str(recipe), out=str(tmp_path / "b"), only="nope")
    res = runner.run_bench(str(recipe), out=str(tmp_path / "b"), only="kd")
    assert [c[:2] for c in calls] == [("kd", 1)], f"only=kd must run kd's new seed alone, ran {calls}"
    assert step_costs == [("kd", 0)], f"only the cached KD row lacking the column is measured: {step_costs}"
    assert calls[0][2].endswith("teacher_0.pt")
    assert sorted((r["name"], r["seed"]) for r in res["rows"]) == [
        ("kd", 0), ("kd", 1), ("plain", 0), ("teacher", 0)]  # fmt: skip
    calls.clear()
    runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert [c[:2] for c in calls] == [("plain", 1)]
    report = (tmp_path / "b" / "report.md").read_text()
    assert "| kd | 1 | 1.00 | 0.1550 | 0.1550 ± 0.0071 |" in report, report
    # renaming a row reruns nothing; changing the teacher reruns the teacher and the rows built on it, not the rest
    recipe.write_text(recipe.read_text().replace("name: plain,", "name: plain_renamed,"))
    calls.clear()
    res = runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert calls == [] and {r["name"] for r in res["rows"]} == {"teacher", "plain_renamed", "kd"}
    recipe.write_text(recipe.read_text().replace("model: a.yaml}", "model: a.yaml, epochs: 3}"))
    runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert [c[:2] for c in calls] == [("teacher", 0), ("kd", 0), ("kd", 1)], calls
    recipe.write_text(recipe.read_text().replace("repeats: 2", "repeats: 0"))
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        runner.run_bench(str(recipe), out=str(tmp_path / "b"))


def test_jobs_run_rows_in_processes_after_their_references(tmp_path, tiny_data, capsys):
    from yolo_distill.log import to_stdout

    to_stdout(verbose=True)
    """``jobs=2``: rows run as side-by-side processes, each after the rows it builds on; a failed row names its log,
    its dependants are skipped, the others finish and the report lists every finished row."""
    recipe = tmp_path / "par.yaml"
    recipe.write_text(
        f"data: {tiny_data}\nimgsz: 64\nepochs: 1\nbatch: 4\nexport_imgsz: 64\nrows:\n"
        "  - {name: base, kind: train, model: yolo11n.yaml, teacher: null}\n"
        "  - {name: bad, kind: prune, from: '@base', gflops: 1000, epochs: 0}\n"
        "  - {name: after_bad, kind: prune, from: '@bad', ratio: 0.5, epochs: 0}\n"
        "  - {name: slim, kind: prune, from: '@base', ratio: 0.5, epochs: 0}\n"
    )
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match=r"bad \(exit code 1: .*gflops=1000.*log .*bad\.log\); after_bad \(skipped"):
        runner.run_bench(str(recipe), out=str(out), jobs=2)
    log = capsys.readouterr().out
    assert log.index("base finished") < log.index("started slim") and log.index("base finished") < log.index(
        "started bad"
    ), f"rows must wait for the rows they refer to:\n{log}"
    assert "started after_bad" not in log
    names = sorted(r["name"] for r in json.loads((out / "results.json").read_text()).values())
    assert names == ["base", "slim"], names
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| slim |" in report, "the report is rewritten from every finished row"
    assert (out / "logs" / "slim.log").stat().st_size > 0
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        runner.run_bench(str(recipe), out=str(out), jobs=0)


def test_rows_never_write_beside_a_checkpoint_they_are_given(tmp_path, tiny_data, ckpt_factory, monkeypatch):
    """A row over the user's own checkpoint (a path, not a row) exports a copy inside the bench folder: the user's
    folder, read-only here, stays byte for byte as it was, and nothing lands in the working directory."""
    import hashlib
    import os
    import stat

    user = tmp_path / "user"
    user.mkdir()
    (user / "model.pt").write_bytes(ckpt_factory("yolo11n.yaml").read_bytes())
    (user / "model-seg.onnx").write_bytes(b"the user's other export")  # matched by the old stem* glob
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in user.iterdir()}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data: {tiny_data}\nimgsz: 64\nbatch: 4\nexport_imgsz: 64\nrows:\n"
        f"  - {{name: given, kind: export, from: {user / 'model.pt'}, epochs: 0}}\n"
        f"  - {{name: given_pruned, kind: prune, from: {user / 'model.pt'}, ratio: 0.5, epochs: 0}}\n"
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    os.chmod(user, stat.S_IRUSR | stat.S_IXUSR)
    try:
        res = runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    finally:
        os.chmod(user, stat.S_IRWXU)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in user.iterdir()} == before
    assert [r["name"] for r in res["rows"]] == ["given", "given_pruned"] and all(r["parity_ok"] for r in res["rows"])
    assert (tmp_path / "b" / "exports" / "given" / "model.onnx").is_file()
    assert list(cwd.iterdir()) == [], "validations and exports must not litter the working directory"


def test_cached_results_outlive_their_run_folders(tmp_path, monkeypatch):
    """A clone has results.json but no run folders: every cached row is still reported and nothing reruns, except
    a row whose checkpoint a row that must run needs (then it is computed again, first)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: shapes-tiny\nrows:\n"
        "  - {name: teacher, kind: train, model: a.yaml}\n"
        "  - {name: plain, kind: train, model: b.yaml}\n"
        "  - {name: kd, kind: train, model: b.yaml, teacher: '@teacher'}\n"
    )
    calls = []

    def fake(row, s, done, out):
        calls.append(row.name)
        ck = out / f"{row.name}.pt"
        ck.write_bytes(b"x")
        return {"name": row.name, "kind": "train", "checkpoint": str(ck), "map50_95": 0.1, "map50": 0.2, "params": 1,
                "gflops": 1.0, "onnx_ms": 1.0, "seconds": 1.0, "kd_step_vs_plain": 1.0,
                "kd_step_vs_native": 1.0}  # fmt: skip

    monkeypatch.setattr(rows, "run_row", fake)
    monkeypatch.setattr("yolo_distill.data.builtin.resolve_data", lambda d: d)
    runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert calls == ["teacher", "plain", "kd"]
    stored = json.loads((tmp_path / "b" / "results.json").read_text())
    assert sorted(e["checkpoint"] for e in stored.values()) == ["kd.pt", "plain.pt", "teacher.pt"], (
        "checkpoints inside the bench folder are stored relative to it, so a cloned bench keeps them"
    )
    for ck in (tmp_path / "b").glob("*.pt"):
        ck.unlink()  # run folders are not kept with results.json
    calls.clear()
    assert [r["name"] for r in runner.run_bench(str(recipe), out=str(tmp_path / "b"), report_only=True)["rows"]] == [
        "teacher", "plain", "kd"]  # fmt: skip
    runner.run_bench(str(recipe), out=str(tmp_path / "b"))
    assert calls == [], f"nothing needs a checkpoint, nothing may rerun: {calls}"
    new_row = "  - {name: kd_ld, kind: train, model: b.yaml, teacher: '@teacher', recipe: ld}\n"
    recipe.write_text(recipe.read_text() + new_row)
    runner.run_bench(str(recipe), out=str(tmp_path / "b"), only="kd_ld")
    assert calls == ["teacher", "kd_ld"], f"kd_ld needs the teacher's checkpoint, which is gone: {calls}"


def test_a_killed_rerun_does_not_stand_for_a_cached_row(tmp_path, monkeypatch):
    """A cached teacher whose checkpoint was overwritten by a rerun killed after its first epochs (Ultralytics'
    mid-run save: optimizer state, epoch >= 0) is trained again before a student distils from it; a finished
    checkpoint (optimizer stripped, epoch -1) is reused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: shapes-tiny\nrows:\n  - {name: teacher, kind: train, model: a.yaml}\n")
    calls = []

    def fake(row, s, done, out):
        calls.append(row.name)
        ck = out / f"{row.name}.pt"
        torch.save({"model": None, "optimizer": None, "epoch": -1}, ck)  # as Ultralytics leaves a finished run
        return {"name": row.name, "kind": "train", "checkpoint": str(ck), "map50_95": 0.1, "map50": 0.2, "params": 1,
                "gflops": 1.0, "onnx_ms": 1.0, "seconds": 1.0, "kd_step_vs_plain": 1.0,
                "kd_step_vs_native": 1.0}  # fmt: skip

    monkeypatch.setattr(rows, "run_row", fake)
    monkeypatch.setattr("yolo_distill.data.builtin.resolve_data", lambda d: d)
    out = tmp_path / "b"
    runner.run_bench(str(recipe), out=str(out))
    for student in ("kd", "kd2"):
        row = f"  - {{name: {student}, kind: train, model: {student}.yaml, teacher: '@teacher'}}\n"
        recipe.write_text(recipe.read_text() + row)
        calls.clear()
        runner.run_bench(str(recipe), out=str(out), only=student)
        assert calls == ([student] if student == "kd" else ["teacher", student]), calls
        # a rerun of the teacher killed after epoch 0 leaves its mid-run save where the finished checkpoint was
        torch.save({"model": None, "optimizer": {"state": {}, "param_groups": []}, "epoch": 0}, out / "teacher.pt")


def test_usable_checkpoint_tells_a_mid_run_save_from_a_finished_one(tmp_path):
    done, mid, stub = tmp_path / "done.pt", tmp_path / "mid.pt", tmp_path / "stub.pt"
    torch.save({"model": None, "optimizer": None, "epoch": -1}, done)
    torch.save({"model": None, "optimizer": {"state": {}}, "epoch": 3}, mid)
    stub.write_bytes(b"x")
    assert cache.usable_checkpoint(done) and cache.usable_checkpoint(stub)
    assert not cache.usable_checkpoint(mid) and not cache.usable_checkpoint(tmp_path / "gone.pt")


def test_dry_run_resolves_every_shipped_recipe_and_writes_nothing(tmp_path, monkeypatch):
    """Every shipped bench recipe, coco and coco-gpu included, resolves: models, recipes, devices, references and
    cache keys (the same keys a real run uses); what this machine lacks is listed, not fatal; nothing is written."""
    import torch

    from yolo_distill.config import CONFIG_ROOT

    monkeypatch.chdir(tmp_path)
    for path in sorted((CONFIG_ROOT / "bench").glob("*.yaml")):
        res = runner.run_bench(str(path), dry_run=True)
        spec = load_bench_recipe(path)
        assert {r["name"] for r in res["rows"]} == {r.name for r in spec.rows}, path.name
        if path.stem.startswith("coco"):
            assert any("yolo11l.pt" in m for m in res["missing"]), res["missing"]
            assert any("CUDA" in m for m in res["missing"]) != torch.cuda.is_available(), res["missing"]
    assert list(tmp_path.iterdir()) == [], "a dry run writes nothing"
    # the keys are the keys of a real run: every finished cpu-small result is found under its dry-run key
    from yolo_distill.bench.cache import load

    keys = {r["key"] for r in runner.run_bench("cpu-small", dry_run=True)["rows"]}
    results = load(CONFIG_ROOT.parent / "bench" / "cpu-small" / "results.json")
    # attention's recipe changed since its row ran (its channel part now runs across widths): a stale result
    stale = {k for k, v in results.items() if v["name"] == "student_11n_kd_attention"}
    assert len(results) - len(stale) >= 47 and set(results) - stale <= keys
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: gpu9\nrows:\n  - {name: a, kind: train, model: nope.yaml, teacher: x.pt, recipe: nope}\n"
                   "  - {name: p, kind: prune, from: '@a', method: nope}\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"(?s)4 problem\(s\).*gpu9.*nope\.yaml.*recipe=nope.*method='nope'"):
        runner.run_bench(str(bad), dry_run=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_killed_training_row_is_resumed_not_restarted(tmp_path, monkeypatch):
    """An unfinished run of the row (same epochs and seed) is resumed from its last.pt, never deleted."""
    run = tmp_path / "runs" / "teacher"
    (run / "weights").mkdir(parents=True)
    torch.save({"epoch": 3, "ema": torch.nn.Linear(1, 1), "train_args": {"epochs": 10, "seed": 0}},
               run / "weights" / "last.pt")  # fmt: skip
    (run / "results.csv").write_text("epoch,time\n1,1\n2,2\n3,3\n4,4\n")
    resumed = []

    class FakeTrainer:
        def __init__(self, overrides):
            resumed.append(overrides)
            self.save_dir = run

        def train(self):
            pass

    monkeypatch.setattr("yolo_distill.distill.trainer.DistillationTrainer", FakeTrainer)
    monkeypatch.setattr("yolo_distill.distill.run.train", lambda *a, **k: pytest.fail("restarted a killed row"))
    teacher = parse_row({"name": "teacher", "kind": "train", "model": "m.yaml"}, "test", set())
    got = rows.train_row(teacher, {"data": "x", "seed": 0}, {}, "m.yaml", 10, {"project": str(tmp_path / "runs"),
                                                                              "seed": 0})  # fmt: skip
    assert got == run and resumed == [{"resume": str(run / "weights" / "last.pt")}]
    assert (run / "weights" / "last.pt").is_file()
    resumed.clear()  # another seed's run is never resumed as this one
    monkeypatch.setattr("yolo_distill.distill.run.train", lambda *a, **k: type("T", (), {"save_dir": run})())
    rows.train_row(teacher, {"data": "x", "seed": 1}, {}, "m.yaml", 10, {"project": str(tmp_path / "runs"), "seed": 1})
    assert resumed == []


def test_a_killed_bench_s_report_keeps_every_finished_seed(tmp_path, monkeypatch):
    """The report written while a bench runs (and left behind when it is killed) holds every finished result, rows
    and seeds after the running one included: a bench killed on one row's second seed must not shrink another row's
    two-seed mean to one seed."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: shapes\nimgsz: 64\nepochs: 2\nrepeats: 2\nrows:\n"
        "  - {name: a, kind: train, model: yolo11n.yaml}\n  - {name: b, kind: train, model: yolov8n.yaml}\n"
    )
    spec = load_bench_recipe(str(recipe))
    settings = {"data": "shapes", **spec.settings}
    out = tmp_path / "b"
    for row, s, k, _ in runner.plan_rows(spec, settings, settings, 2):
        if (row.name, s["seed"]) != ("a", 1):
            result = {"map50_95": 0.2 + 0.1 * s["seed"], "map50": 0.5, "seconds": 1, "params": 1, "gflops": 1.0}
            cache.save(out / "results.json", k, {**result, "name": row.name, "onnx_ms": 1.0})

    def killed(*_):
        raise Killed

    monkeypatch.setattr(rows, "run_row", killed)
    with pytest.raises(Killed):
        runner.run_bench(str(recipe), out=str(out), jobs=1)
    report = (out / "report.md").read_text()
    assert "| b |" in report and "0.2500 ± 0.0707" in report, report


def test_an_online_row_reports_how_its_co_trained_teacher_ended(tmp_path, monkeypatch):
    """Online KD changes the teacher too: the row measures ``teacher_last.pt`` and the report shows it beside the
    student, so a teacher dragged down by its student is seen."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o.yaml").write_text(
        "data: shapes-tiny\nimgsz: 64\nepochs: 1\nbatch: 4\nexport_imgsz: 64\nrows:\n"
        "  - {name: student_online, kind: train, model: yolo11n.yaml, teacher: yolov8n.yaml, recipe: online}\n"
    )
    (row,) = runner.run_bench("o.yaml", jobs=1)["rows"]
    assert 0 <= row["teacher_last_map50_95"] <= 1
    report = (tmp_path / "bench" / "o" / "report.md").read_text()
    assert "Online rows" in report and f"| student_online | 0 | {row['teacher_last_map50_95']:.4f} |" in report


def _verdict_bench(tmp_path, stem: str, rows: str, score, repeats: int = 1):
    """A bench recipe ``tmp_path/STEM.yaml`` with ``rows`` (YAML lines) whose every row-seed is finished: its result,
    under the key a run would cache it, has ``score(row name, seed, index) -> (best, last)``. Returns the recipe."""
    recipe = tmp_path / f"{stem}.yaml"
    recipe.write_text(f"data: shapes\nimgsz: 64\nepochs: 2\nrepeats: {repeats}\nrows:\n{rows}")
    spec = load_bench_recipe(str(recipe))
    settings = {"data": "shapes", **spec.settings}
    for i, (row, s, k, _) in enumerate(runner.plan_rows(spec, settings, settings, repeats)):
        best, last = score(row.name, s["seed"], i)
        cache.save(tmp_path / "bench" / stem / "results.json", k,
                   {"name": row.name, "map50_95": best, "last_map50_95": last})  # fmt: skip
    return recipe


def test_kd_verdict_judges_the_default_on_best_and_last_over_seeds(tmp_path):
    """The bar of issue 14 from finished rows: means over seeds, each check yes or NO with both numbers, results
    that no longer match their row (an edited recipe line) not counted, and nothing written."""
    from yolo_distill.bench.verdict import kd_verdict

    scores = {"student_11n_plain": ([0.40, 0.50], [0.30, 0.50]),
              "student_11n_ultralytics_distill_model": ([0.45, 0.55], [0.45, 0.55]),
              "student_11n_kd_default": ([0.50, 0.60], [0.40, 0.52])}  # fmt: skip
    recipe = _verdict_bench(
        tmp_path, "reg",
        "  - {name: student_11n_plain, kind: train, model: yolo11n.yaml}\n"
        "  - {name: student_11n_ultralytics_distill_model, kind: train, model: yolo11n.yaml, distill_model: t.pt}\n"
        "  - {name: student_11n_kd_default, kind: train, model: yolo11n.yaml, teacher: t.pt}\n",
        lambda name, seed, _: (scores[name][0][seed], scores[name][1][seed]), repeats=2)  # fmt: skip
    res = tmp_path / "bench" / "reg" / "results.json"
    cache.save(res, "stale-key", {"name": "student_11n_kd_default", "map50_95": 0.99, "last_map50_95": 0.99})
    before = res.read_text()
    text = kd_verdict(str(recipe), root=str(tmp_path / "bench"))
    assert "| student_11n_kd_default | 2 | 0.5500 ± 0.0707 | 0.4600 ± 0.0849 | 0.84 |" in text
    assert "- best.pt >= plain: yes (0.5500 vs 0.4500)" in text
    assert "- best.pt >= native: yes (0.5500 vs 0.5000)" in text
    assert "- last.pt >= plain: yes (0.4600 vs 0.4000)" in text
    assert "- last.pt >= native: NO (0.4600 vs 0.5000)" in text
    assert "- last.pt >= 0.9 x best.pt: NO (0.4600 vs 0.4950)" in text
    assert "Bar for `default` (student_11n_kd_default):" in text
    assert "provisional" not in text and res.read_text() == before
    assert "Across regimes" not in text, "one bench: nothing to compare across"


def test_kd_verdict_counts_seeds_run_beyond_the_recipe_s_repeats(tmp_path):
    """A seed added later (``seed=2 repeats=1`` on a bench whose teacher is a path: the key ``repeats=3`` gives it)
    counts in its row's mean; the other rows keep their two seeds."""
    from yolo_distill.bench.verdict import kd_verdict

    recipe = _verdict_bench(
        tmp_path, "reg",
        "  - {name: student_11n_plain, kind: train, model: yolo11n.yaml}\n"
        "  - {name: student_11n_kd_default, kind: train, model: yolo11n.yaml, teacher: t.pt}\n",
        lambda name, seed, _: ((0.40, 0.40) if "plain" in name else (0.50 + 0.1 * seed, 0.50 + 0.1 * seed)),
        repeats=2)  # fmt: skip
    spec = load_bench_recipe(str(recipe))
    later = {"data": "shapes", **spec.settings, "seed": 2}
    for row, _, k, _ in runner.plan_rows(spec, later, later, 1):
        if row.name == "student_11n_kd_default":
            cache.save(tmp_path / "bench" / "reg" / "results.json", k,
                       {"name": row.name, "map50_95": 0.70, "last_map50_95": 0.70})  # fmt: skip
    text = kd_verdict(str(recipe), root=str(tmp_path / "bench"))
    assert "| student_11n_kd_default | 3 | 0.6000 ± 0.1000 | 0.6000 ± 0.1000 | 1.00 |" in text, text
    assert "| student_11n_plain | 2 | 0.4000 ± 0.0000 |" in text, text


def test_kd_verdict_finds_the_default_by_its_terms_not_its_name(tmp_path):
    """The bar judges the row that trains with default.yaml's terms, whatever it is called (the default may move to
    another recipe's terms); a row named ``..._default`` with other terms, or the default's terms with a bf16
    teacher, is not it."""
    from yolo_distill.bench.verdict import kd_verdict

    recipe = _verdict_bench(
        tmp_path, "reg",
        "  - {name: student_11n_plain, kind: train, model: yolo11n.yaml}\n"
        "  - {name: student_11n_ultralytics_distill_model, kind: train, model: yolo11n.yaml, distill_model: t.pt}\n"
        "  - {name: student_11n_kd_default, kind: train, model: yolo11n.yaml, teacher: t.pt, recipe: logit}\n"
        "  - {name: student_11n_kd_bf16, kind: train, model: yolo11n.yaml, teacher: t.pt, teacher_precision: bf16}\n"
        "  - {name: student_11n_kd_main, kind: train, model: yolo11n.yaml, teacher: t.pt, recipe: default}\n",
        lambda name, seed, i: (0.1 * (i + 1), 0.1 * (i + 1)))  # fmt: skip
    text = kd_verdict(str(recipe), root=str(tmp_path / "bench"))
    assert "Bar for `default` (student_11n_kd_main) (provisional" in text, text
    assert "- best.pt >= plain: yes (0.5000 vs 0.1000)" in text


def test_kd_verdict_ranks_recipes_by_their_worst_gain_across_benches(tmp_path):
    """Across benches each KD row's gain over plain (best.pt / last.pt, in % of plain's mean) and its worst gain
    anywhere: a recipe that wins big in one regime and hurts in another ranks below one that never hurts, and a
    recipe run in one regime only ranks below both, however big its gain there (it has not shown it never hurts)."""
    from yolo_distill.bench.verdict import kd_verdict

    scores = {"a": {"student_11n_plain": (0.40, 0.40), "student_11n_kd_default": (0.60, 0.50),
                    "student_11n_kd_logit": (0.80, 0.80), "student_11n_kd_ld": (0.90, 0.90)},
              "b": {"student_11n_plain": (0.50, 0.50), "student_11n_kd_default": (0.55, 0.55),
                    "student_11n_kd_logit": (0.45, 0.50)}}  # fmt: skip
    recipes = [
        _verdict_bench(tmp_path, bench, "".join(
            f"  - {{name: {n}, kind: train, model: yolo11n.yaml"
            f"{'' if 'plain' in n else ', teacher: t.pt, recipe: ' + n.split('_kd_')[1]}}}\n" for n in bench_rows),
            lambda name, seed, i, bench_rows=bench_rows: bench_rows[name])
        for bench, bench_rows in scores.items()
    ]  # fmt: skip
    text = kd_verdict([str(r) for r in recipes], root=str(tmp_path / "bench"))
    table = text.split("## Across regimes")[1].splitlines()
    lines = [line for line in table if line.startswith("| student_")]
    assert lines == ["| student_11n_kd_default | +50.0 % / +25.0 % (1) | +10.0 % / +10.0 % (1) | +10.0 % |",
                    "| student_11n_kd_logit | +100.0 % / +100.0 % (1) | -10.0 % / +0.0 % (1) | -10.0 % |",
                    "| student_11n_kd_ld | +125.0 % / +125.0 % (1) | - | +125.0 % (in 1 of 2) |"], lines


def test_a_recipe_s_plain_form_has_no_unset_keys():
    """A recipe key added with an unset default must not appear in the plain form: it would change the bench cache
    key of every KD row that ran before it existed, and rerun all of them."""
    from yolo_distill.config import load_distill_recipe, shipped_recipes

    for name in shipped_recipes("distill"):
        plain = load_distill_recipe(name).to_dict()
        assert not [k for k, v in plain.items() if v is None], (name, plain)


def _conv_onnx(path, channels: int, layers: int) -> None:
    """A plain ONNX model of ``layers`` 3x3 convs with ``channels`` channels on a (1, 3, 64, 64) input."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev, c_in = [], [], "images", 3
    for i in range(layers):
        w = numpy_helper.from_array(np.random.default_rng(i).random((channels, c_in, 3, 3), dtype=np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1]))
        prev, c_in = f"y{i}", channels
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_side_by_side_times_every_row_in_one_run_and_names_the_row_for_each_goal(tmp_path, monkeypatch):
    """``side_by_side=True`` trains nothing, times every finished row's ONNX model interleaved at 1 and 2 threads on
    this machine, and the report lists, per goal, the rows no other row beats on that goal and mAP: a big accurate
    model and a tiny one are listed, a row as slow and large as the big one but less accurate is not. A row
    recomputed after the measurement loses its number (its key changed)."""
    from yolo_distill.deploy.latency import cpu_summary

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: shapes-tiny\nexport_imgsz: 64\nrows:\n"
                      "  - {name: big, kind: train, model: a.yaml}\n"
                      "  - {name: tiny, kind: train, model: b.yaml}\n"
                      "  - {name: worse, kind: train, model: c.yaml}\n")  # fmt: skip
    spec = {"big": (48, 4, 0.5, 10.0), "tiny": (4, 1, 0.4, 2.0), "worse": (48, 4, 0.3, 12.0)}
    calls = []

    def fake(row, s, done, out):
        calls.append(row.name)
        ch, layers, m, gz = spec[row.name]
        _conv_onnx(out / "exports" / row.name / "best.onnx", ch, layers)
        return {"name": row.name, "kind": "train", "checkpoint": str(out / "runs" / row.name / "best.pt"),
                "map50_95": m, "map50": m, "params": ch * layers, "nonzero_params": ch * layers, "gflops": 1.0,
                "size_mb": gz * 1.1, "gzip_mb": gz, "onnx_ms": 1.0, "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(rows, "run_row", fake)
    monkeypatch.setattr("yolo_distill.data.builtin.resolve_data", lambda d: d)
    out = tmp_path / "b"
    with pytest.raises(ValueError, match="has no finished rows"):
        runner.run_bench(str(recipe), out=str(out), side_by_side=True)
    assert not out.exists(), "a refused side_by_side writes nothing"
    runner.run_bench(str(recipe), out=str(out))
    calls.clear()
    runner.run_bench(str(recipe), out=str(out), side_by_side=True)
    assert calls == [], "side_by_side measures; it trains nothing"
    sbs = json.loads((out / "side_by_side.json").read_text())
    assert sbs["machine"] == cpu_summary() and set(sbs["ms"]) == {"1", "2"} and set(sbs["keys"]) == set(spec)
    for t in ("1", "2"):
        assert sbs["ms"][t]["tiny"]["median"] < sbs["ms"][t]["big"]["median"], sbs["ms"][t]
    report = (out / "report.md").read_text()
    assert "| big | 192 | 192 | 1.00 | 11.00 | 10.00 |" in report, report
    goals = [line for line in report.splitlines() if line.startswith("- a ")]
    assert len(goals) == 3, goals  # a smaller file; a faster CPU at 1 and at 2 threads
    for line in goals:
        assert "tiny (" in line and "big (" in line and "worse" not in line, line
        assert line.index("tiny (") < line.index("big ("), "cheapest first"
    assert (out / "map_vs_latency_side_by_side.png").stat().st_size > 0
    # a row recomputed since (another key) is not shown with the old model's latency
    stored = json.loads((out / "side_by_side.json").read_text())
    stored["keys"]["big"] = "0" * 16
    (out / "side_by_side.json").write_text(json.dumps(stored))
    runner.run_bench(str(recipe), out=str(out), report_only=True)
    report = (out / "report.md").read_text()
    assert "| big | 192 |" not in report.split("Side by side")[1] and "| tiny | 4 |" in report.split("Side by side")[1]
    for bad in (0, [0], [1.5], "yes", []):
        with pytest.raises(ValueError, match="side_by_side=.* is not valid"):
            runner.run_bench(str(recipe), out=str(out), side_by_side=bad)
    # a fresh clone has no exports (not in git): every row is timed from the timing copy it left, and named so
    import shutil

    assert len(list((out / "timing_models").glob("*.onnx.gz"))) == 3
    shutil.rmtree(out / "exports")
    runner.run_bench(str(recipe), out=str(out), side_by_side=True)
    sbs = json.loads((out / "side_by_side.json").read_text())
    assert sbs["timing_copies"] == ["big", "tiny", "worse"] and set(sbs["ms"]["1"]) == set(spec), sbs
    assert sbs["ms"]["1"]["tiny"]["median"] < sbs["ms"]["1"]["big"]["median"], sbs["ms"]["1"]
    assert "Timed from their timing copy" in (out / "report.md").read_text()


def test_pareto_keeps_the_rows_nothing_beats_on_both_cost_and_map():
    from yolo_distill.bench.side_by_side import pareto

    pts = {"a": (1.0, 0.2), "b": (2.0, 0.5), "c": (2.0, 0.4), "d": (3.0, 0.5), "e": (0.5, 0.1)}
    assert pareto(pts) == ["e", "a", "b"]
    assert pareto({"x": (1.0, 0.3), "y": (1.0, 0.3)}) == ["x", "y"], "equal rows do not remove each other"
    same_shapes = {"zeros": (16.95, 0.49), "dense": (17.04, 0.57), "small": (6.0, 0.41)}  # 0.5 % apart: timer noise
    assert pareto(same_shapes) == ["small", "zeros", "dense"]
    assert pareto(same_shapes, tol=0.03) == ["small", "dense"], "a latency tie goes to the higher mAP"
    assert pareto({"x": (1.0, 0.3), "y": (1.02, 0.3)}, tol=0.03) == ["x", "y"], "tied on both: neither removed"


def test_rerun_computes_a_cached_row_again_and_nothing_else(tmp_path, monkeypatch):
    """rerun= recomputes the named cached row (every seed) and replaces its result; a row it builds on whose
    checkpoint is still there is reused, one whose checkpoint is gone is computed again; no other row runs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: shapes-tiny\nseed: 0\nrows:\n"
        "  - {name: teacher, kind: train, model: a.yaml}\n"
        "  - {name: plain, kind: train, model: b.yaml}\n"
        "  - {name: edge, kind: export, from: '@teacher', epochs: 0}\n"
    )
    calls, n = [], iter(range(100))

    def fake(row, s, done, out):
        calls.append(row.name)
        ck = out / f"{row.name}.pt"
        ck.write_bytes(b"x")
        return {"name": row.name, "kind": row.kind, "checkpoint": str(ck), "map50_95": 0.1, "map50": 0.1,
                "params": 1, "gflops": 1.0, "onnx_ms": float(next(n)), "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(rows, "run_row", fake)
    monkeypatch.setattr("yolo_distill.data.builtin.resolve_data", lambda d: d)
    out = tmp_path / "b"
    runner.run_bench(str(recipe), out=str(out), only="teacher,edge")
    assert calls == ["teacher", "edge"]
    first = {r["name"]: r["onnx_ms"] for r in runner.run_bench(str(recipe), out=str(out), report_only=True)["rows"]}
    calls.clear()
    res = runner.run_bench(str(recipe), out=str(out), rerun="edge")
    assert calls == ["edge"], f"rerun=edge must compute edge alone (its teacher's checkpoint is there): {calls}"
    again = {r["name"]: r["onnx_ms"] for r in res["rows"]}
    assert again["edge"] != first["edge"] and again["teacher"] == first["teacher"], (first, again)
    calls.clear()
    (out / "teacher.pt").unlink()
    runner.run_bench(str(recipe), out=str(out), rerun=["edge"])
    assert calls == ["teacher", "edge"], f"a gone checkpoint of a row edge builds on is made again: {calls}"
    for bad, match in (({"rerun": "nope"}, "rerun=\\['nope'\\]"), ({"rerun": "edge", "report_only": True}, "rerun")):
        with pytest.raises(ValueError, match=match):
            runner.run_bench(str(recipe), out=str(out), **bad)


def test_a_timing_copy_is_the_same_graph_with_its_conv_weights_zeroed(tmp_path, ckpt_factory):
    """What side_by_side times when a row's model is gone: every node, input and constant as in the model, the
    convolutions' weights and biases zero (so it gzips to KBs), every other constant (shapes, anchors) unchanged;
    it runs and gives outputs of the model's shape."""
    import gzip

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from yolo_distill.deploy.exporter import ultralytics_export
    from yolo_distill.deploy.latency import open_timing_copy, ort_runner, write_timing_copy

    src = ultralytics_export(ckpt_factory("yolo11n.yaml"), tmp_path / "m.onnx", "onnx", 64)
    gz = write_timing_copy(src, tmp_path / "keep" / "m.onnx.gz")
    assert gz.stat().st_size < src.stat().st_size / 20, (gz.stat().st_size, src.stat().st_size)
    a, b = onnx.load(str(src)), onnx.load(str(open_timing_copy(gz, tmp_path / "open")))
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    weights = {n.input[i] for n in a.graph.node if n.op_type == "Conv" for i in (1, 2) if i < len(n.input)}
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys() and len(weights) > 50 and sum(ia[w].any() for w in weights) > 50
    for name, arr in ia.items():
        assert ib[name].shape == arr.shape and ib[name].dtype == arr.dtype, name
        if name in weights:
            assert not ib[name].any(), name
        else:
            assert np.array_equal(ib[name], arr), f"{name} is no weight and must be kept"
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    assert ort_runner(tmp_path / "open" / "m.onnx", 1)(x)[0].shape == ort_runner(src, 1)(x)[0].shape
    assert gzip.decompress(gz.read_bytes()) == b.SerializeToString()


def test_side_by_side_rebuilds_the_shapes_of_a_compressed_row_whose_model_is_gone(tmp_path, monkeypatch, ckpt_factory,
                                                                                  tiny_data):  # fmt: skip
    """A prune row that finished in another checkout (no exports, no timing copy) is pruned again from its source
    without fine-tuning and timed from that copy; a rebuild whose parameter count differs from the row's is refused."""
    from yolo_distill.checkpoints import load_model
    from yolo_distill.compress.pruner import model_stats

    src = ckpt_factory("yolo11n.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {tiny_data}\nimgsz: 64\nexport_imgsz: 64\nrows:\n"
                      f"  - {{name: half, kind: prune, from: {src}, ratio: 0.5}}\n"
                      f"  - {{name: other, kind: prune, from: {src}, ratio: 0.3}}\n"
                      f"  - {{name: source, kind: export, from: {src}, epochs: 0}}\n")  # fmt: skip

    def fake(row, s, done, out):  # a finished row as a fresh clone has it: a result, no run folder, no exports
        ck = str(src) if row.kind == "export" else rows.prune_row(row, s, str(src), out / "elsewhere", 64)
        params = model_stats(load_model(ck), 64)["params"] + (1 if row.name == "other" else 0)
        return {"name": row.name, "kind": "prune", "checkpoint": str(out / "gone.pt"), "map50_95": 0.1,
                "map50": 0.2, "params": params, "gflops": 1.0, "onnx_ms": 1.0, "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(rows, "run_row", fake)
    out = tmp_path / "b"
    runner.run_bench(str(recipe), out=str(out))
    assert not (out / "timing_models").exists()
    runner.run_bench(str(recipe), out=str(out), side_by_side=[1])
    sbs = json.loads((out / "side_by_side.json").read_text())
    assert set(sbs["ms"]["1"]) == {"half", "source"} and sbs["timing_copies"] == ["half", "source"], sbs
    assert len(list((out / "timing_models").glob("*.onnx.gz"))) == 2
