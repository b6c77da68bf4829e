"""DistillationTrainer: Ultralytics' DetectionTrainer plus a frozen teacher and the recipe's KD terms.

It extends Ultralytics only through overridden methods and callbacks:

* ``__init__`` takes our keys (``teacher``, ``recipe``, ``sparsity``, ``teacher_precision``, ``threads``) out of
  the overrides and puts them back on ``self.args`` as plain data, so ``vars(self.args)`` rebuilds the trainer (as
  Ultralytics' DDP does) and the checkpoint's ``train_args`` resumes it; ``threads`` sets the CPU threads after
  Ultralytics' device selection (which sets ``cpu_count - 1``);
* ``set_model_attributes`` loads and checks the teacher and builds the connectors, before the optimizer exists;
* ``build_optimizer`` adds the connectors' parameters as their own group;
* ``on_pretrain_routine_end`` installs :class:`DistillationCriterion` on the student and its EMA (after
  Ultralytics may have replaced the criterion on resume);
* ``get_model`` keeps a loaded checkpoint's modules as they are, so a pruned model is never re-inflated;
* ``optimizer_step`` clips the connectors' gradients, applies BN sparsity (L1 on BN scales) when asked, then
  defers to Ultralytics; a fine-grained sparse checkpoint (:mod:`yolo_distill.compress.granularity`) gets its zeros
  back after every step, in the model and in its EMA.
"""

from __future__ import annotations

import math
from copy import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, RANK
from ultralytics.utils.torch_utils import unwrap_model

from yolo_distill.checkpoints import SPARSE_ATTR, apply_masks, sparse_masks
from yolo_distill.config import load_distill_recipe, require_int
from yolo_distill.distill.criterion import DistillationCriterion, DistillContext
from yolo_distill.distill.parallel import average_distill_grads, broadcast_distill_state
from yolo_distill.distill.teacher import check_pair, frozen_teacher, load_teacher, online_teacher, teacher_dtype
from yolo_distill.log import LOGGER as log
from yolo_distill.offline import ensure_font, resolve_weights

#: Keys this trainer adds to Ultralytics' arguments (they travel in ``vars(args)`` and in checkpoints).
EXTRA_KEYS = ("teacher", "recipe", "distill", "sparsity", "teacher_precision", "threads")
STATE_FILE = "distill_state.pt"  # connectors (and, online, the teacher): training-only, for resume


def strip_extra(args: Any) -> Any:
    """A copy of Ultralytics args without our keys (Ultralytics' validators reject unknown keys)."""
    args = copy(args)
    for k in EXTRA_KEYS:
        if hasattr(args, k):
            delattr(args, k)
    return args


