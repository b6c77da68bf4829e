"""Reversible rewrites that let Torch-Pruning's DepGraph trace Ultralytics' CSP blocks, and the way back.

C2f, C3k2 (a C2f) and C2PSA run ``cv1`` and then split its output in two halves (``chunk``/``split``); DepGraph on
torch 2.14 records wrong offsets for that split. :func:`split_csp` swaps each such block for a temporary
:class:`SplitCSP` whose ``cv1`` is two convs (no split is traced); :func:`merge_csp` puts the stock block back with
one ``cv1`` made of the two pruned halves. Both halves must keep the same number of channels (the stock forward
splits evenly), which uniform pruning gives and :func:`merge_csp` checks.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C2f
from ultralytics.nn.modules.conv import Conv


def _conv_slice(conv: Conv, lo: int, hi: int) -> Conv:
    """A Conv holding output channels ``lo:hi`` of ``conv`` (weights and BN copied)."""
    c = conv.conv
    new = Conv(c.in_channels, hi - lo, c.kernel_size[0], c.stride[0], g=c.groups)
    new.conv.padding, new.conv.dilation = c.padding, c.dilation
    new.act = conv.act
    with torch.no_grad():
        new.conv.weight.copy_(c.weight[lo:hi])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new.bn, name).copy_(getattr(conv.bn, name)[lo:hi])
    new.bn.eps, new.bn.momentum = conv.bn.eps, conv.bn.momentum
    return new.train(conv.training)


def _conv_cat(a: Conv, b: Conv) -> Conv:
    """One Conv whose output channels are those of ``a`` then ``b``."""
    ca, cb = a.conv, b.conv
    new = Conv(ca.in_channels, ca.out_channels + cb.out_channels, ca.kernel_size[0], ca.stride[0], g=ca.groups)
    new.conv.padding, new.conv.dilation = ca.padding, ca.dilation
    new.act = a.act
    with torch.no_grad():
        new.conv.weight.copy_(torch.cat([ca.weight, cb.weight]))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new.bn, name).copy_(torch.cat([getattr(a.bn, name), getattr(b.bn, name)]))
    new.bn.eps, new.bn.momentum = a.bn.eps, a.bn.momentum
    return new.train(a.training)


class SplitCSP(nn.Module):
    """Temporary stand-in for a C2f / C3k2 / C2PSA block with ``cv1`` split into ``cv1a`` and ``cv1b``.

    Only used between :func:`split_csp` and :func:`merge_csp`; never saved.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        c = block.c
        self.cv1a = _conv_slice(block.cv1, 0, c)
        self.cv1b = _conv_slice(block.cv1, c, 2 * c)
        self.m, self.cv2 = block.m, block.cv2
        self.psa = isinstance(block, C2PSA)
        for k in ("f", "i", "type", "np"):  # what DetectionModel's forward and info read
            if hasattr(block, k):
                setattr(self, k, getattr(block, k))
        object.__setattr__(self, "_stock", block)  # not a submodule: DepGraph must not see it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1a(x), self.cv1b(x)
        if self.psa:
            return self.cv2(torch.cat((a, self.m(b)), 1))
        y = [a, b]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def to_stock(self) -> nn.Module:
        """The stock block with the (pruned) halves merged back into one ``cv1``."""
        ca, cb = self.cv1a.conv.out_channels, self.cv1b.conv.out_channels
        if ca != cb:
            raise RuntimeError(
                f"layer {getattr(self, 'i', '?')}: the two halves of cv1 kept {ca} and {cb} channels; the stock "
                f"block splits evenly, so both must match (use uniform allocation, or protect this layer)"
            )
        block = self._stock
        block.cv1 = _conv_cat(self.cv1a, self.cv1b)
        block.m, block.cv2, block.c = self.m, self.cv2, ca
        return block


def split_csp(model: nn.Module) -> list[SplitCSP]:
    """Swap every C2f / C3k2 / C2PSA block of ``model.model`` for a :class:`SplitCSP`, in place."""
    out = []
    for idx, block in enumerate(model.model):
        if isinstance(block, (C2f, C2PSA)) and hasattr(block, "c") and block.cv1.conv.out_channels == 2 * block.c:
            s = SplitCSP(block)
            model.model[idx] = s
            out.append(s)
    return out


def merge_csp(model: nn.Module) -> None:
    """Undo :func:`split_csp`: only Ultralytics' own classes remain."""
    for idx, block in enumerate(model.model):
        if isinstance(block, SplitCSP):
            model.model[idx] = block.to_stock()


