"""Conventions shared by every attention module: input checks and gate recording."""

from __future__ import annotations

import flax.linen as nn
import jax


def check_nhwc(module: nn.Module, x: jax.Array) -> None:
  """Raises a clear error unless ``x`` is a rank-4 NHWC batch."""
  if x.ndim != 4:
    raise ValueError(
        f'{type(module).__name__} expects NHWC input of rank 4 (batch, height, width, '
        f'channels), got shape {tuple(x.shape)} (rank {x.ndim}). Add the missing batch '
        f'axis (x[None]) or move channels last (jnp.transpose(x, (0, 2, 3, 1))) first.')


def record(module: nn.Module, name: str, value: jax.Array) -> None:
  """Sows ``value`` into the ``intermediates`` collection for visualisation.

  Read it back with ``model.apply(..., mutable=['intermediates'])``; the value
  costs nothing when that collection is not mutable.
  """
  module.sow('intermediates', name, value)
