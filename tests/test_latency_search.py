"""Latency-targeted pruning: the search lands within 5 % below the budget on the latency it is given, per family;
the checkpoint workflow wires runtime, threads and imgsz through and reports the curve; real timing works on both
runtimes; budgets it cannot serve are refused before anything is written.

The search is tested against a deterministic latency (a GFLOPs proxy): a unit test never asserts wall-clock timing;
the measured landing on a real runtime is a bench row."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import FAMILIES
from yolo_distill.api import prune
from yolo_distill.checkpoints import load_model
from yolo_distill.compress import latency_search
from yolo_distill.compress.latency_search import latency_prune
from yolo_distill.compress.pruner import PruneConfig, model_stats
from yolo_distill.deploy import latency as lat
from yolo_distill.deploy import openvino as ov


def proxy_ms(model, *_a, **_k) -> float:
    """A deterministic stand-in for a runtime: 100 ms per GFLOP at 64 px."""
    return 100.0 * model_stats(model, 64)["gflops"]


@pytest.mark.parametrize("family", ["v8"])
def test_the_search_lands_within_5_percent_below_the_budget(ckpt_factory, family):
    model = load_model(ckpt_factory(FAMILIES[family]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = proxy_ms(model)
    layers = [2, 4, 6, 8, 12, 15, 18, 21, 22]  # the C2f blocks and Detect keep the test short; real use scans all
    pruned, rep = latency_prune(model, PruneConfig(imgsz=64), 0.8 * base, proxy_ms, layers=layers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the source model changed"
    assert rep["within_tol"] and 0.95 * 0.8 * base <= proxy_ms(pruned) <= 0.8 * base
    assert rep["final_ms"] == pytest.approx(proxy_ms(pruned)) and len(rep["curve"]) >= 2
    ratios = [r for *_, r in rep["layers"].values()]
    assert len(set(round(r, 3) for r in ratios)) > 1, "per-layer widths, not one uniform ratio"


def test_layers_whose_lone_gain_the_timer_misses_still_shrink_when_the_budget_needs_them(ckpt_factory):
    """A timer that cannot see savings under 5 % (a small input on a noisy CPU) hides what some layers buy alone;
    pruned together they still save plenty. The search shrinks them last instead of leaving them whole, so a budget
    that every layer together reaches is met (it was refused as unreachable)."""
    model = load_model(ckpt_factory("yolov8n.yaml"))
    base = proxy_ms(model)

    def coarse_ms(m, *_a, **_k) -> float:
        ms = proxy_ms(m)
        return ms if base - ms > 0.05 * base else base

    layers = [2, 4, 6, 8, 12, 15, 18, 21, 22]
    pruned, rep = latency_prune(model, PruneConfig(imgsz=64), 0.78 * base, coarse_ms, layers=layers)
    assert rep["unmeasured"], "the coarse timer should hide some layers' lone gains"
    assert rep["within_tol"] and 0.95 * 0.78 * base <= coarse_ms(pruned) <= 0.78 * base
    assert all(rep["layers"][i][2] > 0 for i in rep["unmeasured"]), "a hidden layer was left whole"


def test_budgets_the_search_cannot_serve_are_refused(ckpt_factory):
    model = load_model(ckpt_factory("yolov8n.yaml"))
    base = proxy_ms(model)
    with pytest.raises(ValueError, match="not below the source"):
        latency_prune(model, PruneConfig(imgsz=64), base * 1.2, proxy_ms)
    with pytest.raises(ValueError, match="unreachable"):
        latency_prune(model, PruneConfig(imgsz=64, max_layer_ratio=0.3), base * 0.05, proxy_ms, layers=[1, 3])


@pytest.fixture
def proxy_runtime(monkeypatch) -> list:
    """Every latency measurement goes to :func:`proxy_ms` (and the search scans a few layers); returns the list of
    ``(imgsz, runtime, threads)`` each measurement was asked for."""
    calls = []

    def fake(model, imgsz, runtime, threads):
        calls.append((imgsz, runtime, threads))
        return proxy_ms(model)

    monkeypatch.setattr(lat, "model_latency", fake)
    real_search = latency_search.latency_prune
    monkeypatch.setattr(latency_search, "latency_prune",
                        lambda *a, **k: real_search(*a, **k, layers=[2, 4, 6, 8, 12, 15, 18, 21, 22]))  # fmt: skip
    return calls


def test_checkpoint_workflow_measures_on_the_runtime_it_is_given(tmp_path, ckpt_factory, proxy_runtime):
    calls = proxy_runtime
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "src.pt")
    budget = 0.8 * proxy_ms(load_model(src))
    rep = prune(str(src), latency=f"{budget:.4f}ms", runtime="onnxruntime", threads=1, imgsz=64,
                out=str(tmp_path / "fast.pt"))  # fmt: skip
    assert set(calls) == {(64, "onnxruntime", 1)}
    assert rep["latency"]["within_tol"] and rep["after"]["gflops"] < rep["before"]["gflops"]
    assert (tmp_path / "fast_report.json").is_file()
    assert proxy_ms(load_model(tmp_path / "fast.pt")) == pytest.approx(rep["latency"]["final_ms"])


def test_a_bench_prune_row_with_a_relative_latency_budget(tmp_path, ckpt_factory, proxy_runtime):
    """``latency: 0.8x`` in a bench row: 80 % of the source's latency, measured on the row's runtime and threads."""
    from yolo_distill.bench.rows import prune_row
    from yolo_distill.bench.spec import parse_row

    calls = proxy_runtime
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "src.pt")
    row = parse_row({"name": "lat", "kind": "prune", "from": str(src), "latency": "0.8x", "runtime": "openvino",
                     "threads": 2}, "t", set())  # fmt: skip
    out = prune_row(row, {"data": None}, str(src), tmp_path / "bench", 64)
    base = proxy_ms(load_model(src))
    assert 0.95 * 0.8 * base <= proxy_ms(load_model(out)) <= 0.8 * base
    assert set(calls) == {(64, "openvino", 2)}
    for bad, match in (({"latency": "0.5x", "kind": "train", "model": "yolo11n.yaml"}, "latency applies to prune"),
                       ({"qat": True}, "qat applies to train"), ({"runtime": "tensorrt"}, "runtime must be")):
        with pytest.raises(ValueError, match=match):
            parse_row({"name": "x", "kind": "prune", "from": str(src)} | bad, "t", set())


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    not ov.available(), reason="the openvino extra is not installed"))])  # fmt: skip
def test_real_timing_of_an_exported_model(ckpt_factory, runtime):
    ms = lat.model_latency(load_model(ckpt_factory("yolo11n.yaml")), 64, runtime, threads=1, runs=3)
    assert 0 < ms < 10_000


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"latency": "fast"}, "latency='fast'"),
        ({"latency": -3}, "latency=-3"),
        ({"latency": "1.5x"}, "a fraction of the source's measured latency below 1"),
        ({"latency": 5, "runtime": "tensorrt"}, "runtime='tensorrt'"),
        ({"latency": 5, "gflops": "0.5x"}, "one target at a time"),
        ({"latency": 5, "granularity": "kernel"}, "one target at a time"),
        ({"latency": 5, "threads": 0}, "threads=0"),
    ],
)
def test_bad_latency_requests_are_refused_before_writing(tmp_path, ckpt_factory, kw, match):
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "src.pt")
    with pytest.raises(ValueError, match=match):
        prune(str(src), out=str(tmp_path / "o.pt"), imgsz=64, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]
