"""Residual Attention Network (Wang et al., CVPR 2017, arXiv 1704.06904).

Built from the authors' released Caffe deploy prototxts
(fwang91/residual-attention-network) and the paper:

* Residual unit: ``PreActBottleneck`` (BN-ReLU-1x1(C/4) -> BN-ReLU-3x3(C/4) ->
  BN-ReLU-1x1(C), no conv biases, stride on the 3x3, projection on the
  pre-activated input).
* Attention module (p, t, r): p units; a trunk of t units; a soft-mask branch
  fed by the same input (max-pool 3x3/2 + r units per level down to the
  network's smallest resolution, a skip unit tapping each level above the
  bottom, 2r units at the bottom, on the way up a corner-aligned bilinear
  upsample to the skip's size + the skip's output followed by r units, a last
  upsample to the trunk's size, then BN-ReLU-1x1(C) -> BN-ReLU-1x1(C) ->
  activation); output (1 + M) * T (attention residual learning, ARL) or M * T
  (naive attention learning, NAL); then p units.
* Depth = 3 (2p + t) * (modules in all stages) + 20, counted along the trunk
  (the mask branch adds width, not depth): the stem conv, three stage-entry
  units, three closing units and the classifier make the 20. With
  p, t, r = 1, 2, 1 and m modules per stage on average that is 36m + 20.

Caffe semantics, kept on purpose because the authors' nets are Caffe nets:

* Max-pooling (3x3, stride 2, no padding) runs in ceil mode: the output has
  ceil((H - 3) / 2) + 1 rows, the missing bottom/right border counts as -inf
  (at least one row: Caffe would fail on a 1-pixel map, we pool it to itself).
* Caffe's ``Interp`` is bilinear with aligned corners: output pixel i samples
  input position i * (H_in - 1) / (H_out - 1). ``jax.image.resize`` uses the
  half-pixel convention instead, so :func:`resize_align_corners` implements it
  exactly as a two-tap gather per axis (no matrix product, so the
  multiply-add counter sees no resize work, as the paper's count does not).

The mixed mask ends in a sigmoid, as the paper defines it (ARL's (1 + M) in
[1, 2] relies on M in [0, 1]) and as the authors' current deploy prototxts
(``imagenet_model/Attention-*-deploy.prototxt``) end it; only their first upload
had a ``TanH`` there, replaced by ``Sigmoid`` two days later.

Every soft mask is sown as ``mask`` in the ``intermediates`` collection by
the module named ``stage{s}_attention{k}``; :func:`collect_masks` gathers all
masks of one forward pass.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rattn.attention.common import record
from rattn.models.layers import PreActBottleneck, classifier, conv, pad_same
from rattn.models.registry import register_model
from rattn.norm import batch_norm

# --- Caffe-compatible resampling --------------------------------------------


def _max_pool_axis(x: jax.Array, axis: int, window: int, stride: int) -> jax.Array:
  size = x.shape[axis]
  out = -(-max(size - window, 0) // stride) + 1
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, (out - 1) * stride + window - size)
  lowest = (jnp.finfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.floating)
            else jnp.iinfo(x.dtype).min)  # finite: float8 types have no -inf
  x = jnp.pad(x, pad, constant_values=lowest)
  taps = [jax.lax.slice_in_dim(x, i, i + (out - 1) * stride + 1, stride, axis)
          for i in range(window)]
  return functools.reduce(jnp.maximum, taps)


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Caffe's unpadded max-pool in ceil mode on NHWC ``x``.

  The last window may hang over the bottom/right edge; it takes the max of what
  exists (padding with the dtype's lowest value). Computed separably, rows then
  columns, as maxima of strided slices: the same values as ``nn.max_pool``, and
  the same gradients where a window has no tied maxima (at a tie the gradient
  is split among the tied inputs instead of given to one: both are valid
  subgradients; tests), computed by elementwise selects. XLA:CPU lowers ``reduce_window``'s
  gradient to a reduce-window that tracks argmax indices plus a scatter; what
  that cost and what the change gained are measured in ``benchmarks/README.md``.
  """
  return _max_pool_axis(_max_pool_axis(x, 1, window, stride), 2, window, stride)


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  # Integer numerator first, one division after: the last output lands on
  # exactly in_size - 1, so both corners are copied, not interpolated.
  pos = np.arange(out_size) * (in_size - 1) / max(out_size - 1, 1)
  lo = np.floor(pos).astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray((pos - lo).reshape(shape), x.dtype)
  x_lo = jnp.take(x, lo, axis=axis)
  x_hi = jnp.take(x, hi, axis=axis)
  return x_lo + frac * (x_hi - x_lo)


