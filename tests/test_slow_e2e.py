"""End-to-end runs that take minutes: run on demand with ``pytest -m slow``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_distill.demo import SHIPPED_TEACHER

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not SHIPPED_TEACHER.is_file(), reason="the shipped shapes teacher is not in this checkout")
def test_cli_demo_on_shapes_with_the_shipped_teacher(tmp_path):
    """The console script runs every stage on the real built-in dataset and prints its summary."""
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    cmd = [sys.executable, "-m", "yolo_distill.cli", "demo", "epochs=1", "imgsz=128", f"project={tmp_path / 'demo'}"]
    out = subprocess.run(cmd, cwd=Path(__file__).parent.parent, capture_output=True, text=True, env=env, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("teacher", "yolo11n carved from the teacher + KD", "teacher pruned + KD fine-tune", "INT8 ONNX"):
        assert row in out.stdout, f"summary row {row!r} missing"
    assert "demo finished in" in out.stdout and (tmp_path / "demo" / "detections.png").is_file()


def test_teacher_beats_untrained_student_on_shapes(tmp_path):
    """The shipped teacher has learned the task: its mAP is far above an untrained model's."""
    if not SHIPPED_TEACHER.is_file():
        pytest.skip("the shipped shapes teacher is not in this checkout")
    from ultralytics import YOLO

    from yolo_distill.data.builtin import resolve_data

    data = resolve_data("shapes", root=Path(__file__).parent.parent / "datasets")
    m = YOLO(str(SHIPPED_TEACHER)).val(data=data, imgsz=256, batch=16, plots=False, verbose=False)
    untrained = YOLO("yolo11s.yaml").val(data=data, imgsz=256, batch=16, plots=False, verbose=False)
    assert m.box.map > 0.1 and m.box.map > 10 * untrained.box.map, (m.box.map, untrained.box.map)
