"""The math of every distillation loss on small tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from yolo_distill.distill.losses import LOSSES

SCORE_LOSSES = ["logit_kl", "binary_kd"]
FEATURE_LOSSES = ["mimic", "cwd", "mgd", "pkd", "attention"]


def _inputs(name: str, g: torch.Generator):
    kind = LOSSES.get(name).inputs
    if kind == "scores":
        return torch.randn(2, 5, 30, generator=g), torch.randn(2, 5, 30, generator=g)
    if kind == "dist":
        return torch.randn(2, 4 * 16, 30, generator=g), torch.randn(2, 4 * 16, 30, generator=g)
    if kind == "boxes":
        xy = torch.rand(2, 30, 2, generator=g) * 10
        wh = torch.rand(2, 30, 2, generator=g) * 5 + 1
        xy2 = torch.rand(2, 30, 2, generator=g) * 10
        return torch.cat([xy, xy + wh], -1), torch.cat([xy2, xy2 + wh], -1)
    return torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 8, 6, 6, generator=g)


@pytest.mark.parametrize("name", LOSSES.names())
def test_zero_when_student_equals_teacher(name):
    g = torch.Generator().manual_seed(0)
    _, t = _inputs(name, g)
    loss = LOSSES.get(name)()(t.clone(), t, weight=torch.rand(t.shape[0], 30, generator=g))
    assert loss.abs().item() < 1e-5, f"{name}: loss {loss.item()} for identical inputs"


@pytest.mark.parametrize("name", LOSSES.names())
def test_positive_and_gradient_reaches_the_student(name):
    g = torch.Generator().manual_seed(1)
    s, t = _inputs(name, g)
    s.requires_grad_(True)
    loss = LOSSES.get(name)()(s, t, weight=torch.rand(s.shape[0], 30, generator=g) + 0.1)
    assert loss.item() > 0, f"{name}: loss should be > 0 for different inputs"
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0, f"{name}: no gradient reached the student"


def test_binary_kd_is_bernoulli_kl():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    ps, pt = s.sigmoid(), t.sigmoid()
    kl = (pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()).sum(1)
    assert torch.allclose(LOSSES.get("binary_kd")(normalize="mean")(s, t), kl.mean(), atol=1e-5)
    ref = kl.sum() / pt.amax(1).sum().clamp(min=1)  # normalised like YOLO's BCE: by the teacher's positives
    assert torch.allclose(LOSSES.get("binary_kd")()(s, t), ref, atol=1e-5)


def test_binary_kd_scale_does_not_shrink_with_background_anchors():
    g = torch.Generator().manual_seed(9)
    obj_s, obj_t = torch.randn(1, 3, 10, generator=g) + 3, torch.randn(1, 3, 10, generator=g) + 3
    bg = torch.full((1, 3, 1000), -8.0)  # confident background, equal in both
    small = LOSSES.get("binary_kd")()(obj_s, obj_t)
    large = LOSSES.get("binary_kd")()(torch.cat([obj_s, bg], 2), torch.cat([obj_t, bg], 2))
    assert torch.allclose(small, large, rtol=0.05), "background anchors must not dilute the term"


def test_logit_kl_matches_torch_kl_div_times_t2():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g)
    T = 3.0
    ref = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True, reduction="none").sum(1).mean()
    out = LOSSES.get("logit_kl")(temperature=T, conf_weighted=False)(s, t)
    assert torch.allclose(out, ref * T * T, atol=1e-5)


def test_confidence_weighting_focuses_on_weighted_anchors():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(1, 4, 2, generator=g), torch.randn(1, 4, 2, generator=g)
    s[..., 1] = t[..., 1]  # anchor 1 agrees, anchor 0 does not
    loss_fn = LOSSES.get("binary_kd")(normalize="mean", conf_weighted=True)
    only_agreeing = loss_fn(s, t, weight=torch.tensor([[0.0, 1.0]]))
    only_disagreeing = loss_fn(s, t, weight=torch.tensor([[1.0, 0.0]]))
    assert only_agreeing.item() < 1e-6 < only_disagreeing.item()


def test_ld_per_edge_kl():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(1, 4 * 8, 3, generator=g), torch.randn(1, 4 * 8, 3, generator=g)
    T = 2.0
    ls, lt = F.log_softmax(s.view(1, 4, 8, 3) / T, 2), F.log_softmax(t.view(1, 4, 8, 3) / T, 2)
    ref = (lt.exp() * (lt - ls)).sum(2).mean(1).mean() * T * T
    assert torch.allclose(LOSSES.get("ld")(temperature=T, conf_weighted=False)(s, t), ref, atol=1e-5)
    with pytest.raises(ValueError, match="equal box-distribution shapes"):
        LOSSES.get("ld")()(s, torch.randn(1, 4 * 16, 3))


def test_pkd_is_one_minus_pearson_and_scale_invariant():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    loss = LOSSES.get("pkd")()
    assert torch.allclose(loss(s * 7.0 + 3.0, t), loss(s, t), atol=1e-4), "PKD must ignore feature scale and shift"
    sv, tv = s.flatten(2), t.flatten(2)
    sv, tv = sv - sv.mean(-1, keepdim=True), tv - tv.mean(-1, keepdim=True)
    r = (sv * tv).sum(-1) / (sv.norm(dim=-1) * tv.norm(dim=-1))
    assert torch.allclose(loss(s, t), (1 - r).mean(), atol=1e-4)


def test_cwd_reference():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    tau = 2.0
    ps = F.log_softmax(s.flatten(2) / tau, -1)
    pt = F.softmax(t.flatten(2) / tau, -1)
    ref = (pt * (pt.log() - ps)).sum(-1).mean() * tau**2
    assert torch.allclose(LOSSES.get("cwd")(tau=tau)(s, t), ref, atol=1e-5)


def test_attention_is_never_silently_spatial_only():
    """Across widths the channel part needs matched channels (the context gives it a connector); unmatched it
    refuses, and only channel_weight=0 asks for the spatial part alone."""
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 16, 6, 6, generator=g)
    att = LOSSES.get("attention")()
    assert att.needs_same_channels
    with pytest.raises(ValueError, match="channel part needs equal channels"):
        att(s, t)
    spatial = LOSSES.get("attention")(channel_weight=0)
    assert not spatial.needs_same_channels and spatial(s, t).item() > 0
    s16 = torch.randn(2, 16, 6, 6, generator=g)
    assert att(s16, t).item() > spatial(s16, t).item(), "the channel part adds to the spatial part"


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="unknown distillation loss 'nope'.*cwd"):
        LOSSES.get("nope")
    with pytest.raises(KeyError, match="already registered"):
        LOSSES.register("cwd")(type("X", (), {}))


def test_every_shipped_recipe_loads():
    from yolo_distill.config import CONFIG_ROOT, load_distill_recipe

    names = sorted(p.stem for p in (CONFIG_ROOT / "distill").glob("*.yaml"))
    assert {"default", "logit", "ld", "cwd", "mgd", "pkd", "attention"} <= set(names)
    for n in names:
        recipe = load_distill_recipe(n)
        assert recipe.losses, f"recipe {n} has no losses"
        # the plain form travels through Ultralytics' args (DDP rebuild, resume): it must rebuild the same recipe
        assert type(recipe).from_dict(recipe.to_dict()) == recipe, f"recipe {n} does not survive to_dict/from_dict"
    assert load_distill_recipe("finetune").schedule.stop_at_teacher
    assert "stop_at_teacher" not in load_distill_recipe("default").to_dict()["schedule"]


def test_schedule_factors():
    from yolo_distill.config import Schedule

    assert Schedule("constant").factor(3, 10) == 1.0
    assert Schedule("linear_warmup", epochs=4).factor(1, 10) == 0.25
    assert Schedule("linear_warmup", epochs=4).factor(9, 10) == 1.0
    assert abs(Schedule("cosine_decay", final=0.2).factor(10, 10) - 0.2) < 1e-9
    assert Schedule("linear_decay").factor(5, 10) == 0.5
    with pytest.raises(ValueError, match="schedule kind"):
        Schedule("sometimes")
