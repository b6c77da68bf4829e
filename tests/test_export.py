"""ONNX export of tiny v8/11/26 models: parity with PyTorch in ONNX Runtime, INT8, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from tests.conftest import FAMILIES
from yolo_distill.deploy.latency import SPEED_FLAGS, cpu_summary
from yolo_distill.deploy.onnx import export_checkpoint


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_parity_per_family(tmp_path, tiny_data, ckpt_factory, family):
    ckpt = shutil.copy(ckpt_factory(FAMILIES[family]), tmp_path / f"{family}.pt")
    r = export_checkpoint(ckpt, imgsz=64, data=str(tiny_data), runs=3, validate=False)
    assert r.parity.ok and r.parity.images == 4, r.parity
    assert r.parity.max_abs_score <= 1e-4 and r.parity.max_abs_box <= 1e-3
    out = json.loads((tmp_path / f"{family}_export.json").read_text())
    assert out["latency_ms"]["onnx_fp32"]["median"] > 0 and out["latency_ms"]["torch_fp32"]["median"] > 0
    assert out["machine"] == cpu_summary(), "the report names the CPU its latencies were measured on"
    names = {i.name for i in ort.InferenceSession(r.onnx).get_inputs()}
    assert names == {"images"}, "training-only inputs leaked into the graph"


def test_the_cpu_summary_names_the_model_and_the_instructions_that_decide_int8_speed():
    two_cpus = ("processor\t: 0\nmodel name\t: Xeon Gold\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_int8\n\n"
                "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")  # fmt: skip
    s = cpu_summary(two_cpus)
    assert s.startswith("Xeon Gold, ") and s.endswith("; avx2, avx512f, avx512_vnni, amx_int8"), s
    assert cpu_summary("model name: Old\nflags: fpu sse\n").endswith("; none of " + ", ".join(SPEED_FLAGS))
    assert cpu_summary("").endswith("; flags unknown")


def test_int8_runs_and_is_validated(tmp_path, tiny_data):
    """INT8 of a trained model (the shipped teacher): calibrated as asked, QDQ, and its mAP, run by ONNX Runtime,
    within 3 points of the FP32 ONNX model's (a broken calibration or a quantized decode would lose far more)."""
    from tests.conftest import SHIPPED_TEACHER

    ckpt = shutil.copy(SHIPPED_TEACHER, tmp_path / "m.pt")
    r = export_checkpoint(ckpt, imgsz=128, data=str(tiny_data), int8=True, runs=3, calib_images=8,
                          calib_method="minmax")  # fmt: skip
    assert (tmp_path / "m_int8.onnx").is_file() and r.int8_calibration == "minmax"
    assert r.latency_ms["onnx_int8"]["median"] > 0
    fp32, int8 = r.map50_95["onnx_fp32"], r.map50_95["onnx_int8"]
    assert fp32 > 0.03, f"the FP32 model must detect something for the comparison to mean anything: {fp32}"
    assert abs(int8 - fp32) <= 0.03, f"INT8 mAP {int8} vs FP32 {fp32}"
    sess = ort.InferenceSession(r.int8_onnx)
    ops = {n.op_type for n in __import__("onnx").load(r.int8_onnx).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert sess.get_outputs()[0].shape[1] == 4 + 8
    # a calibration method that cannot bin these activations falls back to minmax and says so in the report
    r2 = export_checkpoint(shutil.copy(SHIPPED_TEACHER, tmp_path / "p.pt"), imgsz=128, data=str(tiny_data), int8=True,
                           runs=1, calib_images=8, calib_method="percentile", validate=False)  # fmt: skip
    assert r2.int8_calibration in ("percentile", "minmax") and (tmp_path / "p_int8.onnx").is_file()


def test_existing_outputs_are_not_overwritten(tmp_path, tiny_data, ckpt_factory):
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    (tmp_path / "m.onnx").write_bytes(b"user's file")
    with pytest.raises(FileExistsError, match="already exist"):
        export_checkpoint(ckpt, imgsz=64, data=str(tiny_data))
    assert (tmp_path / "m.onnx").read_bytes() == b"user's file"


def test_bad_inputs(tmp_path, tiny_data, ckpt_factory, caplog):
    from ultralytics.nn.tasks import ClassificationModel

    from yolo_distill.checkpoints import save_stock_checkpoint

    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="exclusive"):
        export_checkpoint(ckpt, int8=True, half=True)
    with pytest.raises(ValueError, match="format='coreml' is not valid: expected one of onnx, openvino, ncnn, litert, "
                                         "all"):  # fmt: skip
        export_checkpoint(ckpt, format="coreml")
    cls = save_stock_checkpoint(ClassificationModel("yolo11n-cls.yaml", nc=3, verbose=False), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="detection models only"):
        export_checkpoint(cls)
    with pytest.raises(FileNotFoundError, match="not on disk"):
        export_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    (empty / "images" / "val").mkdir(parents=True)
    (empty / "data.yaml").write_text(f"path: {empty}\ntrain: images/val\nval: images/val\nnames: {{0: a}}\n")
    with pytest.raises(ValueError, match="holds no images"):  # the dataset check names it before anything is written
        export_checkpoint(ckpt, imgsz=64, int8=True, data=str(empty / "data.yaml"))
    r = export_checkpoint(ckpt, imgsz=70, data=str(tiny_data), runs=2, validate=False)
    assert r.imgsz == 96 and "not a multiple of the max stride" in caplog.text


