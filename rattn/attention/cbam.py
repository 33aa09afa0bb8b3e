"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon, 2018; arXiv 1807.06521).

Channel attention (Eq. 2): M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one
MLP C -> C/r -> C (with biases, ReLU between) shared by both pooled descriptors.
Spatial attention (Eq. 3): M_s(F) = sigmoid(f7x7([MaxPool_c(F); AvgPool_c(F)])), the
pools taken across channels. CBAM (Eq. 1): F' = M_c(F) * F, then F'' = M_s(F') * F'.

Three modules are registered: ``cbam`` (both gates in sequence), ``cbam_channel``
(the channel gate alone, which our sources call "flexible attention") and
``cbam_spatial`` (the spatial gate alone).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention
from rattn.norm import batch_norm


def _channel_gate(module: nn.Module, x: jax.Array, reduction: int) -> jax.Array:
  """The (B, 1, 1, C) channel gate; builds ``fc1``/``fc2`` in ``module``'s scope."""
  channels = x.shape[-1]
  hidden = channels // reduction
  if hidden < 1:
    raise ValueError(
        f'{type(module).__name__}: reduction={reduction} leaves no hidden units for '
        f'{channels} channels; use reduction <= {channels}.')
  # Stacking the two descriptors on one axis runs them through the very same Dense
  # layers, so the MLP is shared by construction (one set of parameters).
  pooled = jnp.concatenate([jnp.mean(x, axis=(1, 2), keepdims=True),
                            jnp.max(x, axis=(1, 2), keepdims=True)], axis=1)
  hidden_act = nn.relu(nn.Dense(hidden, dtype=module.dtype, param_dtype=module.param_dtype,
                                name='fc1')(pooled))
  logits = nn.Dense(channels, dtype=module.dtype, param_dtype=module.param_dtype,
                    name='fc2')(hidden_act)
  return nn.sigmoid(jnp.sum(logits, axis=1, keepdims=True))


def _spatial_gate(module: nn.Module, x: jax.Array, kernel_size: int,
                  train: bool) -> jax.Array:
  """The (B, H, W, 1) spatial gate; builds ``conv``/``bn`` in ``module``'s scope."""
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(
        f'{type(module).__name__}: kernel_size must be a positive odd number so the '
        f'gate keeps the input size, got {kernel_size}.')
  # [max, mean] in this order, as the official ChannelPool concatenates them.
  compressed = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True),
                                jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
  pad = kernel_size // 2
  # No conv bias: the official BasicConv uses bias=False because BN follows.
  logits = nn.Conv(1, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=module.dtype, param_dtype=module.param_dtype,
                   name='conv')(compressed)
  # The official BasicConv uses PyTorch momentum 0.01; we keep the project-wide
  # convention (rattn.norm), which only changes how fast running statistics move.
  logits = batch_norm(train, module.dtype, module.param_dtype)(name='bn')(logits)
  return nn.sigmoid(logits)


@register_attention('cbam_channel')
class CBAMChannelGate(nn.Module):
  """CBAM's channel gate alone: sigmoid(MLP(avg) + MLP(max)) * x.

  Sows ``channel_gate`` (shape ``(B, 1, 1, C)``) into ``intermediates``.

  Attributes:
    reduction: squeeze ratio r of the shared MLP (C // r hidden units); 16 in the paper.
  """
  reduction: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    gate = _channel_gate(self, x, self.reduction)
    record(self, 'channel_gate', gate)
    return x * gate


@register_attention('cbam_spatial')
class CBAMSpatialGate(nn.Module):
  """CBAM's spatial gate alone: sigmoid(BN(conv7x7([max_c x; mean_c x]))) * x.

  Sows ``spatial_gate`` (shape ``(B, H, W, 1)``) into ``intermediates``. Owns a
  BatchNorm, so ``train=True`` updates ``batch_stats``.

  Attributes:
    kernel_size: odd size of the square conv over the two pooled maps; 7 in the paper.
  """
  kernel_size: int = 7
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    gate = _spatial_gate(self, x, self.kernel_size, train)
    record(self, 'spatial_gate', gate)
    return x * gate


@register_attention('cbam')
class CBAM(nn.Module):
  """CBAM: the channel gate, then the spatial gate on the channel-refined features.

  Sows ``channel_gate`` (``(B, 1, 1, C)``) and ``spatial_gate`` (``(B, H, W, 1)``)
  into ``intermediates``. Owns a BatchNorm, so ``train=True`` updates ``batch_stats``.

  Attributes:
    reduction: squeeze ratio r of the channel gate's shared MLP; 16 in the paper.
    kernel_size: odd size of the spatial gate's square conv; 7 in the paper.
  """
  reduction: int = 16
  kernel_size: int = 7
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    channel_gate = _channel_gate(self, x, self.reduction)
    record(self, 'channel_gate', channel_gate)
    x = x * channel_gate
    spatial_gate = _spatial_gate(self, x, self.kernel_size, train)
    record(self, 'spatial_gate', spatial_gate)
    return x * spatial_gate
