"""Records forward outputs of chosen layers of a model, with hooks that live only while attached."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class FeatureRecorder:
    """Collects the outputs of ``model.model[i]`` for the given layer indices.

    Hooks are attached for a window (one training step, one validation pass) and removed after it, so they are
    never deep-copied into the EMA or pickled into a checkpoint. ``pop()`` returns and clears what was recorded.

    Args:
        layers: layer indices into the Ultralytics model's ``model`` sequence.
    """

    def __init__(self, layers: list[int]) -> None:
        self.layers = list(layers)
        self._out: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, model: nn.Module) -> None:
        """Register the hooks on ``model`` (a DetectionModel); a second attach replaces the first."""
        self.detach()
        seq = model.model
        for i in self.layers:
            if not -len(seq) <= i < len(seq):
                raise IndexError(f"layer index {i} is out of range for a model of {len(seq)} layers")
            self._handles.append(seq[i].register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self._out[i] = out

        return fn

    def detach(self) -> None:
        """Remove the hooks and forget what was recorded."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()

    def pop(self) -> list[torch.Tensor]:
        """The recorded outputs in ``layers`` order, cleared afterwards."""
        missing = [i for i in self.layers if i not in self._out]
        if missing:
            raise RuntimeError(f"layers {missing} recorded nothing: is the recorder attached to the model that ran?")
        out = [self._out[i] for i in self.layers]
        self._out.clear()
        return out

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[FeatureRecorder]:
        """Attach for the duration of a ``with`` block."""
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()
