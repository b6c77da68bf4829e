"""The registry of distillation losses, by recipe name."""

from __future__ import annotations

from yolo_distill.registry import Registry

LOSSES: Registry = Registry("distillation loss")
