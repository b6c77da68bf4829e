"""Channel pruning of tiny v8/11/26 models: shapes, stock classes, targets, reload, fine-tune, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from tests.conftest import FAMILIES, train_args
from tests.test_distill_trainer import _clean_load
from yolo_distill.api import prune as prune_checkpoint
from yolo_distill.checkpoints import load_model
from yolo_distill.compress.pruner import PruneConfig, conv_channels, prune_model


def _head_out_convs(model) -> dict[str, int]:
    det = model.model[-1]
    return {f"{n}{i}": s[-1].out_channels if hasattr(s[-1], "out_channels") else s[-1].conv.out_channels
            for n in ("cv2", "cv3") for i, s in enumerate(getattr(det, n))}  # fmt: skip


@pytest.mark.parametrize("method", ["l1", "l2", "bn", "taylor"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_each_family_and_criterion(tiny_data, ckpt_factory, family, method):
    model = load_model(ckpt_factory(FAMILIES[family]))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y0 = model.eval()(x)[0]
    pruned, rep = prune_model(model, PruneConfig(ratio=0.5, method=method, imgsz=64), data=str(tiny_data), batches=1)
    with torch.no_grad():
        y1 = pruned(x)[0]
    assert y1.shape == y0.shape, "Detect's output shape must not change"
    assert _head_out_convs(pruned) == _head_out_convs(model)
    assert rep["params_ratio"] < 0.6 and rep["gflops_ratio"] < 0.6, rep["params_ratio"]
    assert {type(m).__module__.split(".")[0] for m in pruned.modules()} <= {"ultralytics", "torch"}
    assert conv_channels(model) != conv_channels(pruned)
    from ultralytics.nn.modules.block import Attention

    for a0, a1 in zip(
        [m for m in model.modules() if isinstance(m, Attention)],
        [m for m in pruned.modules() if isinstance(m, Attention)],
    ):  # attention blocks are pruned too, and stay consistent with their head layout
        assert a1.proj.conv.out_channels < a0.proj.conv.out_channels
        assert a1.num_heads * a1.head_dim == a1.proj.conv.in_channels == a1.pe.conv.groups
        assert a1.qkv.conv.out_channels == a1.num_heads * (2 * a1.key_dim + a1.head_dim)
    assert all(c % 8 == 0 or c == before for c, before in
               zip(conv_channels(pruned).values(), conv_channels(model).values()))  # fmt: skip


def test_gflops_target_and_scope(ckpt_factory):
    model = load_model(ckpt_factory("yolo11n.yaml"))
    _, full = prune_model(model, PruneConfig(ratio=0.3, imgsz=64))
    target = full["before"]["gflops"] * 0.6
    _, rep = prune_model(model, PruneConfig(ratio=None, gflops=target, imgsz=64))
    assert rep["after"]["gflops"] <= target < rep["before"]["gflops"]
    _, bb = prune_model(model, PruneConfig(ratio=0.5, scope="backbone", imgsz=64))
    neck = [k for k in bb["layers"] if int(k.split(".")[1]) >= 11 and ".23." not in k]
    assert bb["layers"] and all(int(k.split(".")[1]) < 11 for k in bb["layers"] if k not in neck)
    for k in neck:  # neck convs may lose input channels only: their outputs keep their width
        assert bb["layers"][k][0] == bb["layers"][k][1]


def test_saved_checkpoint_is_stock_reloads_finetunes_and_exports(tmp_path, tiny_data, ckpt_factory):
    from yolo_distill.deploy.onnx import export_checkpoint
    from yolo_distill.distill.trainer import DistillationTrainer

    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "src.pt")
    src_bytes = (tmp_path / "src.pt").read_bytes()
    rep = prune_checkpoint(src, ratio=0.5, out=str(tmp_path / "pruned.pt"), imgsz=64, data=str(tiny_data), val=True)
    assert (tmp_path / "src.pt").read_bytes() == src_bytes, "the source checkpoint must never change"
    saved = json.loads((tmp_path / "pruned_report.json").read_text())
    assert saved["after"]["params"] == rep["after"]["params"] and "map50_95" in saved
    res = _clean_load(tmp_path / "pruned.pt", tiny_data)
    assert res["yd"] is False and set(res["mods"]) <= {"ultralytics", "torch"}
    pruned = load_model(tmp_path / "pruned.pt")
    # fine-tune one epoch through our trainer, with KD from the unpruned model: shapes kept, weights trained
    tr = DistillationTrainer(overrides=dict(model=str(tmp_path / "pruned.pt"), data=str(tiny_data), teacher=str(src),
                                            recipe="default", **train_args(tmp_path)))  # fmt: skip
    tr.train()
    ck = torch.load(tr.last, weights_only=False)
    tuned = (ck.get("ema") or ck["model"]).float()
    assert conv_channels(tuned) == conv_channels(pruned), "fine-tuning re-inflated the pruned model"
    sd0, sd1 = pruned.state_dict(), tuned.state_dict()
    assert sd0.keys() == sd1.keys() and all(sd0[k].shape == sd1[k].shape for k in sd0)
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if sd0[k].is_floating_point()), "weights never trained"
    r = export_checkpoint(tr.best, imgsz=64, data=str(tiny_data), runs=2, validate=False)
    assert r.parity.ok


def test_pruning_a_pruned_model_is_reported(tmp_path, ckpt_factory):
    src = shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "a.pt")
    prune_checkpoint(src, ratio=0.3, out=str(tmp_path / "b.pt"), imgsz=64)
    rep = prune_checkpoint(tmp_path / "b.pt", ratio=0.3, out=str(tmp_path / "c.pt"), imgsz=64)
    assert rep["already_pruned"] is True and rep["after"]["params"] < rep["before"]["params"]


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"ratio": 1.2}, ValueError, r"ratio=.* is not valid: expected a number in \(0, 1\)"),
        ({"ratio": 0}, ValueError, r"ratio=.* is not valid: expected a number in \(0, 1\)"),
        ({"gflops": 1000.0}, ValueError, "is not below the model's"),
        ({"gflops": 0.001, "scope": "backbone"}, ValueError, "unreachable"),
        ({"method": "random"}, ValueError, "method 'random' is not one of"),
        ({"protect": ["model.99.conv"]}, ValueError, "no layer named 'model.99.conv'.*'head'"),
        ({"protect": [99]}, ValueError, "layer index 99 does not exist"),
        ({"method": "taylor"}, ValueError, "needs data="),
    ],
)
def test_bad_input_writes_nothing(tmp_path, ckpt_factory, kw, exc, match):
    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    with pytest.raises(exc, match=match):
        prune_checkpoint(src, out=str(tmp_path / "out.pt"), imgsz=64, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_bad_files(tmp_path, ckpt_factory):
    from ultralytics.nn.tasks import ClassificationModel

    from yolo_distill.checkpoints import save_stock_checkpoint

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be loaded"):
        prune_checkpoint(bad, out=str(tmp_path / "o.pt"))
    cls = save_stock_checkpoint(ClassificationModel("yolo11n-cls.yaml", nc=3, verbose=False), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="only detection models"):
        prune_checkpoint(cls, out=str(tmp_path / "o.pt"))
    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="never overwritten"):
        prune_checkpoint(src, out=str(src))
    (tmp_path / "taken.pt").write_bytes(b"user file")
    with pytest.raises(FileExistsError):
        prune_checkpoint(src, out=str(tmp_path / "taken.pt"))
    assert (tmp_path / "taken.pt").read_bytes() == b"user file"


@pytest.mark.parametrize("family", ["v8", "11"])
def test_protect_head_keeps_every_detect_conv(ckpt_factory, family):
    """``protect=head`` names the Detect layer in any family (index 22 in YOLOv8, 23 in YOLO11)."""
    model = load_model(ckpt_factory(FAMILIES[family]))
    det = len(model.model) - 1
    by_name, rep = prune_model(model, PruneConfig(ratio=0.5, imgsz=64, protect=["head"]))
    by_index, _ = prune_model(model, PruneConfig(ratio=0.5, imgsz=64, protect=[det]))
    assert conv_channels(by_name) == conv_channels(by_index)
    head = {k: v for k, v in conv_channels(by_name).items() if k.startswith(f"model.{det}.")}
    assert head and head == {k: v for k, v in conv_channels(model).items() if k.startswith(f"model.{det}.")}
    assert rep["params_ratio"] < 0.8, "the rest of the model must still be pruned"


@pytest.mark.parametrize("family", ["v8", "11", "26"])
def test_protect_names_a_conv_inside_a_csp_block(ckpt_factory, family):
    """``protect=model.2.cv1.conv`` keeps that conv whole, though pruning splits its block's ``cv1`` in two halves;
    the rest of the model is still pruned. In YOLO11/26 the C2PSA block's ``cv1`` is named the same way."""
    model = load_model(ckpt_factory(FAMILIES[family]))
    psa = [f"model.{i}.cv1" for i, m in enumerate(model.model) if type(m).__name__ == "C2PSA"]
    names = ["model.2.cv1.conv", *psa]
    pruned, rep = prune_model(model, PruneConfig(ratio=0.5, imgsz=64, protect=names))
    before, after = conv_channels(model), conv_channels(pruned)
    for name in names:
        conv = name if name.endswith(".conv") else f"{name}.conv"
        assert after[conv] == before[conv], (conv, before[conv], after[conv])
    assert rep["params_ratio"] < 0.8, "the rest of the model must still be pruned"
    assert after["model.2.cv2.conv"] < before["model.2.cv2.conv"], "the block's other convs are not protected"


