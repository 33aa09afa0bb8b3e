"""Image augmentations in numpy, driven by an explicit ``np.random.Generator``.

grain's ``random_map`` hands every element a generator seeded from (pipeline
seed, element index), so each batch's augmentation is a pure function of the
seed and the step: a resumed run redraws exactly the crops it would have drawn.
The small datasets are augmented a whole uint8 batch at a time (one gather, no
per-image Python); ImageNet images differ in size and go one at a time: a crop
box drawn here, decoded and resized by ``rattn.data.jpeg``.
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


def random_resized_box(height: int, width: int, rng: np.random.Generator,
                       scale: Tuple[float, float] = (0.08, 1.0),
                       ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
  """Inception-style crop (Szegedy et al. 2015): 8-100% of the area, aspect 3/4-4/3.

  Ten tries at a crop that fits, then torchvision's fallback: the centre crop
  with the aspect ratio clamped into range. Returns (left, top, right, bottom).
  """
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < cw <= width and 0 < ch <= height:
      y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
      return x0, y0, x0 + cw, y0 + ch
  aspect = min(max(width / height, ratio[0]), ratio[1])
  cw, ch = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect),
                                                                           height)
  y0, x0 = (height - ch) // 2, (width - cw) // 2
  return x0, y0, x0 + cw, y0 + ch


def centre_box(height: int, width: int, size: int,
               crop_fraction: float = 0.875) -> Tuple[float, float, float, float]:
  """ImageNet eval as a box: shorter side to size / 0.875 (256 for 224), then the central size^2.

  The box is in the original image's pixels, so that one bilinear resize of it
  to size x size gives what resizing the whole image and cropping gives.
  """
  short = round(size / crop_fraction)
  nh, nw = (short, round(width * short / height)) if height <= width else (
      round(height * short / width), short)
  y0, x0 = (nh - size) // 2, (nw - size) // 2
  sy, sx = height / nh, width / nw
  return x0 * sx, y0 * sy, (x0 + size) * sx, (y0 + size) * sy


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
