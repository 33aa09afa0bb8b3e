"""CIFAR pre-activation ResNets (He et al. 2016, arXiv 1603.05027).

"Identity Mappings in Deep Residual Networks": 3x3 stem conv 16 -> three
stages at 32, 16, 8 pixels (stride 2 on the first unit of stages 2 and 3) ->
BN-ReLU -> global average pool -> FC. ResNet-20/56/110 stack n = (depth - 2) / 6
basic units (two 3x3 convs) of widths 16, 32, 64; ResNet-164 stacks
n = (depth - 2) / 9 bottleneck units (``PreActBottleneck``) of widths 64, 128,
256 with inner widths 16, 32, 64. These are the baselines of the Residual
Attention Network's CIFAR experiments.

Where a unit changes the shape, the shortcut is a strided 1x1 conv on the
pre-activated input, as in the authors' Torch code for ResNet-164
(KaimingHe/resnet-1k-layers) and in ``PreActBottleneck``; the basic units do the
same (the 2015 CIFAR nets zero-padded their identity shortcuts instead: 2,560
fewer parameters). That code strides the bottleneck's first 1x1; the
``PreActBottleneck`` shared with the Residual Attention Network strides its 3x3,
as the RAN prototxts do: the same parameters, and 1.3% more multiply-adds in
ResNet-164 (only the first units of stages 2 and 3 differ). An optional
attention module acts on the residual branch after the last conv, before the
addition.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.models.layers import (PreActBottleneck, batch_norm, classifier, conv, make_attention,
                                 pad_same)
from rattn.models.resnet import AttentionKwargs, per_stage_attention_kwargs, register_network


class PreActBasicBlock(nn.Module):
  """BN-ReLU-3x3(stride) -> BN-ReLU-3x3 -> [attention] -> + shortcut, no conv biases."""
  features: int
  strides: int = 1
  attention: Optional[str] = None
  attention_kwargs: AttentionKwargs = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv_ = conv(self.dtype, self.param_dtype)
    preact = nn.relu(norm(name='bn1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv_(self.features, (1, 1), strides=self.strides, name='proj')(preact)
    y = conv_(self.features, (3, 3), strides=self.strides, padding=pad_same(3),
              name='conv1')(preact)
    y = nn.relu(norm(name='bn2')(y))
    y = conv_(self.features, (3, 3), padding=pad_same(3), name='conv2')(y)
    attention = make_attention(self.attention, self.attention_kwargs, self.dtype,
                               self.param_dtype)
    if attention is not None:
      y = attention(y, train=train)
    return shortcut + y


class PreActResNet(nn.Module):
  """Pre-activation CIFAR ResNet of the given depth, optionally with attention in every unit.

  Attributes:
    depth: 6n + 2 for basic units, 9n + 2 for bottlenecks (20, 56, 110; 164).
    bottleneck: bottleneck units (outputs 4x ``widths``) instead of basic ones.
    num_classes: outputs of the final FC layer.
    widths: per-stage width (the inner width of a bottleneck); the stem has ``widths[0]``.
    attention, attention_kwargs, stage_attention_kwargs: as in ``rattn.models.resnet.ResNet``.
  """
  depth: int
  bottleneck: bool = False
  num_classes: int = 10
  widths: Sequence[int] = (16, 32, 64)
  attention: Optional[str] = None
  attention_kwargs: AttentionKwargs = None
  stage_attention_kwargs: Optional[Sequence[AttentionKwargs]] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers_per_unit = 9 if self.bottleneck else 6  # 3 or 2 convs per unit, in 3 stages
    if self.depth < layers_per_unit + 2 or (self.depth - 2) % layers_per_unit:
      raise ValueError(
          f'A pre-activation {"bottleneck" if self.bottleneck else "basic"} ResNet has depth '
          f'{layers_per_unit}n + 2 (e.g. {"164" if self.bottleneck else "20, 56, 110"}); '
          f'got depth={self.depth}.')
    units = (self.depth - 2) // layers_per_unit
    stage_kwargs = per_stage_attention_kwargs(self.attention_kwargs, self.stage_attention_kwargs,
                                              len(self.widths))
    x = conv(self.dtype, self.param_dtype)(
        self.widths[0], (3, 3), padding=pad_same(3), name='stem_conv')(x)
    for i, width in enumerate(self.widths):
      for j in range(units):
        unit = dict(strides=2 if i > 0 and j == 0 else 1, attention=self.attention,
                    attention_kwargs=stage_kwargs[i], dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f'stage{i + 1}_block{j + 1}')
        if self.bottleneck:
          x = PreActBottleneck(4 * width, bottleneck_ratio=4, **unit)(x, train=train)
        else:
          x = PreActBasicBlock(width, **unit)(x, train=train)
    # Pre-activation units end on an addition: the last BN-ReLU comes after the stages.
    x = nn.relu(batch_norm(train, self.dtype, self.param_dtype)(name='final_bn')(x))
    self.sow('intermediates', 'features', x)
    return classifier(x, self.num_classes, self.dtype, self.param_dtype)


PreActResNet20 = functools.partial(PreActResNet, depth=20)
PreActResNet56 = functools.partial(PreActResNet, depth=56)
PreActResNet110 = functools.partial(PreActResNet, depth=110)
PreActResNet164 = functools.partial(PreActResNet, depth=164, bottleneck=True)

_CIFAR = dict(dataset='cifar', image_size=32, num_classes=10)
_HE2015 = 'He et al. 2015, Table 6'
_HE2015_NOTE = ('figures of the 2015 post-activation nets, whose identity shortcuts zero-pad '
                'the new channels; these 1x1 projections add 2,560 params')
_HE2016 = 'He et al. 2016'

register_network('preact_resnet20', PreActResNet20, **_CIFAR,
                 paper_params=0.27e6, source=_HE2015, note=_HE2015_NOTE)
register_network('preact_resnet56', PreActResNet56, **_CIFAR,
                 paper_params=0.85e6, source=_HE2015, note=_HE2015_NOTE)
register_network('preact_resnet110', PreActResNet110, **_CIFAR,
                 paper_params=1.7e6, source=_HE2016)
register_network('preact_resnet164', PreActResNet164, **_CIFAR,
                 paper_params=1.7e6, source=_HE2016)