def _keep_rows(conv: Conv, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a Conv (conv weight rows and BN)."""
    with torch.no_grad():
        conv.conv.weight = nn.Parameter(conv.conv.weight[idx].clone())
        if conv.conv.bias is not None:
            conv.conv.bias = nn.Parameter(conv.conv.bias[idx].clone())
        conv.conv.out_channels = len(idx)
        bn = conv.bn
        bn.weight, bn.bias = nn.Parameter(bn.weight[idx].clone()), nn.Parameter(bn.bias[idx].clone())
        bn.running_mean, bn.running_var = bn.running_mean[idx].clone(), bn.running_var[idx].clone()
        bn.num_features = len(idx)


def _keep_heads(a: nn.Module, nh_new: int) -> None:
    """Keep the ``nh_new`` heads of Attention ``a`` with the largest L1 norm in ``qkv``, each whole (its query, key
    and value channels): the head layout of a smaller stock model, for carving."""
    nh, kd, hd = a.num_heads, a.key_dim, a.head_dim
    w = a.qkv.conv.weight.detach().abs().flatten(1).sum(1).view(nh, 2 * kd + hd).sum(1)
    heads = w.argsort(descending=True)[:nh_new].sort().values
    rows = torch.cat([torch.arange(h * (2 * kd + hd), (h + 1) * (2 * kd + hd)) for h in heads.tolist()])
    v_idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads.tolist()])
    _keep_rows(a.qkv, rows)
    _keep_rows(a.pe, v_idx)
    with torch.no_grad():
        a.pe.conv.weight = nn.Parameter(a.pe.conv.weight.clone())
        a.pe.conv.in_channels = a.pe.conv.groups = len(v_idx)
        a.proj.conv.weight = nn.Parameter(a.proj.conv.weight[:, v_idx].clone())
        a.proj.conv.in_channels = len(v_idx)
    a.num_heads = nh_new


def fit_attention(model: nn.Module, heads: list[int] | None = None) -> None:
    """Make every Attention consistent after DepGraph pruned its residual width.

    DepGraph prunes the width C shared by the block's input (``qkv`` in-channels) and output (``proj``
    out-channels), but ``Attention.forward`` views its values as ``num_heads x head_dim == C``. This keeps, in every
    head, the ``C' / num_heads`` value channels and a proportional number of query/key channels with the largest
    L1 norm in ``qkv``, cuts ``pe`` (depthwise over values) and ``proj``'s in-channels to match, and updates the
    stock module's ``head_dim`` and ``key_dim``.

    With ``heads`` (the head count of each Attention, in module order: a carving target's), it instead keeps that
    many whole heads, so the result has the target's head layout exactly.
    """
    from ultralytics.nn.modules.block import Attention

    for k, a in enumerate(m for m in model.modules() if isinstance(m, Attention)):
        c_new = a.qkv.conv.in_channels
        nh, kd, hd = a.num_heads, a.key_dim, a.head_dim
        if heads is not None and heads[k] != nh:
            if c_new != heads[k] * hd:
                raise RuntimeError(f"carved attention width {c_new} is not {heads[k]} heads of {hd}")
            _keep_heads(a, heads[k])
            continue
        if c_new == nh * hd:
            continue
        if c_new % nh:
            raise RuntimeError(f"pruned attention width {c_new} is not a multiple of its {nh} heads")
        hd_new = c_new // nh
        kd_new = max(1, round(kd * hd_new / hd))
        w = a.qkv.conv.weight.detach().abs().flatten(1).sum(1).view(nh, 2 * kd + hd)
        rows, v_idx = [], []
        for h in range(nh):
            base = h * (2 * kd + hd)
            qk = (w[h, :kd] + w[h, kd : 2 * kd]).argsort(descending=True)[:kd_new].sort().values
            v = w[h, 2 * kd :].argsort(descending=True)[:hd_new].sort().values
            rows += [base + qk, base + kd + qk, base + 2 * kd + v]
            v_idx.append(h * hd + v)
        _keep_rows(a.qkv, torch.cat(rows))
        v_idx = torch.cat(v_idx)
        _keep_rows(a.pe, v_idx)
        with torch.no_grad():
            a.pe.conv.weight = nn.Parameter(a.pe.conv.weight.clone())  # depthwise: one filter per kept value
            a.pe.conv.in_channels = a.pe.conv.groups = len(v_idx)
            a.proj.conv.weight = nn.Parameter(a.proj.conv.weight[:, v_idx].clone())
            a.proj.conv.in_channels = len(v_idx)
        a.head_dim, a.key_dim = hd_new, kd_new
