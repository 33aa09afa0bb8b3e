"""The attention layers as their authors released them (NCHW, PyTorch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SEModule(nn.Module):
  """timm ``timm/layers/squeeze_excite.py`` SEModule (huggingface/pytorch-image-models).

  1x1 convs with biases; the hidden width make_divisible(C / 16, 8, round_limit=0),
  which is C // 16 for the widths used here.
  """

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = channels // reduction
    self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
    self.act = nn.ReLU(inplace=True)
    self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

  def forward(self, x):
    s = x.mean((2, 3), keepdim=True)
    return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class BasicConv(nn.Module):
  """Jongchan/attention-module ``MODELS/cbam.py`` BasicConv (conv, BN momentum 0.01, no ReLU)."""

  def __init__(self, in_planes, out_planes, kernel_size, padding, bn_momentum=0.01):
    super().__init__()
    self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=bn_momentum, affine=True)

  def forward(self, x):
    return self.bn(self.conv(x))


class ChannelGate(nn.Module):
  """Jongchan/attention-module ``MODELS/cbam.py`` ChannelGate: shared MLP on avg and max pools."""

  def __init__(self, gate_channels: int, reduction_ratio: int = 16):
    super().__init__()
    self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(gate_channels, gate_channels // reduction_ratio),
                             nn.ReLU(), nn.Linear(gate_channels // reduction_ratio, gate_channels))

  def forward(self, x):
    size = (x.size(2), x.size(3))
    att = self.mlp(F.avg_pool2d(x, size, stride=size)) + self.mlp(F.max_pool2d(x, size, stride=size))
    return x * torch.sigmoid(att)[:, :, None, None]


class SpatialGate(nn.Module):
  """Jongchan/attention-module ``MODELS/cbam.py`` SpatialGate: [max, mean] over C -> 7x7 conv-BN -> sigmoid."""

  def __init__(self, bn_momentum=0.01):
    super().__init__()
    self.spatial = BasicConv(2, 1, 7, padding=3, bn_momentum=bn_momentum)

  def forward(self, x):
    compressed = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    return x * torch.sigmoid(self.spatial(compressed))


class CBAM(nn.Module):
  """Jongchan/attention-module ``MODELS/cbam.py`` CBAM: ChannelGate, then SpatialGate on its output."""

  def __init__(self, gate_channels: int, reduction_ratio: int = 16, bn_momentum=0.01):
    super().__init__()
    self.ChannelGate = ChannelGate(gate_channels, reduction_ratio)
    self.SpatialGate = SpatialGate(bn_momentum)

  def forward(self, x):
    return self.SpatialGate(self.ChannelGate(x))


class ECALayer(nn.Module):
  """BangguWu/ECANet ``models/eca_module.py`` eca_layer: GAP -> Conv1d(k) over channels -> sigmoid."""

  def __init__(self, k_size: int = 3):
    super().__init__()
    self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)

  def forward(self, x):
    y = F.adaptive_avg_pool2d(x, 1)
    y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y)


class SpatialGroupEnhance(nn.Module):
  """implus/PytorchInsight ``classification/models/imagenet/resnet_sge.py`` SpatialGroupEnhance."""

  def __init__(self, groups: int = 64):
    super().__init__()
    self.groups = groups
    self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
    self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

  def forward(self, x):
    b, c, h, w = x.size()
    x = x.view(b * self.groups, -1, h, w)
    xn = (x * F.adaptive_avg_pool2d(x, 1)).sum(dim=1, keepdim=True)
    t = xn.view(b * self.groups, -1)
    t = t - t.mean(dim=1, keepdim=True)
    t = t / (t.std(dim=1, keepdim=True) + 1e-5)
    t = t.view(b, self.groups, h, w) * self.weight + self.bias
    x = x * torch.sigmoid(t.view(b * self.groups, 1, h, w))
    return x.view(b, c, h, w)


class PAMModule(nn.Module):
  """junfu1115/DANet ``encoding/nn/da_att.py`` PAM_Module (position attention)."""

  def __init__(self, in_dim: int):
    super().__init__()
    self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
    self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
    self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    b, c, h, w = x.size()
    query = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
    key = self.key_conv(x).view(b, -1, w * h)
    attention = torch.softmax(torch.bmm(query, key), dim=-1)
    value = self.value_conv(x).view(b, -1, w * h)
    out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
    return self.gamma * out + x


class CAMModule(nn.Module):
  """junfu1115/DANet ``encoding/nn/da_att.py`` CAM_Module (channel attention, softmax(max(E) - E))."""

  def __init__(self):
    super().__init__()
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    b, c, h, w = x.size()
    query = x.view(b, c, -1)
    energy = torch.bmm(query, query.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attention = torch.softmax(energy_new, dim=-1)
    out = torch.bmm(attention, query).view(b, c, h, w)
    return self.gamma * out + x


class DualAttention(nn.Module):
  """rattn's ``danet`` layer from the two DANet modules: x + gamma P_att(x) + beta C_att(x).

  (DANet's DANetHead runs each module on its own reduced features; rattn shares the
  input and the residual, so pam(x) + cam(x) - x.)
  """

  def __init__(self, in_dim: int):
    super().__init__()
    self.pam = PAMModule(in_dim)
    self.cam = CAMModule()

  def forward(self, x):
    return self.pam(x) + self.cam(x) - x


class HSwish(nn.Module):
  """houqb/CoordAttention ``coordatt.py`` h_swish: x * relu6(x + 3) / 6."""

  def forward(self, x):
    return x * F.relu6(x + 3) / 6


class CoordAtt(nn.Module):
  """houqb/CoordAttention ``coordatt.py`` CoordAtt."""

  def __init__(self, inp: int, oup: int, reduction: int = 32):
    super().__init__()
    mip = max(8, inp // reduction)
    self.conv1 = nn.Conv2d(inp, mip, kernel_size=1)
    self.bn1 = nn.BatchNorm2d(mip)
    self.act = HSwish()
    self.conv_h = nn.Conv2d(mip, oup, kernel_size=1)
    self.conv_w = nn.Conv2d(mip, oup, kernel_size=1)

  def forward(self, x):
    _, _, h, w = x.size()
    x_h = F.adaptive_avg_pool2d(x, (h, 1))
    x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)
    y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
    x_h, x_w = torch.split(y, [h, w], dim=2)
    a_h = torch.sigmoid(self.conv_h(x_h))
    a_w = torch.sigmoid(self.conv_w(x_w.permute(0, 1, 3, 2)))
    return x * a_w * a_h


def make_attention(name: str, channels: int, bn_momentum: float = 0.1) -> nn.Module:
  """The reference for a rattn attention name at ``channels`` (rattn's default arguments).

  ``bn_momentum`` sets CBAM's spatial-gate BN: the release uses 0.01, rattn the
  project-wide 0.1 (documented in rattn/attention/cbam.py); the parity tests use 0.1.
  """
  factories = {
      'se': lambda: SEModule(channels),
      'cbam': lambda: CBAM(channels, bn_momentum=bn_momentum),
      'cbam_channel': lambda: ChannelGate(channels),
      'cbam_spatial': lambda: SpatialGate(bn_momentum),
      'eca': lambda: ECALayer(_eca_k(channels)),
      'sge': lambda: SpatialGroupEnhance(),
      'danet_position': lambda: PAMModule(channels),
      'danet_channel': lambda: CAMModule(),
      'danet': lambda: DualAttention(channels),
      'coord': lambda: CoordAtt(channels, channels),
  }
  return factories[name]()


def _eca_k(channels: int) -> int:
  # ECANet's adaptive kernel size as the paper's repository computes it (gamma 2, b 1).
  t = int(abs((math.log(channels, 2) + 1) / 2))
  return t if t % 2 else t + 1


class TimmCbam(nn.Module):
  """timm ``timm/layers/cbam.py`` CbamModule (timm 1.0): ``channel`` (1x1-conv MLP, no
  biases: mlp_bias=False) then ``spatial`` (a ConvNormAct over [mean, max], in that order)."""

  def __init__(self, channels: int, rd_ratio: float = 1 / 16):
    super().__init__()
    rd = int(channels * rd_ratio)
    self.channel = nn.Module()
    self.channel.fc1 = nn.Conv2d(channels, rd, 1, bias=False)
    self.channel.fc2 = nn.Conv2d(rd, channels, 1, bias=False)
    self.spatial = nn.Module()
    self.spatial.conv = nn.Module()
    self.spatial.conv.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
    self.spatial.conv.bn = nn.BatchNorm2d(1)

  def forward(self, x):
    fc = lambda s: self.channel.fc2(torch.relu(self.channel.fc1(s)))
    x = x * torch.sigmoid(fc(x.mean((2, 3), keepdim=True)) + fc(x.amax((2, 3), keepdim=True)))
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return x * torch.sigmoid(self.spatial.conv.bn(self.spatial.conv.conv(pooled)))


class TimmEca(nn.Module):
  """timm ``timm/layers/eca.py`` EcaModule (timm 1.0) with its kernel size from ``channels``
  (gamma 2, beta 1, at least 3)."""

  def __init__(self, channels: int):
    super().__init__()
    t = int(abs(math.log(channels, 2) + 1) / 2)
    k = max(t if t % 2 else t + 1, 3)
    self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

  def forward(self, x):
    y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
    return x * torch.sigmoid(y.view(x.shape[0], -1, 1, 1))
