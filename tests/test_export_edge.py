"""Edge runtimes (OpenVINO, NCNN, LiteRT) for tiny v8/11/26 models: parity with PyTorch through each runtime's own API,
INT8 by NNCF with its mAP run by OpenVINO, format=all side by side, outputs never overwritten, a clear message when
an extra is missing. Each test is skipped only where its extra is not installed (CI installs them all)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import FAMILIES, SHIPPED_TEACHER
from yolo_distill.api import export
from yolo_distill.deploy import litert, ncnn
from yolo_distill.deploy import openvino as ov
from yolo_distill.deploy.latency import cpu_summary

needs_openvino = pytest.mark.skipif(not ov.available(), reason=f"the openvino extra is not installed: {ov.INSTALL}")
needs_ncnn = pytest.mark.skipif(not ncnn.available(), reason=f"the ncnn extra is not installed: {ncnn.INSTALL}")
needs_litert = pytest.mark.skipif(not litert.available(), reason=f"the litert extra is not installed: {litert.INSTALL}")
EDGE = [pytest.param("openvino", "{s}_openvino_model/{s}.xml", marks=needs_openvino),
        pytest.param("ncnn", "{s}_ncnn_model/model.ncnn.param", marks=needs_ncnn),
        pytest.param("litert", "{s}.tflite", marks=needs_litert)]  # fmt: skip


@pytest.mark.parametrize("fmt,written", EDGE)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_edge_parity_per_family(tmp_path, tiny_data, ckpt_factory, family, fmt, written):
    ckpt = shutil.copy(ckpt_factory(FAMILIES[family]), tmp_path / f"{family}.pt")
    r = export(str(ckpt), format=fmt, imgsz=64, data=str(tiny_data), runs=3, validate=False)
    p = getattr(r, f"{fmt}_parity")
    assert p.ok and p.images == 4 and p.max_abs_score <= 1e-4 and p.max_abs_box <= 1e-3, p
    assert r.onnx is None and not (tmp_path / f"{family}.onnx").exists(), f"format={fmt} writes no ONNX model"
    assert (tmp_path / written.format(s=family)).is_file()
    saved = json.loads((tmp_path / f"{family}_export.json").read_text())
    assert saved["latency_ms"][f"{fmt}_fp32"]["median"] > 0 and saved["latency_ms"]["torch_fp32"]["median"] > 0


@needs_litert
def test_litert_int8_quantizes_the_convolutions_and_keeps_element_wise_ops_float(tmp_path, tiny_data, ckpt_factory):
    """Convolutions outside the Detect head run INT8 (INT8 weights); SiLU (LOGISTIC x input), ADD and CONCATENATION
    stay float: quantizing them too lost 3.7 points of mAP50-95 on cpu-edge's YOLO11s at 640 px, convolutions alone
    none."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    r = export(str(ckpt), format="litert", imgsz=64, data=str(tiny_data), int8=True, runs=2, validate=False,
               calib_images=4)  # fmt: skip
    interp = Interpreter(r.litert_int8)
    dtype = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    int8_convs = [op for op in ops if op["op_name"] == "CONV_2D" and dtype[op["inputs"][1]] == np.int8]
    assert len(int8_convs) >= 20, f"only {len(int8_convs)} INT8 convolutions"
    for name in ("LOGISTIC", "MUL", "ADD", "CONCATENATION"):
        kinds = {dtype[i] for op in ops if op["op_name"] == name for i in op["inputs"] if i >= 0}
        assert kinds and np.int8 not in kinds, (name, kinds)


