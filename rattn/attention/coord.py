"""Coordinate Attention for Efficient Mobile Network Design (Hou, Zhou, Feng, 2021;
arXiv 2103.02907).

Coordinate information embedding (Eq. 4-5): z^h = mean over the width (an H x 1 map),
z^w = mean over the height (a 1 x W map). Coordinate attention generation (Eq. 6-9):
f = delta(F1([z^h, z^w])) with F1 a shared 1x1 conv to mip channels plus BN and
delta = hard-swish; f is split back into f^h, f^w; g^h = sigmoid(F_h(f^h)),
g^w = sigmoid(F_w(f^w)); y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention
from rattn.norm import batch_norm


def coord_hidden_channels(channels: int, reduction: int = 32, min_hidden: int = 8) -> int:
  """The official bottleneck width mip = max(min_hidden, C // reduction)."""
  return max(min_hidden, channels // reduction)


@register_attention('coord')
class CoordinateAttention(nn.Module):
  """Coordinate attention: direction-aware gates from row and column averages.

  All three 1x1 convs have biases (the official nn.Conv2d defaults). The shared BN
  normalises the concatenated H + W sequence. Gates depend on where a row or column
  sits, so unlike the global-pool gates this module is not equivariant to arbitrary
  spatial permutations (only to permuting whole rows, or whole columns). Sows
  ``gate_h`` (``(B, H, 1, C)``) and ``gate_w`` (``(B, 1, W, C)``) into
  ``intermediates``. Owns a BatchNorm, so ``train=True`` updates ``batch_stats``.

  Attributes:
    reduction: the shared conv has max(min_hidden, C // reduction) channels; 32 in
      the paper.
    min_hidden: the floor on that width; 8 in the official code.
  """
  reduction: int = 32
  min_hidden: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    _, height, _, channels = x.shape
    hidden = coord_hidden_channels(channels, self.reduction, self.min_hidden)
    conv1x1 = functools.partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                                param_dtype=self.param_dtype)
    # Both pooled maps are laid out as (B, length, 1, C) so one conv and one BN see
    # the H + W positions as a single sequence, as the official torch.cat does.
    pooled_h = jnp.mean(x, axis=2, keepdims=True)
    pooled_w = jnp.swapaxes(jnp.mean(x, axis=1, keepdims=True), 1, 2)
    y = conv1x1(hidden, name='conv1')(jnp.concatenate([pooled_h, pooled_w], axis=1))
    # rattn.norm's momentum 0.9 is PyTorch's 0.1, the official nn.BatchNorm2d default.
    y = batch_norm(train, self.dtype, self.param_dtype)(name='bn1')(y)
    y = nn.hard_swish(y)
    y_h, y_w = y[:, :height], jnp.swapaxes(y[:, height:], 1, 2)
    gate_h = nn.sigmoid(conv1x1(channels, name='conv_h')(y_h))
    gate_w = nn.sigmoid(conv1x1(channels, name='conv_w')(y_w))
    record(self, 'gate_h', gate_h)
    record(self, 'gate_w', gate_w)
    return x * gate_h * gate_w
