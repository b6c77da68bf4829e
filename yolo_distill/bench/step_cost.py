"""Cost of one training step: plain student, the floor, our KD criterion, Ultralytics' native ``distill_model=``.

The floor is a plain step plus our frozen teacher's forward (what any KD step must at least pay); ``ours`` above it is
the cost of the KD terms themselves.

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

CONFIGS = ("plain", "floor", "ours", "native")


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


def build(config: str, student: str, teacher: str, imgsz: int, recipe: str, device: torch.device,
          teacher_precision: str = "auto"):  # fmt: skip
    """A model whose ``model(batch)`` returns (loss, items) for ``config``, and the parameters to optimize. Ours
    runs the teacher as the trainer does (:func:`~yolo_distill.distill.teacher.frozen_teacher`)."""
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
    if config == "native":  # Ultralytics runs its teacher as it is (this checkpoint, unfused)
        from ultralytics.nn.distill_model import DistillationModel

        m = DistillationModel(teacher_model=t.to(device), student_model=s).to(device)
        m.train()
        return m, [p for p in m.parameters() if p.requires_grad], nc
    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
    from yolo_distill.distill.teacher import frozen_teacher, load_teacher, online_teacher

    rec = load_distill_recipe(recipe)
    if config == "ours" and rec.mode == "online":  # the co-trained teacher steps with the student
        teacher = online_teacher(load_teacher(t).to(device), s.args)
        ctx = DistillContext(teacher, s, rec).to(device)
        s.criterion = DistillationCriterion(s.init_criterion(), ctx)
        return s, list(s.parameters()) + list(ctx.connectors.parameters()) + list(teacher.parameters()), nc
    frozen = frozen_teacher(load_teacher(t), teacher_precision, device)  # folds t's BN in place: t is ours now
    if config == "floor":
        return _Floor(s, frozen), list(s.parameters()), nc
    ctx = DistillContext(frozen, s, rec).to(device)
    s.criterion = DistillationCriterion(s.init_criterion(), ctx)
    return s, list(s.parameters()) + list(ctx.connectors.parameters()), nc


class _Floor(torch.nn.Module):
    """A plain student step plus the frozen teacher's forward, with no KD term: the least a KD step can cost."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher

    def forward(self, batch: dict[str, torch.Tensor]):
        with torch.inference_mode():
            self.teacher(batch["img"].to(next(self.teacher.parameters()).dtype))
        return self.student(batch)


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
    teacher_precision: str = "auto",
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
        teacher_precision: how our frozen teacher runs (as the trainer's ``teacher_precision``); Ultralytics'
            native teacher runs as Ultralytics runs it.
    """
    dev = torch_device(device)
    built = {c: build(c, student, teacher, imgsz, recipe, dev, teacher_precision) for c in CONFIGS}
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
            res[c]["peak_mb"] = _peak_memory(c, student, teacher, imgsz, batch, recipe, device, teacher_precision)
    res["ours_vs_native_time"] = res["ours"]["median_s"] / res["native"]["median_s"]
    res["ours_vs_plain_time"] = res["ours"]["median_s"] / res["plain"]["median_s"]
    res["ours_above_floor"] = res["ours"]["median_s"] / res["floor"]["median_s"] - 1.0
    res["native_above_floor"] = res["native"]["median_s"] / res["floor"]["median_s"] - 1.0
    if memory:
        res["ours_vs_native_memory"] = res["ours"]["peak_mb"] / res["native"]["peak_mb"]
    rows = [[c, res[c]["median_s"], res[c].get("peak_mb")] for c in CONFIGS]
    mem = f", memory {res['ours_vs_native_memory']:.2f}x" if memory else ""
    LOGGER.info(
        "KD step cost: student %s, teacher %s (ours in %s), imgsz %d, batch %d, %d steps each\n%s\n"
        "ours / native: time %.2fx%s; above the floor (plain step + teacher forward): ours %+.0f %%, native %+.0f %%",
        student, teacher, teacher_precision, imgsz, batch, steps,
        table(rows, ["config", "median s/step", "peak MB"], ["", ".3f", ".0f"]), res["ours_vs_native_time"], mem,
        100 * res["ours_above_floor"], 100 * res["native_above_floor"],
    )  # fmt: skip
    return res


def _peak_memory(config: str, student: str, teacher: str, imgsz: int, batch: int, recipe: str, device: str,
                 teacher_precision: str) -> float:  # fmt: skip
    code = (
        "import json, resource, torch, yolo_distill\n"
        "from yolo_distill.bench.step_cost import build, _batch, _step, torch_device\n"
        f"dev = torch_device({device!r})\n"
        f"m, params, nc = build({config!r}, {student!r}, {teacher!r}, {imgsz}, {recipe!r}, dev,"
        f" {teacher_precision!r})\n"
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
