"""The BatchNorm convention shared by every module in rattn (models and attention).

PyTorch/Caffe settings: PyTorch's momentum 0.1 is a decay of 0.9 here; epsilon 1e-5.
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
