"""Recipes are data: YAML loaded with ``yaml.safe_load`` into dataclasses, and unknown keys raise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_distill.registry import CONNECTORS, LOSSES, SCHEDULES, UnknownName


def _config_root() -> Path:
    """``configs/`` of a source checkout (editable install), else the copy a wheel ships as ``yolo_distill/configs``."""
    here = Path(__file__).resolve().parent
    for root in (here.parent / "configs", here / "configs"):
        if (root / "distill").is_dir():
            return root
    raise FileNotFoundError(f"yolo_distill's recipes are missing (looked in {here.parent / 'configs'} and "
                            f"{here / 'configs'}); reinstall the package")  # fmt: skip


CONFIG_ROOT = _config_root()


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ``ValueError("key=value is not valid: expected ...")`` unless ``ok``: the one form of an input check."""
    if not ok:
        raise ValueError(f"{key}={value!r} is not valid: expected {expected}")


def require_int(key: str, value: Any, low: int) -> None:
    """``value`` is an integer >= ``low`` (not a bool)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key, value, f"an integer >= {low}")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, naming unknown keys and the valid ones."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise UnknownName(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    return cls(**data)


@dataclass
class KDTerm:
    """One distillation term of a recipe.

    Attributes:
        name: registered loss name (``yolo_distill.distill.losses.LOSSES``).
        weight: multiplier of the term in the total loss (>= 0).
        params: keyword arguments of the loss class (e.g. ``temperature``).
        layers: for feature and attention terms, ``"neck"`` (the maps feeding Detect) or a list of layer indices.
        connector: for feature terms, how student channels are matched: ``"conv"`` (1x1 conv + BN), ``"mgd"``
            (masked generation) or ``"none"`` (channels must match).
        until_close_mosaic: switch this term off for the last epochs, in which Ultralytics' ``close_mosaic`` has
            turned mosaic off (the term then weighs 0 in training and validation losses).
    """

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    layers: str | list[int] = "neck"
    connector: str = "conv"
    until_close_mosaic: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.until_close_mosaic, bool):
            raise ValueError(f"loss {self.name!r}: until_close_mosaic must be true or false, got "
                             f"{self.until_close_mosaic!r}")  # fmt: skip
        if not isinstance(self.weight, (int, float)) or self.weight < 0:
            raise ValueError(f"loss {self.name!r}: weight must be a number >= 0, got {self.weight!r}")
        for k in ("temperature", "tau"):
            if k in self.params and not float(self.params[k]) > 0:
                raise ValueError(f"loss {self.name!r}: {k} must be > 0, got {self.params[k]!r}")
        if self.connector not in CONNECTORS:
            raise ValueError(
                f"loss {self.name!r}: connector must be one of {CONNECTORS.names()}, got {self.connector!r}"
            )
        if not (
            self.layers == "neck" or (isinstance(self.layers, list) and all(isinstance(i, int) for i in self.layers))
        ):
            raise ValueError(
                f"loss {self.name!r}: layers must be 'neck' or a list of layer indices, got {self.layers!r}"
            )


@dataclass
class Schedule:
    """How the KD weight evolves over training: a factor in [0, 1] multiplying every term.

    Attributes:
        kind: one of ``constant``, ``linear_warmup``, ``cosine_warmup``, ``linear_decay``, ``cosine_decay``.
        epochs: length of the warm-up, or of the decay (0 = the whole run).
        final: the factor reached at the end of a decay.
        stop_at_teacher: switch KD off for the rest of the run once the student's validation mAP50-95 reaches the
            teacher's (measured once, on the same val set, at the first validation), so a weak teacher cannot
            hold back a student that has overtaken it (e.g. a lightly pruned model). Needs ``val=True``; offline
            mode only.
    """

    kind: str = "constant"
    epochs: int = 0
    final: float = 0.0
    stop_at_teacher: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind {self.kind!r} is not one of {tuple(SCHEDULES.names())}")
        if self.epochs < 0 or not 0 <= self.final <= 1:
            raise ValueError(f"schedule needs epochs >= 0 and 0 <= final <= 1, got {self.epochs}, {self.final}")
        if not isinstance(self.stop_at_teacher, bool):
            raise ValueError(f"schedule: stop_at_teacher must be true or false, got {self.stop_at_teacher!r}")

    def factor(self, epoch: float, total: int) -> float:
        """The KD weight factor at (fractional) ``epoch`` of a ``total``-epoch run."""
        span = self.epochs or max(total, 1)
        t = min(max(epoch / span, 0.0), 1.0)
        return SCHEDULES.get(self.kind)(t, self.final)


@dataclass
class DistillRecipe:
    """A distillation recipe: which terms, with which weights, on what schedule.

    Attributes:
        losses: the KD terms.
        schedule: the KD weight schedule.
        branch: for end-to-end heads (YOLO26), which head branch to distil: ``one2many`` (reaches the backbone)
            or ``both``.
        mode: ``offline`` (frozen teacher) or ``online`` (deep mutual learning: the teacher trains alongside the
            student, with its own detection loss plus the output-level terms distilled back from the student).
        alpha: the soft-label balance of Hinton et al.: loss = alpha * L_det + (1 - alpha) * sum_i w_i * L_kd_i,
            in [0, 1]; unset (the default): loss = L_det + sum_i w_i * L_kd_i. Ultralytics clips the gradient
            norm at 10 and its norms run in the hundreds, so only the ratio alpha : (1 - alpha) changes training:
            ``alpha: 0.5`` trains as unset does.
        ema_epochs: average the saved weights over at least about this many epochs (> 0). Ultralytics' EMA ramps
            its decay as ``0.9999 * (1 - exp(-updates / 2000))``: on a small dataset (80 images, batch 16, nbs 64:
            about one optimizer update per epoch) it stays near 0 for the whole run, so best.pt and last.pt are the
            raw weights of one noisy epoch. With ``ema_epochs`` the decay is at least ``1 - 1 / w`` (``w`` = this
            many epochs of updates, ramped in over ``w`` updates); on large datasets Ultralytics' own decay is
            higher and is kept. Unset (the default): Ultralytics' EMA unchanged.
        teacher_lr: online only: the co-trained teacher's learning rate as a multiple of the student's (> 0; e.g.
            0.1 keeps a trained teacher near where it started while the student learns from it). Unset (the
            default): the student's learning rate. Warm-up and LR schedule scale both alike.
        description: free text shown in logs.
    """

    losses: list[KDTerm] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    branch: str = "one2many"
    mode: str = "offline"
    alpha: float | None = None
    ema_epochs: float | None = None
    teacher_lr: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        e = self.ema_epochs
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float)) or not e > 0):
            raise ValueError(f"ema_epochs={e!r} is not valid: expected a number of epochs > 0 (e.g. 2), or leave it "
                             f"out for Ultralytics' EMA")  # fmt: skip
        if self.alpha is not None and (
            isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1
        ):
            raise ValueError(
                f"alpha={self.alpha!r} is not valid: expected a number in [0, 1] (loss = alpha * L_det + "
                f"(1 - alpha) * KD), or leave it out for L_det + KD"
            )
        lr = self.teacher_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"teacher_lr={lr!r} is not valid: expected a multiple of the student's learning rate "
                             f"> 0 (e.g. 0.1), or leave it out for the student's")  # fmt: skip
        if lr is not None and self.mode != "online":
            raise ValueError(f"teacher_lr={lr!r} needs mode: online (an offline teacher is frozen and has no learning "
                             f"rate); drop teacher_lr or set mode: online")  # fmt: skip
        if self.branch not in ("one2many", "both"):
            raise ValueError(f"branch must be 'one2many' or 'both', got {self.branch!r}")
        if self.mode not in ("offline", "online"):
            raise ValueError(f"mode must be 'offline' or 'online', got {self.mode!r}")
        if self.mode == "online" and self.schedule.stop_at_teacher:
            raise ValueError("schedule: stop_at_teacher needs a fixed teacher (mode: offline); online, it trains too")
        names = [t.name for t in self.losses]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"loss(es) {dup} appear twice in the recipe; merge them into one term")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe") -> DistillRecipe:
        """Validate and build a recipe from plain data."""
        data = dict(data or {})
        data.pop("kind", None)
        terms = data.pop("losses", [])
        if not isinstance(terms, list):
            raise TypeError(f"{where}: 'losses' must be a list of terms")
        sched = data.pop("schedule", {}) or {}
        recipe = from_dict(cls, {**data, "losses": [], "schedule": Schedule()}, where)
        recipe.losses = [from_dict(KDTerm, t, f"{where}: losses[{i}]") for i, t in enumerate(terms)]
        recipe.schedule = from_dict(Schedule, sched, f"{where}: schedule")
        recipe.__post_init__()
        for t in recipe.losses:
            LOSSES.get(t.name)  # raises with the list of valid names
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain data (builtins only), safe to store in Ultralytics' args and checkpoints.

        ``schedule.stop_at_teacher``, ``alpha``, ``ema_epochs``, ``teacher_lr`` and a term's ``until_close_mosaic``
        appear only when set, so the plain form of a recipe that does not use them (and with it the benchmark's cache
        key of rows that ran before they existed) stays as it was.
        """
        data = dataclasses.asdict(self)
        if not data["schedule"]["stop_at_teacher"]:
            del data["schedule"]["stop_at_teacher"]
        for term in data["losses"]:
            if not term["until_close_mosaic"]:
                del term["until_close_mosaic"]
        for optional in ("alpha", "ema_epochs", "teacher_lr"):
            if data[optional] is None:
                del data[optional]
        return data


def shipped_recipes(kind: str) -> list[str]:
    """Names of the shipped recipes of a kind (``configs/<kind>/*.yaml``), ``default`` first."""
    return sorted((p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml")), key=lambda n: (n != "default", n))


def find_recipe(name_or_path: str | Path, kind: str) -> Path:
    """Resolve ``recipe=`` to a file: a path, or a name under ``configs/<kind>/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"recipe file {p} does not exist")
        return p
    candidate = CONFIG_ROOT / kind / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no {kind} recipe named {str(name_or_path)!r}; shipped: {shipped_recipes(kind)}, or pass a path"
        )
    return candidate


def load_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a file into a dict, with a clear error for anything else."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_distill_recipe(recipe: str | Path | dict[str, Any] | DistillRecipe | None) -> DistillRecipe:
    """Load a distillation recipe from a shipped name, a YAML path, plain data, or pass one through."""
    if isinstance(recipe, DistillRecipe):
        return recipe
    if recipe is None:
        recipe = "default"
    if isinstance(recipe, dict):
        return DistillRecipe.from_dict(recipe)
    path = find_recipe(recipe, "distill")
    return DistillRecipe.from_dict(load_yaml(path), where=str(path))
