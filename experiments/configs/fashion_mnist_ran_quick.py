r"""The README's first run: fashion_mnist_ran.py's Attention-56 with 350 steps instead of 940.

  python -m experiments.cifar --config experiments/configs/fashion_mnist_ran_quick.py \
      --workdir runs/fashion_mnist_ran_quick
  python -m experiments.visualize --workdir runs/fashion_mnist_ran_quick \
      --out runs/fashion_mnist_ran_quick/masks.png

The same quarter-width Attention-56 (CIFAR layout, 70,758 parameters) and
recipe as fashion_mnist_ran.py, with the cosine schedule compressed into 350
steps (0.79 epoch of the 57,000 training images left after the 3,000-image
minival split), one validation evaluation at the end, then the test split (all
10,000 images) once: a meaningful accuracy and mask figure in minutes on a
2-core CPU.

Expected (seed 0, jax 0.12.0.1 on Python 3.12, TFDS_DATA_DIR=../shared/tfds):
minival accuracy 81.57%, test accuracy 80.12% (loss 0.526). Runtime: 13 min 17 s
of wall time on 2 cores shared with the test suite (load 4-6), 9.9 CPU-minutes;
measurements on other versions and loads: docs/measurements.md.
"""

import ml_collections

from experiments.configs import fashion_mnist_ran


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = fashion_mnist_ran.get_config(arg)
  config.num_train_steps = 350
  config.eval_every = 350  # evaluated once, at the end
  config.checkpoint_every = 350
  return config