def test_layer_ratios_prune_only_those_layers(ckpt_factory):
    model = load_model(ckpt_factory("yolov8n.yaml"))
    others = [i for i in range(len(model.model)) if i != 2]
    _, rep = prune_model(model, PruneConfig(ratio=0.5, imgsz=64, protect=others, layer_ratios={2: 0.5}))
    changed_out = {k for k, (a, b) in rep["layers"].items() if a != b}
    assert changed_out and all(k.startswith("model.2.") for k in changed_out), changed_out
    with pytest.raises(ValueError, match=r"layer_ratios must be in \[0, 1\)"):
        PruneConfig(layer_ratios={2: 1.5})


def test_sensitivity_scan_table_plot_and_allocation(tmp_path, tiny_data, ckpt_factory):
    from yolo_distill.compress import sensitivity

    model = load_model(ckpt_factory("yolo11n.yaml"))
    res = sensitivity.scan(model, str(tiny_data), ratios=(0.25, 0.5), imgsz=64, layers=[2, 4], out_dir=tmp_path)
    assert set(res["drops"]) == {2, 4} and all(set(d) == {0.25, 0.5} for d in res["drops"].values())
    rows = (tmp_path / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "layer,drop@0.25,drop@0.5" and len(rows) == 3
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
    fake = {"drops": {2: {0.25: 0.001, 0.5: 0.05}, 4: {0.25: 0.3, 0.5: 0.4}, 6: {0.25: 0.0, 0.5: 0.0}}}
    assert sensitivity.allocate(fake, max_drop=0.01) == {2: 0.25, 4: 0.0, 6: 0.5}


def test_bn_sparsity_training_shrinks_bn_scales(tmp_path, tiny_data):
    from yolo_distill.distill.trainer import DistillationTrainer

    def bn_l1(sparsity: float) -> float:
        torch.manual_seed(0)
        tr = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=str(tiny_data), sparsity=sparsity,
                                                **train_args(tmp_path, name=f"s{sparsity}", val=False)))  # fmt: skip
        tr.train()
        m = tr.model
        return float(sum(x.weight.abs().sum() for x in m.modules() if isinstance(x, nn.BatchNorm2d)))

    plain, sparse = bn_l1(0.0), bn_l1(10.0)
    assert sparse < plain - 1e-3, f"L1 on BN scales should shrink them: {sparse} vs {plain}"


