"""JPEG records (ImageNet and its stand-in) decoded, cropped and resized on the host with PIL.

tfds data sources hand these datasets' images over undecoded (``RAW``), so that
the pipeline decodes them itself: the crop box is drawn from the JPEG header,
libjpeg decodes at the smallest scale that box allows (draft mode), and PIL's
resize reads only that box, so that no full-size copy is made.
Greyscale and CMYK JPEGs come out RGB.
"""

from __future__ import annotations

import io
from typing import Tuple, Union

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from rattn.data import augment

RAW = tfds.decode.SkipDecoding()  # data-source decoder: the JPEG bytes as stored
Box = Tuple[float, float, float, float]  # (left, top, right, bottom) in pixels


def header_size(data: bytes) -> Tuple[int, int]:
  """(height, width) from the JPEG header alone."""
  with Image.open(io.BytesIO(data)) as image:
    return image.height, image.width


def open_image(image: Union[bytes, np.ndarray]) -> Image.Image:
  """A lazily decoded PIL image of JPEG bytes (an array, as tfds's mock data gives, wrapped)."""
  return Image.open(io.BytesIO(image)) if isinstance(image, bytes) else Image.fromarray(image)


def decode(image: Image.Image, box: Box, size: int) -> Box:
  """Decodes ``image`` in place; returns ``box`` in the decoded image's pixels.

  JPEG draft mode: libjpeg decodes at 1/2, 1/4 or 1/8 scale (scaled inverse
  DCT, a low-pass) where ``box`` still spans at least ``size`` pixels after it,
  so that the bilinear resize that follows still shrinks and the result stays
  within a few grey levels of decoding at full scale (tests/test_imagenet_input.py).
  At 224 px that needs a box side of 448 px or more: large images, whose
  decode costs the most, rather than the typical 500 x 375 photograph.
  """
  left, top, right, bottom = box
  factor = 1
  while factor < 8 and min(right - left, bottom - top) >= 2 * factor * size:
    factor *= 2
  width = image.width
  # None for arrays and non-JPEGs, which decode at full scale.
  drafted = (image.draft(image.mode, (width // factor, image.height // factor))
             if factor > 1 else None)
  image.load()
  if drafted is None:
    return box
  scale = width / drafted[1][2]  # draft returns the original size over the scale it chose
  return left / scale, top / scale, right / scale, bottom / scale


def crop_resize(image: Image.Image, box: Box, size: int) -> Image.Image:
  """RGB size x size: a bilinear resize of ``box`` alone (PIL filters from the pixels around it)."""
  if image.mode not in ('RGB', 'L'):
    image = image.convert('RGB')  # CMYK: convert first, colour conversion is not linear
  out = image.resize((size, size), Image.BILINEAR, box=box)
  return out if out.mode == 'RGB' else out.convert('RGB')  # greyscale: commutes with the resize


def write(image: Image.Image, out: np.ndarray, flip: bool = False) -> None:
  """Copies ``image`` into ``out`` (a slot of the batch), mirrored left-right if ``flip``."""
  # PIL mirrors 5x faster than numpy copies a reversed (3-byte-pixel) view.
  out[...] = np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image)


def train_crop(data: Union[bytes, np.ndarray], rng: np.random.Generator, out: np.ndarray) -> None:
  """Random-resized crop (scale 0.08-1, aspect 3/4-4/3), bilinear, flipped half the time, into out."""
  image = open_image(data)
  box = augment.random_resized_box(image.height, image.width, rng)
  flip = rng.random() < 0.5
  size = out.shape[0]
  write(crop_resize(image, decode(image, box, size), size), out, flip)


def eval_crop(data: Union[bytes, np.ndarray], out: np.ndarray) -> None:
  """Shorter side to size / 0.875 (256 for 224), then the central size x size, into ``out``."""
  image = open_image(data)
  size = out.shape[0]
  box = augment.centre_box(image.height, image.width, size)
  write(crop_resize(image, decode(image, box, size), size), out)
