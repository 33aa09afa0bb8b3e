"""torchvision ``torchvision/models/resnet.py`` ResNets (pytorch/vision), with the attention
module where each release puts it: on the residual branch after the last BN, before the
addition (timm ``resnet.py`` Bottleneck ``self.se``; Jongchan/attention-module
``MODELS/model_resnet.py`` ``self.cbam`` (applied after computing the downsample, before
the addition); BangguWu/ECANet ``models/eca_resnet.py`` ``self.eca``; implus/PytorchInsight
``classification/models/imagenet/resnet_sge.py`` ``self.sge``). The stride sits on the
3x3 conv (torchvision's v1.5), as in all four releases.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

# Attribute under which each release keeps the block's attention module.
# timm's ResNet keeps any block attention as ``se`` (timm/models/resnet.py ``create_attn``).
ATTRIBUTE = {'se': 'se', 'cbam': 'cbam', 'eca': 'eca', 'sge': 'sge', 'timm_cbam': 'se',
             'timm_eca': 'se'}

AttentionFactory = Callable[[int, int], nn.Module]  # (stage index, channels) -> module


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.attention_attr = _attach(self, attention)

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return _finish(self, x, out)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample
    self.attention_attr = _attach(self, attention)

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return _finish(self, x, out)


def _attach(block: nn.Module, attention) -> Optional[str]:
  if attention is None:
    return None
  name, module = attention
  setattr(block, ATTRIBUTE[name], module)
  return ATTRIBUTE[name]


def _finish(block: nn.Module, x, out):
  residual = x if block.downsample is None else block.downsample(x)
  if block.attention_attr is not None:
    out = getattr(block, block.attention_attr)(out)
  return torch.relu(out + residual)


class ResNet(nn.Module):
  """torchvision's ResNet; ``attention(stage, channels)`` builds each block's module."""

  def __init__(self, block, layers: Sequence[int], num_classes: int = 1000,
               attention_name: Optional[str] = None,
               attention: Optional[AttentionFactory] = None):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for i, blocks in enumerate(layers):
      planes = 64 * 2**i
      stride = 1 if i == 0 else 2
      downsample = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
      stage = []
      for j in range(blocks):
        att = None
        if attention_name is not None:
          att = (attention_name, attention(i, planes * block.expansion))
        stage.append(block(self.inplanes, planes, stride if j == 0 else 1,
                           downsample if j == 0 else None, att))
        self.inplanes = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*stage))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return self.fc(torch.flatten(x.mean((2, 3)), 1))