@needs_openvino
def test_openvino_is_checked_in_f32_and_timed_as_ultralytics_runs_it(tmp_path, tiny_data, ckpt_factory, monkeypatch):
    """Parity needs f32 (OpenVINO computes float ops in bf16 by default on CPUs with AVX-512 BF16 or AMX); latency
    is timed with OpenVINO's default, which is what Ultralytics' backend, and so the mAP column, runs."""
    precisions = []
    real = ov.ov_runner

    def recording(model_dir, threads=2, precision="f32"):
        precisions.append(precision)
        return real(model_dir, threads, precision)

    monkeypatch.setattr(ov, "ov_runner", recording)
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    r = export(str(ckpt), format="openvino", imgsz=64, data=str(tiny_data), runs=2, validate=False)
    assert precisions == ["f32", None], precisions
    assert r.openvino_parity.ok and r.latency_ms["openvino_fp32"]["median"] > 0
    assert r.openvino_precision == ov.default_precision() in ("f32", "bf16", "f16")
    # the runner reads its input in place (no copy per call) but hands back outputs of its own: a later call
    # neither changes an earlier output nor the input
    import numpy as np

    run = real(tmp_path / "m_openvino_model")
    a, b = np.random.default_rng(0).random((2, 1, 3, 64, 64), dtype=np.float32)
    a_before, out_a = a.copy(), run(a)
    kept = out_a.copy()
    out_b = run(b)
    assert np.array_equal(out_a, kept) and not np.array_equal(out_a, out_b) and np.array_equal(a, a_before)


