"""JPEG records (ImageNet and its stand-in) decoded on the host with PIL (libjpeg-turbo).

tfds data sources hand these datasets' images over undecoded (``RAW``), so that
the pipeline decides how to decode them. Greyscale and CMYK JPEGs come out RGB.
"""

from __future__ import annotations

import io
from typing import Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

RAW = tfds.decode.SkipDecoding()  # data-source decoder: the JPEG bytes as stored


def size(data: bytes) -> Tuple[int, int]:
  """(height, width) from the JPEG header alone."""
  with Image.open(io.BytesIO(data)) as image:
    return image.height, image.width


def decode(data: bytes) -> np.ndarray:
  """The whole image as uint8 [H, W, 3]."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))
