r"""The same-size baseline for cifar10_subset_ran.py: a narrow pre-act ResNet-20.

  python -m experiments.cifar --config experiments/configs/cifar10_subset_resnet.py \
      --workdir /tmp/c10sub_resnet

Pre-act ResNet-20 of widths 8/16/32: 68,618 parameters (the RAN: 70,830).
Everything but the model is cifar10_subset_ran.py's.

Measured (to be measured).
"""

import ml_collections

from experiments.configs import cifar10_subset_ran


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = cifar10_subset_ran.get_config(arg)
  config.model = 'preact_resnet20'
  config.model_kwargs = dict(widths=(8, 16, 32))
  return config