def test_iterative_recipe_reaches_target_and_keeps_source(tmp_path, tiny_data, ckpt_factory):
    from yolo_distill.compress.iterative import iterative_prune, load_iterative_recipe

    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "src.pt")
    rep = iterative_prune(str(src), str(tiny_data), "iterative", out=str(tmp_path / "final.pt"), steps=2,
                          finetune_epochs=1, imgsz=64, batch=4)  # fmt: skip
    g = [s["gflops"] for s in rep["steps"]]
    assert len(g) == 2 and g[0] > g[1] and g[1] <= 0.5 * rep["base_gflops"] * 1.001
    final = load_model(tmp_path / "final.pt")
    assert sum(p.numel() for p in final.parameters()) == rep["steps"][-1]["params"]
    assert (tmp_path / "final_report.json").exists()
    with pytest.raises(FileExistsError):
        iterative_prune(str(src), str(tiny_data), "iterative", out=str(tmp_path / "final.pt"))
    with pytest.raises(KeyError, match="unknown key"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("stepz: 3\n")
        load_iterative_recipe(bad)


@pytest.mark.parametrize("family", ["v8", "26"])
def test_global_allocation_is_non_uniform_and_stock(ckpt_factory, family):
    model = load_model(ckpt_factory(FAMILIES[family]))
    _, uni = prune_model(model, PruneConfig(ratio=0.5, imgsz=64))
    pruned, glo = prune_model(model, PruneConfig(ratio=0.5, imgsz=64, allocation="global"))
    assert glo["layers"] != uni["layers"], "global allocation should differ from uniform"

    def spread(rep: dict) -> float:
        kept = [b / a for a, b in rep["layers"].values() if b]
        return max(kept) - min(kept)

    assert spread(glo) > spread(uni), "a global ranking prunes layers by different amounts; uniform only rounds"
    with torch.no_grad():
        assert pruned(torch.rand(1, 3, 64, 64))[0].shape == model.eval()(torch.rand(1, 3, 64, 64))[0].shape
    assert {type(m).__module__.split(".")[0] for m in pruned.modules()} <= {"ultralytics", "torch"}
