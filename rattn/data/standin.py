"""A stand-in for ImageNet (tfds 'imagenet2012') that needs no download and no TensorFlow.

    python -m experiments.make_standin --data_dir DIR --num_train 4000 --num_val 500
    tfds.data_source('imagenet_standin', data_dir=DIR)  # after `import rattn.data`

The same features as imagenet2012 ('image': JPEG bytes, 'label': 1000 classes
named by WordNet synset, 'file_name') and splits ('train', 'validation'),
stored as array_record, so that the input pipeline and the benchmarks run on
JPEGs that cost what ImageNet's cost to read and decode:
- sizes: the longer side is 500 px for ~45% of the images (Flickr's size, as in
  ImageNet), log-normal around 500 px for the rest, mostly 4:3 or 3:4; 0.5%
  very large (2000-4000 px) and 0.5% very small (< 100 px);
- 1.5% greyscale JPEGs and 0.1% CMYK JPEGs (at least one of each per split);
  tfds's own imagenet2012 re-encodes its 22 CMYK files as RGB, so a reader
  that handles these handles the real data;
- content: smooth random colour fields at three scales plus pixel noise,
  JPEG quality 85-95 with 4:2:0 chroma, ~0.5 bytes per pixel like ImageNet's
  photographs (not flat colour, which decodes unrealistically fast).

Every image is a pure function of (seed, split, index): a build is reproducible.
"""

from __future__ import annotations

import io
from typing import Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = 'imagenet_standin'
SPLITS = ('train', 'validation')
GREY_FRACTION, CMYK_FRACTION = 0.015, 0.001
LARGE_FRACTION, SMALL_FRACTION = 0.005, 0.005
FLICKR_FRACTION = 0.45  # longer side exactly 500 px
# Common aspect ratios (width / height) and how often each occurs; the other 20% are
# log-uniform in [1/2.2, 2.2].
_ASPECTS = (4 / 3, 3 / 4, 3 / 2, 1.0)
_ASPECT_P = (0.5, 0.15, 0.1, 0.05)


def image_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 2] (height, width) with ImageNet's spread: median 500 x 375, a few huge, a few tiny."""
  long_side = np.where(rng.random(n) < FLICKR_FRACTION, 500.0,
                       np.exp(rng.normal(np.log(500), 0.35, n)))
  kind = rng.random(n)
  long_side = np.where(kind < LARGE_FRACTION, np.exp(rng.uniform(np.log(2000), np.log(4000), n)),
                       long_side)
  long_side = np.where(kind > 1 - SMALL_FRACTION, rng.uniform(40, 99, n), long_side)
  choice = rng.choice(len(_ASPECTS) + 1, size=n, p=(*_ASPECT_P, 1 - sum(_ASPECT_P)))
  free = np.exp(rng.uniform(-np.log(2.2), np.log(2.2), n))
  aspect = np.where(choice < len(_ASPECTS), np.append(_ASPECTS, 0.0)[choice], free)
  long_side = np.clip(np.round(long_side), 16, None)
  short_side = np.maximum(np.round(long_side / np.maximum(aspect, 1 / aspect)), 8)
  landscape = aspect >= 1
  return np.stack([np.where(landscape, short_side, long_side),
                   np.where(landscape, long_side, short_side)], axis=1).astype(int)


def _field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """Random colours on a grid of ~``cells`` along the longer side, bicubically interpolated."""
  scale = cells / max(height, width)
  grid = rng.integers(0, 256, (max(2, round(height * scale)), max(2, round(width * scale)), 3),
                      dtype=np.uint8)
  return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)


def render(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3]: coarse, medium and fine colour fields plus Gaussian pixel noise."""
  image = 0.55 * _field(rng, height, width, 6) + 0.3 * _field(rng, height, width, 40)
  image += 0.2 * _field(rng, height, width, 200)
  image += rng.standard_normal((height, width, 3), dtype=np.float32) * 12
  return np.clip(image, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, mode: str, quality: int) -> bytes:
  """JPEG bytes of RGB ``pixels`` stored as ``mode`` ('RGB', 'L' or 'CMYK')."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


def split_plan(num_examples: int, seed: int, split: str) -> Dict[str, np.ndarray]:
  """Per-example size, storage mode, label and JPEG quality of one split."""
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  modes = np.full(num_examples, 'RGB', dtype=object)
  order = rng.permutation(num_examples)
  num_grey = max(1, round(GREY_FRACTION * num_examples))
  num_cmyk = max(1, round(CMYK_FRACTION * num_examples))
  modes[order[:num_grey]] = 'L'
  modes[order[num_grey:num_grey + num_cmyk]] = 'CMYK'
  return {'size': image_sizes(rng, num_examples), 'mode': modes,
          'label': rng.integers(0, 1000, num_examples),
          'quality': rng.integers(85, 96, num_examples)}


class ImagenetStandin(tfds.core.GeneratorBasedBuilder):
  """Synthetic JPEGs with ImageNet's sizes, colour modes and compression; see the module doc."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, num_train: int = 4000, num_val: int = 500, seed: int = 0, **kwargs):
    self._sizes = {'train': num_train, 'validation': num_val}
    self._seed = seed
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names_file=tfds.core.tfds_path(
                'datasets/imagenet2012/labels.txt')),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://image-net.org/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[Tuple[str, Dict]]:
    plan = split_plan(self._sizes[split], self._seed, split)
    synsets = self.info.features['label'].names
    for i, ((height, width), mode, label, quality) in enumerate(zip(
        plan['size'], plan['mode'], plan['label'], plan['quality'])):
      pixels = render(np.random.default_rng([self._seed, SPLITS.index(split), i]),
                      int(height), int(width))
      file_name = (f'{synsets[label]}_{i}.JPEG' if split == 'train'
                   else f'ILSVRC2012_val_{i + 1:08d}.JPEG')
      yield file_name, {'image': encode(pixels, mode, int(quality)), 'label': int(label),
                        'file_name': file_name}


def build(data_dir: str, num_train: int, num_val: int, seed: int = 0) -> tfds.core.DatasetBuilder:
  """Writes the stand-in into ``data_dir`` (array_record); returns its builder."""
  builder = ImagenetStandin(data_dir=data_dir, num_train=num_train, num_val=num_val, seed=seed,
                            file_format='array_record')
  builder.download_and_prepare()
  return builder
