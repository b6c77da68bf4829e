"""Knowledge carving: a stock smaller model of the family cut out of a trained larger one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import FAMILIES
from yolo_distill.api import carve


def _bigger(family: str) -> str:
    return FAMILIES[family].replace("n.yaml", "s.yaml")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_carved_model_is_exactly_the_target_and_trains_in_stock_ultralytics(tmp_path, tiny_data, ckpt_factory,
                                                                             family):  # fmt: skip
    """s -> n: every tensor has the target YAML's shape, the teacher's weights are where its channels were kept, the
    source never changes, and stock Ultralytics (no yolo_distill imported) rebuilds it from its YAML with every
    weight transferred, so YOLO("carved.pt").train() fine-tunes it without re-inflation."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.checkpoints import load_model

    src = tmp_path / "teacher.pt"
    src.write_bytes(ckpt_factory(_bigger(family)).read_bytes())
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    rep = carve(str(src), FAMILIES[family], out=str(tmp_path / "carved.pt"), imgsz=64)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, "the source checkpoint changed"
    carved = load_model(tmp_path / "carved.pt")
    target = DetectionModel(FAMILIES[family], nc=8, verbose=False)
    assert {k: v.shape for k, v in carved.state_dict().items()} == {k: v.shape for k, v in target.state_dict().items()}
    assert rep["after"]["params"] == sum(p.numel() for p in target.parameters()) < rep["before"]["params"]
    assert json.loads((tmp_path / "carved_report.json").read_text())["target"] == FAMILIES[family]
    first = carved.model[0].conv.weight  # the stem keeps a subset of the teacher's filters
    teacher0 = load_model(src).model[0].conv.weight
    assert all(any(torch.equal(f, g) for g in teacher0) for f in first)
    code = f"""
import json, sys, torch
from ultralytics import YOLO
y = YOLO({str(tmp_path / 'carved.pt')!r})
w0 = y.model.model[0].conv.weight.detach().clone()
y.train(data={str(tiny_data)!r}, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, val=False,
        project={str(tmp_path / "runs")!r}, name="ft", optimizer="SGD", lr0=0.0, warmup_epochs=0, warmup_bias_lr=0.0,
        amp=False)
m = y.trainer.model
print(json.dumps({{"params": sum(p.numel() for p in m.parameters()), "same_stem": bool(torch.equal(
    m.model[0].conv.weight.detach().cpu().float(), w0.float())), "yd": "yolo_distill" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"params": rep["after"]["params"], "same_stem": True, "yd": False}, res


def test_bad_carving_requests_are_refused_before_anything_is_written(tmp_path, ckpt_factory):
    src = tmp_path / "s.pt"
    src.write_bytes(ckpt_factory("yolo11s.yaml").read_bytes())
    cases = [
        ({"target": "yolov8n.yaml"}, "is a yolov8 model but the source is yolo11"),
        ({"target": "yolo11n.pt"}, "target='yolo11n.pt' is not valid"),
        ({"target": "yolo11n.yaml", "out": str(src)}, "a path other than model="),
        ({"target": "yolo11n.yaml", "method": "taylor"}, "method='taylor'"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            carve(str(src), **kw)
    n = tmp_path / "n.pt"
    n.write_bytes(ckpt_factory("yolo11n.yaml").read_bytes())
    for bigger in ("yolo11s.yaml", "yolo11m.yaml"):  # wider, and wider with other blocks: the size is named first
        with pytest.raises(ValueError, match=rf"target={bigger} \(.*M parameters\) is larger than the source"):
            carve(str(n), bigger, out=str(tmp_path / "ns.pt"))
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.compress.carve import carve_plan

    with pytest.raises(ValueError, match="wider than the source"):  # the per-layer check behind it
        carve_plan(*(DetectionModel(y, nc=8, verbose=False) for y in ("yolo11n.yaml", "yolo11s.yaml")))
    m = tmp_path / "m.pt"
    m.write_bytes(ckpt_factory("yolo11m.yaml").read_bytes())
    with pytest.raises(ValueError, match="holds C3k blocks in the source and Bottleneck in the target"):
        carve(str(m), "yolo11s.yaml", out=str(tmp_path / "ms.pt"))
    (tmp_path / "taken.pt").write_bytes(b"a user's file")
    with pytest.raises(FileExistsError):
        carve(str(src), "yolo11n.yaml", out=str(tmp_path / "taken.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "n.pt", "s.pt", "taken.pt"]


@pytest.mark.parametrize("source,target,layer", [("yolov8m.yaml", "yolov8s.yaml", 2),
                                                 ("yolo11l.yaml", "yolo11m.yaml", 2),
                                                 ("yolo26l.yaml", "yolo26m.yaml", 2)])  # fmt: skip
def test_depth_carving_keeps_the_most_used_repeated_blocks(tmp_path, ckpt_factory, source, target, layer):
    """A shallower target (v8 m -> s, 11/26 l -> m): each C2f / C3k2 / C2PSA keeps the target's number of inner
    blocks, those its output conv uses most, with their weights; the result has exactly the target's shapes, runs,
    and stock Ultralytics rebuilds it from its YAML with every weight in place."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.checkpoints import load_model, save_stock_checkpoint

    src_model = load_model(ckpt_factory(source))
    block = src_model.model[layer]
    c = block.cv2.conv.in_channels // (2 + len(block.m))
    with torch.no_grad():  # the output conv ignores inner block 0: depth carving must keep block 1
        block.cv2.conv.weight[:, 2 * c : 3 * c] = 0
    src = tmp_path / "src.pt"
    save_stock_checkpoint(src_model, src, train_args={"imgsz": 64})
    rep = carve(str(src), target, out=str(tmp_path / "carved.pt"), imgsz=64)
    assert rep["depth_kept"][layer] == [1], rep["depth_kept"]
    carved = load_model(tmp_path / "carved.pt")
    want = DetectionModel(target, nc=8, verbose=False)
    assert {k: v.shape for k, v in carved.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}
    if "yolo11" in source or "yolo26" in source:  # l -> m: the same widths, so the kept block is the source's own
        kept, orig = carved.model[layer].m[0].state_dict(), block.m[1].state_dict()
        assert all(torch.equal(kept[k], orig[k]) for k in orig)
    stock = DetectionModel(carved.yaml, nc=8, verbose=False)
    stock.load_state_dict(carved.state_dict(), strict=True)
    assert stock.eval()(torch.rand(1, 3, 64, 64))[0].shape[1] == 4 + 8
    shallow = DetectionModel(target, nc=8, verbose=False)
    assert sum(p.numel() for p in carved.parameters()) == sum(p.numel() for p in shallow.parameters())