class DistillationTrainer(DetectionTrainer):
    """Train a YOLO detector with detection loss plus distillation from a frozen teacher.

    With ``teacher=None`` it trains plainly (but still keeps a loaded checkpoint's shapes and can apply BN
    sparsity), which is how pruned models are fine-tuned without distillation.

    Args:
        cfg: Ultralytics default config (path or dict).
        overrides: Ultralytics train arguments plus ``teacher`` (a ``*.pt``), ``recipe`` (a shipped name or a YAML
            path), ``distill`` (an already resolved recipe as plain data; takes precedence over ``recipe``) and
            ``sparsity`` (L1 strength on BN scales, 0 = off) and ``threads`` (CPU threads for this training; unset:
            Ultralytics' ``cpu_count - 1``, at most 8).
        _callbacks: Ultralytics callbacks.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None) -> None:
        overrides = dict(overrides or {})
        extra = {k: overrides.pop(k) for k in EXTRA_KEYS if k in overrides}
        if "model" in overrides and overrides["model"] is not None and not isinstance(overrides["model"], nn.Module):
            resolve_weights(overrides["model"])
        ensure_font()
        super().__init__(cfg, overrides, _callbacks)
        if self.resume:  # the resumed checkpoint's train_args carried our keys into self.args
            extra = {k: getattr(self.args, k) for k in EXTRA_KEYS if getattr(self.args, k, None) is not None} | {
                k: v for k, v in extra.items() if k == "teacher" and v
            }
        teacher = extra.get("teacher")
        if teacher is not None and not isinstance(teacher, nn.Module):
            teacher = resolve_weights(teacher)
        recipe = load_distill_recipe(extra.get("distill") or extra.get("recipe") or "default")
        sparsity = float(extra.get("sparsity") or 0.0)
        if sparsity < 0:
            raise ValueError(f"sparsity must be >= 0, got {sparsity}")
        self.args.teacher = teacher if isinstance(teacher, (str, type(None))) else "<module>"
        self.args.recipe = str(extra.get("recipe") or ("custom" if extra.get("distill") else "default"))
        self.args.distill = recipe.to_dict()
        self.args.sparsity = sparsity
        self.args.teacher_precision = str(extra.get("teacher_precision") or "auto")
        teacher_dtype(self.args.teacher_precision, self.device, online=recipe.mode == "online")  # fails early
        self.args.threads = extra.get("threads")
        if self.args.threads is not None:
            require_int("threads", self.args.threads, 1)
            if self.device.type == "cpu":  # after Ultralytics' select_device, which set cpu_count - 1 threads
                torch.set_num_threads(self.args.threads)
        self._teacher_src = teacher
        self.recipe = recipe
        self.distill: DistillContext | None = None
        self._teacher_measured = False  # schedule.stop_at_teacher: the teacher's val mAP is measured once
        self.masks: dict[str, torch.Tensor] = {}  # a sparse checkpoint's zeros, kept through training
        if RANK in {-1, 0}:
            from ultralytics.utils import YAML

            YAML.save(self.save_dir / "args.yaml", vars(self.args))  # rewrite with our keys
        self.add_callback("on_pretrain_routine_end", _install_criterion)
        self.add_callback("on_pretrain_routine_end", _find_masks)
        self.add_callback("on_pretrain_routine_end", _set_ema_window)
        self.add_callback("on_train_epoch_start", _set_epoch)
        self.add_callback("on_train_batch_start", _attach_student_recorders)
        self.add_callback("on_train_batch_end", _detach_student_recorders)
        self.add_callback("on_model_save", _save_state)

    # -- model ----------------------------------------------------------------------------------------------------
    def get_model(self, cfg: str | dict | None = None, weights: nn.Module | None = None, verbose: bool = True):
        """Build the student. A loaded checkpoint for the same classes is trained as the module it is.

        Ultralytics rebuilds the model from its YAML and copies the tensors whose shapes match, which silently
        re-inflates a pruned model to full width; here such a checkpoint keeps every tensor as it is.
        """
        w_nc = int(weights.model[-1].nc) if isinstance(weights, nn.Module) else -1
        if w_nc == int(self.data["nc"]):
            model = weights.float()
            for p in model.parameters():
                if p.dtype.is_floating_point:
                    p.requires_grad_(True)
            model.train()
            if verbose and RANK in {-1, 0}:
                model.info()
            return self.set_model_names_for_load(model)
        model = super().get_model(cfg=cfg, weights=None, verbose=verbose)
        if isinstance(weights, nn.Module):
            mismatched = [
                k
                for k, v in weights.state_dict().items()
                if k in model.state_dict() and model.state_dict()[k].shape != v.shape and ".dfl" not in k
            ]
            body = [k for k in mismatched if not k.startswith(f"model.{len(model.model) - 1}.")]
            if body:
                raise ValueError(
                    f"the checkpoint has {w_nc} classes and layer shapes that differ from its YAML "
                    f"({body[:3]}...), as a pruned model does; fine-tune a pruned model on data with the same "
                    f"{w_nc} classes"
                )
            model.load(weights)
            if getattr(weights, SPARSE_ATTR, None):  # the zeros of a sparse checkpoint stay zeros
                setattr(model, SPARSE_ATTR, getattr(weights, SPARSE_ATTR))
        return model

    def set_model_attributes(self) -> None:
        """Attach data attributes, then load and check the teacher and build the connectors (before the optimizer)."""
        super().set_model_attributes()
        if self._teacher_src is None:
            return
        student = unwrap_model(self.model)
        online_yaml = self.recipe.mode == "online" and str(self._teacher_src).endswith((".yaml", ".yml"))
        if online_yaml:  # a teacher trained from scratch alongside the student: this data's classes
            teacher = load_teacher(self._teacher_src, nc=int(self.data["nc"]), names=self.data["names"])
        else:
            teacher = load_teacher(self._teacher_src)
        teacher = teacher.to(self.device)
        check_pair(teacher, self.data["names"], student.stride)
        if self.recipe.mode == "online":  # mutual learning: the teacher trains too, with its own detection loss
            teacher = online_teacher(teacher, strip_extra(self.args))
        else:  # frozen: BN folded into the convs, in teacher_precision (auto: half on a GPU; outputs cast back)
            teacher = frozen_teacher(teacher, self.args.teacher_precision, self.device)
        imgsz = int(student.stride.max()) * 2
        self.distill = DistillContext(teacher, student, self.recipe, imgsz=imgsz).to(self.device)
        if self.resume and self.args.resume:
            f = Path(str(self.args.resume)).parent / STATE_FILE
            if f.exists():
                state = torch.load(f, map_location=self.device)
                self.distill.connectors.load_state_dict(state["connectors"])
                if state.get("teacher") is not None:
                    self.distill.teacher.load_state_dict(state["teacher"])
                if state.get("teacher_map") is not None:  # schedule.stop_at_teacher: measured once, decided once
                    self.distill.teacher_map = float(state["teacher_map"])
                    self.distill.stopped = bool(state.get("stopped", False))
                    self._teacher_measured = True
                log.info("yolo_distill: restored distillation state from %s", f)
        if self.recipe.schedule.stop_at_teacher and not self.args.val:
            log.warning(
                "yolo_distill: schedule.stop_at_teacher needs val=True (it compares each epoch's validation mAP with "
                "the teacher's); with val=False KD stays on for the whole run"
            )
        if RANK in {-1, 0}:
            terms = ", ".join(f"{t.name}x{t.weight:g}" for t, _ in self.distill.terms) or "none"
            log.info(
                "yolo_distill: teacher %s (%s params), KD terms: %s, schedule: %s",
                self.args.teacher,
                f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M",
                terms,
                self.recipe.schedule.kind,
            )

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any):
        """Ultralytics' optimizer, plus the connectors' parameters as their own group (no weight decay) and, online,
        the co-trained teacher's (weights with the student's weight decay, BN and biases without; learning rate the
        student's times the recipe's ``teacher_lr``), so the teacher really trains; Ultralytics' warm-up and LR
        schedule then drive every group alike."""
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.distill is None:
            return optimizer
        lr = optimizer.param_groups[0]["lr"]
        if len(list(self.distill.connectors.parameters())):
            optimizer.add_param_group(
                {"params": list(self.distill.connectors.parameters()), "weight_decay": 0.0, "lr": lr}
            )
        if self.distill.online:
            decay, no_decay = [], []
            for module in self.distill.teacher.modules():
                for name, p in module.named_parameters(recurse=False):
                    is_weight = name == "weight" and not isinstance(module, (nn.BatchNorm2d, nn.LayerNorm))
                    (decay if is_weight else no_decay).append(p)
            wd = optimizer.param_groups[0].get("weight_decay", 0.0)
            t_lr = lr * (self.recipe.teacher_lr if self.recipe.teacher_lr is not None else 1.0)
            optimizer.add_param_group({"params": decay, "weight_decay": wd, "lr": t_lr})
            optimizer.add_param_group({"params": no_decay, "weight_decay": 0.0, "lr": t_lr})
        return optimizer

    def get_validator(self):
        """Ultralytics' validator, given args without our keys (its config check rejects unknown keys)."""
        from ultralytics.models.yolo.detect import DetectionValidator

        return DetectionValidator(
            self.test_loader, save_dir=self.save_dir, args=strip_extra(self.args), _callbacks=self.callbacks
        )

    def validate(self):
        """Ultralytics' validation, with layer recorders attached to the EMA for the KD terms of the val loss.

        With ``schedule.stop_at_teacher`` it also measures the teacher once and switches KD off for good when the
        student's mAP50-95 reaches it (decided on rank 0, shared with the other ranks at the next epoch start).
        """
        ctx = self.distill
        gate = ctx is not None and self.recipe.schedule.stop_at_teacher and not ctx.stopped
        if gate and not self._teacher_measured:  # once, on every rank (the validator's gathers are collective)
            ctx.teacher_map = self._teacher_map()  # None on ranks > 0, which get the decision by broadcast
            self._teacher_measured = True
        recs = list(ctx.student_recorders.values()) if ctx is not None and self.ema else []
        for r in recs:
            r.attach(self.ema.ema)
        try:
            metrics, fitness = super().validate()
        finally:
            for r in recs:
                r.detach()
        key = "metrics/mAP50-95(B)"
        if gate and metrics and key in metrics and ctx.teacher_map is not None and metrics[key] >= ctx.teacher_map:
            ctx.stopped = True
            log.info(
                "yolo_distill: student mAP50-95 %.4f reached the teacher's %.4f after epoch %d: KD is off from here "
                "(schedule.stop_at_teacher)",
                metrics[key],
                ctx.teacher_map,
                self.epoch + 1,
            )
        return metrics, fitness

    def _teacher_map(self) -> float | None:
        """The teacher's mAP50-95 on this run's val set, through Ultralytics' validator (on a fused copy)."""
        from copy import deepcopy

        from ultralytics.models.yolo.detect import DetectionValidator

        args = vars(strip_extra(self.args)) | dict(mode="val", plots=False, save_json=False, half=False)
        validator = DetectionValidator(self.test_loader, save_dir=self.save_dir, args=args)
        stats = validator(model=deepcopy(self.distill.teacher).eval())
        value = stats.get("metrics/mAP50-95(B)") if stats else None  # other DDP ranks get no stats
        if value is not None:
            log.info("yolo_distill: teacher mAP50-95 on val %.4f (schedule.stop_at_teacher)", value)
        return None if value is None else float(value)

    def optimizer_step(self) -> None:
        """Clip the connectors' gradients (Ultralytics clips only the model's), add BN sparsity, then step."""
        if self.distill is not None:  # outside the DDP module: average their gradients over the ranks here
            params = average_distill_grads(self.distill, self.world_size)
            if params:
                scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
                torch.nn.utils.clip_grad_norm_(params, max_norm=10.0 * scale)
        if self.args.sparsity:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            for m in unwrap_model(self.model).modules():
                if isinstance(m, nn.BatchNorm2d) and m.weight.grad is not None:
                    m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=self.args.sparsity * scale)
        super().optimizer_step()
        if self.masks:  # after the step and Ultralytics' EMA update: pruned weights are zero again in both
            apply_masks(unwrap_model(self.model), self.masks)
            if self.ema:
                apply_masks(self.ema.ema, self.masks)


