"""Image augmentations in numpy, driven by an explicit ``np.random.Generator``.

grain's ``random_map`` hands every element a generator seeded from (pipeline
seed, element index), so each batch's augmentation is a pure function of the
seed and the step: a resumed run redraws exactly the crops it would have drawn.
The small datasets are augmented a whole uint8 batch at a time (one gather, no
per-image Python); ImageNet images differ in size and go one at a time (PIL).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np
from PIL import Image

Batch = Dict[str, np.ndarray]


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """The CIFAR recipe on uint8 [B, H, W, C]: zero-pad by ``pad``, random H x W crop, flip half.

  Zero (black) padding before normalisation, as in He et al. (2016) and torchvision.
  A Python loop of B slice copies: 3x faster here than one fancy-indexed gather.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  flip = rng.random(b) < 0.5
  out = np.empty_like(images)
  for i in range(b):
    crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of uint8 [H, W, C] (PIL's, which low-pass filters when shrinking)."""
  if image.shape[:2] == (height, width):
    return image
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out.reshape(height, width, image.shape[-1])


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop (Szegedy et al. 2015): 8-100% of the area, aspect 3/4-4/3, then resize.

  Ten tries at a crop that fits, then torchvision's fallback: the centre crop
  with the aspect ratio clamped into range.
  """
  h, w = image.shape[:2]
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      break
  else:
    aspect = min(max(w / h, ratio[0]), ratio[1])
    cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
  return resize(image[y0:y0 + ch, x0:x0 + cw], size, size)


def crop_flip(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """ImageNet training augmentation: random-resized crop, then a horizontal flip half the time."""
  image = random_resized_crop(image, size, rng)
  return np.ascontiguousarray(image[:, ::-1]) if rng.random() < 0.5 else image


def centre_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """ImageNet eval: shorter side to size / 0.875 (256 for 224), then the central size x size."""
  h, w = image.shape[:2]
  short = round(size / crop_fraction)
  nh, nw = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
  image = resize(image, nh, nw)
  y0, x0 = (nh - size) // 2, (nw - size) // 2
  return image[y0:y0 + size, x0:x0 + size]


# grain pickles the pipeline into its worker processes: transforms are module-level
# classes, not closures.


@dataclasses.dataclass(frozen=True)
class PadCropFlip:
  """Batch-level CIFAR augmentation for ``random_map``."""
  pad: int = 4

  def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
    return {**batch, 'image': pad_crop_flip(batch['image'], rng, self.pad)}


@dataclasses.dataclass(frozen=True)
class Normalise:
  """uint8 -> float32 standardised per channel: (x / 255 - mean) / std."""
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  def __call__(self, batch: Batch) -> Batch:
    std = np.asarray(self.std, np.float32)
    image = np.multiply(batch['image'], 1.0 / (255.0 * std), dtype=np.float32)
    image -= np.asarray(self.mean, np.float32) / std  # in place: one pass fewer
    return {**batch, 'image': image}
