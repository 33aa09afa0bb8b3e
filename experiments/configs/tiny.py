r"""A seconds-long run for tests and smoke checks: a tiny pre-act ResNet-20 on 16x16 CIFAR-10.

  python -m experiments.cifar --config experiments/configs/tiny.py --workdir /tmp/tiny

Widths 4/8/16 (about 17k parameters) on images resized to 16x16; 8 steps of
batch 16, so every feature of the loop (logging, eval, checkpoints, resume)
runs within a minute. Accuracy is meaningless at this length: measured 7.6% on
the 1,017-image CIFAR-10 test subset (chance: 10%).
Runtime: measured 53 s wall on 2 CPU cores shared with other jobs (load ~8),
nearly all of it start-up and compilation.
"""

import ml_collections

from experiments.configs import default


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = default.get_config()
  config.model = 'preact_resnet20'
  config.model_kwargs = dict(widths=(4, 8, 16))
  config.data.dataset = 'cifar10'
  config.data.image_size = 16
  config.batch_size = 16
  config.eval_batch_size = 64
  config.num_train_steps = 8
  config.schedule.boundaries = (6,)
  config.log_every = 2
  config.eval_every = 4
  config.checkpoint_every = 2
  config.keep_checkpoints = 2
  return config
