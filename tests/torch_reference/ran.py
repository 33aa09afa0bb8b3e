"""Residual Attention Network (Wang et al. 2017) in PyTorch, from the authors' released
Caffe deploy prototxts (fwang91/residual-attention-network,
``imagenet_model/Attention-56-deploy.prototxt``) and the paper, as summarised in
DESIGN.md section 2:

* pre-activation bottleneck units (BN-ReLU-1x1(C/4), BN-ReLU-3x3(C/4, stride),
  BN-ReLU-1x1(C), no conv biases; the projection shortcut is a strided 1x1 conv of
  the pre-activated input);
* an attention module runs p units, then a trunk of t units and, from the same
  input (the output of the p units), the soft-mask branch: 3x3/2 max-pool (Caffe ceil
  mode) + r units per level, a skip unit on each level above the bottom, 2r units at
  the bottom, on the way up a corner-aligned bilinear upsample (Caffe Interp) + the
  skip, r units; a last upsample to the trunk's size; BN-ReLU-1x1 -> BN-ReLU-1x1 ->
  activation; output (1 + M) * T (or M * T, NAL), then p units;
* mask activations (paper Sec. 3.3): mixed = sigmoid, channel = L2 normalisation over
  channels, spatial = per-channel standardisation over positions, then sigmoid.

Attributes are named as rattn names its modules, so ``state_dict`` keys convert with
``rattn.convert`` (the ``ran*`` layouts); the masks of the last forward pass are kept in
``masks`` ({'stage1/attention1': NCHW mask, ...}).
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PreActUnit(nn.Module):

  def __init__(self, in_channels: int, channels: int, stride: int = 1):
    super().__init__()
    inner = channels // 4
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(inner)
    self.conv2 = nn.Conv2d(inner, inner, 3, stride, padding=1, bias=False)
    self.bn3 = nn.BatchNorm2d(inner)
    self.conv3 = nn.Conv2d(inner, channels, 1, bias=False)
    if stride != 1 or in_channels != channels:
      self.proj = nn.Conv2d(in_channels, channels, 1, stride, bias=False)

  def forward(self, x):
    pre = F.relu(self.bn1(x))
    shortcut = self.proj(pre) if hasattr(self, 'proj') else x
    out = self.conv1(pre)
    out = self.conv2(F.relu(self.bn2(out)))
    out = self.conv3(F.relu(self.bn3(out)))
    return out + shortcut


def _pool(x):
  return F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)


def _interp(x, size):
  return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=True)


def _activate(z, kind: str):
  if kind == 'mixed':
    return torch.sigmoid(z)
  if kind == 'channel':
    return F.normalize(z, p=2, dim=1, eps=1e-5)
  if kind == 'spatial':
    return torch.sigmoid(F.instance_norm(z, eps=1e-5))
  raise ValueError(kind)


class MaskBranch(nn.Module):

  def __init__(self, channels: int, levels: int, r: int):
    super().__init__()
    self.levels, self.r = levels, r
    for level in range(1, levels + 1):
      for i in range(r if level < levels else 2 * r):
        self.add_module(f'down{level}_unit{i + 1}', PreActUnit(channels, channels))
      if level < levels:
        self.add_module(f'skip{level}', PreActUnit(channels, channels))
        for i in range(r):
          self.add_module(f'up{level}_unit{i + 1}', PreActUnit(channels, channels))
    if levels == 0:
      for i in range(2 * r):
        self.add_module(f'down0_unit{i + 1}', PreActUnit(channels, channels))
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)

  def _units(self, prefix: str, count: int, y):
    for i in range(count):
      y = getattr(self, f'{prefix}_unit{i + 1}')(y)
    return y

  def forward(self, x):
    y, skips = x, {}
    if self.levels == 0:
      y = self._units('down0', 2 * self.r, y)
    for level in range(1, self.levels + 1):
      bottom = level == self.levels
      y = self._units(f'down{level}', 2 * self.r if bottom else self.r, _pool(y))
      if not bottom:
        skips[level] = getattr(self, f'skip{level}')(y)
    for level in range(self.levels - 1, 0, -1):
      y = _interp(y, skips[level].shape[2:]) + skips[level]
      y = self._units(f'up{level}', self.r, y)
    y = _interp(y, x.shape[2:])
    y = self.conv1(F.relu(self.bn1(y)))
    return self.conv2(F.relu(self.bn2(y)))


class AttentionModule(nn.Module):

  def __init__(self, channels, levels, p, t, r, attention_type, residual_learning):
    super().__init__()
    self.p, self.t = p, t
    self.attention_type, self.residual_learning = attention_type, residual_learning
    for i in range(p):
      self.add_module(f'pre{i + 1}', PreActUnit(channels, channels))
      self.add_module(f'post{i + 1}', PreActUnit(channels, channels))
    for i in range(t):
      self.add_module(f'trunk{i + 1}', PreActUnit(channels, channels))
    self.mask_branch = MaskBranch(channels, levels, r)
    self.mask = None

  def forward(self, x):
    for i in range(self.p):
      x = getattr(self, f'pre{i + 1}')(x)
    trunk = x
    for i in range(self.t):
      trunk = getattr(self, f'trunk{i + 1}')(trunk)
    self.mask = _activate(self.mask_branch(x), self.attention_type)
    y = (1 + self.mask) * trunk if self.residual_learning else self.mask * trunk
    for i in range(self.p):
      y = getattr(self, f'post{i + 1}')(y)
    return y


class ResidualAttentionNetwork(nn.Module):
  """``stem`` 'imagenet' (7x7/2 conv, BN-ReLU, ceil-mode 3x3/2 max-pool) or 'cifar'
  (one 3x3 conv, pre-activated by the first unit); widths given explicitly."""

  def __init__(self, num_classes: int, modules_per_stage: Sequence[int],
               stage_widths: Sequence[int], pool_levels: Sequence[int], final_width: int,
               final_strides: int, stem: str, stem_width: int, p=1, t=2, r=1,
               attention_type='mixed', residual_learning=True):
    super().__init__()
    self.stem = stem
    if stem == 'imagenet':
      self.stem_conv = nn.Conv2d(3, stem_width, 7, 2, padding=3, bias=False)
      self.stem_bn = nn.BatchNorm2d(stem_width)
    else:
      self.stem_conv = nn.Conv2d(3, stem_width, 3, 1, padding=1, bias=False)
    self.modules_per_stage = tuple(modules_per_stage)
    width = stem_width
    for s, (n, channels, levels) in enumerate(
        zip(modules_per_stage, stage_widths, pool_levels), start=1):
      self.add_module(f'stage{s}_unit', PreActUnit(width, channels, 1 if s == 1 else 2))
      for k in range(1, n + 1):
        self.add_module(f'stage{s}_attention{k}', AttentionModule(
            channels, levels, p, t, r, attention_type, residual_learning))
      width = channels
    self.final_stage = len(stage_widths) + 1
    for i in range(1, 4):
      self.add_module(f'stage{self.final_stage}_unit{i}', PreActUnit(
          width, final_width, final_strides if i == 1 else 1))
      width = final_width
    self.final_bn = nn.BatchNorm2d(final_width)
    self.classifier = nn.Linear(final_width, num_classes)

  @property
  def masks(self) -> Dict[str, torch.Tensor]:
    return {f'stage{s}/attention{k}': getattr(self, f'stage{s}_attention{k}').mask
            for s, n in enumerate(self.modules_per_stage, start=1) for k in range(1, n + 1)}

  def forward(self, x):
    x = self.stem_conv(x)
    if self.stem == 'imagenet':
      x = _pool(F.relu(self.stem_bn(x)))
    for s, n in enumerate(self.modules_per_stage, start=1):
      x = getattr(self, f'stage{s}_unit')(x)
      for k in range(1, n + 1):
        x = getattr(self, f'stage{s}_attention{k}')(x)
    for i in range(1, 4):
      x = getattr(self, f'stage{self.final_stage}_unit{i}')(x)
    x = F.relu(self.final_bn(x)).mean((2, 3))
    return self.classifier(x)
