r"""The same-size baseline for fashion_mnist_ran.py: a narrow pre-act ResNet-20.

  python -m experiments.cifar --config experiments/configs/fashion_mnist_resnet.py \
      --workdir /tmp/fmnist_resnet

Pre-act ResNet-20 of widths 8/16/32: 68,546 parameters (the RAN: 70,758), 7.8M
multiply-adds per 28x28 image. Everything but the model is fashion_mnist_ran.py's.

Measured (to be measured).
"""

import ml_collections

from experiments.configs import fashion_mnist_ran


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = fashion_mnist_ran.get_config(arg)
  config.model = 'preact_resnet20'
  config.model_kwargs = dict(widths=(8, 16, 32))
  return config
