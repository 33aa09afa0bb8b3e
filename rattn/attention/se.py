"""Squeeze-and-Excitation Networks (Hu, Shen, Albanie, Sun, Wu, 2018; arXiv 1709.01507).

The SE block (Eq. 2-4 of the paper) squeezes each channel to its global average,
z = GAP(x), excites it with a bottleneck MLP, s = sigmoid(W2 relu(W1 z + b1) + b2)
with W1: C -> C/r and W2: C/r -> C, and rescales the channels, y_c = s_c * x_c.
In a ResNet it sits on the residual branch after the last BN, before the addition.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention


@register_attention('se')
class SqueezeExcite(nn.Module):
  """SE channel gate: GAP -> Dense(C/r) ReLU -> Dense(C) sigmoid -> scale.

  Both Dense layers have biases. Sows ``gate`` (shape ``(B, 1, 1, C)``) into
  ``intermediates``.

  Attributes:
    reduction: squeeze ratio r of the hidden layer (C // r units); 16 in the paper.
  """
  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    channels = x.shape[-1]
    hidden = channels // self.reduction
    if hidden < 1:
      raise ValueError(
          f'SqueezeExcite: reduction={self.reduction} leaves no hidden units for '
          f'{channels} channels; use reduction <= {channels}.')
    z = jnp.mean(x, axis=(1, 2), keepdims=True)
    z = nn.relu(nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='fc1')(z))
    gate = nn.sigmoid(nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype,
                               name='fc2')(z))
    record(self, 'gate', gate)
    return x * gate
