"""The CLI and a miniature demo of every stage; the dataset generator and its checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from yolo_distill.cli import COMMANDS, main, parse_kv
from yolo_distill.data.checks import DatasetError, check_detection_dataset
from yolo_distill.data.shapes import ShapesSpec, generate_shapes, render_image


def test_mini_demo_runs_every_stage(tmp_path, tiny_data, ckpt_factory, capsys):
    """Every stage on a given teacher; every row timed (interleaved) with its speed-up over the teacher, the teacher
    exported from a copy so that nothing is written beside the user's file."""
    from yolo_distill.api import run_demo
    from yolo_distill.log import to_stdout

    user = tmp_path / "user"
    user.mkdir()
    teacher = user / "teacher.pt"
    teacher.write_bytes(ckpt_factory("yolo11s.yaml").read_bytes())
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    to_stdout(verbose=True)
    rows = run_demo(data=str(tiny_data), epochs=1, teacher=str(teacher), imgsz=64, batch=4,
                    project=str(tmp_path / "d"))  # fmt: skip
    out = capsys.readouterr().out
    assert [r["model"] for r in rows][:3] == ["teacher", "yolo11n carved from the teacher + KD",
                                              "teacher pruned + KD fine-tune"] and len(rows) == 4  # fmt: skip
    assert "summary" in out and "carved from the teacher" in out and "x teacher speed" in out
    assert rows[1]["params"] < rows[0]["params"] and rows[2]["params"] < rows[0]["params"]
    assert rows[3]["model"].endswith("INT8 ONNX")
    exported = max(rows[1:3], key=lambda r: r["map"])
    assert rows[3]["model"].startswith(exported["model"])
    assert all(r["onnx_ms"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    import os

    import yaml

    for run in ("carved_kd", "pruned_kd"):  # the demo runs alone: its trainings use every core
        assert yaml.safe_load((tmp_path / "d" / run / "args.yaml").read_text())["threads"] == os.cpu_count()
    assert rows[1]["speedup"] == pytest.approx(rows[0]["onnx_ms"] / rows[1]["onnx_ms"])
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before, "nothing written beside the user's teacher"
    import cv2

    pic = cv2.imread(str(tmp_path / "d" / "detections.png"))
    assert pic is not None and pic.shape[1] == 4 * 256 and pic.shape[0] == 3 * (28 + 256), "3 models x 4 images"


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_every_command_has_help(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    assert f"yolo-distill {cmd}" in capsys.readouterr().out


def test_train_help_lists_every_shipped_recipe(capsys):
    from yolo_distill.config import CONFIG_ROOT

    main(["train", "--help"])
    listed = capsys.readouterr().out.split("Recipes: configs/distill/*.yaml (")[1].split(")")[0].split(", ")
    assert listed[0] == "default" and sorted(listed) == sorted(p.stem for p in (CONFIG_ROOT / "distill").glob("*.yaml"))


def test_unknown_key_lists_valid_keys(capsys):
    with pytest.raises(SystemExit, match=r"(?s)unknown key\(s\) \['epochz'\].*valid keys.*epochs"):
        main(["train", "model=yolo11n.yaml", "data=x.yaml", "epochz=3"])
    assert main(["nope"]) == 2


def test_missing_weights_name_a_local_path(capsys):
    rc = main(["train", "model=yolo11s.pt", "data=shapes-tiny"])
    assert rc == 2 and "never downloads weights" in capsys.readouterr().err


def test_bench_failed_rows_end_in_a_message_not_a_traceback(monkeypatch):
    def failing(recipe: str, jobs: int = 1):
        raise RuntimeError("bench rows did not finish: bad (exit code 1: ...; log b/logs/bad.log)")

    monkeypatch.setattr("yolo_distill.api.run_bench", failing)
    with pytest.raises(SystemExit, match=r"yolo-distill bench: bench rows did not finish: bad .*bad\.log"):
        main(["bench", "recipe=mini", "jobs=2"])


def test_parse_kv_reads_yaml_scalars():
    assert parse_kv(["epochs=3", "amp=False", "lr0=0.01", "name=run"]) == {
        "epochs": 3, "amp": False, "lr0": 0.01, "name": "run"
    }  # fmt: skip


def test_console_script_runs():
    """The installed ``yolo-distill`` entry point (not ``python -m``) runs a command end to end."""
    from pathlib import Path

    exe = Path(sys.executable).parent / "yolo-distill"
    assert exe.is_file(), f"the console script is not installed beside {sys.executable}"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "commands:" in out.stdout
    out = subprocess.run([str(exe), "prune", "model=missing.pt"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "never downloads weights" in out.stderr, out.stderr


def test_generator_is_deterministic_and_varied(tmp_path):
    spec = ShapesSpec(n_train=3, n_val=2, imgsz=96)
    a, b = generate_shapes(tmp_path / "a", spec), generate_shapes(tmp_path / "b", spec)
    for split, i in (("train", 0), ("train", 2), ("val", 1)):
        fa = (a.parent / "images" / split / f"{split}_{i:05d}.jpg").read_bytes()
        assert fa == (b.parent / "images" / split / f"{split}_{i:05d}.jpg").read_bytes()
    rng = np.random.default_rng(0)
    sizes = [w for _ in range(30) for _, _, _, w, _ in render_image(ShapesSpec(), rng)[1]]
    assert min(sizes) < 0.06 and max(sizes) > 0.2, "objects must range from small to large"
    assert generate_shapes(tmp_path / "a", spec) == a, "same spec: reused"
    with pytest.raises(FileExistsError, match="another spec"):
        generate_shapes(tmp_path / "a", ShapesSpec(n_train=4, n_val=2, imgsz=96))
    check_detection_dataset(a)



def test_generation_is_all_or_nothing_and_safe_to_run_twice_at_once(tmp_path, monkeypatch):
    """A generation killed half-way leaves no folder that later runs refuse ("not empty and holds no shapes
    dataset"); two processes generating the same set at once (two bench rows on a fresh clone) both succeed."""
    import subprocess
    import sys

    import yolo_distill.data.shapes as shapes

    spec = ShapesSpec(n_train=3, n_val=2, imgsz=96)
    calls = []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*a, **k)

    render = shapes.render_image
    monkeypatch.setattr(shapes, "render_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "d", spec)
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
    monkeypatch.setattr(shapes, "render_image", render)
    assert generate_shapes(tmp_path / "d", spec).is_file(), "after a killed run the next one generates it"
    code = ("import sys; from yolo_distill.data.shapes import ShapesSpec, generate_shapes; "
            "print(generate_shapes(sys.argv[1], ShapesSpec(n_train=40, n_val=10, imgsz=96)))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "two")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert len(list((tmp_path / "two" / "images" / "train").iterdir())) == 40
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d", "two"], "no leftover work folder"

def test_one_tint_draws_the_images_it_drew_before_tints_existed():
    """``tints=1`` (every built-in set but shapes-many) must keep its images byte for byte: the bench's datasets and
    cached results were made by the generator before ``tints`` existed (this digest was taken from that version)."""
    import hashlib

    digest = hashlib.sha256()
    small = ShapesSpec(imgsz=96, classes=1, min_objects=15, max_objects=40, min_size=10, max_size=30)
    for spec in (ShapesSpec(imgsz=96), small):
        for i in range(3):
            img, labels = render_image(spec, np.random.default_rng(i))
            digest.update(img.tobytes())
            digest.update(repr(labels).encode())
    assert digest.hexdigest()[:16] == "a7e6ff043dae9ef0"


def test_tints_make_a_class_of_each_glyph_and_hue_band(tmp_path):
    """``tints=4``: 4 classes per glyph, named by glyph and band, each drawn in its own band of hues."""
    import cv2
    import yaml

    from yolo_distill.data.shapes import tint_colour

    data = generate_shapes(tmp_path / "many", ShapesSpec(n_train=6, n_val=2, imgsz=96, classes=2, tints=4))
    names = yaml.safe_load(data.read_text())["names"]
    assert list(names.values()) == [f"{g}_hue{t}" for g in ("circle", "square") for t in range(4)]
    ids = {int(line.split()[0]) for f in (data.parent / "labels").rglob("*.txt") for line in f.read_text().split("\n")
           if line}  # fmt: skip
    assert ids <= set(range(8)) and len(ids) > 4
    check_detection_dataset(data)
    rng = np.random.default_rng(0)
    for band in range(4):
        for under in (np.zeros(3), np.full(3, 255.0), np.array([40.0, 200.0, 90.0])):
            bgr = np.array([[tint_colour(rng, band, 4, under)]], dtype=np.uint8)
            hue = int(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[0, 0, 0])
            assert band * 45 + 9 <= hue <= band * 45 + 36, (band, under, hue)  # the band's middle half, rounded
    with pytest.raises(ValueError, match="tints must be in 1..4"):
        ShapesSpec(tints=5)


def test_a_tinted_label_names_the_glyph_and_band_it_was_drawn_with(monkeypatch):
    """One object per image: the label's class name is the glyph drawn and the hue band it was painted in."""
    from yolo_distill.data import shapes

    drawn, real_polygon, real_tint = [], shapes._polygon, shapes.tint_colour
    monkeypatch.setattr(shapes, "_polygon", lambda kind, *a: drawn.append([kind]) or real_polygon(kind, *a))
    monkeypatch.setattr(shapes, "tint_colour", lambda rng, band, *a: drawn[-1].append(band) or real_tint(rng, band, *a))
    spec = ShapesSpec(imgsz=96, classes=3, tints=2, min_objects=1, max_objects=1, min_size=30, max_size=60,
                      distractors=0)  # fmt: skip
    names = shapes.class_names(spec)
    for i in range(30):
        (cls, *_), = render_image(spec, np.random.default_rng(i))[1]
        kind, band = drawn[-1]
        assert names[cls] == f"{kind}_hue{band}"
    assert len({tuple(d) for d in drawn}) == 6, "every glyph and band drawn in 30 images"


def test_dataset_checks_name_the_problem(tmp_path, tiny_data):
    with pytest.raises(DatasetError, match="does not exist"):
        check_detection_dataset(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(DatasetError, match="malformed"):
        check_detection_dataset(bad)
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, root)
    y = root / "data.yaml"
    y.write_text(y.read_text().replace(str(tiny_data.parent), str(root)))
    lf = sorted((root / "labels" / "train").glob("*.txt"))[0]
    lf.write_text("1 0.5 0.5 0.2\n3 1.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError) as e:
        check_detection_dataset(y)
    assert "expected 5 fields" in str(e.value) and "outside [0, 1]" in str(e.value)
    shutil.rmtree(root / "labels" / "val")
    with pytest.raises(DatasetError, match="none of the 4 images"):
        check_detection_dataset(y)


def test_converters_round_trip(tmp_path):
    import json

    import cv2

    from yolo_distill.data.convert import coco_to_yolo, voc_to_yolo

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [{"image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 50], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    y = coco_to_yolo({"train": (tmp_path / "c.json", img_dir), "val": (tmp_path / "c.json", img_dir)}, tmp_path / "o")
    assert (tmp_path / "o/labels/train/a.txt").read_text().split() == [
        "1",
        "0.200000",
        "0.350000",
        "0.200000",
        "0.500000",
    ]
    assert check_detection_dataset(y)["nc"] == 2
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    (xml_dir / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height></size>"
        "<object><name>dog</name><bndbox><xmin>21</xmin><ymin>11</ymin><xmax>60</xmax><ymax>60</ymax></bndbox>"
        "</object></annotation>"
    )
    y2 = voc_to_yolo({"train": (xml_dir, img_dir)}, tmp_path / "v", names=["cat", "dog"])
    assert (tmp_path / "v/labels/train/a.txt").read_text().split() == [
        "1",
        "0.200000",
        "0.350000",
        "0.200000",
        "0.500000",
    ]
    assert check_detection_dataset(y2)["nc"] == 2
    with pytest.raises(FileExistsError):
        coco_to_yolo({"train": (tmp_path / "c.json", img_dir)}, tmp_path / "o")


def test_converters_keep_images_with_the_same_file_name(tmp_path):
    """``a/0001.jpg`` and ``b/0001.jpg`` are two images: both are kept, each with its own labels."""
    import json

    import cv2

    from yolo_distill.data.convert import coco_to_yolo, voc_to_yolo

    root = tmp_path / "imgs"
    for sub, value in (("a", 0), ("b", 255)):
        (root / sub).mkdir(parents=True)
        cv2.imwrite(str(root / sub / "0001.png"), np.full((64, 64, 3), value, np.uint8))
    coco = {
        "images": [{"id": 1, "file_name": "a/0001.png", "width": 64, "height": 64},
                   {"id": 2, "file_name": "b/0001.png", "width": 64, "height": 64}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 0},
                        {"image_id": 2, "category_id": 1, "bbox": [32, 32, 16, 16], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    y = coco_to_yolo({"train": (tmp_path / "c.json", root)}, tmp_path / "o")
    imgs = sorted(p.relative_to(tmp_path / "o/images/train").as_posix() for p in (tmp_path / "o/images").rglob("*.png"))
    assert imgs == ["a/0001.png", "b/0001.png"]
    assert cv2.imread(str(tmp_path / "o/images/train/b/0001.png")).mean() == 255
    assert (tmp_path / "o/labels/train/a/0001.txt").read_text() != (tmp_path / "o/labels/train/b/0001.txt").read_text()
    assert check_detection_dataset(y)["nc"] == 1
    for split in ("a", "b"):  # VOC: two splits whose images share a name, and one folder of XML per split
        xml = tmp_path / f"xml_{split}"
        xml.mkdir()
        (xml / f"{split}1.xml").write_text(
            "<annotation><filename>0001.png</filename><size><width>64</width><height>64</height></size>"
            "<object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>32</xmax><ymax>32</ymax></bndbox>"
            "</object></annotation>"
        )
    voc_to_yolo({"train": (tmp_path / "xml_a", root / "a"), "val": (tmp_path / "xml_b", root / "b")}, tmp_path / "v")
    assert cv2.imread(str(tmp_path / "v/images/train/a1.png")).mean() == 0
    assert cv2.imread(str(tmp_path / "v/images/val/b1.png")).mean() == 255


def test_public_dataset_names_fail_clearly_offline(monkeypatch, tmp_path):
    from ultralytics.utils import SETTINGS

    from yolo_distill.data.builtin import resolve_data

    monkeypatch.setitem(SETTINGS, "datasets_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="YOLO_OFFLINE=0"):
        resolve_data("coco128")
    (tmp_path / "coco128").mkdir()
    assert resolve_data("coco128") == "coco128.yaml"


def test_second_run_never_overwrites_the_first(tmp_path, tiny_data):
    from tests.conftest import train_args
    from yolo_distill.distill.trainer import DistillationTrainer

    a = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=str(tiny_data), **train_args(tmp_path, val=False))
    )
    a.train()
    first = a.last.read_bytes()
    b = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=str(tiny_data), **train_args(tmp_path, val=False))
    )
    b.train()
    assert b.save_dir != a.save_dir and a.last.read_bytes() == first


@pytest.mark.parametrize("verbose,shown", [("True", True), ("False", False)])
def test_cli_shows_our_info_messages_at_ultralytics_verbosity(verbose, shown):
    """The CLI's log lines (teacher loaded, KD stopped, font copied) are visible as Ultralytics' are, not dropped."""
    import os

    code = (
        "import logging; from yolo_distill.log import to_stdout; to_stdout(); "
        "logging.getLogger('yolo_distill').info('yolo_distill: probe-line')"
    )
    env = {**os.environ, "YOLO_VERBOSE": verbose}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("probe-line" in out.stdout) is shown, f"YOLO_VERBOSE={verbose}: stdout {out.stdout!r}"


def test_importing_the_package_changes_nothing_but_the_offline_defaults():
    """``import yolo_distill`` in a fresh interpreter: two documented environment defaults, no handler that prints,
    no matplotlib backend switch, no Ultralytics import."""
    import json
    import os

    code = (
        "import json, logging, os, sys\n"
        "import matplotlib\n"
        "env0, backend0 = dict(os.environ), matplotlib.get_backend()\n"
        "import yolo_distill\n"
        "print(json.dumps({'env': sorted(k for k in os.environ if os.environ[k] != env0.get(k)),\n"
        "  'backend_same': matplotlib.get_backend() == backend0,\n"
        "  'handlers': [type(h).__name__ for h in logging.getLogger('yolo_distill').handlers],\n"
        "  'root_handlers': len(logging.getLogger().handlers),\n"
        "  'ultralytics': 'ultralytics' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"env": ["YOLO_AUTOINSTALL", "YOLO_OFFLINE"], "backend_same": True, "handlers": ["NullHandler"],
                   "root_handlers": 0, "ultralytics": False}, got  # fmt: skip
    env["YOLO_OFFLINE"] = "0"  # a user with the internet opts out before importing
    out = subprocess.run([sys.executable, "-c", "import os, yolo_distill; print(os.environ['YOLO_OFFLINE'])"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "0"
