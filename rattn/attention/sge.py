"""Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional
Networks (Li, Hu, Yang, 2019; arXiv 1905.09646).

The channels are split into G groups; within a group, with x_i the sub-feature at
position i and g = mean_i x_i the group's average-pooled feature (Eq. 1-5):
c_i = g . x_i, c^_i = (c_i - mean(c)) / (std(c) + eps), a_i = gamma * c^_i + beta
with one (gamma, beta) per group, and x'_i = x_i * sigmoid(a_i).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention

# The official code adds 1e-5 to the (unbiased) standard deviation, not to the variance.
_STD_EPSILON = 1e-5


@register_attention('sge')
class SpatialGroupEnhance(nn.Module):
  """SGE: per group, a standardised similarity map to the group mean gates each position.

  Groups are contiguous channel blocks, as the official ``view(b * G, -1, h, w)``
  forms them. The map is standardised over the H*W positions with the unbiased
  standard deviation (``torch.std``), as in the official code. Parameters: one
  ``weight`` and one ``bias`` per group, 2G in all (SGE-ResNet-50: 16 blocks * 64
  groups * 2 = 2,048). Sows ``gate`` (shape ``(B, H, W, G)``) into ``intermediates``.

  Attributes:
    groups: number of channel groups G; must divide C. 64 in the paper.
  """
  groups: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    batch, height, width, channels = x.shape
    if self.groups < 1 or channels % self.groups:
      raise ValueError(
          f'SpatialGroupEnhance: groups={self.groups} must divide the {channels} input '
          f'channels; pick a divisor of {channels}.')
    if height * width < 2:
      raise ValueError(
          f'SpatialGroupEnhance standardises over positions and needs at least 2 of '
          f'them, got a {height}x{width} feature map.')
    # Official init: weight 0 and bias 1, so every gate starts at sigmoid(1) and the
    # module begins as a uniform rescaling that training then sharpens.
    weight = self.param('weight', nn.initializers.zeros, (self.groups,), self.param_dtype)
    bias = self.param('bias', nn.initializers.ones, (self.groups,), self.param_dtype)
    grouped = x.reshape(batch, height, width, self.groups, channels // self.groups)
    group_mean = jnp.mean(grouped, axis=(1, 2), keepdims=True)
    similarity = jnp.sum(grouped * group_mean, axis=-1)
    centred = similarity - jnp.mean(similarity, axis=(1, 2), keepdims=True)
    std = jnp.std(similarity, axis=(1, 2), keepdims=True, ddof=1)
    standardised = centred / (std + _STD_EPSILON)
    gate = nn.sigmoid(standardised * jnp.asarray(weight, self.dtype)
                      + jnp.asarray(bias, self.dtype))
    record(self, 'gate', gate)
    return (grouped * gate[..., None]).reshape(x.shape)
