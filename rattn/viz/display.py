"""Array helpers that turn network inputs and attention maps into displayable pixels.

Pure numpy/JAX, no matplotlib: the figure code draws what these return, and the
tests check their ranges directly.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


def unnormalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Undoes the input pipeline's per-channel standardisation; returns floats in [0, 1].

  ``mean``/``std`` are the dataset's per-channel statistics of pixels scaled to
  [0, 1] (``rattn.data.dataset_info``), which the pipeline applies as
  (x / 255 - mean) / std.
  """
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  return np.clip(np.asarray(images, np.float32) * std + mean, 0.0, 1.0)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """(H, W, 1) grayscale (Fashion-MNIST) or (H, W, 3) colour -> (H, W, 3)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] != 3:
    raise ValueError(f'Expected 1 or 3 image channels, got shape {image.shape}.')
  return image


def upsample(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Bilinearly resizes (..., h, w) maps to (..., *size) for overlaying on the input.

  Half-pixel bilinear (``jax.image.resize``): for display only, so the RAN's
  corner-aligned upsampling inside the network does not need to be matched.
  """
  maps = jnp.asarray(maps, jnp.float32)
  return np.asarray(jax.image.resize(maps, maps.shape[:-2] + tuple(size), 'linear'))


def value_range(maps: np.ndarray, min_relative_span: float = 0.01) -> Tuple[float, float]:
  """A colour range for ``maps``: their min..max, at least ``min_relative_span`` of their size wide.

  A saturated gate (say 0.99995..0.99999) would otherwise fill the whole colour
  map with variation that means nothing; its range is widened symmetrically.
  """
  lo, hi = float(np.min(maps)), float(np.max(maps))
  span = min_relative_span * max(abs(lo), abs(hi), 1e-12)
  if hi - lo < span:
    middle = 0.5 * (lo + hi)
    lo, hi = middle - 0.5 * span, middle + 0.5 * span
  return lo, hi


def overlay(image: np.ndarray, heat: np.ndarray, vmin: float, vmax: float,
            cmap: str = 'jet', alpha: float = 0.5) -> np.ndarray:
  """Blends the colour-mapped ``heat`` (H, W) over ``image`` (H, W, 1|3, in [0, 1]).

  ``heat`` must already be at the image's size (``upsample``). Returns RGB floats
  in [0, 1]; values outside ``vmin..vmax`` saturate at the colour map's ends.
  """
  rgb = to_rgb(np.clip(image, 0.0, 1.0))
  heat = np.asarray(heat, np.float32)
  if heat.shape != rgb.shape[:2]:
    raise ValueError(f'heat map {heat.shape} must match the image size {rgb.shape[:2]}; '
                     'upsample it first.')
  scaled = np.clip((heat - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
  colours = matplotlib.colormaps[cmap](scaled)[..., :3]
  return np.clip((1.0 - alpha) * rgb + alpha * colours, 0.0, 1.0).astype(np.float32)
