"""The distillation trainer on tiny models: every family pair, checkpoints, resume, DDP rebuild, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAMILIES, train_args
from yolo_distill.distill.trainer import DistillationTrainer

PAIRS = [("v8", "11"), ("11", "26"), ("26", "v8")]


def _rows(save_dir: Path) -> list[dict]:
    with open(save_dir / "results.csv") as f:
        return [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]


def _clean_load(ckpt: Path, data: Path) -> dict:
    """Load, predict and validate ``ckpt`` in a process that never imports yolo_distill."""
    code = f"""
import json, sys, numpy as np
from ultralytics import YOLO
m = YOLO({str(ckpt)!r})
r = m.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
met = m.val(data={str(data)!r}, imgsz=64, batch=4, plots=False, device="cpu", verbose=False)
mods = sorted({{type(x).__module__.split('.')[0] for x in m.model.modules()}})
print(json.dumps({{"mods": mods, "yd": any(k.startswith("yolo_distill") for k in sys.modules), "map": met.box.map}}))
"""
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("teacher_fam,student_fam", PAIRS)
def test_family_pairs_train_log_and_save_student_only(tmp_path, tiny_data, ckpt_factory, teacher_fam, student_fam):
    teacher = ckpt_factory(FAMILIES[teacher_fam].replace("n.yaml", "s.yaml"))
    tr = DistillationTrainer(
        overrides=dict(
            model=FAMILIES[student_fam],
            data=str(tiny_data),
            teacher=str(teacher),
            recipe="logit_ld_cwd",
            **train_args(tmp_path),
        )
    )
    tr.train()
    row = _rows(tr.save_dir)[0]
    for col in ("train/kd_bkd", "train/kd_cwd", "val/kd_bkd", "val/kd_cwd"):
        assert col in row, f"missing column {col} in results.csv: {list(row)}"
    box_col = "train/kd_ld" if "train/kd_ld" in row else "train/kd_box"
    assert box_col in row
    assert float(row["train/kd_cwd"]) > 0, row
    # LD is positive; box_kd is 0 here because an untrained teacher is below its confidence floor (its positive
    # value and gradient are tested in test_box_kd_term_reaches_the_student_and_never_the_teacher)
    if box_col == "train/kd_ld":
        assert float(row[box_col]) > 0, row
    # the teacher is in neither the live student nor its EMA
    t_ids = {id(p) for p in tr.distill.teacher.parameters()}
    assert not t_ids & {id(p) for p in tr.ema.ema.parameters()}
    assert not t_ids & {id(p) for p in tr.model.parameters()}
    n_teacher = sum(p.numel() for p in tr.distill.teacher.parameters())
    ck = torch.load(tr.last, weights_only=False)
    saved = ck.get("ema") or ck["model"]  # the final strip moves the EMA into "model"
    n_saved = sum(p.numel() for p in saved.parameters())
    assert n_saved == sum(p.numel() for p in tr.ema.ema.parameters()) and n_saved < n_teacher
    assert saved.criterion is None
    res = _clean_load(tr.best, tiny_data)
    assert res["yd"] is False and "yolo_distill" not in res["mods"], res


def test_val_loss_has_kd_terms_with_a_trained_like_teacher(tmp_path, tiny_data, ckpt_factory):
    """With non-degenerate BN statistics the KD terms of the validation loss are non-zero."""
    from ultralytics.nn.tasks import load_checkpoint

    from yolo_distill.checkpoints import save_stock_checkpoint

    t, _ = load_checkpoint(ckpt_factory("yolo11s.yaml"))
    for m in t.modules():  # give BN layers non-trivial running statistics, as a trained teacher has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    teacher = save_stock_checkpoint(t, tmp_path / "t.pt")
    tr = DistillationTrainer(
        overrides=dict(
            model="yolo11n.yaml", data=str(tiny_data), teacher=str(teacher), recipe="pkd", **train_args(tmp_path)
        )
    )
    tr.train()
    row = _rows(tr.save_dir)[0]
    assert float(row["val/kd_pkd"]) > 0, row


def test_rebuild_from_args_alone_carries_recipe_and_teacher(tmp_path, tiny_data, ckpt_factory):
    """Ultralytics' DDP re-creates the trainer as cls(cfg, overrides=vars(args)): everything must travel."""
    from ultralytics.utils import DEFAULT_CFG_DICT

    teacher = ckpt_factory("yolo11s.yaml")
    recipe = {"losses": [{"name": "cwd", "weight": 2.5, "params": {"tau": 3.0}}], "schedule": {"kind": "linear_warmup"}}
    tr = DistillationTrainer(
        overrides=dict(
            model="yolo11n.yaml",
            data=str(tiny_data),
            teacher=str(teacher),
            distill=recipe,
            sparsity=1e-4,
            **train_args(tmp_path),
        )
    )
    cfg = DEFAULT_CFG_DICT.copy()
    cfg.update(save_dir="")
    rebuilt = DistillationTrainer(cfg=cfg, overrides=dict(vars(tr.args)))
    assert rebuilt.args.teacher == str(teacher)
    assert rebuilt.recipe == tr.recipe and rebuilt.recipe.losses[0].weight == 2.5
    assert rebuilt.recipe.losses[0].params == {"tau": 3.0} and rebuilt.recipe.schedule.kind == "linear_warmup"
    assert rebuilt.args.sparsity == 1e-4


