"""Cost of one training step: plain student, our KD criterion, Ultralytics' native ``distill_model=``.

Times are measured interleaved (one step of each configuration in turn), so machine noise affects all alike;
peak memory is the resident-set high-water mark of a separate process per configuration during its steps
(reset after the first step on Linux), or the CUDA peak on a GPU.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from yolo_distill.log import LOGGER, table

CONFIGS = ("plain", "ours", "native")


def _batch(b: int, imgsz: int, nc: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 4 * b
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
    return {
        "img": torch.rand(b, 3, imgsz, imgsz, generator=g).to(device),
        "batch_idx": torch.arange(b).repeat_interleave(4).float().to(device),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float().to(device),
        "bboxes": torch.cat([xy, wh], 1).to(device),
    }


def build(config: str, student: str, teacher: str, imgsz: int, recipe: str, device: torch.device):
    """A model whose ``model(batch)`` returns (loss, items) for ``config``, and the parameters to optimize."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.checkpoints import load_model

    torch.manual_seed(0)
    t = load_model(teacher)
    nc = int(t.model[-1].nc)
    s = DetectionModel(student, nc=nc, verbose=False).to(device)
    s.args = get_cfg(overrides={"imgsz": imgsz})
    s.train()
    if config == "plain":
        return s, list(s.parameters()), nc
    if config == "native":
        from ultralytics.nn.distill_model import DistillationModel

        m = DistillationModel(teacher_model=t.to(device), student_model=s).to(device)
        m.train()
        return m, [p for p in m.parameters() if p.requires_grad], nc
    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
    from yolo_distill.distill.teacher import load_teacher

    ctx = DistillContext(load_teacher(t).to(device), s, load_distill_recipe(recipe)).to(device)
    s.criterion = DistillationCriterion(s.init_criterion(), ctx)
    return s, list(s.parameters()) + list(ctx.connectors.parameters()), nc


def torch_device(device: str | int) -> torch.device:
    """A torch device from an Ultralytics-style device string: ``cpu``, ``cuda``, ``0`` or ``0,1,2,3`` (the first
    GPU of a list: one step is measured on one device)."""
    d = str(device).strip().lower()
    if d.replace(",", "").isdigit():
        return torch.device(f"cuda:{d.split(',')[0]}")
    return torch.device(d)


def _step(model, opt, batch) -> None:
    loss, _ = model(batch)
    loss.sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(
    student: str = "yolo11n.yaml",
    teacher: str = "yolo11s.yaml",
    imgsz: int = 256,
    batch: int = 8,
    steps: int = 8,
    recipe: str = "default",
    device: str = "cpu",
    memory: bool = True,
) -> dict[str, Any]:
    """Median step time per configuration (interleaved) and peak memory; logs a table.

    Args:
        student: student YAML.
        teacher: teacher checkpoint (or YAML).
        imgsz: image size.
        batch: batch size.
        steps: timed steps per configuration (after one warm-up step each).
        recipe: our distillation recipe.
        device: ``cpu`` or ``cuda``.
        memory: also measure peak memory (one subprocess per configuration).
    """
    dev = torch_device(device)
    built = {c: build(c, student, teacher, imgsz, recipe, dev) for c in CONFIGS}
    b = _batch(batch, imgsz, built["plain"][2], dev)
    opts = {c: torch.optim.SGD(built[c][1], lr=1e-4) for c in CONFIGS}
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for c in CONFIGS:
        _step(built[c][0], opts[c], b)  # warm-up
    for _ in range(steps):
        for c in CONFIGS:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _step(built[c][0], opts[c], b)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[c].append(time.perf_counter() - t0)
    res: dict[str, Any] = {c: {"median_s": statistics.median(times[c])} for c in CONFIGS}
    if memory:
        for c in CONFIGS:
            res[c]["peak_mb"] = _peak_memory(c, student, teacher, imgsz, batch, recipe, device)
    res["ours_vs_native_time"] = res["ours"]["median_s"] / res["native"]["median_s"]
    res["ours_vs_plain_time"] = res["ours"]["median_s"] / res["plain"]["median_s"]
    if memory:
        res["ours_vs_native_memory"] = res["ours"]["peak_mb"] / res["native"]["peak_mb"]
    rows = [[c, res[c]["median_s"], res[c].get("peak_mb")] for c in CONFIGS]
    mem = f", memory {res['ours_vs_native_memory']:.2f}x" if memory else ""
    LOGGER.info(
        "KD step cost: student %s, teacher %s, imgsz %d, batch %d, %d steps each\n%s\nours / native: time %.2fx%s",
        student, teacher, imgsz, batch, steps, table(rows, ["config", "median s/step", "peak MB"], ["", ".3f", ".0f"]),
        res["ours_vs_native_time"], mem,
    )  # fmt: skip
    return res


def _peak_memory(config: str, student: str, teacher: str, imgsz: int, batch: int, recipe: str, device: str) -> float:
    code = (
        "import json, resource, torch, yolo_distill\n"
        "from yolo_distill.bench.step_cost import build, _batch, _step, torch_device\n"
        f"dev = torch_device({device!r})\n"
        f"m, params, nc = build({config!r}, {student!r}, {teacher!r}, {imgsz}, {recipe!r}, dev)\n"
        "opt = torch.optim.SGD(params, lr=1e-4)\n"
        f"b = _batch({batch}, {imgsz}, nc, dev)\n"
        "import os, re\n"
        "_step(m, opt, b)\n"  # first step allocates optimizer state; then reset the high-water mark
        "hwm = '/proc/self/clear_refs'\n"
        "linux = os.path.exists(hwm)\n"
        "if linux: open(hwm, 'w').write('5')\n"
        "base = int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) if linux else 0\n"
        "for _ in range(3): _step(m, opt, b)\n"
        "if dev.type == 'cuda': peak = torch.cuda.max_memory_allocated() / 2**20\n"
        "elif linux: peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024\n"
        "else: peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(peak))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"memory probe for {config} failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))