def test_fp16_export_is_fp16_and_within_its_tolerance(tmp_path, tiny_data, ckpt_factory):
    import onnx

    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    r = export_checkpoint(ckpt, imgsz=64, data=str(tiny_data), half=True, runs=2, validate=False)
    assert r.precision == "fp16" and r.parity.ok and "onnx_fp16" in r.latency_ms
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in onnx.load(r.onnx).graph.initializer}


def test_interleaved_latency_comparison(tmp_path, tiny_data, ckpt_factory):
    import numpy as np

    from yolo_distill.deploy.latency import compare_onnx

    a = export_checkpoint(shutil.copy(ckpt_factory("yolov8n.yaml"), tmp_path / "a.pt"), imgsz=160, runs=2,
                          data=str(tiny_data), validate=False).onnx  # fmt: skip
    b = export_checkpoint(shutil.copy(ckpt_factory("yolov8s.yaml"), tmp_path / "b.pt"), imgsz=160, runs=2,
                          data=str(tiny_data), validate=False).onnx  # fmt: skip
    res = compare_onnx([a, b], np.zeros((1, 3, 160, 160), np.float32), runs=5, threads=1)
    assert set(res) == {a, b} and all(v["runs"] == 5 and v["p90"] >= v["median"] > 0 for v in res.values())
    assert res[b]["median"] > res[a]["median"], f"YOLOv8s (3.5x the GFLOPs) must time slower than YOLOv8n: {res}"


def test_parity_falls_back_to_an_fp64_reference_and_still_catches_a_wrong_graph(tmp_path, tiny_data, ckpt_factory):
    import numpy as np

    from yolo_distill.checkpoints import load_model
    from yolo_distill.deploy.onnx import check_parity

    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    r = export_checkpoint(ckpt, imgsz=64, data=str(tiny_data), runs=2, validate=False)
    ref = load_model(ckpt).fuse().eval()
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    p = check_parity(ref, r.onnx, x, False, 0.0, 0.0, fp64_factory=lambda: load_model(ckpt).fuse().eval().double())
    assert p.judged_by == "fp64 reference" and p.fp32_noise_box is not None and p.onnx_vs_fp64_box is not None
    from yolo_distill.checkpoints import save_stock_checkpoint

    m = load_model(ckpt)
    with torch.no_grad():
        m.model[-1].cv3[0][-1].bias += 8.0  # a different model: its class scores on the first level shift
    other = export_checkpoint(save_stock_checkpoint(m, tmp_path / "o.pt"), imgsz=64, runs=2, data=str(tiny_data),
                              validate=False, score_tol=1.0, box_tol=1.0)  # fmt: skip
    wrong = check_parity(
        ref, other.onnx, x, False, 1e-4, 1e-3, fp64_factory=lambda: load_model(ckpt).fuse().eval().double()
    )
    assert not wrong.ok, "a different model must never pass parity"


def test_int8_head_modes_exclude_the_right_nodes(tmp_path, tiny_data, ckpt_factory):
    import onnx

    from yolo_distill.deploy.quantize import head_nodes

    r = export_checkpoint(shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt"), imgsz=64, runs=2,
                          data=str(tiny_data), validate=False)  # fmt: skip
    ops = {n.name: n.op_type for n in onnx.load(r.onnx).graph.node}
    whole, decode = set(head_nodes(r.onnx)), set(head_nodes(r.onnx, convs=False))
    assert decode < whole, "decode-only keeps fewer nodes in fp32"
    assert any(ops[n] == "Conv" for n in whole - decode), "the head's convolutions are quantized in decode mode"
    assert all(ops[n] != "Conv" or "/dfl/" in n for n in decode)