@needs_openvino
@needs_ncnn
@needs_litert
def test_all_formats_with_int8_side_by_side_on_a_trained_model(tmp_path, tiny_data):
    """The shipped (trained) teacher: ONNX, OpenVINO and LiteRT, FP32 and INT8, and NCNN FP32, each timed
    interleaved and validated by its own runtime; INT8 within 3 points of FP32 (a broken calibration or a quantized
    decode loses far more)."""
    ckpt = shutil.copy(SHIPPED_TEACHER, tmp_path / "m.pt")
    r = export(str(ckpt), format="all", imgsz=128, data=str(tiny_data), int8=True, runs=3, calib_images=8)
    assert r.parity.ok and r.openvino_parity.ok and r.ncnn_parity.ok and r.litert_parity.ok
    keys = {"onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8", "ncnn_fp32", "litert_fp32", "litert_int8"}
    assert keys <= set(r.latency_ms) and keys == set(r.map50_95)
    for same in ("ncnn_fp32", "openvino_fp32", "litert_fp32"):  # the same FP32 model through another runtime
        assert abs(r.map50_95[same] - r.map50_95["onnx_fp32"]) <= 0.005, (same, r.map50_95)
    for rt in ("openvino", "litert"):
        fp32, int8 = r.map50_95[f"{rt}_fp32"], r.map50_95[f"{rt}_int8"]
        assert fp32 > 0.03 and abs(int8 - fp32) <= 0.03, (rt, r.map50_95)
    assert (tmp_path / "m_int8.tflite").stat().st_size < 0.5 * (tmp_path / "m.tflite").stat().st_size, "not INT8"
    table = (tmp_path / "m_export.md").read_text()
    assert all(f"| {k} |" in table for k in keys) and (tmp_path / "m_export.png").stat().st_size > 0
    assert f"Measured on: {r.machine}." in table and r.machine == cpu_summary()
    assert r.openvino_precision == ov.default_precision() and f"this CPU, {r.openvino_precision}," in table
    xml = (tmp_path / "m_int8_openvino_model" / "m.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml, "the INT8 model holds no quantized ops"


@needs_openvino
@needs_ncnn
@needs_litert
@pytest.mark.parametrize("family", [pytest.param("v8", marks=pytest.mark.slow),
                                    pytest.param("11", marks=pytest.mark.slow), "26"])  # fmt: skip
def test_a_pruned_model_passes_parity_in_every_runtime(tmp_path, tiny_data, ckpt_factory, family):
    """Odd channel counts left by pruning (and YOLO26's end-to-end head and attention) through every runtime: each
    FP32 export agrees with PyTorch. YOLO26 in the default suite, v8 and 11 with ``-m slow``."""
    from yolo_distill.api import prune

    src = shutil.copy(ckpt_factory(FAMILIES[family]), tmp_path / "src.pt")
    prune(str(src), ratio=0.3, out=str(tmp_path / "p.pt"), imgsz=64)
    r = export(str(tmp_path / "p.pt"), format="all", imgsz=64, data=str(tiny_data), runs=2, validate=False)
    for name in ("parity", "openvino_parity", "ncnn_parity", "litert_parity"):
        p = getattr(r, name)
        assert p is not None and p.ok and p.max_abs_box <= 1e-3, (name, p)


@needs_openvino
def test_existing_openvino_folder_is_not_overwritten(tmp_path, tiny_data, ckpt_factory):
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    mine = tmp_path / "m_openvino_model"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="already exist"):
        export(str(ckpt), format="openvino", imgsz=64, data=str(tiny_data))
    assert (mine / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_openvino_model"]


def test_missing_runtime_names_the_install_command_and_writes_nothing(tmp_path, tiny_data, ckpt_factory,
                                                                     monkeypatch):  # fmt: skip
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    monkeypatch.setattr(ncnn, "available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[ncnn\]\""):
        export(str(ckpt), format="ncnn", imgsz=64)
    monkeypatch.setattr(ov, "available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[openvino\]\""):
        export(str(ckpt), format="openvino", imgsz=64)
    monkeypatch.setattr(litert, "available", lambda: False)
    for fmt in ("litert", "tflite"):  # tflite: LiteRT's former name, as Ultralytics still accepts it
        with pytest.raises(ValueError, match=r"pip install -e \"\.\[litert\]\""):
            export(str(ckpt), format=fmt, imgsz=64)
    with pytest.raises(ValueError, match="format='coreml'"):
        export(str(ckpt), format="coreml", imgsz=64)
    monkeypatch.setattr(litert, "available", lambda: True)
    with pytest.raises(ValueError, match="half=True is not offered for format=litert"):
        export(str(ckpt), format="litert", half=True, imgsz=64)
    monkeypatch.setattr(ncnn, "available", lambda: True)
    with pytest.raises(ValueError, match="int8=True is not offered for format=ncnn"):
        export(str(ckpt), format="ncnn", int8=True, data=str(tiny_data), imgsz=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_format_all_with_only_onnx_installed_still_never_overwrites_its_table(tmp_path, ckpt_factory, monkeypatch):
    """``format=all`` writes ``CKPT_export.md`` and ``.png`` whatever runtimes are installed, so an existing one is
    refused (not replaced) even when ONNX is the only runtime left."""
    for mod in (ov, ncnn, litert):
        monkeypatch.setattr(mod, "available", lambda: False)
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    (tmp_path / "m_export.md").write_text("the user's notes")
    with pytest.raises(FileExistsError, match="m_export.md"):
        export(str(ckpt), format="all", imgsz=64)
    assert (tmp_path / "m_export.md").read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_export.md"]


@needs_openvino
@needs_ncnn
def test_a_bench_export_row_with_format_all_reports_every_runtime(tmp_path, tiny_data, ckpt_factory):
    from yolo_distill.bench import report, rows
    from yolo_distill.bench.spec import parse_row

    row = parse_row({"name": "edge", "kind": "export", "from": "x.pt", "epochs": 0, "format": "all"}, "t", set())
    ckpt = shutil.copy(ckpt_factory("yolo11n.yaml"), tmp_path / "m.pt")
    given = ckpt.read_bytes()
    res = rows.export_row(row, {"data": str(tiny_data), "imgsz": 64}, str(ckpt), tmp_path / "bench")
    assert {"onnx_fp32", "openvino_fp32", "ncnn_fp32", "torch_fp32"} <= set(res["runtimes"])
    assert all(v["map50_95"] is not None for k, v in res["runtimes"].items() if k != "torch_fp32")
    lines = report._runtime_lines(["edge"], [{"name": "edge", **res}])
    assert any(line.startswith("| edge | openvino_fp32 |") for line in lines)
    ov_note = f" (OpenVINO's default precision there: {ov.default_precision()})"
    assert f"Measured on {cpu_summary()}{ov_note}: edge." in lines, "a cached row keeps the CPU it was timed on"
    old = {"name": "old", "runtimes": res["runtimes"]}  # a row cached before the machine was kept
    two = report._runtime_lines(["edge", "old"], [{"name": "edge", **res}, old])
    assert f"Measured on {cpu_summary()}{ov_note}: edge." in two and "Measured on a machine not recorded: old." in two
    assert ckpt.read_bytes() == given and sorted(p.name for p in tmp_path.iterdir()) == ["bench", "m.pt"]
    with pytest.raises(ValueError, match="format must be onnx or all"):
        parse_row({"name": "e", "kind": "export", "from": "x.pt", "format": "tflite"}, "t", set())
