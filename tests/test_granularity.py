"""Fine-grained pruning (kernel, vector, weight, N:M): the masks' maths, every family, the zeros kept through a
fine-tune with KD, a stock checkpoint with its sizes reported, and bad input refused before anything is written."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import FAMILIES, train_args
from tests.test_distill_trainer import _clean_load
from yolo_distill.api import prune
from yolo_distill.checkpoints import SPARSE_ATTR, load_model, sparse_masks
from yolo_distill.compress import granularity as grain
from yolo_distill.compress.granularity import SparseConfig, sparsify_model

GRAINS = ["kernel", "vector", "weight", "nm"]


def test_kernel_mask_drops_the_weakest_whole_kernels():
    w = torch.randn(8, 6, 3, 3)
    w[2, 4] *= 0.001  # the weakest kernel
    keep = grain.kernel_mask(w, 0.25)
    per_kernel = keep.flatten(2)
    assert (per_kernel.all(-1) | ~per_kernel.any(-1)).all(), "a kernel is either kept whole or dropped whole"
    assert int((~per_kernel.any(-1)).sum()) == 12  # 25 % of 48 kernels
    assert not keep[2, 4].any()
    kept, dropped = w.abs().sum((2, 3))[keep[:, :, 0, 0]], w.abs().sum((2, 3))[~keep[:, :, 0, 0]]
    assert dropped.max() <= kept.min()


def test_vector_and_weight_masks_hit_the_sparsity_at_their_unit():
    w = torch.randn(4, 4, 3, 3)
    v = grain.vector_mask(w, 0.5)
    assert (v.all(-1) | ~v.any(-1)).all() and int((~v.any(-1)).sum()) == 24  # half of 48 rows, whole rows
    u = grain.weight_mask(w, 0.5)
    assert int((~u).sum()) == 72 and w.abs()[~u].max() <= w.abs()[u].min()


def test_nm_mask_keeps_n_of_every_m_consecutive_input_channels():
    w = torch.randn(6, 8, 3, 3)
    keep = grain.nm_mask(w, n=2, m=4)
    groups = keep.permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4)
    assert (groups.sum(-1) == 2).all()
    g = w.abs().permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4)
    assert (torch.where(groups, g, torch.inf).amin(-1) >= torch.where(groups, -torch.inf, g).amax(-1)).all()


@pytest.mark.parametrize("grain", GRAINS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_gets_its_zeros_and_keeps_its_shapes(ckpt_factory, family, grain):
    model = load_model(ckpt_factory(FAMILIES[family]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparse, rep = sparsify_model(model, SparseConfig(granularity=grain, sparsity=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the source model changed"
    sd = sparse.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in before.items()}
    assert rep["sparsity_in_scope"] == pytest.approx(0.5, abs=0.02)
    assert rep["nonzero_params"] < 0.75 * rep["nonzero_params_before"]
    det = len(sparse.model) - 1
    dense = [k for k in sd if k.startswith(f"model.{det}.") and (".dfl." in k or "cv2.0.2" in k or "cv3.0.2" in k)]
    assert dense and all(torch.equal(sd[k], before[k]) for k in dense), "Detect's output convs and DFL stay dense"
    masks = sparse_masks(sparse)
    assert masks and set(masks) == set(getattr(sparse, SPARSE_ATTR)["params"])
    with torch.no_grad():
        out = sparse.eval()(torch.rand(1, 3, 64, 64))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert torch.isfinite(out).all()


def test_sparse_checkpoint_is_stock_smaller_compressed_and_keeps_its_zeros_through_kd(tmp_path, tiny_data,
                                                                                    ckpt_factory):
    from yolo_distill.distill.trainer import DistillationTrainer

    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "src.pt")
    src_bytes = (tmp_path / "src.pt").read_bytes()
    rep = prune(str(src), granularity="kernel", ratio=0.6, out=str(tmp_path / "k.pt"), imgsz=64,
                data=str(tiny_data), val=True)  # fmt: skip
    assert (tmp_path / "src.pt").read_bytes() == src_bytes, "the source checkpoint must never change"
    assert (tmp_path / "k_report.json").is_file() and "map50_95" in rep
    assert rep["gzip_mb"]["after"] < 0.8 * rep["gzip_mb"]["before"], rep["gzip_mb"]
    res = _clean_load(tmp_path / "k.pt", tiny_data)
    assert res["yd"] is False and set(res["mods"]) <= {"ultralytics", "torch"}
    sparse = load_model(tmp_path / "k.pt")
    masks = sparse_masks(sparse)
    tr = DistillationTrainer(overrides=dict(model=str(tmp_path / "k.pt"), data=str(tiny_data), teacher=str(src),
                                            recipe="default", **train_args(tmp_path, epochs=2, nbs=4)))  # fmt: skip
    tr.train()
    for f in (tr.last, tr.best):
        ck = torch.load(f, weights_only=False)
        tuned = (ck.get("ema") or ck["model"]).float()
        params = dict(tuned.named_parameters())
        assert all(not params[n][~m].any() for n, m in masks.items()), f"pruned weights came back in {f.name}"
        assert any(not torch.equal(params[n][m], dict(sparse.named_parameters())[n][m]) for n, m in masks.items())
        assert getattr(tuned, SPARSE_ATTR)["granularity"] == "kernel", "the record travels on for the next fine-tune"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"granularity": "row"}, "granularity='row'"),
        ({"granularity": "nm", "n": 4, "m": 4}, "n=4"),
        ({"granularity": "nm", "ratio": 0.8}, "1 - n/m"),
        ({"granularity": "weight", "ratio": 1.0}, "ratio=1.0"),
        ({"granularity": "kernel", "gflops": "0.5x"}, "gflops="),
        ({"granularity": "vector", "method": "bn"}, "method='bn'"),
        ({"granularity": "weight", "allocation": "global"}, "allocation='global'"),
        ({"granularity": "kernel", "val": True}, "needs data="),
        ({"granularity": "nm", "m": 1}, "m=1"),
    ],
)
def test_bad_fine_grained_requests_are_refused_before_writing(tmp_path, ckpt_factory, kw, match):
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "src.pt")
    with pytest.raises(ValueError, match=match):
        prune(str(src), out=str(tmp_path / "o.pt"), imgsz=64, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]
