"""Symmetric label noise, as in the Residual Attention Network's robustness study.

Wang et al. (CVPR 2017, arXiv 1704.06904, Sec. 4.1) corrupt CIFAR-10 training
labels with a confusion matrix Q where q_ii = 1 - r and q_ij = r / (K - 1) for
j != i: each label is kept with probability 1 - r and otherwise replaced by one
of the K - 1 *other* classes, uniformly. (Some later papers draw the new label
from all K classes, which flips only r (K - 1) / K of them; this is not that.)

Whether example i flips, and by how much its class shifts, depend only on
(seed, i), never on the labels: the flipped fraction is known without reading
the data (ImageNet), and the same examples flip whatever the number of hosts.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def noise_plan(num_examples: int, rate: float, num_classes: int,
               seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Per example: whether it flips (bool), and its class offset in [1, K-1] (int32)."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'label_noise must be in [0, 1], got {rate}.')
  if num_classes < 2:
    raise ValueError(f'label noise needs at least 2 classes, got {num_classes}.')
  # Two streams, so that example i's draws do not depend on how many examples follow.
  flip_rng, offset_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(2))
  flip = flip_rng.random(num_examples) < rate
  # A shift by 1..K-1 (mod K) reaches every other class exactly once: uniform over them.
  offset = offset_rng.integers(1, num_classes, size=num_examples, dtype=np.int32)
  return flip, offset


def apply_noise(labels: np.ndarray, flip: np.ndarray, offset: np.ndarray,
                num_classes: int) -> np.ndarray:
  """Labels with the planned flips applied (int32)."""
  labels = np.asarray(labels, np.int32)
  return np.where(flip, (labels + offset) % num_classes, labels).astype(np.int32)


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int) -> Tuple[np.ndarray, float]:
  """Returns (noisy labels, fraction of labels changed); fixed by ``seed``.

  ``labels`` are the labels of the whole split in record order, so that example
  i gets the same noise however the split is later sharded.
  """
  labels = np.asarray(labels)
  flip, offset = noise_plan(len(labels), rate, num_classes, seed)
  noisy = apply_noise(labels, flip, offset, num_classes)
  return noisy, float(flip.mean()) if len(labels) else 0.0
