"""The distillation criterion: Ultralytics' detection loss plus the recipe's weighted KD terms.

Two pieces:

* :class:`DistillContext` holds everything training-only: the frozen teacher, the connectors, the loss modules and
  the schedule factor. It pairs student and teacher tensors for each term. ``deepcopy`` returns the same object, so
  the EMA copy of the student shares it instead of copying the teacher, and it refuses to be pickled.
* :class:`DistillationCriterion` wraps the student's own criterion (``v8DetectionLoss`` or YOLO26's ``E2ELoss``)
  and is installed as ``model.criterion``, which Ultralytics strips before writing any checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_distill.config import DistillRecipe, KDTerm
from yolo_distill.distill.connectors import build_connector
from yolo_distill.distill.losses import LOSSES, KDLoss
from yolo_distill.distill.outputs import HeadOutput, head_outputs
from yolo_distill.distill.recorder import FeatureRecorder
from yolo_distill.log import LOGGER as log


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _fp32(device: torch.device) -> torch.autocast:
    """A context that turns autocast off, so KD math runs in fp32 also under AMP."""
    return torch.autocast(device.type if device.type in ("cuda", "cpu", "mps", "xpu") else "cpu", enabled=False)


class DistillContext:
    """Teacher, connectors and KD terms of one distillation run (training-only state).

    Args:
        teacher: the frozen teacher (eval mode, no grad), on the student's device.
        student: the student, used once to read feature shapes.
        recipe: the validated recipe.
        imgsz: a probe image size (multiple of the max stride) for reading feature shapes.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, recipe: DistillRecipe, imgsz: int = 64) -> None:
        self.teacher = teacher
        self.recipe = recipe
        self.online = recipe.mode == "online"
        self.teacher_det = None  # online mode: the teacher's own detection loss (built on first use)
        self.strides = student.stride.clone()
        self.factor = 1.0
        self.mosaic_closed = False  # the last close_mosaic epochs: terms with until_close_mosaic weigh 0
        self.stopped = False  # schedule.stop_at_teacher: set once the student's val mAP reached the teacher's
        self.teacher_map: float | None = None  # the teacher's val mAP50-95, measured when stop_at_teacher asks
        self.terms: list[tuple[KDTerm, KDLoss]] = []
        self.connectors = nn.ModuleDict()
        self.student_recorders: dict[str, FeatureRecorder] = {}
        self.teacher_recorders: dict[str, FeatureRecorder] = {}
        s_reg, t_reg = int(student.model[-1].reg_max), int(teacher.model[-1].reg_max)
        probe = None
        for term in recipe.losses:
            try:
                loss_fn = LOSSES.get(term.name)(**term.params)
            except TypeError as e:
                raise ValueError(f"loss {term.name!r}: bad params {term.params}: {e}") from e
            if loss_fn.inputs == "dist" and (s_reg != t_reg or s_reg == 1):
                log.warning(
                    "yolo_distill: %r needs DFL heads with equal reg_max (student %d, teacher %d); using its "
                    "box-regression form 'box_kd' for this pair",
                    term.name,
                    s_reg,
                    t_reg,
                )
                loss_fn = LOSSES.get("box_kd")()
            if loss_fn.inputs == "feature":
                if probe is None:
                    probe = self._probe_features(student, teacher, imgsz)
                self._build_feature_term(term, loss_fn, student, teacher, probe)
            self.terms.append((term, loss_fn))

    # -- set-up -------------------------------------------------------------------------------------------------
    def _probe_features(self, student: nn.Module, teacher: nn.Module, imgsz: int) -> dict:
        """Run both models once on a blank image to read the shapes of every candidate feature map."""
        layers = sorted({i for t in self.recipe.losses if isinstance(t.layers, list) for i in t.layers})
        rec_s, rec_t = FeatureRecorder(layers), FeatureRecorder(layers)
        x = torch.zeros(1, 3, imgsz, imgsz, device=self.strides.device)
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad(), rec_s.recording(student), rec_t.recording(teacher):
                s_out = head_outputs(student(x.to(_model_dtype(student))))["main"]
                t_out = head_outputs(teacher(x.to(_model_dtype(teacher))))["main"]
                s_layers = dict(zip(layers, rec_s.pop())) if layers else {}
                t_layers = dict(zip(layers, rec_t.pop())) if layers else {}
        finally:
            student.train(was_training)
        return {
            "neck": ([f.shape for f in s_out.feats], [f.shape for f in t_out.feats]),
            "layers": ({i: f.shape for i, f in s_layers.items()}, {i: f.shape for i, f in t_layers.items()}),
        }

    def _build_feature_term(self, term: KDTerm, loss_fn: KDLoss, student, teacher, probe: dict) -> None:
        if term.layers == "neck":
            s_shapes, t_shapes = probe["neck"]
        else:
            s_all, t_all = probe["layers"]
            s_shapes, t_shapes = [s_all[i] for i in term.layers], [t_all[i] for i in term.layers]
            self.student_recorders[term.name] = FeatureRecorder(term.layers)
            self.teacher_recorders[term.name] = FeatureRecorder(term.layers)
        for lvl, (ss, ts) in enumerate(zip(s_shapes, t_shapes)):
            if ss[2:] != ts[2:]:
                raise ValueError(
                    f"loss {term.name!r}: feature {lvl} is {tuple(ss[2:])} in the student but {tuple(ts[2:])} in the "
                    f"teacher; pick layers at the same stride"
                )
            self.connectors[f"{term.name}_{lvl}"] = build_connector(
                term.connector if term.name != "mgd" else "mgd",
                int(ss[1]),
                int(ts[1]),
                loss_fn.needs_same_channels,
                getattr(loss_fn, "mask_ratio", 0.65),
            )

    def to(self, device: torch.device | str) -> DistillContext:
        """Move the teacher, connectors and strides to ``device``."""
        self.teacher.to(device)
        self.connectors.to(device)
        self.strides = self.strides.to(device)
        return self

    def set_epoch(self, epoch: float, total: int, close_mosaic: int = 0) -> None:
        """Update the schedule factor for (0-based) ``epoch`` of a ``total``-epoch run, whose last ``close_mosaic``
        epochs train without mosaic (Ultralytics closes it when ``epoch == total - close_mosaic``)."""
        self.factor = self.recipe.schedule.factor(epoch, total)
        self.mosaic_closed = 0 < close_mosaic <= total and epoch >= total - close_mosaic

    def _weight(self, term: KDTerm) -> float:
        """The term's weight now: its recipe weight times the schedule factor, 0 once mosaic has closed for a term
        that stops there."""
        return 0.0 if term.until_close_mosaic and self.mosaic_closed else term.weight * self.factor

    # -- copy semantics -----------------------------------------------------------------------------------------
    def __deepcopy__(self, memo: dict) -> DistillContext:
        return self  # shared by the live student and its EMA copy: the teacher is never copied

    def __reduce__(self):
        raise TypeError(
            "DistillContext holds the teacher and is training-only; it must never be pickled into a checkpoint"
        )

    # -- the KD terms -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Loss-item names of the KD terms (``kd_<label>``, e.g. ``kd_cwd``), then ``t_det``/``t_kd`` online."""
        return [f"kd_{fn.label or t.name}" for t, fn in self.terms] + (["t_det", "t_kd"] if self.online else [])

    def teacher_forward(self, img: torch.Tensor):
        """Run the teacher on ``img`` (frozen: no grad; online: with grad while training) and record its layers.

        Returns:
            The head branches, the recorded layers per term, and the raw predictions.
        """
        recs = list(self.teacher_recorders.items())
        for _, r in recs:
            r.attach(self.teacher)
        train_teacher = self.online and torch.is_grad_enabled()
        if self.online:
            self.teacher.train(train_teacher)
        try:
            if train_teacher:
                preds = self.teacher(img.to(_model_dtype(self.teacher)))
                return head_outputs(preds), {name: r.pop() for name, r in recs}, preds
            with torch.inference_mode():  # the frozen teacher: no autograd bookkeeping at all
                preds = self.teacher(img.to(_model_dtype(self.teacher)))
                branches = head_outputs(preds)
                layers = {name: r.pop() for name, r in recs}
        finally:
            for _, r in recs:
                r.detach()
        # inference tensors cannot enter the student's autograd graph: plain copies of the (small) outputs do
        branches = {k: _copied(v) for k, v in branches.items()}
        layers = {k: [x.clone() for x in v] for k, v in layers.items()}
        return branches, layers, preds

    def compute(self, student_preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All weighted KD terms for one batch (and, online, the teacher's own losses).

        Args:
            student_preds: the student head's output (train-mode dict or eval-mode tuple).
            batch: the batch the student saw (``img`` (B, 3, H, W) and, online, the targets).

        Returns:
            The terms as a vector (per image; the criterion multiplies by B) and a dict of their detached values.
        """
        img = batch["img"]
        if self.stopped:  # KD is off for good (offline only, the recipe check ensures): skip the teacher's forward
            vec = img.new_zeros(len(self.terms), dtype=torch.float32)
            return vec, dict(zip(self.names(), vec))
        s_br = head_outputs(student_preds)
        t_br_live, t_layers, t_preds = self.teacher_forward(img)
        t_br = {k: _detached(v) for k, v in t_br_live.items()}
        t_layers = {k: [x.detach() for x in v] for k, v in t_layers.items()}
        pairs = [("main", "main")]
        if self.recipe.branch == "both" and "one2one" in s_br:
            pairs.append(("one2one", "one2one" if "one2one" in t_br else "main"))
        grad = torch.is_grad_enabled()
        self.connectors.train(grad)
        values = []
        with _fp32(img.device):
            for term, loss_fn in self.terms:
                v = img.new_zeros((), dtype=torch.float32)
                for sb, tb in pairs:
                    v = v + self._term(term, loss_fn, s_br[sb], t_br[tb], t_layers.get(term.name))
                values.append(v / len(pairs))
        vec = torch.stack(values) if values else img.new_zeros(0, dtype=torch.float32)
        weights = torch.tensor([self._weight(t) for t, _ in self.terms], device=vec.device)
        if self.recipe.alpha is not None:  # Hinton's balance: the KD side gets (1 - alpha), the detection side alpha
            weights = weights * (1.0 - self.recipe.alpha)
        vec = vec * weights
        if self.online:
            vec = torch.cat([vec, self._teacher_losses(t_preds, t_br_live["main"], s_br["main"], batch)])
        if len(vec) and not torch.isfinite(vec).all():
            bad = [f"{n}={float(x)}" for n, x in zip(self.names(), vec.detach()) if not torch.isfinite(x)]
            raise FloatingPointError(
                f"distillation term(s) {', '.join(bad)} became NaN/Inf; lower their weight or temperature, or check "
                f"that the teacher checkpoint is sound (its own outputs are finite)"
            )
        return vec, dict(zip(self.names(), vec.detach()))

    def _teacher_losses(self, t_preds, t: HeadOutput, s: HeadOutput, batch: dict) -> torch.Tensor:
        """Online mode: the teacher's detection loss and the output-level terms distilled back from the student."""
        if self.teacher_det is None:
            self.teacher_det = self.teacher.init_criterion()
        det, _ = self.teacher_det(t_preds, batch)
        s = _detached(s)
        back = t.scores.new_zeros((), dtype=torch.float32)
        with _fp32(batch["img"].device):
            for term, loss_fn in self.terms:
                if loss_fn.inputs in ("scores", "dist", "boxes"):
                    back = back + self._weight(term) * self._term(term, loss_fn, t, s, None)
        return torch.stack([det.sum().float() / batch["img"].shape[0], back])

    def _term(self, term: KDTerm, loss_fn: KDLoss, s: HeadOutput, t: HeadOutput, t_layers) -> torch.Tensor:
        weight = t.confidence().float()
        if s.scores.shape[-1] != t.scores.shape[-1]:
            raise ValueError(
                f"student has {s.scores.shape[-1]} anchors and teacher {t.scores.shape[-1]}: the two did not see the "
                f"same image size or strides"
            )
        kind = loss_fn.inputs
        if kind == "scores":
            return loss_fn(s.scores.float(), t.scores.float(), weight=weight)
        if kind == "dist":
            return loss_fn(s.dist.float(), t.dist.float(), weight=weight)
        if kind == "boxes":
            return loss_fn(s.decoded_boxes(self.strides).float(), t.decoded_boxes(self.strides).float(), weight=weight)
        if term.layers == "neck":
            s_feats, t_feats = s.feats, t.feats
        else:
            s_feats, t_feats = self.student_recorders[term.name].pop(), t_layers
        total = 0.0
        for lvl, (sf, tf) in enumerate(zip(s_feats, t_feats)):
            total = total + loss_fn(self.connectors[f"{term.name}_{lvl}"](sf.float()), tf.float())
        return total / len(s_feats)


def _detached(h: HeadOutput) -> HeadOutput:
    return HeadOutput(scores=h.scores.detach(), dist=h.dist.detach(), feats=[f.detach() for f in h.feats])


def _copied(h: HeadOutput) -> HeadOutput:
    return HeadOutput(scores=h.scores.clone(), dist=h.dist.clone(), feats=[f.clone() for f in h.feats])


class DistillationCriterion:
    """``model.criterion`` during distillation: the student's detection loss plus the KD terms.

    Args:
        det: the student's own criterion (from ``model.init_criterion()``).
        ctx: the shared distillation context.
    """

    def __init__(self, det, ctx: DistillContext) -> None:
        self.det = det
        self.ctx = ctx

    def update(self) -> None:
        """Forward Ultralytics' per-epoch update (YOLO26's one2many/one2one weight shift) to the inner losses."""
        for det in (self.det, self.ctx.teacher_det):
            if hasattr(det, "update"):
                det.update()

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, items = self.det(preds, batch)
        if self.ctx.recipe.alpha is not None:
            loss = loss * self.ctx.recipe.alpha
        kd, kd_items = self.ctx.compute(preds, batch)
        bs = batch["img"].shape[0]
        return torch.cat([loss.view(-1), (kd * bs).to(loss.dtype)]), {**items, **kd_items}
