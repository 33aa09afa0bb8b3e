"""The model registry: ``create_model(name, num_classes=..., **kwargs)``.

Training code knows models only through these names. Every model is a Flax module
called as ``model(images, train=bool)`` on NHWC float images, returning float32
logits whatever the compute dtype (``layers.classifier``), with BatchNorm
statistics in the ``batch_stats`` collection. ``MODELS.entry(name)`` records
the class behind each name, its module and family and the keyword arguments it
accepts.
"""

from __future__ import annotations

from typing import List

import flax.linen as nn

from rattn.registry import Registry

MODELS = Registry('model')
register_model = MODELS.register


def create_model(model: str, /, num_classes: int, **kwargs) -> nn.Module:
  """Builds the model registered as ``model`` (ValueError listing valid names if unknown)."""
  return MODELS.get(model)(num_classes=num_classes, **kwargs)


def list_models() -> List[str]:
  return MODELS.names()
