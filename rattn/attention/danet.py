"""Dual Attention Network for Scene Segmentation (Fu, Liu, Tian, Li, Bao, Fang, Lu,
2019; arXiv 1809.02983).

Position attention (Eq. 1-2): with B = query(x), C = key(x) (1x1 convs to C/8) and
D = value(x) (1x1 conv to C), s_ji = softmax_i(B_j . C_i) over all N = H*W positions,
E_j = gamma * sum_i s_ji D_i + x_j, gamma initialised to 0.
Channel attention (Eq. 3-4): x_ij = softmax_i(A_i . A_j) over channels, with A the
input reshaped to C x N; E_j = beta * sum_i x_ji A_i + A_j, beta initialised to 0.

The position map is N x N, so memory grows as (H*W)^2 (4096 positions = 16.8M
entries per example); ``max_positions`` guards against building it by accident on a
large feature map.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention


def _softmax_dtype(dtype: Any) -> Any:
  # Attention logits are sums over hundreds of products; take them and the softmax in
  # at least float32 so bfloat16 compute does not flatten the maps.
  return jnp.promote_types(dtype, jnp.float32)


def _position_branch(module: nn.Module, x: jax.Array, reduction: int,
                     max_positions: int) -> jax.Array:
  """gamma * (position-attended x); builds query/key/value/gamma in ``module``'s scope."""
  batch, height, width, channels = x.shape
  positions = height * width
  if positions > max_positions:
    raise ValueError(
        f'{type(module).__name__}: a {height}x{width} feature map has {positions} '
        f'positions, more than max_positions={max_positions}; the position map would '
        f'hold {positions}^2 = {positions ** 2:,} entries per example. Raise '
        f'max_positions if memory allows, or attend at a lower resolution.')
  inner = channels // reduction
  if inner < 1:
    raise ValueError(
        f'{type(module).__name__}: reduction={reduction} leaves no query/key channels '
        f'for {channels} input channels; use reduction <= {channels}.')

  def conv1x1(features: int, name: str) -> jax.Array:
    # 1x1 convs with biases, as the official PAM_Module's nn.Conv2d defaults.
    y = nn.Conv(features, (1, 1), dtype=module.dtype, param_dtype=module.param_dtype,
                name=name)(x)
    return y.reshape(batch, positions, features)

  query, key, value = conv1x1(inner, 'query'), conv1x1(inner, 'key'), conv1x1(channels, 'value')
  softmax_dtype = _softmax_dtype(module.dtype)
  energy = jnp.einsum('bic,bjc->bij', query, key, preferred_element_type=softmax_dtype)
  attention = jax.nn.softmax(energy, axis=-1)
  record(module, 'position_map', attention)
  attended = jnp.einsum('bij,bjc->bic', attention.astype(module.dtype), value)
  gamma = module.param('gamma', nn.initializers.zeros, (), module.param_dtype)
  return jnp.asarray(gamma, module.dtype) * attended.reshape(x.shape)


def _channel_branch(module: nn.Module, x: jax.Array) -> jax.Array:
  """beta * (channel-attended x); builds ``beta`` in ``module``'s scope."""
  batch, height, width, channels = x.shape
  features = x.reshape(batch, height * width, channels)
  energy = jnp.einsum('bnc,bnd->bcd', features, features,
                      preferred_element_type=_softmax_dtype(module.dtype))
  # The official CAM_Module feeds max(energy) - energy to the softmax, and so do we.
  # The row maximum is a constant shift, so this equals softmax(-energy): the official
  # map favours the *least* similar channels, where the paper's Eq. 3, exp(A_i . A_j),
  # favours the most similar ones.
  attention = jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy, axis=-1)
  record(module, 'channel_map', attention)
  attended = jnp.einsum('bcd,bnd->bnc', attention.astype(module.dtype), features)
  beta = module.param('beta', nn.initializers.zeros, (), module.param_dtype)
  return jnp.asarray(beta, module.dtype) * attended.reshape(x.shape)


@register_attention('danet_position')
class DANetPositionAttention(nn.Module):
  """DANet's position attention module: x + gamma * softmax(Q K^T) V over all positions.

  The identity at initialisation (gamma = 0). Sows ``position_map`` (shape
  ``(B, N, N)``, rows summing to 1, N = H*W) into ``intermediates``.

  Attributes:
    reduction: query/key width is C // reduction; 8 in the paper.
    max_positions: the largest H*W accepted; the N x N map needs N^2 memory per example.
  """
  reduction: int = 8
  max_positions: int = 4096
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    return x + _position_branch(self, x, self.reduction, self.max_positions)


@register_attention('danet_channel')
class DANetChannelAttention(nn.Module):
  """DANet's channel attention module: x + beta * softmax(max(E) - E) x, E = x^T x.

  Parameter-free apart from beta; the identity at initialisation (beta = 0). Sows
  ``channel_map`` (shape ``(B, C, C)``, rows summing to 1) into ``intermediates``.
  """
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    return x + _channel_branch(self, x)


@register_attention('danet')
class DualAttention(nn.Module):
  """Both DANet branches on one input: x + gamma * P_att(x) + beta * C_att(x).

  The paper's segmentation head reduces the channels with a 3x3 conv-BN-ReLU before
  each branch and sums the branch outputs after another conv each, which changes the
  width and is a head, not a drop-in layer. Here the two attended terms share one
  residual, so the module keeps the input shape and is still exactly the identity at
  initialisation (gamma = beta = 0). Sows ``position_map`` and ``channel_map``.

  Attributes:
    reduction: query/key width of the position branch is C // reduction; 8 in the paper.
    max_positions: the largest H*W accepted; the N x N map needs N^2 memory per example.
  """
  reduction: int = 8
  max_positions: int = 4096
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    return (x + _position_branch(self, x, self.reduction, self.max_positions)
            + _channel_branch(self, x))
