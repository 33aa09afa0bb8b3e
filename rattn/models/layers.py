"""Building blocks shared by the backbones and the Residual Attention Network."""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention import create_attention
from rattn.norm import batch_norm  # re-exported: the backbones import it from here

# He et al.'s initialisation as the reference PyTorch/Caffe ResNets use it.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

def conv(dtype: Any, param_dtype: Any, **kwargs) -> functools.partial:
  """A bias-free convolution, as every conv in these networks is."""
  return functools.partial(
      nn.Conv, use_bias=False, kernel_init=conv_kernel_init, dtype=dtype,
      param_dtype=param_dtype, **kwargs)


def pad_same(kernel: int) -> tuple:
  """Caffe/PyTorch symmetric padding k // 2 (XLA's 'SAME' pads strided convs asymmetrically)."""
  return ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


def classifier(x: jax.Array, num_classes: int, dtype: Any, param_dtype: Any,
               name: str = 'fc') -> jax.Array:
  """Global average pool, then the dense classifier ``name``; float32 (or float64) logits.

  Call it inside a network's compact ``__call__`` (the Dense belongs to the
  network). Every model returns float32 logits (float64 for a float64 model),
  so that the softmax cross-entropy stays stable under bfloat16 compute; the
  steps rely on it.
  """
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype, name=name)(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def make_attention(name: Optional[str], kwargs: Optional[Mapping[str, Any]], dtype: Any,
                   param_dtype: Any, module_name: str = 'attention') -> Optional[nn.Module]:
  return create_attention(name, dtype=dtype, param_dtype=param_dtype, name=module_name,
                          **dict(kwargs or {}))


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck residual unit (He et al. 2016, arXiv 1603.05027).

  BN-ReLU-1x1(C/4) -> BN-ReLU-3x3(C/4, stride) -> BN-ReLU-1x1(C), no conv biases:
  the residual unit of pre-act ResNet-164 and of the Residual Attention Network
  (the authors' prototxts). The stride sits on the 3x3 conv; a projection
  shortcut (strided 1x1) is applied to the *pre-activated* input whenever the
  shape changes. An optional attention module acts on the residual branch
  before the addition, where SE/CBAM/ECA place it.
  """
  features: int
  strides: int = 1
  bottleneck_ratio: int = 4
  attention: Optional[str] = None
  attention_kwargs: Optional[Mapping[str, Any]] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv_ = conv(self.dtype, self.param_dtype)
    inner = self.features // self.bottleneck_ratio
    preact = nn.relu(norm(name='bn1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv_(self.features, (1, 1), strides=self.strides, name='proj')(preact)
    y = conv_(inner, (1, 1), name='conv1')(preact)
    y = nn.relu(norm(name='bn2')(y))
    y = conv_(inner, (3, 3), strides=self.strides, padding=pad_same(3), name='conv2')(y)
    y = nn.relu(norm(name='bn3')(y))
    y = conv_(self.features, (1, 1), name='conv3')(y)
    attention = make_attention(self.attention, self.attention_kwargs, self.dtype,
                               self.param_dtype)
    if attention is not None:
      y = attention(y, train=train)
    return shortcut + y
