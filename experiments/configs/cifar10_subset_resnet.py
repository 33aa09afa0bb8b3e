r"""The same-size baseline for cifar10_subset_ran.py: a narrow pre-act ResNet-20.

  python -m experiments.cifar --config experiments/configs/cifar10_subset_resnet.py \
      --workdir /tmp/c10sub_resnet

Pre-act ResNet-20 of widths 8/16/32: 68,618 parameters (the RAN: 70,830).
Everything but the model is cifar10_subset_ran.py's.

Measured (2 CPU cores shared with other jobs, load average ~8; seed 0): test
accuracy 58.70% on the 1,017 test images (41.59% after 5 epochs, 50.74% after
10); wall time 278 s (under 5 min), about 180 images/s in training. The RAN
(cifar10_subset_ran.py): 52.21% in 895 s.
"""

import ml_collections

from experiments.configs import cifar10_subset_ran


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = cifar10_subset_ran.get_config(arg)
  config.model = 'preact_resnet20'
  # depth, bottleneck and attention are the registered model's defaults, declared so that
  # overrides (e.g. experiments.study's) can change them.
  config.model_kwargs = dict(widths=(8, 16, 32), depth=20, bottleneck=False, attention='')
  return config