# -- callbacks (module-level functions, so the callback dict pickles for DDP) -------------------------------------
def _install_criterion(trainer: DistillationTrainer) -> None:
    if trainer.distill is None:
        return
    if trainer.world_size > 1:  # every rank starts from rank 0's connectors (and online teacher)
        broadcast_distill_state(trainer.distill)
    for model in (unwrap_model(trainer.model), trainer.ema.ema if trainer.ema else None):
        if model is None:
            continue
        det = model.criterion if getattr(model, "criterion", None) is not None else model.init_criterion()
        if isinstance(det, DistillationCriterion):
            det = det.det
        model.criterion = DistillationCriterion(det, trainer.distill)


def _find_masks(trainer: DistillationTrainer) -> None:
    trainer.masks = sparse_masks(unwrap_model(trainer.model))
    if trainer.masks and RANK in {-1, 0}:
        zeros = sum(int((~m).sum()) for m in trainer.masks.values())
        log.info("yolo_distill: keeping %d pruned weights at zero in %d layers (a sparse checkpoint)", zeros,
                 len(trainer.masks))


def _set_ema_window(trainer: DistillationTrainer) -> None:
    """``recipe.ema_epochs``: the EMA's decay at least ``1 - 1/w`` over ``w`` = that many epochs of optimizer updates
    (Ultralytics' own ramp kept where it is higher); see :class:`~yolo_distill.config.DistillRecipe`."""
    epochs = trainer.recipe.ema_epochs
    if not epochs or trainer.ema is None:
        return
    per_epoch = max(len(trainer.train_loader) / max(trainer.accumulate, 1), 1.0)
    w = max(epochs * per_epoch, 1.0)
    theirs = trainer.ema.decay
    trainer.ema.decay = lambda x: max(theirs(x), (1 - 1 / w) * (1 - math.exp(-x / w)))
    if RANK in {-1, 0}:
        log.info("yolo_distill: EMA over about %.3g epochs (%.1f optimizer updates): decay up to %.4f", epochs, w,
                 1 - 1 / w)  # fmt: skip


