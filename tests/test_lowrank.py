"""Low-rank factorization: exact at full rank, every family factorized into stock modules that fuse, prune and
fine-tune with their shapes kept, a GFLOPs target met, the source untouched, bad input refused before writing."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from ultralytics.nn.modules.conv import Conv

from tests.conftest import FAMILIES, SHIPPED_TEACHER, train_args
from tests.test_distill_trainer import _clean_load
from yolo_distill.api import lowrank
from yolo_distill.checkpoints import load_model
from yolo_distill.compress.lowrank import LowRankConfig, _factor, _Layer, factorize_model


def _layer(conv: Conv) -> _Layer:
    w = conv.conv.weight.detach()
    o, i, kh, kw = w.shape
    u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(i * kh, o * kw).double(), full_matrices=False)
    return _Layer("x", conv, u, s, vh)


@pytest.mark.parametrize("k,s", [(1, 1), (3, 1), (3, 2)])
def test_a_conv_factorized_at_full_rank_is_the_same_conv_and_error_falls_with_rank(k, s):
    conv = Conv(16, 24, k, s).eval()
    x = torch.randn(2, 16, 20, 20)
    lay = _layer(conv)
    with torch.no_grad():
        ref = conv(x)
        full = _factor(lay, lay.full)(x)
        errs = [float((_factor(lay, r)(x) - ref).abs().mean()) for r in (2, 6, lay.full - 2)]
    assert full.shape == ref.shape and torch.allclose(full, ref, atol=1e-4)
    assert errs[0] > errs[1] > errs[2]
    seq = _factor(lay, 4)
    assert isinstance(seq, nn.Sequential) and seq[0].kernel_size == (k, 1) and seq[1].conv.kernel_size == (1, k)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_factorizes_into_stock_modules_that_fuse_and_prune(ckpt_factory, family):
    from yolo_distill.compress.pruner import PruneConfig, prune_model

    model = load_model(ckpt_factory(FAMILIES[family]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fact, rep = factorize_model(model, LowRankConfig(rank=4, imgsz=64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the source model changed"
    assert rep["layers"] and rep["gflops_ratio"] < 0.8 and rep["after"]["params"] < rep["before"]["params"]
    assert {type(m).__module__.split(".")[0] for m in fact.modules()} <= {"ultralytics", "torch"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = fact(x)
    fact.fuse(verbose=False)  # Ultralytics folds each BN into the factor that carries it
    with torch.no_grad():
        yf = fact(x)
    y, yf = (t[0] if isinstance(t, (tuple, list)) else t for t in (y, yf))
    assert torch.allclose(y, yf, atol=1e-3, rtol=1e-3)
    fact2, _ = factorize_model(model, LowRankConfig(rank=4, imgsz=64))
    pruned, prep = prune_model(fact2, PruneConfig(ratio=0.3, imgsz=64))  # a factorized model can be pruned further
    assert prep["after"]["gflops"] < prep["before"]["gflops"]


def test_a_gflops_target_is_met_on_a_trained_model():
    t = load_model(SHIPPED_TEACHER)
    fact, rep = factorize_model(t, LowRankConfig(gflops=0.6 * 3.4525, imgsz=256))
    assert rep["after"]["gflops"] == pytest.approx(0.6 * rep["before"]["gflops"], rel=0.02)
    assert 0 < rep["energy_used"] < 1 and all(1 <= r < full for r, full, _ in rep["layers"].values())


def test_checkpoint_is_stock_and_fine_tunes_with_kd_keeping_its_factors(tmp_path, tiny_data, ckpt_factory):
    from yolo_distill.distill.trainer import DistillationTrainer

    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "src.pt")
    src_bytes = (tmp_path / "src.pt").read_bytes()
    rep = lowrank(str(src), rank=4, out=str(tmp_path / "f.pt"), imgsz=64, data=str(tiny_data), val=True)
    assert (tmp_path / "src.pt").read_bytes() == src_bytes, "the source checkpoint must never change"
    assert (tmp_path / "f_report.json").is_file() and "map50_95" in rep
    res = _clean_load(tmp_path / "f.pt", tiny_data)  # predict + val (which fuses) in a process without us
    assert res["yd"] is False and set(res["mods"]) <= {"ultralytics", "torch"}
    fact = load_model(tmp_path / "f.pt")
    n = sum(p.numel() for p in fact.parameters())  # fp16 on disk: about 2 bytes a parameter, nothing else pickled
    assert (tmp_path / "f.pt").stat().st_size < 2 * n + 400_000, ((tmp_path / "f.pt").stat().st_size, n)
    tr = DistillationTrainer(overrides=dict(model=str(tmp_path / "f.pt"), data=str(tiny_data), teacher=str(src),
                                            recipe="default", **train_args(tmp_path, nbs=4)))  # fmt: skip
    tr.train()
    ck = torch.load(tr.last, weights_only=False)
    tuned = (ck.get("ema") or ck["model"]).float()
    sd0, sd1 = fact.state_dict(), tuned.state_dict()
    assert {k: v.shape for k, v in sd0.items()} == {k: v.shape for k, v in sd1.items()}, "factors re-inflated"
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if k.endswith(".0.weight")), "factors never trained"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"energy": 0.0}, "energy=0.0"),
        ({"energy": 1.2}, "energy=1.2"),
        ({"rank": 0}, "rank=0"),
        ({"rank": 4, "energy": 0.5}, "not several"),
        ({"gflops": "1.5x"}, "gflops="),
        ({"gflops": 1e-6}, "unreachable"),
        ({"energy": 0.999}, "no layer gains"),
        ({"min_gain": 1.0}, "min_gain=1.0"),
        ({"val": True}, "needs data="),
        ({"out": "src.pt"}, "must differ"),
    ],
)
def test_bad_lowrank_requests_are_refused_before_writing(tmp_path, ckpt_factory, kw, match):
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "src.pt")
    kw = {"out": str(tmp_path / "o.pt"), **kw}
    if kw["out"] == "src.pt":
        kw["out"] = str(src)
    with pytest.raises(ValueError, match=match):
        lowrank(str(src), imgsz=64, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]
