"""Shared fixtures: offline environment, loopback-only sockets, a tiny dataset and tiny v8/11/26 checkpoints."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

_CFG = tempfile.mkdtemp(prefix="yd_ultra_cfg_")
atexit.register(shutil.rmtree, _CFG, ignore_errors=True)  # a test run leaves nothing behind in the temp dir
os.environ["YOLO_CONFIG_DIR"] = _CFG  # keep Ultralytics' settings and font out of the home directory
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"
os.environ.setdefault("YOLO_VERBOSE", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

import yolo_distill  # noqa: E402,F401

FAMILIES = {"v8": "yolov8n.yaml", "11": "yolo11n.yaml", "26": "yolo26n.yaml"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def _host(address) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
NETWORK_ATTEMPTS: list[str] = []  # every attempt, also those the code under test catches and swallows


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in _LOOPBACK:
        NETWORK_ATTEMPTS.append(f"connect {address}")
        raise RuntimeError(f"test tried to reach the network: {address}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in _LOOPBACK:
        NETWORK_ATTEMPTS.append(f"connect_ex {address}")
        raise RuntimeError(f"test tried to reach the network: {address}")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in _LOOPBACK and host is not None:
        NETWORK_ATTEMPTS.append(f"resolve {host}")
        raise RuntimeError(f"test tried to resolve {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # tests only: any network attempt fails loudly
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(autouse=True)
def _no_network_attempt():
    """Every test is an offline test: it fails if anything tried the network, even where the error was swallowed."""
    NETWORK_ATTEMPTS.clear()
    yield
    attempts, NETWORK_ATTEMPTS[:] = list(NETWORK_ATTEMPTS), []
    assert not attempts, f"network attempted during the test: {attempts}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny shapes dataset (8 train / 4 val images at 64 px)."""
    from yolo_distill.data.shapes import ShapesSpec, generate_shapes

    root = tmp_path_factory.mktemp("data") / "shapes"
    spec = ShapesSpec(n_train=8, n_val=4, imgsz=64, min_size=10, max_size=32, max_objects=5, distractors=2)
    return generate_shapes(root, spec)


@pytest.fixture(scope="session")
def ckpt_factory(tmp_path_factory):
    """Returns make(family_yaml) -> path of a stock checkpoint of an untrained model with the shapes classes."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.checkpoints import save_stock_checkpoint
    from yolo_distill.data.shapes import CLASS_NAMES

    root = tmp_path_factory.mktemp("ckpts")
    cache: dict[str, Path] = {}

    def make(cfg: str, names: tuple[str, ...] = CLASS_NAMES) -> Path:
        key = f"{cfg}-{len(names)}-{names[0]}"
        if key not in cache:
            torch.manual_seed(0)
            m = DetectionModel(cfg, nc=len(names), verbose=False)
            m.names = dict(enumerate(names))
            cache[key] = save_stock_checkpoint(m, root / f"{key}.pt", train_args={"imgsz": 64})
        return cache[key]

    return make


def train_args(tmp_path: Path, **kw) -> dict:
    """Ultralytics train arguments for a 1-epoch CPU run at 64 px."""
    base = dict(
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        amp=False,
        plots=False,
        device="cpu",
        seed=0,
        deterministic=False,
        project=str(tmp_path / "runs"),
        name="run",
        val=True,
        verbose=False,
    )
    base.update(kw)
    return base


#: the YOLO11s teacher trained on ``shapes`` that the repository ships: a model whose mAP is not 0
SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "datasets" / "shapes-teacher" / "yolo11s.pt"