def test_a_killed_export_or_prune_leaves_no_partial_file(tmp_path, ckpt_factory, monkeypatch):
    """A kill while a file is being written (simulated: the writer writes part of it, then the process is
    interrupted) leaves nothing at the final names, and the next run starts clean."""
    import torch
    from ultralytics import YOLO

    from yolo_distill.api import prune

    src = tmp_path / "m.pt"
    src.write_bytes(ckpt_factory("yolo11n.yaml").read_bytes())
    real_export = YOLO.export

    def killed_export(self, **kw):
        out = Path(real_export(self, **kw))
        out.write_bytes(out.read_bytes()[:100])  # torn mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(YOLO, "export", killed_export)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(str(src), imgsz=64, validate=False, runs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"], "no partial ONNX, JSON or work folder remains"

    def killed_save(obj, f, *a, **k):
        Path(f).write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        prune(str(src), ratio=0.5, imgsz=64, out=str(tmp_path / "p.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"], "no partial checkpoint or report remains"
    monkeypatch.undo()
    rep = export_checkpoint(str(src), imgsz=64, validate=False, runs=1)
    assert rep.parity.ok and (tmp_path / "m.onnx").is_file()


def test_a_third_party_checkpoint_exports_without_its_dataset(tmp_path, tiny_data):
    """A 2-class checkpoint trained elsewhere (its stored data path is another machine's) exports with parity and
    latency on Ultralytics' sample images and no mAP; a data= with other classes is refused, nothing written."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.checkpoints import save_stock_checkpoint

    m = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    m.names = {0: "fall", 1: "stand"}
    ckpt = save_stock_checkpoint(m, tmp_path / "fall.pt", train_args={"data": "D:\\\\datasets\\\\fall_detection.yaml"})
    with pytest.raises(ValueError, match=r"has 8 classes .* but the model detects 2 \['fall', 'stand'\]"):
        export_checkpoint(str(ckpt), imgsz=64, data=str(tiny_data), runs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fall.pt"]
    with pytest.raises(ValueError, match="int8=True needs data="):
        export_checkpoint(str(ckpt), imgsz=64, int8=True, runs=1)
    r = export_checkpoint(str(ckpt), imgsz=64, runs=1)
    assert r.parity.ok and r.parity.images == 2 and r.map50_95 == {} and r.latency_ms["onnx_fp32"]["median"] > 0


def test_interleaved_timing_leaves_out_the_hand_over_from_the_previous_model(monkeypatch):
    """A run that directly follows another model's pays for that model's threads winding down (here: 20 ms instead
    of 5). Timed in rounds, each model's first run after another's is untimed, so every median is the model's own
    cost; timed one run of each in turn, every run would pay the hand-over."""
    import types

    import numpy as np

    from yolo_distill.deploy import latency

    clock, last = [0.0], [None]

    def runner(name: str, cost: float):
        def run(x):
            clock[0] += cost + (0.020 if last[0] not in (None, name) else 0.0)
            last[0] = name
        return run

    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    res = latency.compare_runners({"a": runner("a", 0.005), "b": runner("b", 0.010)}, np.zeros(1), runs=12)
    assert res["a"]["runs"] == res["b"]["runs"] == 12
    assert res["a"]["p90"] == pytest.approx(5.0) and res["b"]["p90"] == pytest.approx(10.0), res
    with pytest.raises(ValueError, match="block=0 is not valid"):
        latency.compare_runners({"a": runner("a", 0.005)}, np.zeros(1), runs=2, block=0)


def test_a_hand_over_that_outlasts_several_runs_leaves_the_medians_alone(monkeypatch):
    """ONNX Runtime's spinning threads slow the next model for a while, not for one run: here every run started
    within 25 ms of a switch costs 3 ms more. In the default blocks each median is still the model's own cost; in
    blocks of 5 (the earlier default) it is not."""
    import types

    import numpy as np

    from yolo_distill.deploy import latency

    clock, state = [0.0], {"last": None, "since": 0.0}

    def runner(name: str, cost: float):
        def run(x):
            if state["last"] not in (None, name):
                state["since"] = clock[0]
            extra = 0.003 if state["last"] is not None and clock[0] - state["since"] < 0.025 else 0.0
            clock[0] += cost + extra
            state["last"] = name
        return run

    monkeypatch.setattr(latency, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    runners = {"a": runner("a", 0.005), "b": runner("b", 0.010)}
    res = latency.compare_runners(runners, np.zeros(1), runs=40)
    assert res["a"]["median"] == pytest.approx(5.0) and res["b"]["median"] == pytest.approx(10.0), res
    short = latency.compare_runners(runners, np.zeros(1), runs=40, block=5)
    assert short["a"]["median"] > 5.0, short
