"""The last input step, on the device: uint8 batches standardised inside the jitted step.

With ``config.data.normalise_on_device`` the host pipeline stops at uint8 crops
(a quarter of float32's bytes through grain's shared memory and the host-to-device
copy, and no float pass on the host); the step then calls ``model_input``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from rattn.data import datasets


def normalise(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """uint8 [..., C] -> (x / 255 - mean) / std per channel, in ``dtype``."""
  scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
  shift = jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) * scale - shift).astype(dtype)


def model_input(images: jax.Array, data_cfg: ml_collections.ConfigDict) -> jax.Array:
  """The batch's images as the model takes them: normalised here if the pipeline left them uint8."""
  if not data_cfg.normalise_on_device:
    return images  # already standardised on the host
  ds_spec = datasets.spec(data_cfg)
  return normalise(images, ds_spec.mean, ds_spec.std)