def _set_epoch(trainer: DistillationTrainer) -> None:
    ctx = trainer.distill
    if ctx is None:
        return
    if trainer.world_size > 1 and trainer.recipe.schedule.stop_at_teacher:  # rank 0 decided (it holds the metrics)
        flag = [ctx.stopped if RANK == 0 else None]
        torch.distributed.broadcast_object_list(flag, 0)
        ctx.stopped = bool(flag[0])
    ctx.set_epoch(trainer.epoch, trainer.epochs, int(trainer.args.close_mosaic or 0))


def _attach_student_recorders(trainer: DistillationTrainer) -> None:
    if trainer.distill is not None:
        for r in trainer.distill.student_recorders.values():
            r.attach(unwrap_model(trainer.model))


def _detach_student_recorders(trainer: DistillationTrainer) -> None:
    if trainer.distill is not None:
        for r in trainer.distill.student_recorders.values():
            r.detach()


def _save_state(trainer: DistillationTrainer) -> None:
    """``distill_state.pt``: connector values, the online teacher, and the stop_at_teacher decision, for resume."""
    ctx = trainer.distill
    if ctx is None or not (len(ctx.connectors) or ctx.online or trainer.recipe.schedule.stop_at_teacher):
        return
    state = {"connectors": ctx.connectors.state_dict(), "teacher": ctx.teacher.state_dict() if ctx.online else None,
             "teacher_map": ctx.teacher_map, "stopped": ctx.stopped}  # fmt: skip
    tmp = trainer.wdir / f".{STATE_FILE}.partial"
    torch.save(state, tmp)
    tmp.replace(trainer.wdir / STATE_FILE)
    if ctx.online:  # the co-trained teacher is a model of its own: a stock checkpoint beside the student's
        from yolo_distill.checkpoints import save_stock_checkpoint

        out, part = trainer.wdir / "teacher_last.pt", trainer.wdir / "teacher_last.pt.partial"
        part.unlink(missing_ok=True)
        save_stock_checkpoint(ctx.teacher, part, train_args={"data": trainer.args.data, "imgsz": trainer.args.imgsz})
        part.replace(out)  # this run's own file, rewritten every epoch, never missing or torn
