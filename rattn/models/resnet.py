"""ImageNet ResNets (He et al. 2015, arXiv 1512.03385).

"Deep Residual Learning for Image Recognition", in torchvision's layout: 7x7/2
stem conv 64 -> BN-ReLU -> 3x3/2 max-pool (padding 1); four stages at strides
4, 8, 16, 32 of basic blocks (ResNet-18/34) or bottlenecks (ResNet-50/101/152);
projection shortcuts (1x1 conv + BN) where the shape changes; global average
pool; FC with bias. The bottleneck strides its 3x3 conv,
not its first 1x1 (torchvision's "ResNet v1.5"): the layout the SE, CBAM, ECA and
SGE releases build on. It costs ~0.23 G multiply-adds more than the paper's v1
(stride on the 1x1) at 224x224, which is why the v1 figures quoted below sit lower.

Every network takes an ``attention=`` name from ``rattn.attention``; the module
sits on the residual branch after the last BN, before the addition, as in
SE-, CBAM-, ECA- and SGE-ResNet. ``stage_attention_kwargs`` overrides the
module's arguments per stage (the released ECA-ResNet-50 fixes its kernel sizes
per stage at 3, 5, 5, 7).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, List, Mapping, Optional, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from rattn.attention import ATTENTIONS
from rattn.models.layers import batch_norm, classifier, conv, make_attention, pad_same
from rattn.models.registry import register_model

AttentionKwargs = Optional[Mapping[str, Any]]


def per_stage_attention_kwargs(base: AttentionKwargs,
                               overrides: Optional[Sequence[AttentionKwargs]],
                               num_stages: int) -> List[dict]:
  """``base`` updated by each stage's override (``None`` or ``{}`` keeps ``base``)."""
  if overrides is None:
    return [dict(base or {}) for _ in range(num_stages)]
  if len(overrides) != num_stages:
    raise ValueError(
        f'stage_attention_kwargs has {len(overrides)} entries but the network has '
        f'{num_stages} stages; give one mapping (or None) per stage.')
  return [{**(base or {}), **(stage or {})} for stage in overrides]


