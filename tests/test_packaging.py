"""The wheel must carry everything a non-editable install needs: every subpackage and the shipped recipes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_table() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_for_the_wheel():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "yolo_distill").rglob("__init__.py")}
    listed = set(_setuptools_table()["packages"])
    missing = on_disk - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}: a wheel would miss them"
    assert "yolo_distill.configs" in listed


def test_recipes_are_mapped_into_the_wheel():
    table = _setuptools_table()
    assert table["package-dir"]["yolo_distill.configs"] == "configs"
    patterns = table["package-data"]["yolo_distill.configs"]
    shipped = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    covered = {p for pat in patterns for p in (ROOT / "configs").glob(pat)}
    uncovered = [str(p) for p in shipped if ROOT / "configs" / p not in covered]
    assert not uncovered, f"recipes not matched by package-data {patterns}: {uncovered}"


def test_installed_layout_finds_its_recipes(tmp_path):
    """The wheel layout (yolo_distill/configs/, no top-level configs/) resolves shipped recipes by name."""
    pkg = tmp_path / "site" / "yolo_distill"
    shutil.copytree(ROOT / "yolo_distill", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", pkg / "configs")
    code = (
        "import yolo_distill.config as c;"
        "print(c.CONFIG_ROOT);"
        "print(c.find_recipe('cpu-small', 'bench'));"
        "print(c.load_distill_recipe('default').losses[0].name)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert Path(lines[0]) == pkg / "configs", f"recipes resolved from {lines[0]}, expected the installed copy"
    assert Path(lines[1]) == pkg / "configs" / "bench" / "cpu-small.yaml"