def resize_align_corners(x: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Bilinear resize of NHWC ``x`` to ``size`` with aligned corners (Caffe ``Interp``).

  Separable: rows then columns, each output a two-tap blend of its neighbours
  at position i * (in - 1) / (out - 1). A 1-pixel output takes the first row
  or column, as Caffe does.
  """
  return _resize_axis(_resize_axis(x, 1, size[0]), 2, size[1])


# --- Mask activations (the paper's attention-type ablation, Sec. 3.3) -------

_EPS = 1e-5


def _mixed(z: jax.Array) -> jax.Array:
  return jax.nn.sigmoid(z)


def _channel(z: jax.Array) -> jax.Array:
  # Unit L2 norm over channels at each position. The floor sits under the square root so
  # that an all-zero vector (every ReLU input of the last conv off) maps to zero with a
  # finite gradient, where sqrt's gradient at 0 would give NaN.
  sum_sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  return z * jax.lax.rsqrt(jnp.maximum(sum_sq, _EPS ** 2))


def _spatial(z: jax.Array) -> jax.Array:
  # Standardise each channel of each image over its positions, then sigmoid; eps inside
  # the root as in BatchNorm, so a constant channel (e.g. a 1x1 map) stays finite.
  mean = jnp.mean(z, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(z - mean), axis=(1, 2), keepdims=True)
  return jax.nn.sigmoid((z - mean) * jax.lax.rsqrt(var + _EPS))


MASK_ACTIVATIONS: Dict[str, Callable[[jax.Array], jax.Array]] = {
    'mixed': _mixed, 'channel': _channel, 'spatial': _spatial}


def mask_activation(z: jax.Array, attention_type: str) -> jax.Array:
  """The soft mask from the branch's output ``z``; computed in at least float32 for stable statistics."""
  if attention_type not in MASK_ACTIVATIONS:
    raise ValueError(f'Unknown attention_type {attention_type!r}; valid types are '
                     f'{", ".join(sorted(MASK_ACTIVATIONS))} (paper Sec. 3.3).')
  compute = jnp.promote_types(z.dtype, jnp.float32)  # a float64 model stays float64
  return MASK_ACTIVATIONS[attention_type](z.astype(compute)).astype(z.dtype)


# --- The attention module ---------------------------------------------------


class SoftMaskBranch(nn.Module):
  """Bottom-up top-down soft-mask branch; returns the pre-activation mask logits.

  ``pool_levels`` max-pools lead from the input's resolution to the bottom;
  with 0 levels the 2r bottom units run at the input's resolution.
  """
  features: int
  pool_levels: int
  r: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    unit = functools.partial(PreActBottleneck, self.features, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    levels = self.pool_levels
    y, skips = x, []
    for level in range(1, levels + 1):
      y = max_pool_ceil(y)
      for i in range(self.r if level < levels else 2 * self.r):
        y = unit(name=f'down{level}_unit{i + 1}')(y, train)
      if level < levels:
        skips.append(unit(name=f'skip{level}')(y, train))
    if levels == 0:
      for i in range(2 * self.r):
        y = unit(name=f'down0_unit{i + 1}')(y, train)
    for level in range(levels - 1, 0, -1):
      skip = skips[level - 1]
      y = resize_align_corners(y, skip.shape[1:3]) + skip
      for i in range(self.r):
        y = unit(name=f'up{level}_unit{i + 1}')(y, train)
    y = resize_align_corners(y, x.shape[1:3])
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv1x1 = conv(self.dtype, self.param_dtype, features=self.features, kernel_size=(1, 1))
    y = conv1x1(name='conv1')(nn.relu(norm(name='bn1')(y)))
    return conv1x1(name='conv2')(nn.relu(norm(name='bn2')(y)))


class AttentionModule(nn.Module):
  """Attention module (paper Sec. 3, Fig. 2): trunk T, soft mask M, output (1 + M) T.

  The mask (``attention_type``: 'mixed' sigmoid, 'channel' L2-normalised over
  channels, 'spatial' standardised over positions then sigmoid) is sown as
  ``mask``; ``residual_learning=False`` gives the naive M * T of the ablation.
  """
  features: int
  pool_levels: int
  p: int = 1
  t: int = 2
  r: int = 1
  attention_type: str = 'mixed'
  residual_learning: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    unit = functools.partial(PreActBottleneck, self.features, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    for i in range(self.p):
      x = unit(name=f'pre{i + 1}')(x, train)
    trunk = x
    for i in range(self.t):
      trunk = unit(name=f'trunk{i + 1}')(trunk, train)
    logits = SoftMaskBranch(self.features, self.pool_levels, self.r, dtype=self.dtype,
                            param_dtype=self.param_dtype, name='mask_branch')(x, train)
    mask = mask_activation(logits, self.attention_type)
    record(self, 'mask', mask)
    y = (1 + mask) * trunk if self.residual_learning else mask * trunk
    for i in range(self.p):
      y = unit(name=f'post{i + 1}')(y, train)
    return y


# --- The network ------------------------------------------------------------


def _scaled(features: int, width: float) -> int:
  """``features`` times ``width``, kept a positive multiple of 4 (the bottleneck ratio)."""
  return max(4, int(round(features * width / 4)) * 4)


class ResidualAttentionNetwork(nn.Module):
  """Residual Attention Network: stem, three attention stages, three closing units, classifier.

  Stage s opens with one residual unit (stride 1 in stage 1, 2 after; it
  changes the width through its projection) followed by
  ``modules_per_stage[s]`` attention modules whose masks pool
  ``pool_levels[s]`` times. Three plain units (the first of stride
  ``final_strides``, width ``final_width``) close the network, then
  BN-ReLU -> global average pool -> Dense.

  ``stem='imagenet'``: 7x7/2 conv -> BN-ReLU -> 3x3/2 ceil-mode max-pool.
  ``stem='cifar'``: one 3x3 conv, pre-activated by the first unit (pre-act
  ResNet-164's stem).

  ``width`` scales every width (reduced-width test variants). ``remat``
  checkpoints every top-level block (stage-entry units, attention modules,
  closing units): the backward pass recomputes one block at a time instead of
  keeping all activations. ``scan`` runs the identical attention modules of
  a stage with ``nn.scan``, so XLA compiles one module per stage; parameters
  (and masks) are then stacked along a leading axis under
  ``stage{s}_attentions``. What each option costs and saves (compile time,
  XLA temporaries, peak memory, step time) is measured for Attention-452 in
  ``benchmarks/README.md`` (``python -m experiments.bench``).
  """
  num_classes: int
  modules_per_stage: Sequence[int]
  stage_widths: Sequence[int]
  pool_levels: Sequence[int]
  final_width: int
  final_strides: int
  stem: str
  stem_width: int
  p: int = 1
  t: int = 2
  r: int = 1
  attention_type: str = 'mixed'
  residual_learning: bool = True
  width: float = 1.0
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def depth(self) -> int:
    """Weighted layers along the trunk: 3 (2p + t) per module + 20."""
    return 3 * (2 * self.p + self.t) * sum(self.modules_per_stage) + 20

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not (len(self.modules_per_stage) == len(self.stage_widths) == len(self.pool_levels)):
      raise ValueError('modules_per_stage, stage_widths and pool_levels need one entry per '
                       f'stage, got {self.modules_per_stage}, {self.stage_widths}, '
                       f'{self.pool_levels}.')
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv_ = conv(self.dtype, self.param_dtype)
    unit_cls = nn.remat(PreActBottleneck, static_argnums=(2,)) if self.remat else PreActBottleneck
    module_cls = nn.remat(AttentionModule, static_argnums=(2,)) if self.remat else AttentionModule
    unit = functools.partial(unit_cls, dtype=self.dtype, param_dtype=self.param_dtype)

    x = x.astype(self.dtype)
    stem_width = _scaled(self.stem_width, self.width)
    if self.stem == 'imagenet':
      x = conv_(stem_width, (7, 7), strides=2, padding=pad_same(7), name='stem_conv')(x)
      x = max_pool_ceil(nn.relu(norm(name='stem_bn')(x)))
    elif self.stem == 'cifar':
      x = conv_(stem_width, (3, 3), padding=pad_same(3), name='stem_conv')(x)
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; valid stems are 'cifar', 'imagenet'.")

    for s, (n, features, levels) in enumerate(
        zip(self.modules_per_stage, self.stage_widths, self.pool_levels), start=1):
      features = _scaled(features, self.width)
      # Positional train: remat's static_argnums only sees positional arguments.
      x = unit(features, strides=1 if s == 1 else 2, name=f'stage{s}_unit')(x, train)
      module = functools.partial(
          module_cls, features, levels, self.p, self.t, self.r, self.attention_type,
          self.residual_learning, dtype=self.dtype, param_dtype=self.param_dtype)
      if self.scan:
        x = _scan_modules(module(name=f'stage{s}_attentions'), x, train, n)
      else:
        for k in range(1, n + 1):
          x = module(name=f'stage{s}_attention{k}')(x, train)

    final_width = _scaled(self.final_width, self.width)
    for i in range(1, 4):
      x = unit(final_width, strides=self.final_strides if i == 1 else 1,
               name=f'stage{len(self.stage_widths) + 1}_unit{i}')(x, train)
    x = nn.relu(norm(name='final_bn')(x))
    return classifier(x, self.num_classes, self.dtype, self.param_dtype, name='classifier')


def _scan_modules(module: nn.Module, x: jax.Array, train: bool, length: int) -> jax.Array:
  """Applies ``length`` copies of ``module`` (own parameters each) in sequence with nn.scan."""

  def body(mdl, carry, _):
    return mdl(carry, train), None

  scanned = nn.scan(body, variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
                    split_rngs={'params': True}, length=length)
  x, _ = scanned(module, x, None)
  return x


# --- Reading the masks back -------------------------------------------------

_MODULE_NAME = re.compile(r'^stage(\d+)_attention(s|\d+)$')


def collect_masks(intermediates: Mapping[str, Any]) -> Dict[str, jax.Array]:
  """All soft masks of one forward pass, ``{'stage1/attention1': mask, ...}``, shallow to deep.

  ``intermediates`` is the ``intermediates`` collection returned by
  ``model.apply(..., mutable=['intermediates'])`` (the whole mutated-variables
  dict works too). Scanned stages (stacked masks) are split back per module.
  Where a module ran more than once in the same ``apply``, its last mask is
  returned.
  """
  if 'intermediates' in intermediates:
    intermediates = intermediates['intermediates']
  found = []
  for name, value in intermediates.items():
    match = _MODULE_NAME.match(name)
    if not match or 'mask' not in value:
      continue
    stage, which = int(match.group(1)), match.group(2)
    mask = value['mask'][-1]
    if which == 's':
      found += [((stage, k + 1), m) for k, m in enumerate(mask)]
    else:
      found.append(((stage, int(which)), mask))
  return {f'stage{s}/attention{k}': m for (s, k), m in sorted(found, key=lambda kv: kv[0])}


# --- Registered variants ----------------------------------------------------

# Authors' ImageNet layout: stages at 56, 28, 14 (and 7) pixels for a 224 input;
# each mask pools down to 7x7.
IMAGENET_LAYOUT = dict(stem='imagenet', stem_width=64, stage_widths=(256, 512, 1024),
                       pool_levels=(3, 2, 1), final_width=2048, final_strides=2)

# CIFAR layout (not published; our reading): pre-act ResNet-164's stem and
# widths, stages at 32, 16, 8 pixels, each mask pooling down to the network's
# smallest map, 8x8 (2, 1, 0 levels: the last stage's mask runs its 2r units
# at 8x8), as the ImageNet masks pool to 7x7. The three closing units stay at
# 8x8 and width 256 (pre-act ResNet-164 has no fourth stage).
CIFAR_LAYOUT = dict(stem='cifar', stem_width=16, stage_widths=(64, 128, 256),
                    pool_levels=(2, 1, 0), final_width=256, final_strides=1)

# Modules per stage. The paper defines depth 36m + 20 with "m the number of
# attention modules in each stage"; we follow that, (m, m, m), except where the
# authors released a net: ImageNet Attention-92 is (1, 2, 3) in their
# prototxt. On CIFAR the literal reading also fits the paper's parameter counts
# best: Attention-92 (2, 2, 2) 1.83M vs 1.9M, -236 (6, 6, 6) 4.80M vs 5.1M,
# -452 (6, 6, 6) 9.36M vs 8.6M, where the (m-1, m, m+1) of ImageNet-92
# would give 2.33M (+23%), 5.31M (+4%), 10.38M (+21%). Attention-452 uses
# p, t, r = 2, 4, 3 (paper): 3 (2p + t) = 24 layers per module, so 18 modules.
_IMAGENET_MODULES = {56: (1, 1, 1), 92: (1, 2, 3), 128: (3, 3, 3), 164: (4, 4, 4)}
_CIFAR_MODULES = {56: (1, 1, 1), 92: (2, 2, 2), 128: (3, 3, 3), 164: (4, 4, 4), 236: (6, 6, 6),
                  452: (6, 6, 6)}


def _variant(modules: Sequence[int], layout: Mapping[str, Any], **fields) -> functools.partial:
  return functools.partial(ResidualAttentionNetwork, modules_per_stage=tuple(modules),
                           **layout, **fields)


ran56 = _variant(_IMAGENET_MODULES[56], IMAGENET_LAYOUT)
ran92 = _variant(_IMAGENET_MODULES[92], IMAGENET_LAYOUT)
ran128 = _variant(_IMAGENET_MODULES[128], IMAGENET_LAYOUT)
ran164 = _variant(_IMAGENET_MODULES[164], IMAGENET_LAYOUT)
ran56_cifar = _variant(_CIFAR_MODULES[56], CIFAR_LAYOUT)
ran92_cifar = _variant(_CIFAR_MODULES[92], CIFAR_LAYOUT)
ran128_cifar = _variant(_CIFAR_MODULES[128], CIFAR_LAYOUT)
ran164_cifar = _variant(_CIFAR_MODULES[164], CIFAR_LAYOUT)
ran236_cifar = _variant(_CIFAR_MODULES[236], CIFAR_LAYOUT)
ran452_cifar = _variant(_CIFAR_MODULES[452], CIFAR_LAYOUT, p=2, t=4, r=3)

_IMAGENET = dict(dataset='imagenet', image_size=224, num_classes=1000)
_CIFAR = dict(dataset='cifar', image_size=32, num_classes=10)

register_model('ran56', ran56, depth=56, paper_params=31.9e6, paper_macs=6.3e9, **_IMAGENET)
register_model('ran92', ran92, depth=92, paper_params=51.3e6, paper_macs=10.4e9, **_IMAGENET)
register_model('ran128', ran128, depth=128, **_IMAGENET)
register_model('ran164', ran164, depth=164, **_IMAGENET)
register_model('ran56_cifar', ran56_cifar, depth=56, **_CIFAR)
register_model('ran92_cifar', ran92_cifar, depth=92, paper_params=1.9e6, **_CIFAR)
# The depths of the paper's CIFAR-10 ARL-vs-NAL ablation (experiments/studies.py).
register_model('ran128_cifar', ran128_cifar, depth=128, **_CIFAR)
register_model('ran164_cifar', ran164_cifar, depth=164, **_CIFAR)
register_model('ran236_cifar', ran236_cifar, depth=236, paper_params=5.1e6, **_CIFAR)
register_model('ran452_cifar', ran452_cifar, depth=452, paper_params=8.6e6, **_CIFAR)
