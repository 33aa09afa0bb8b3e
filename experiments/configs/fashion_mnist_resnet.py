r"""The same-size baseline for fashion_mnist_ran.py: a narrow pre-act ResNet-20.

  python -m experiments.cifar --config experiments/configs/fashion_mnist_resnet.py \
      --workdir /tmp/fmnist_resnet

Pre-act ResNet-20 of widths 8/16/32: 68,546 parameters (the RAN: 70,758), 7.8M
multiply-adds per 28x28 image. Everything but the model is fashion_mnist_ran.py's.

Measured (2 CPU cores shared with other jobs, load average ~7; seed 0): test
accuracy 88.26% (80.89% after epoch 1); wall time 457 s (under 8 min).
The RAN (fashion_mnist_ran.py): 86.75% in 1,669 s.
"""

import ml_collections

from experiments.configs import fashion_mnist_ran


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = fashion_mnist_ran.get_config(arg)
  config.model = 'preact_resnet20'
  # depth, bottleneck and attention are the registered model's defaults, declared so that
  # overrides (e.g. experiments.study's) can change them.
  config.model_kwargs = dict(widths=(8, 16, 32), depth=20, bottleneck=False, attention='')
  return config
