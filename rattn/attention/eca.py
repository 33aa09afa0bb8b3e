"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks
(Wang, Wu, Zhu, Li, Zuo, Hu, 2020; arXiv 1910.03151).

The ECA block (Eq. 9-12 of the paper): w = sigmoid(C1D_k(GAP(x))), a 1-D convolution
of size k across the channel axis of the pooled descriptor, without bias and without
dimensionality reduction; y_c = w_c * x_c. The kernel size follows the channel count,
k = psi(C) = | log2(C) / gamma + b / gamma |_odd with gamma = 2, b = 1 (Eq. 12).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention.common import check_nhwc, record
from rattn.attention.registry import register_attention


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
  """ECA's adaptive kernel size psi(C) = |(log2(C) + b) / gamma|_odd (Eq. 12).

  Computed as the authors' code does it: t = int(|(log2(C) + b) / gamma|), then
  k = t if t is odd else t + 1. Since 2 * floor(v / 2) + 1 is the odd number nearest
  to v, this is "nearest odd" with exact ties (v even) rounded up; e.g. C = 128 gives
  v = 4 and k = 5, C = 2048 gives v = 6 and k = 7.

  For ResNet-50's stage widths 256, 512, 1024, 2048 this gives 5, 5, 5, 7. The
  released ECA-ResNet-50 instead fixes k per stage at 3, 5, 5, 7 (3*3 + 4*5 + 6*5 +
  3*7 = 80 parameters, the figure in the paper's abstract); pass ``kernel_size`` to
  ``ECA`` to reproduce the release.
  """
  if channels < 1:
    raise ValueError(f'eca_kernel_size needs a positive channel count, got {channels}.')
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


@register_attention('eca')
class ECA(nn.Module):
  """Efficient channel attention: GAP -> 1-D conv across channels (no bias) -> sigmoid.

  Sows ``gate`` (shape ``(B, 1, 1, C)``) into ``intermediates``.

  Attributes:
    kernel_size: odd size of the 1-D conv; ``None`` derives it from the channel count
      with ``eca_kernel_size(C, gamma, b)``.
    gamma, b: the mapping's constants (2 and 1 in the paper); used only when
      ``kernel_size`` is ``None``.
  """
  kernel_size: Optional[int] = None
  gamma: int = 2
  b: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_nhwc(self, x)
    x = jnp.asarray(x, self.dtype)
    channels = x.shape[-1]
    k = self.kernel_size
    if k is None:
      k = eca_kernel_size(channels, self.gamma, self.b)
    if k < 1 or k % 2 == 0:
      raise ValueError(
          f'ECA: kernel_size must be a positive odd number so every channel keeps its '
          f'own gate, got {k}.')
    # The pooled descriptor becomes a length-C sequence with one feature; zero padding
    # (k - 1) / 2 at both ends matches the official Conv1d.
    z = jnp.mean(x, axis=(1, 2))[..., None]
    pad = (k - 1) // 2
    logits = nn.Conv(1, (k,), padding=((pad, pad),), use_bias=False, dtype=self.dtype,
                     param_dtype=self.param_dtype, name='conv')(z)
    gate = nn.sigmoid(logits[:, None, None, :, 0])
    record(self, 'gate', gate)
    return x * gate
