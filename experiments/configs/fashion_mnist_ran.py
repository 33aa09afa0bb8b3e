r"""A small Residual Attention Network on the full Fashion-MNIST, sized for a 2-core CPU.

  python -m experiments.cifar --config experiments/configs/fashion_mnist_ran.py \
      --workdir /tmp/fmnist_ran

Attention-56 (CIFAR layout) at a quarter of the width: 70,758 parameters, 6.1M
multiply-adds per 28x28 image. Its baseline, fashion_mnist_resnet.py, is a
pre-act ResNet-20 of widths 8/16/32 (68,546 parameters) trained with exactly
this recipe: SGD Nesterov 0.9, weight decay 5e-4, batch 128, lr 0.1 with a
short warm-up and cosine decay, pad-4 crop + flip, 940 steps (2 epochs of
the 60,000 training images); eval on all 10,000 test images.

Measured (2 CPU cores shared with other jobs, load average 10-13; seed 0):
  test accuracy 86.67% (77.37% after epoch 1); wall time 2,497 s (42 min) at
  that load, a median of 70 images/s in training.
  Baseline fashion_mnist_resnet.py (load ~8): 88.26% (80.89% after
  epoch 1) in 457 s, about 240-440 images/s. At this size and length the
  RAN is slower on a CPU (its mask branches are many small ops) and not
  more accurate (one seed each; the seed-to-seed spread is not measured).
"""

import ml_collections

from experiments.configs import default

MODEL_KWARGS = dict(width=0.25, attention_type='mixed', residual_learning=True)


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = default.get_config()
  config.model = 'ran56_cifar'
  config.model_kwargs = dict(MODEL_KWARGS)
  config.data.dataset = 'fashion_mnist'
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_train_steps = 940  # 2 epochs of 469 steps
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 50
  config.log_every = 50
  config.eval_every = 470  # once per epoch
  config.checkpoint_every = 470
  return config