def test_ddp_wrapped_student_gets_nonzero_kd(tmp_path, tiny_data, ckpt_factory, monkeypatch):
    """A DDP-wrapped student (gloo, world size 1) computes a non-zero KD loss through model(batch)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
    from yolo_distill.distill.teacher import load_teacher

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # set for this test only, never leaked into later ones
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
        student.args = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
        from ultralytics.cfg import get_cfg

        student.args = get_cfg()
        teacher = load_teacher(ckpt_factory("yolov8s.yaml"))
        ctx = DistillContext(teacher, student, load_distill_recipe("logit_ld_cwd"))
        student.criterion = DistillationCriterion(student.init_criterion(), ctx)
        ddp = DDP(student)
        batch = {
            "img": torch.rand(2, 3, 64, 64),
            "batch_idx": torch.tensor([0.0, 1.0]),
            "cls": torch.tensor([[1.0], [2.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]]),
        }
        loss, items = ddp(batch)
        kd = [float(v) for k, v in items.items() if k.startswith("kd_")]
        assert len(kd) == 3 and all(v > 0 for v in kd), items
        loss.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.connectors.parameters())
    finally:
        dist.destroy_process_group()


def _ddp_rank(rank: int, world: int, teacher: str, out: str) -> None:
    """One rank of the 2-process DDP test: its own seed (as Ultralytics seeds each rank), its own data."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
    from yolo_distill.distill.parallel import average_distill_grads, broadcast_distill_state
    from yolo_distill.distill.teacher import fuse_teacher, load_teacher

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(1 + rank)  # different connector initialisations on each rank
        student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
        student.args = get_cfg()
        ctx = DistillContext(fuse_teacher(load_teacher(teacher)), student, load_distill_recipe("logit_ld_cwd"))
        student.criterion = DistillationCriterion(student.init_criterion(), ctx)
        ddp = DDP(student)
        broadcast_distill_state(ctx)
        opt = torch.optim.SGD([*student.parameters(), *ctx.connectors.parameters()], lr=0.01, momentum=0.9)
        kd_items = []
        for step in range(3):
            g = torch.Generator().manual_seed(100 * rank + step)  # each rank sees its own batch
            batch = {"img": torch.rand(2, 3, 64, 64, generator=g), "batch_idx": torch.tensor([0.0, 1.0]),
                     "cls": torch.tensor([[1.0], [2.0]]),
                     "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]])}  # fmt: skip
            loss, items = ddp(batch)
            kd_items.append({k: float(v) for k, v in items.items() if k.startswith("kd_")})
            opt.zero_grad()
            loss.sum().backward()
            average_distill_grads(ctx, world)
            opt.step()
        # parameters (BN running statistics follow each rank's own batches, as in any DDP run without SyncBN)
        state = {"student": {k: v.detach().clone() for k, v in student.named_parameters()}, "kd": kd_items,
                 "connectors": {k: v.detach().clone() for k, v in ctx.connectors.named_parameters()}}  # fmt: skip
        torch.save(state, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_keep_student_and_connectors_identical(tmp_path, ckpt_factory, monkeypatch):
    """Two CPU ranks (gloo) run real KD steps with different data and different connector seeds: every KD term is
    non-zero on both ranks, and afterwards student and connector parameters are bitwise equal across the ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    mp.spawn(_ddp_rank, args=(2, str(ckpt_factory("yolo11s.yaml")), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for r in (r0, r1):
        assert all(v > 0 for step in r["kd"] for v in step.values()) and len(r["kd"][0]) == 3, r["kd"]
    assert r0["kd"] != r1["kd"], "the ranks saw the same data: the test would prove nothing"
    for part in ("student", "connectors"):
        diff = [k for k in r0[part] if not torch.equal(r0[part][k], r1[part][k])]
        assert not diff, f"{part} differ across ranks: {diff[:5]}"


def test_resume_restores_teacher_recipe_and_connectors(tmp_path, tiny_data, ckpt_factory):
    teacher = ckpt_factory("yolo11s.yaml")

    class Killed(Exception):
        pass

    def kill(trainer):
        raise Killed

    tr = DistillationTrainer(
        overrides=dict(
            model="yolo11n.yaml",
            data=str(tiny_data),
            teacher=str(teacher),
            recipe="cwd",
            **train_args(tmp_path, epochs=2),
        )
    )
    tr.add_callback("on_fit_epoch_end", kill)
    with pytest.raises(Killed):
        tr.train()
    saved = {k: v.clone() for k, v in tr.distill.connectors.state_dict().items()}
    last = tr.save_dir / "weights" / "last.pt"
    resumed = DistillationTrainer(overrides=dict(resume=str(last)))
    assert resumed.args.teacher == str(teacher) and resumed.recipe.losses[0].name == "cwd"
    at_start = {}

    def snapshot(trainer):  # the connectors the second epoch starts from
        at_start.update({k: v.clone() for k, v in trainer.distill.connectors.state_dict().items()})

    resumed.add_callback("on_pretrain_routine_end", snapshot)
    resumed.train()
    assert resumed.start_epoch == 1 and resumed.epoch == 1
    rows = _rows(resumed.save_dir)
    assert len(rows) == 2 and float(rows[1]["train/kd_cwd"]) > 0
    # the second epoch started from the saved connector values, not fresh ones
    assert at_start.keys() == saved.keys() and all(torch.equal(at_start[k], saved[k]) for k in saved), (
        "connector values were not restored"
    )


def test_resume_keeps_the_stop_at_teacher_decision(tmp_path, tiny_data, ckpt_factory, monkeypatch):
    """Killed after the epoch in which the student passed the teacher: the resumed run starts with KD off and the
    teacher's measured mAP, and does not measure the teacher again."""
    from tests.conftest import SHIPPED_TEACHER

    class Killed(Exception):
        pass

    def kill(trainer):
        raise Killed

    recipe = {"losses": [{"name": "binary_kd", "weight": 1.0}], "schedule": {"stop_at_teacher": True}}
    args = {**train_args(tmp_path, epochs=2), "imgsz": 128}
    tr = DistillationTrainer(overrides=dict(model=str(SHIPPED_TEACHER), data=str(tiny_data), distill=recipe,
                                            teacher=str(ckpt_factory("yolo11s.yaml")), **args))  # fmt: skip
    tr.add_callback("on_fit_epoch_end", kill)
    with pytest.raises(Killed):
        tr.train()
    assert tr.distill.stopped and tr.distill.teacher_map == 0.0
    measured = []
    monkeypatch.setattr(DistillationTrainer, "_teacher_map", lambda self: measured.append(1) or 1.0)
    resumed = DistillationTrainer(overrides=dict(resume=str(tr.save_dir / "weights" / "last.pt")))
    at_start = {}
    resumed.add_callback("on_pretrain_routine_end", lambda t: at_start.update(stopped=t.distill.stopped,
                                                                                  teacher_map=t.distill.teacher_map))
    resumed.train()
    assert at_start == {"stopped": True, "teacher_map": 0.0}, at_start
    assert measured == [], "the teacher was measured again after resume"
    assert float(_rows(resumed.save_dir)[1]["train/kd_bkd"]) == 0


def test_pruned_like_checkpoint_is_not_reinflated(tmp_path, tiny_data, ckpt_factory):
    """A *.pt student is trained as the module it is (Ultralytics would rebuild it from its YAML)."""
    from ultralytics.nn.tasks import load_checkpoint

    from yolo_distill.checkpoints import save_stock_checkpoint

    m, _ = load_checkpoint(ckpt_factory("yolo11n.yaml"))
    conv = m.model[0].conv  # shrink the first conv's output channels and its BN: a "pruned" layer
    keep = 8
    conv.weight = torch.nn.Parameter(conv.weight[:keep].clone())
    conv.out_channels = keep
    bn = m.model[0].bn
    for name in ("weight", "bias"):
        setattr(bn, name, torch.nn.Parameter(getattr(bn, name)[:keep].clone()))
    bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[:keep], bn.running_var[:keep], keep
    nxt = m.model[1].conv
    nxt.weight = torch.nn.Parameter(nxt.weight[:, :keep].clone())
    nxt.in_channels = keep
    src = save_stock_checkpoint(m, tmp_path / "pruned.pt")
    tr = DistillationTrainer(overrides=dict(model=str(src), data=str(tiny_data), **train_args(tmp_path)))
    tr.train()
    ck = torch.load(tr.last, weights_only=False)
    out = ck.get("ema") or ck["model"]
    assert out.model[0].conv.weight.shape[0] == keep and out.model[1].conv.weight.shape[1] == keep
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "case,match",
    [
        ("other_classes", "detects 3 classes"),
        ("classifier", "needs a detection teacher"),
        ("strides", "strides"),
        ("missing", "not on disk"),
        ("corrupt", "could not be loaded"),
    ],
)
def test_bad_teacher_stops_before_training(tmp_path, tiny_data, ckpt_factory, case, match):
    from ultralytics.nn.tasks import ClassificationModel

    from yolo_distill.checkpoints import save_stock_checkpoint

    if case == "other_classes":
        teacher = ckpt_factory("yolo11s.yaml", names=("a", "b", "c"))
    elif case == "classifier":
        cls_model = ClassificationModel("yolo11n-cls.yaml", nc=8, verbose=False)
        teacher = save_stock_checkpoint(cls_model, tmp_path / "cls.pt")
    elif case == "strides":
        teacher = ckpt_factory("yolov8n-p2.yaml")
    elif case == "missing":
        teacher = tmp_path / "nope.pt"
    else:
        teacher = tmp_path / "corrupt.pt"
        teacher.write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        tr = DistillationTrainer(
            overrides=dict(model="yolo11n.yaml", data=str(tiny_data), teacher=str(teacher), **train_args(tmp_path))
        )
        tr.train()
    assert not list((tmp_path / "runs").rglob("*.pt")), "no checkpoint may be written after a bad teacher"


@pytest.mark.parametrize(
    "recipe,match",
    [
        ({"losses": [{"name": "nope"}]}, "unknown distillation loss 'nope'"),
        ({"losses": [{"name": "cwd", "wieght": 1}]}, r"unknown key\(s\) \['wieght'\]"),
        ({"losses": [{"name": "cwd", "weight": -1}]}, "weight must be a number >= 0"),
        ({"losses": [{"name": "ld", "params": {"temperature": -2}}]}, "temperature must be > 0"),
        ({"losses": [], "schedul": {}}, r"unknown key\(s\) \['schedul'\]"),
        ({"losses": [{"name": "cwd", "params": {"taux": 1}}]}, "bad params"),
        ({"losses": [], "schedule": {"stop_at_teacher": "yes"}}, "stop_at_teacher must be true or false"),
        ({"losses": [], "mode": "online", "schedule": {"stop_at_teacher": True}}, "stop_at_teacher needs a fixed"),
        ({"losses": [], "mode": "online", "teacher_lr": 0}, r"teacher_lr=0 is not valid: expected a multiple"),
        ({"losses": [], "teacher_lr": 0.1}, r"teacher_lr=0.1 needs mode: online"),
    ],
)
def test_bad_recipe_stops_before_training(tmp_path, tiny_data, ckpt_factory, recipe, match):
    teacher = ckpt_factory("yolo11s.yaml")
    with pytest.raises((KeyError, ValueError), match=match):
        tr = DistillationTrainer(
            overrides=dict(
                model="yolo11n.yaml", data=str(tiny_data), teacher=str(teacher), distill=recipe, **train_args(tmp_path)
            )
        )
        tr.train()


@pytest.mark.parametrize("family,recipe", [("26", "box"), ("11", "default")])
def test_box_kd_term_reaches_the_student_and_never_the_teacher(ckpt_factory, family, recipe):
    """Each KD term is positive for a student unlike its teacher, its gradient reaches the student, and none reaches
    the teacher even when the teacher's parameters would accept one (its forward runs without autograd)."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import load_teacher

    student = DetectionModel(FAMILIES[family], nc=8, verbose=False)
    teacher = load_teacher(ckpt_factory(FAMILIES[family].replace("n.yaml", "s.yaml")))
    spec = {"losses": [{"name": "box_kd", "params": {"min_conf": 0.0}}]} if recipe == "box" else recipe
    ctx = DistillContext(teacher, student, load_distill_recipe(spec))
    for p in teacher.parameters():
        p.requires_grad_(True)  # a user's teacher module may come with gradients on
    student.train()
    vec, items = ctx.compute(student(torch.rand(2, 3, 64, 64)), {"img": torch.rand(2, 3, 64, 64)})
    assert all(float(v) > 0 for v in items.values()), items
    vec.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the frozen teacher"


def test_attention_across_widths_gets_a_connector_and_its_channel_part(ckpt_factory):
    """An s -> n pair (the bench's): the attention term's channel part runs through a 1x1 connector; with
    connector: none the recipe refuses the pair before training."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.connectors import ConvConnector
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import load_teacher

    student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
    teacher = load_teacher(ckpt_factory("yolo11s.yaml"))
    ctx = DistillContext(teacher, student, load_distill_recipe("attention"))
    assert ctx.connectors and all(isinstance(c, ConvConnector) for c in ctx.connectors.values())
    student.train()
    vec, items = ctx.compute(student(torch.rand(2, 3, 64, 64)), {"img": torch.rand(2, 3, 64, 64)})
    assert float(items["kd_att"]) > 0
    with pytest.raises(ValueError, match="connector 'none' needs equal channels"):
        DistillContext(teacher, student, load_distill_recipe({"losses": [{"name": "attention", "connector": "none"}]}))


def test_alpha_balances_detection_and_kd_as_hinton(ckpt_factory):
    """loss = alpha * L_det + (1 - alpha) * KD; unset, L_det + KD as before; outside [0, 1] refused."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
    from yolo_distill.distill.teacher import load_teacher

    student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
    student.args = get_cfg()
    teacher = load_teacher(ckpt_factory("yolo11s.yaml"))
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.2, 0.2]])
    batch = {"img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[1.0], [2.0]]), "bboxes": boxes}  # fmt: skip
    student.train()
    preds = student(batch["img"])

    def loss(alpha):
        recipe = {"losses": [{"name": "binary_kd", "params": {"normalize": "mean"}}]}
        recipe |= {} if alpha is None else {"alpha": alpha}
        ctx = DistillContext(teacher, student, load_distill_recipe(recipe))
        return DistillationCriterion(student.init_criterion(), ctx)(preds, batch)[0].detach()

    plain = loss(None)
    assert plain[-1] > 0 and plain[:-1].sum() > 0
    for a in (1.0, 0.25, 0.0):
        got = loss(a)
        assert torch.allclose(got[:-1], a * plain[:-1], rtol=1e-5), (a, got, plain)
        assert torch.allclose(got[-1], (1 - a) * plain[-1], rtol=1e-5), (a, got, plain)
    with pytest.raises(ValueError, match=r"alpha=1.5 is not valid: expected a number in \[0, 1\]"):
        load_distill_recipe({"losses": [{"name": "binary_kd"}], "alpha": 1.5})
    assert "alpha" not in load_distill_recipe("default").to_dict(), "unset alpha leaves recipes and cache keys alone"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_teacher_gives_the_same_outputs_and_keeps_every_branch(ckpt_factory, family):
    """The frozen teacher is BN-folded and, on a CPU, channels-last (cheaper forward): every head branch (YOLO26's
    one2many included, which Ultralytics' own fuse() drops) and every neck feature equal the unfused teacher's within
    1e-4 (fp32)."""
    from copy import deepcopy

    from yolo_distill.distill.outputs import head_outputs
    from yolo_distill.distill.teacher import frozen_teacher, load_teacher

    teacher = load_teacher(ckpt_factory(FAMILIES[family].replace("n.yaml", "s.yaml")))
    g = torch.Generator().manual_seed(0)
    for m in teacher.modules():  # trained-like BN statistics, so that folding them is not a no-op
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    fused = frozen_teacher(deepcopy(teacher), "fp32", "cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    convs = [m.weight for m in fused.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.rand(2, 3, 64, 64, generator=g)
    with torch.inference_mode():
        ref, got = head_outputs(teacher(x)), head_outputs(fused(x))
    assert ref.keys() == got.keys()
    for k in ref:
        for a, b in [(ref[k].scores, got[k].scores), (ref[k].dist, got[k].dist), *zip(ref[k].feats, got[k].feats)]:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (k, (a - b).abs().max())


def test_nan_kd_term_is_reported_by_name(ckpt_factory):
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import load_teacher

    student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
    teacher = load_teacher(ckpt_factory("yolo11s.yaml"))
    with torch.no_grad():
        teacher.model[-1].cv3[0][-1].bias.fill_(float("nan"))
    ctx = DistillContext(teacher, student, load_distill_recipe("logit"))
    preds = student(torch.rand(1, 3, 64, 64))
    with pytest.raises(FloatingPointError, match="bkd|binary_kd"):
        ctx.compute(preds, {"img": torch.rand(1, 3, 64, 64)})


def test_ultralytics_model_train_accepts_our_trainer(tmp_path, tiny_data, ckpt_factory):
    """YOLO(...).train(trainer=DistillationTrainer, teacher=...) works as the README says."""
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")
    model.train(trainer=DistillationTrainer, data=str(tiny_data), teacher=str(ckpt_factory("yolo11s.yaml")),
                recipe="cwd", **train_args(tmp_path))  # fmt: skip
    row = _rows(model.trainer.save_dir)[0]
    assert float(row["train/kd_cwd"]) > 0
    assert model.trainer.distill is not None and model.trainer.args.recipe == "cwd"


def test_online_mutual_learning_trains_both(tmp_path, tiny_data, ckpt_factory):
    """Online: the teacher's conv weights are stepped by the optimizer (not only its BN statistics move), its own
    detection loss on val drops over a few epochs, and teacher_last.pt is that trained teacher."""
    from ultralytics.nn.tasks import load_checkpoint

    teacher = ckpt_factory("yolov8s.yaml")
    before = {k: v.clone() for k, v in load_checkpoint(teacher)[0].state_dict().items()}
    # 24 steps with plain SGD at a fixed LR from the first step: enough for an untrained teacher's loss to fall
    args = train_args(tmp_path, epochs=6, batch=2, warmup_epochs=0, optimizer="SGD", lr0=0.01, lrf=1.0, imgsz=128)
    tr = DistillationTrainer(overrides=dict(model="yolo11n.yaml", data=str(tiny_data), teacher=str(teacher),
                                            recipe="online", **args))  # fmt: skip
    tr.train()
    rows = _rows(tr.save_dir)
    assert float(rows[0]["train/t_det"]) > 0 and "train/t_kd" in rows[0]
    assert float(rows[-1]["val/t_det"]) < float(rows[0]["val/t_det"]), [r["val/t_det"] for r in rows]
    after = tr.distill.teacher.state_dict()
    conv = [k for k in before if k.endswith("conv.weight") and not torch.equal(before[k], after[k].cpu())]
    assert len(conv) > 10, "the online teacher's convolutions did not train"
    t_ckpt = tr.wdir / "teacher_last.pt"
    assert t_ckpt.exists() and (tr.wdir / "distill_state.pt").exists()
    t_saved = load_checkpoint(t_ckpt)[0]
    k = conv[0]
    saved_w, live_w = t_saved.state_dict()[k].float(), after[k].float().cpu()
    assert torch.allclose(saved_w, live_w, atol=1e-2), "teacher_last.pt is not the trained teacher"
    assert not torch.allclose(saved_w, before[k].float(), atol=1e-6)
    ck = torch.load(tr.last, weights_only=False)
    student = ck.get("ema") or ck["model"]
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in t_saved.parameters())


@pytest.mark.parametrize("recipe,scale", [("online", 1.0), ("online_slow_teacher", 0.1)])
def test_online_yaml_teacher_takes_the_data_classes(tmp_path, tiny_data, recipe, scale):
    """A teacher trained from scratch alongside the student (a YAML) is built for the data's classes; its parameters
    learn at the student's rate times the recipe's ``teacher_lr``, through warm-up and schedule to the last step."""
    tr = DistillationTrainer(overrides=dict(model="yolo11n.yaml", data=str(tiny_data), teacher="yolov8n.yaml",
                                            recipe=recipe, **train_args(tmp_path, val=False)))  # fmt: skip
    tr.train()
    assert tr.distill.teacher.names == tr.data["names"] and int(tr.distill.teacher.model[-1].nc) == tr.data["nc"]
    teacher = {id(p) for p in tr.distill.teacher.parameters()}
    student_w = {id(p) for p in tr.model.parameters() if p.ndim > 1}
    lrs = {"teacher": set(), "student": set()}
    for g in tr.optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        if ids and ids <= teacher:
            lrs["teacher"].add(round(g["lr"], 12))
        elif ids and ids <= student_w:
            lrs["student"].add(round(g["lr"], 12))
    (t_lr,), (s_lr,) = lrs["teacher"], lrs["student"]
    assert s_lr > 0 and t_lr == pytest.approx(scale * s_lr), lrs


@pytest.mark.parametrize("branch", ["one2many", "both"])
def test_yolo26_branches(ckpt_factory, branch):
    """KD reaches YOLO26's one2one head only with branch=both (its features are detached from the backbone)."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import load_teacher

    student = DetectionModel("yolo26n.yaml", nc=8, verbose=False).train()
    recipe = load_distill_recipe(
        {"losses": [{"name": "logit_kl", "params": {"conf_weighted": False}}], "branch": branch}
    )
    ctx = DistillContext(load_teacher(ckpt_factory("yolo26s.yaml")), student, recipe)
    img = torch.rand(2, 3, 64, 64)
    vec, _ = ctx.compute(student(img), {"img": img})
    vec.sum().backward()
    head = student.model[-1]
    o2o = sum(float(p.grad.abs().sum()) for p in head.one2one_cv3.parameters() if p.grad is not None)
    o2m = sum(float(p.grad.abs().sum()) for p in head.cv3.parameters() if p.grad is not None)
    assert o2m > 0
    assert (o2o > 0) == (branch == "both"), f"one2one grad {o2o} with branch={branch}"


def test_every_kd_term_stays_fp32_and_finite_under_autocast(ckpt_factory):
    """AMP (bf16 autocast on CPU: the mechanism fp16 AMP uses on CUDA): KD math runs in fp32 and matches fp32."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import load_teacher
    from yolo_distill.registry import LOSSES

    torch.manual_seed(0)
    student = DetectionModel("yolo11n.yaml", nc=8, verbose=False).train()
    recipe = load_distill_recipe({"losses": [{"name": n} for n in LOSSES.names()]})
    ctx = DistillContext(load_teacher(ckpt_factory("yolo11s.yaml")), student, recipe)
    img = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)  # MGD draws a random mask: same draws for both passes
    ref, _ = ctx.compute(student(img), {"img": img})
    seen = []
    for term, loss_fn in ctx.terms:
        loss_fn.register_forward_pre_hook(
            lambda m, args, n=term.name: seen.append((n, torch.is_autocast_enabled("cpu"), {a.dtype for a in args}))
        )
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = student(img)
        vec, items = ctx.compute(preds, {"img": img})
    assert vec.dtype == torch.float32, f"KD vector is {vec.dtype} under autocast"
    assert {n for n, _, _ in seen} == set(LOSSES.names())
    for n, autocast_on, dtypes in seen:
        assert not autocast_on and dtypes == {torch.float32}, f"{n} ran with autocast={autocast_on} on {dtypes}"
    assert torch.isfinite(vec).all(), items
    names = ctx.names()
    for n, a, b in zip(names, vec.detach(), ref.detach()):
        assert torch.isclose(a, b, rtol=0.15, atol=1e-3), f"{n}: {float(a)} under bf16 autocast vs {float(b)} in fp32"
    vec.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("stops", [True, False])
def test_stop_at_teacher_turns_kd_off_once_the_student_reaches_the_teacher(tmp_path, tiny_data, ckpt_factory, stops):
    """Measured, not faked: a trained student (the shipped teacher, mAP > 0 here) with an untrained teacher (mAP 0)
    passes it at the first validation, so KD is 0 from epoch 2; an untrained student with the trained teacher never
    reaches it, so KD stays on."""
    from tests.conftest import SHIPPED_TEACHER

    trained, untrained = str(SHIPPED_TEACHER), str(ckpt_factory("yolo11s.yaml"))
    student, teacher = (trained, untrained) if stops else ("yolo11n.yaml", trained)
    recipe = {"losses": [{"name": "binary_kd", "weight": 1.0}], "schedule": {"stop_at_teacher": True}}
    args = {**train_args(tmp_path, epochs=2), "imgsz": 128}
    tr = DistillationTrainer(
        overrides=dict(model=student, data=str(tiny_data), teacher=teacher, distill=recipe, **args)
    )
    tr.train()
    rows = _rows(tr.save_dir)
    assert len(rows) == 2
    assert tr.distill.teacher_map is not None, "the teacher was never measured"
    student_map = float(rows[0]["metrics/mAP50-95(B)"])
    if stops:  # a real pass, not 0 >= 0
        assert tr.distill.teacher_map == 0 < student_map, (tr.distill.teacher_map, student_map)
    else:
        assert tr.distill.teacher_map > 0.01 > student_map, (tr.distill.teacher_map, student_map)
    assert float(rows[0]["train/kd_bkd"]) > 0, f"KD must be on in epoch 1: {rows[0]}"
    assert tr.distill.stopped is stops, f"teacher mAP {tr.distill.teacher_map}, rows {rows}"
    kd2 = float(rows[1]["train/kd_bkd"])
    assert (kd2 == 0) is stops, f"epoch 2 KD {kd2} (stop expected: {stops})"
    # once stopped, training still works and the saved student is a plain checkpoint
    assert tr.best.exists()


def test_ema_epochs_makes_the_saved_weights_an_average_on_small_data(tmp_path, tiny_data, ckpt_factory):
    """``ema_epochs``: on a tiny set Ultralytics' EMA decay stays near 0 (its weights are the raw ones); with the
    recipe key the EMA averages, so the saved model differs from the last raw weights, and never averages less than
    Ultralytics' own ramp."""
    import math

    from ultralytics.utils.torch_utils import unwrap_model

    student = str(ckpt_factory("yolo11n.yaml"))
    teacher = str(ckpt_factory("yolo11s.yaml"))
    gaps = {}
    for ema in (None, 4):
        recipe = {"losses": [{"name": "binary_kd", "weight": 0.5}]} | ({"ema_epochs": ema} if ema else {})
        tr = DistillationTrainer(overrides=train_args(tmp_path, model=student, data=str(tiny_data), teacher=teacher,
                                                      distill=recipe, epochs=2, batch=4, nbs=4, val=False,
                                                      name=f"ema{ema}"))  # fmt: skip
        tr.train()
        raw, avg = unwrap_model(tr.model).state_dict(), tr.ema.ema.state_dict()
        w = [k for k in raw if k.endswith("conv.weight")]
        gaps[ema] = sum(float((raw[k].float() - avg[k].float()).abs().sum()) for k in w)
        d = tr.ema.decay(tr.ema.updates)
        assert d >= 0.9999 * (1 - math.exp(-tr.ema.updates / 2000)) - 1e-12
        if ema:  # 2 batches an epoch, one update each: w = 8 updates, ramped in over 8 updates
            assert tr.ema.updates == 4 and d == pytest.approx((1 - 1 / 8) * (1 - math.exp(-4 / 8))), d
    assert gaps[4] > 10 * gaps[None], gaps
    with pytest.raises(ValueError, match="ema_epochs=0"):
        from yolo_distill.config import load_distill_recipe

        load_distill_recipe({"losses": [{"name": "binary_kd"}], "ema_epochs": 0})


def test_until_close_mosaic_switches_a_term_off_once_mosaic_closes(tmp_path, tiny_data, ckpt_factory):
    """A term with ``until_close_mosaic: true`` trains while mosaic is on and weighs 0 in the epochs Ultralytics'
    ``close_mosaic`` trains without it; the other terms stay on; the key stays out of the plain form when unset."""
    from yolo_distill.config import load_distill_recipe

    recipe = {"losses": [{"name": "binary_kd", "weight": 0.5}, {"name": "cwd", "until_close_mosaic": True}]}
    args = {**train_args(tmp_path, epochs=2), "close_mosaic": 1, "val": False}
    student, teacher = str(ckpt_factory("yolo11n.yaml")), str(ckpt_factory("yolo11s.yaml"))
    tr = DistillationTrainer(overrides=dict(model=student, data=str(tiny_data), teacher=teacher, distill=recipe,
                                            **args))
    tr.train()
    rows = _rows(tr.save_dir)
    assert len(rows) == 2
    assert float(rows[0]["train/kd_cwd"]) > 0, f"mosaic on in epoch 1: the term trains: {rows[0]}"
    assert float(rows[1]["train/kd_cwd"]) == 0, f"mosaic closed in epoch 2: the term is off: {rows[1]}"
    assert all(float(r["train/kd_bkd"]) > 0 for r in rows), f"the other term stays on: {rows}"
    plain = load_distill_recipe({"losses": [{"name": "cwd"}]}).to_dict()
    assert "until_close_mosaic" not in plain["losses"][0]
    with pytest.raises(ValueError, match="until_close_mosaic must be true or false"):
        load_distill_recipe({"losses": [{"name": "cwd", "until_close_mosaic": "yes"}]})


_NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not _NATIVE_BF16, reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_bf16_teacher_runs_in_bf16_and_keeps_every_kd_term_within_rounding(ckpt_factory):
    """teacher_precision=bf16 (a cheaper teacher forward on CPUs with native bf16): the frozen teacher's weights are
    bf16, and each KD term of ``logit_ld_cwd`` (bkd, ld, cwd), value and gradient to the student, stays within bf16
    rounding of the fp32 teacher's (value within 2 % + 1e-3, gradient within 5 % relative)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_distill.config import load_distill_recipe
    from yolo_distill.distill.criterion import DistillContext
    from yolo_distill.distill.teacher import frozen_teacher, load_teacher

    src = ckpt_factory("yolo11s.yaml")
    torch.manual_seed(0)
    student = DetectionModel("yolo11n.yaml", nc=8, verbose=False)
    student.args = get_cfg()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ctxs = {}
    for prec in ("fp32", "bf16"):
        teacher = frozen_teacher(load_teacher(src), prec, "cpu")
        assert {p.dtype for p in teacher.parameters()} == {torch.float32 if prec == "fp32" else torch.bfloat16}
        torch.manual_seed(0)  # the same connectors for both
        ctxs[prec] = DistillContext(teacher, student, load_distill_recipe("logit_ld_cwd"))
    for i, (term, _) in enumerate(ctxs["fp32"].terms):
        got = {}
        for prec, ctx in ctxs.items():
            student.zero_grad()
            terms, _ = ctx.compute(student(x), {"img": x})
            terms[i].backward()
            grads = [p.grad.flatten() for p in student.parameters() if p.grad is not None]
            got[prec] = terms[i].item(), torch.cat(grads)
        (v32, g32), (v16, g16) = got["fp32"], got["bf16"]
        assert v32 > 0 and abs(v16 - v32) <= 0.02 * v32 + 1e-3, (term.name, v16, v32)
        assert (g16 - g32).norm() <= 0.05 * g32.norm(), (term.name, float((g16 - g32).norm() / g32.norm()))


@pytest.mark.skipif(not _NATIVE_BF16, reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_trainer_runs_the_teacher_in_the_asked_precision_and_keeps_it_in_args(tmp_path, tiny_data, ckpt_factory):
    """train(teacher_precision=bf16): the trainer's frozen teacher is bf16, the KD terms train, and the key is in
    args.yaml (so a rebuilt or resumed trainer runs the teacher the same way)."""
    import yaml

    from yolo_distill.api import train

    tr = train("yolo11n.yaml", str(tiny_data), teacher=str(ckpt_factory("yolo11s.yaml")), recipe="logit_ld",
               teacher_precision="bf16", **train_args(tmp_path))  # fmt: skip
    assert {p.dtype for p in tr.distill.teacher.parameters()} == {torch.bfloat16}
    row = _rows(tr.save_dir)[0]
    assert float(row["train/kd_bkd"]) > 0 and float(row["train/kd_ld"]) > 0, row
    assert yaml.safe_load((tr.save_dir / "args.yaml").read_text())["teacher_precision"] == "bf16"
    rebuilt = DistillationTrainer(overrides=vars(tr.args) | {"name": "rebuilt"})
    assert rebuilt.args.teacher_precision == "bf16"


@pytest.mark.parametrize(
    "value,recipe,match",
    [
        ("fp8", "default", r"teacher_precision='fp8' is not valid: expected one of"),
        ("fp16", "default", "fp16 convolutions need a CUDA GPU"),
        ("bf16", "online", "not valid with mode: online"),
    ],
)
def test_bad_teacher_precision_stops_before_anything_is_written(tmp_path, tiny_data, ckpt_factory, value, recipe,
                                                                match):  # fmt: skip
    from yolo_distill.api import train

    with pytest.raises(ValueError, match=match):
        train("yolo11n.yaml", str(tiny_data), teacher=str(ckpt_factory("yolo11s.yaml")), recipe=recipe,
              teacher_precision=value, **train_args(tmp_path))  # fmt: skip
    assert not (tmp_path / "runs").exists(), "a refused value must not create the run folder"


def test_threads_sets_the_training_threads_and_stays_in_args(tmp_path, tiny_data):
    """threads=N trains on N CPU threads, not Ultralytics' cpu_count - 1 (which it sets when it picks the device),
    and keeps the key in args.yaml, so a rebuilt or resumed trainer uses the same count."""
    import yaml
    from ultralytics.utils import NUM_THREADS

    before = torch.get_num_threads()
    want = 3 if NUM_THREADS != 3 else 2  # a count Ultralytics would not pick itself
    seen: list[int] = []
    try:
        tr = DistillationTrainer(overrides={"model": "yolo11n.yaml", "data": str(tiny_data), "threads": want,
                                            **train_args(tmp_path)})  # fmt: skip
        tr.add_callback("on_train_epoch_start", lambda t: seen.append(torch.get_num_threads()))
        tr.train()
        assert seen == [want], (seen, NUM_THREADS)
        assert yaml.safe_load((tr.save_dir / "args.yaml").read_text())["threads"] == want
        torch.set_num_threads(1)
        DistillationTrainer(overrides=vars(tr.args) | {"name": "rebuilt"})
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [0, -2, 1.5, "2", True])
def test_bad_threads_stops_before_anything_is_written(tmp_path, tiny_data, value):
    from yolo_distill.api import train

    with pytest.raises(ValueError, match=rf"threads={value!r}"):
        train("yolo11n.yaml", str(tiny_data), threads=value, **train_args(tmp_path))
    assert not (tmp_path / "runs").exists(), "a refused value must not create the run folder"