def _branch_end(block: nn.Module, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
  """Attention on the residual branch ``y``, then the shortcut addition and the ReLU.

  Called inside a block's compact ``__call__``, so the submodules belong to the block.
  """
  attention = make_attention(block.attention, block.attention_kwargs, block.dtype,
                             block.param_dtype)
  if attention is not None:
    y = attention(y, train=train)
  shortcut = x
  if block.strides != 1 or x.shape[-1] != y.shape[-1]:
    shortcut = conv(block.dtype, block.param_dtype)(
        y.shape[-1], (1, 1), strides=block.strides, name='proj_conv')(x)
    shortcut = batch_norm(train, block.dtype, block.param_dtype)(name='proj_bn')(shortcut)
  return nn.relu(shortcut + y)


def _last_bn_init(zero: bool):
  # Zero gamma makes every residual branch start as the identity (Goyal et al. 2017).
  return nn.initializers.zeros if zero else nn.initializers.ones


class BasicBlock(nn.Module):
  """3x3 conv-BN-ReLU -> 3x3 conv-BN -> [attention] -> + shortcut -> ReLU (ResNet-18/34)."""
  features: int
  strides: int = 1
  attention: Optional[str] = None
  attention_kwargs: AttentionKwargs = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv_ = conv(self.dtype, self.param_dtype)
    y = conv_(self.features, (3, 3), strides=self.strides, padding=pad_same(3), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv_(self.features, (3, 3), padding=pad_same(3), name='conv2')(y)
    y = norm(name='bn2', scale_init=_last_bn_init(self.zero_init_last_bn))(y)
    return _branch_end(self, x, y, train)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride) -> 1x1 (x4), each conv followed by BN, ReLU between (ResNet-50+).

  ``features`` is the inner width; the block outputs ``4 * features`` channels.
  """
  features: int
  strides: int = 1
  attention: Optional[str] = None
  attention_kwargs: AttentionKwargs = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = batch_norm(train, self.dtype, self.param_dtype)
    conv_ = conv(self.dtype, self.param_dtype)
    y = conv_(self.features, (1, 1), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv_(self.features, (3, 3), strides=self.strides, padding=pad_same(3), name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = conv_(self.features * self.expansion, (1, 1), name='conv3')(y)
    y = norm(name='bn3', scale_init=_last_bn_init(self.zero_init_last_bn))(y)
    return _branch_end(self, x, y, train)


class ResNet(nn.Module):
  """ImageNet ResNet (torchvision layout), optionally with an attention module per block.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block_cls: ``BasicBlock`` or ``Bottleneck``.
    num_classes: outputs of the final FC layer.
    width: the stem's and the first stage's (inner) width; doubles per stage.
    attention: a ``rattn.attention`` name, or None for the plain network.
    attention_kwargs: arguments of every attention module (e.g. ``reduction``).
    stage_attention_kwargs: one mapping (or None) per stage, updating ``attention_kwargs``.
    zero_init_last_bn: start every residual branch at zero (last BN's gamma = 0).
  """
  stage_sizes: Sequence[int]
  block_cls: Type[nn.Module]
  num_classes: int = 1000
  width: int = 64
  attention: Optional[str] = None
  attention_kwargs: AttentionKwargs = None
  stage_attention_kwargs: Optional[Sequence[AttentionKwargs]] = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    stage_kwargs = per_stage_attention_kwargs(self.attention_kwargs, self.stage_attention_kwargs,
                                              len(self.stage_sizes))
    norm = batch_norm(train, self.dtype, self.param_dtype)
    x = conv(self.dtype, self.param_dtype)(
        self.width, (7, 7), strides=2, padding=pad_same(7), name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    # max_pool pads with -inf, as PyTorch's MaxPool2d(3, 2, padding=1) does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad_same(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(
            self.width * 2**i, strides=2 if i > 0 and j == 0 else 1, attention=self.attention,
            attention_kwargs=stage_kwargs[i], zero_init_last_bn=self.zero_init_last_bn,
            dtype=self.dtype, param_dtype=self.param_dtype,
            name=f'stage{i + 1}_block{j + 1}')(x, train=train)
    self.sow('intermediates', 'features', x)
    return classifier(x, self.num_classes, self.dtype, self.param_dtype)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)

SEResNet50 = functools.partial(ResNet50, attention='se')
CBAMResNet50 = functools.partial(ResNet50, attention='cbam')
# The ECA paper's adaptive kernel size k(C), computed by the module from its channels.
ECAResNet50 = functools.partial(ResNet50, attention='eca')
# The released ECA-ResNet-50 (BangguWu/ECANet, `--ksize 3557`) fixes k per stage instead.
ECAResNet50Official = functools.partial(
    ResNet50, attention='eca',
    stage_attention_kwargs=tuple({'kernel_size': k} for k in (3, 5, 5, 7)))
SGEResNet50 = functools.partial(ResNet50, attention='sge')


def model_constructor(module: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
  """The registry's constructor for ``module`` (a class or a partial of one).

  Accepts ``num_classes``, ``dtype``, ``param_dtype`` and any other field of the
  module, and checks an ``attention`` name now, rather than in the middle of
  ``init``.
  """

  def build(num_classes: int, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
            **kwargs) -> nn.Module:
    if kwargs.get('attention'):
      ATTENTIONS.get(kwargs['attention'])  # unknown names fail here, listing the valid ones
    return module(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **kwargs)
  return build


def register_network(name: str, module: Callable[..., nn.Module], **info) -> None:
  """Registers ``module`` through ``model_constructor``; the entry records its class."""
  register_model(name, model_constructor(module), builds=module, **info)


_IMAGENET = dict(dataset='imagenet', image_size=224, num_classes=1000)
# He et al. give multiply-adds (their "FLOPs", v1 layout) but no parameter counts;
# those are torchvision's for the same networks.
_HE = 'He et al. 2015 (MACs); torchvision (params)'
_V1_NOTE = ('the papers count the v1 layout (stride on the first 1x1); this v1.5 layout '
            'strides the 3x3 and costs ~0.23 G more multiply-adds')

register_network('resnet18', ResNet18, **_IMAGENET,
                 paper_params=11.7e6, paper_macs=1.8e9, source=_HE)
register_network('resnet34', ResNet34, **_IMAGENET,
                 paper_params=21.8e6, paper_macs=3.6e9, source=_HE)
register_network('resnet50', ResNet50, **_IMAGENET,
                 paper_params=25.6e6, paper_macs=3.8e9, source=_HE, note=_V1_NOTE)
register_network('resnet101', ResNet101, **_IMAGENET,
                 paper_params=44.5e6, paper_macs=7.6e9, source=_HE, note=_V1_NOTE)
register_network('resnet152', ResNet152, **_IMAGENET,
                 paper_params=60.2e6, paper_macs=11.3e9, source=_HE, note=_V1_NOTE)

register_network('se_resnet50', SEResNet50, **_IMAGENET, backbone='resnet50',
                 paper_params=28.1e6, paper_macs=3.87e9, source='Hu et al. 2018 (SE)',
                 note=_V1_NOTE)
register_network('cbam_resnet50', CBAMResNet50, **_IMAGENET,
                 backbone='resnet50', paper_params=28.09e6, paper_macs=3.864e9,
                 source='Woo et al. 2018 (CBAM)', note=_V1_NOTE)
_ECA_NOTE = ('the ECA paper and its release list ResNet-50 itself as 24.37M, below the '
             '25.56M that its own code builds; its figure for the module alone (80) is exact')
register_network('eca_resnet50', ECAResNet50, **_IMAGENET, backbone='resnet50',
                 source='Wang et al. 2020 (ECA)',
                 note="k(C) = 5, 5, 5, 7 per stage by the paper's formula; the paper gives "
                 'figures only for the released k = 3, 5, 5, 7')
register_network('eca_resnet50_official', ECAResNet50Official, **_IMAGENET,
                 backbone='resnet50', paper_params=24.37e6, paper_macs=3.86e9,
                 paper_added_params=80, source='Wang et al. 2020 (ECA)', note=_ECA_NOTE)
register_network('sge_resnet50', SGEResNet50, **_IMAGENET, backbone='resnet50',
                 paper_params=25.56e6, paper_macs=4.127e9, paper_added_params=2048,
                 source='Li et al. 2019 (SGE)')
