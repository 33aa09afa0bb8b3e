r"""A small Residual Attention Network on the offline CIFAR-10 subset (4,153 train / 1,017 test).

  python -m experiments.cifar --config experiments/configs/cifar10_subset_ran.py \
      --workdir /tmp/c10sub_ran

The subset in ../shared/tfds (the first ~1,000 images of CIFAR-10's batches 1-4
and of its test batch) is what this machine has; with the full CIFAR-10 in the
data dir the same config trains on all 50,000 images. Attention-56 (CIFAR
layout) at a quarter of the width: 70,830 parameters, 8.0M multiply-adds per
32x32 image. Baseline: cifar10_subset_resnet.py, a pre-act ResNet-20 of widths
8/16/32 (68,618 parameters), same recipe: SGD Nesterov 0.9, weight decay 5e-4,
batch 64, lr 0.1 with warm-up and cosine decay, pad-4 crop + flip, 975 steps
(15 epochs).

Measured (2 CPU cores shared with other jobs, load average 11-13; seed 0):
test accuracy 49.16% on the 1,017 test images (34.41% after 5 epochs, 38.94%
after 10); wall time 1,179 s (20 min) at that load. Baseline
cifar10_subset_resnet.py (load ~7): 58.70% in 278 s. One seed each; with
1,017 test images one standard error is about 1.6 points.
"""

import ml_collections

from experiments.configs import default


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = default.get_config()
  config.model = 'ran56_cifar'
  config.model_kwargs = dict(width=0.25, attention_type='mixed', residual_learning=True)
  config.data.dataset = 'cifar10'
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_train_steps = 975  # 15 epochs of the 4,153-image subset
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 65
  config.log_every = 65
  config.eval_every = 325  # every 5 epochs
  config.checkpoint_every = 325
  return config
