"""Quantization-aware training with KD from the FP32 model (``qat=True``): fake quantization inserted and trained,
exported as an INT8 QDQ ONNX model with its parity and mAP measured; refused where it cannot work, before writing.
Skipped only where the ``qat`` extra (NVIDIA ModelOpt) is not installed (CI installs it)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from tests.conftest import SHIPPED_TEACHER, train_args
from yolo_distill.api import export, train
from yolo_distill.checkpoints import load_model

needs_modelopt = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                    reason='the qat extra is not installed: pip install -e ".[qat]"')  # fmt: skip


@needs_modelopt
def test_qat_with_kd_trains_fake_quantized_weights_and_exports_int8_qdq(tmp_path, tiny_data, ckpt_factory):
    import onnx
    from ultralytics.utils.torch_utils import is_qat

    src = shutil.copy(SHIPPED_TEACHER, tmp_path / "fp32.pt")  # a trained model: QAT fine-tunes trained weights
    tr = train(str(src), str(tiny_data), teacher=str(src), recipe="logit", qat=True,
               **train_args(tmp_path, nbs=4))  # fmt: skip
    tuned, before = load_model(tr.best), load_model(src)
    assert is_qat(tuned), "the checkpoint carries no fake quantization"
    w0 = dict(before.named_parameters())
    changed = [n for n, p in tuned.named_parameters()
               if n in w0 and p.shape == w0[n].shape and not torch.equal(p, w0[n])]  # fmt: skip
    assert changed, "QAT never changed a weight"
    kd = [k for k in (tr.save_dir / "results.csv").read_text().splitlines()[0].split(",") if "kd" in k]
    assert kd, "no KD term was logged: the teacher did not take part"
    # our checkpoint writer (the bench's size column, prune and carve outputs) keeps the fake quantization
    from yolo_distill.checkpoints import save_stock_checkpoint

    again = load_model(save_stock_checkpoint(tuned, tmp_path / "resaved.pt"))
    x = torch.rand(1, 3, 64, 64)
    assert is_qat(again), "the re-saved checkpoint lost its fake quantization"
    assert torch.allclose(again.eval()(x)[0], tuned.eval()(x)[0], atol=1e-2), "re-saved, it computes otherwise"
    from yolo_distill.bench.rows import size_stats

    assert size_stats(str(tr.best))["size_mb"] > 0  # a bench row of a QAT model (it raised a PicklingError)
    ckpt = shutil.copy(tr.best, tmp_path / "qat.pt")
    # a bench export row of it: its only ONNX model is INT8, so the report shows it as such (it raised KeyError)
    from yolo_distill.bench.report import _onnx_lines
    from yolo_distill.bench.rows import export_row
    from yolo_distill.bench.spec import parse_row

    row = parse_row({"name": "qat_edge", "kind": "export", "from": str(ckpt), "epochs": 0}, "test", set())
    res = export_row(row, {"data": str(tiny_data), "export_imgsz": 64}, str(ckpt), tmp_path / "bench")
    assert res["parity_ok"] and res["int8_ms"] > 0 and res["onnx_ms"] == res["int8_ms"]
    line = _onnx_lines(["qat_edge"], [{"name": "qat_edge", **res}])[-1]
    assert line.startswith("| qat_edge (QAT) | - | 0.") and line.endswith(" | - |"), line
    r = export(str(ckpt), imgsz=64, data=str(tiny_data), runs=2)
    ops = {n.op_type for n in onnx.load(r.onnx).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert r.precision == "qat_int8" and "onnx_qat_int8" in r.latency_ms and "onnx_qat_int8" in r.map50_95
    assert r.parity.images == 4 and r.parity.detections_torch >= 0
    with pytest.raises(ValueError, match="format='openvino'"):
        export(str(ckpt), format="openvino", imgsz=64, overwrite=True)
    with pytest.raises(ValueError, match="int8=True"):
        export(str(ckpt), int8=True, data=str(tiny_data), imgsz=64, overwrite=True)


def test_qat_without_modelopt_names_the_install_command_and_writes_nothing(tmp_path, tiny_data, ckpt_factory,
                                                                          monkeypatch):  # fmt: skip
    src = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "fp32.pt")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "modelopt" else real(n, *a))
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[qat\]\""):
        train(str(src), str(tiny_data), teacher=str(src), qat=True, **train_args(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.pt"]
