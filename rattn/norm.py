"""The BatchNorm convention shared by every module in rattn (models and attention).

PyTorch/Caffe settings: PyTorch's momentum 0.1 is a decay of 0.9 here; epsilon 1e-5.

One convention differs from PyTorch: the running variance is updated with the
batch's biased variance (flax's ``nn.BatchNorm``: the mean of squared deviations),
where ``torch.nn.BatchNorm2d`` uses the unbiased one, n / (n - 1) larger, n the
values per channel in the (global) batch. Normalisation in training uses the
biased variance in both. The difference only touches the running statistics that
evaluation uses, by a factor that is 1 + 1/n: 1.0002 for a batch of 64 on 8x8 maps,
more only for tiny batches on tiny maps. Weights converted from PyTorch
(``rattn.convert``) are copied unchanged, and ``tests/test_parity.py`` checks every
layer's running variances against torch's update with this one factor applied.
Kept in a module with no rattn imports so that attention layers and backbones can
both use it without an import cycle.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, param_dtype: Any, **kwargs) -> functools.partial:
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON, dtype=dtype, param_dtype=param_dtype, **kwargs)
