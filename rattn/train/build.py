"""From a config to the pieces of a run: checks, model, optimiser, train state, steps.

Every mistake a config can hold is caught here, before any data is read or any
step compiled, and reported as a ``ConfigError`` that names the field, the bad
value and what would work.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rattn.models import MODELS, create_model
from rattn.train import optim
from rattn.train.state import TrainState, abstract_train_state, create_train_state, make_mesh
from rattn.train.steps import make_train_step

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ConfigError(ValueError):
  """The config asks for something that cannot run; the message says what to change."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the fields that need no model, data or devices."""
  if config.dtype not in DTYPES:
    raise ConfigError(f'config.dtype={config.dtype!r} is not supported; use one of '
                      f'{sorted(DTYPES)} (parameters are always float32).')
  if config.schedule.name not in optim.SCHEDULES:
    raise ConfigError(f'config.schedule.name={config.schedule.name!r} is not a schedule; '
                      f'use one of {optim.SCHEDULES}.')
  if config.optimizer.name not in optim.OPTIMIZERS:
    raise ConfigError(f'config.optimizer.name={config.optimizer.name!r} is not supported; '
                      f'use one of {optim.OPTIMIZERS}.')
  for field in ('num_train_steps', 'batch_size', 'eval_batch_size', 'log_every',
                'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    if int(config[field]) < 1:
      raise ConfigError(f'config.{field}={config[field]} must be a positive integer.')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f'config.label_smoothing={config.label_smoothing} must be in [0, 1).')
  if config.mixup_alpha < 0:
    raise ConfigError(f'config.mixup_alpha={config.mixup_alpha} must be >= 0 (0 disables it).')


def check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int,
                      num_processes: int) -> None:
  """Global batches must split evenly over devices (and hence over processes)."""
  for field in ('batch_size', 'eval_batch_size'):
    size = int(config[field])
    if size % num_devices or size % num_processes:
      lower = size - size % num_devices
      suggestion = f'{lower} or {lower + num_devices}' if lower else f'{num_devices}'
      raise ConfigError(
          f'config.{field}={size} does not divide evenly over the {num_devices} devices '
          f'of this run ({num_processes} process(es)): every device must get the same '
          f'number of examples. Use a multiple of {num_devices}, e.g. '
          f'--config.{field}={suggestion}.')


def _model_fields(name: str) -> Sequence[str]:
  """The keyword arguments a registered model accepts, for error messages."""
  constructor = MODELS.get(name)
  while isinstance(constructor, functools.partial):
    constructor = constructor.func
  if isinstance(constructor, type) and issubclass(constructor, nn.Module):
    return [f.name for f in dataclasses.fields(constructor) if f.name not in ('parent', 'name')]
  return []


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The registered ``config.model`` with ``config.model_kwargs`` and the compute dtype."""
  check_config(config)
  # Plain dicts all the way down: nested kwargs (e.g. attention_kwargs) reach the modules.
  kwargs = config.model_kwargs.to_dict()
  try:
    return create_model(config.model, num_classes=num_classes, dtype=DTYPES[config.dtype],
                        **kwargs)
  except ValueError as e:
    if config.model not in MODELS:
      raise ConfigError(f'config.model: {e}') from e
    raise ConfigError(f'config.model_kwargs={kwargs} are not valid for model '
                      f'{config.model!r}: {e}') from e
  except TypeError as e:
    fields = _model_fields(config.model)
    known = f' It accepts: {", ".join(fields)}.' if fields else ''
    raise ConfigError(f'config.model_kwargs={kwargs} do not fit model {config.model!r}: '
                      f'{e}.{known}') from e


def _model_input_hint(name: str, image_shape: Tuple[int, ...]) -> str:
  size = MODELS.info(name).get('image_size')
  if size and tuple(image_shape[:2]) != (size, size):
    return (f' (It was designed for {size}x{size} images; the data gives '
            f'{image_shape[0]}x{image_shape[1]}: set --config.data.image_size={size} or '
            'pick a model made for this input.)')
  return ''


def make_tx(config: ml_collections.ConfigDict) -> Tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
  schedule = optim.make_lr_schedule(config)
  return optim.make_optimizer(config, schedule), schedule


def init_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                     image_shape: Tuple[int, int, int], mesh: Mesh, *,
                     abstract: bool = False) -> TrainState:
  """A fresh (or, with ``abstract``, shape-only) replicated train state for ``model``.

  A model that fails to initialise (an input size it cannot take, a bad
  ``model_kwargs`` value such as an unknown ``attention_type``) fails here,
  before any data is read, with a ``ConfigError`` naming the model, its kwargs
  and the input shape.
  """
  tx, _ = make_tx(config)
  try:
    if abstract:
      return abstract_train_state(model, tx, image_shape, mesh)
    return create_train_state(model, tx, image_shape, mesh, seed=int(config.seed))
  except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:
    raise ConfigError(
        f'Model {config.model!r} with model_kwargs={config.model_kwargs.to_dict()} fails to '
        f'initialise on images of shape {tuple(image_shape)} (height, width, channels): '
        f'{type(e).__name__}: {e}{_model_input_hint(config.model, image_shape)}') from e


def create_train_and_step(
    config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None, *,
    num_classes: Optional[int] = None, image_shape: Optional[Tuple[int, int, int]] = None,
) -> Tuple[TrainState, Callable[[TrainState, dict], Tuple[TrainState, Any]]]:
  """``(state, jitted train_step)`` for ``config``, reading no data: for benchmarks.

  The input shape and class count default to the model's registered ones
  (``MODELS.info``: ``image_size``, ``num_classes``; 3 channels), else to the
  config's dataset (its metadata only). ``mesh`` defaults to all devices. Feed
  ``train_step`` global batches sharded like ``rattn.train.shard_batch`` makes.
  """
  mesh = mesh if mesh is not None else make_mesh()
  info = MODELS.info(config.model)
  if image_shape is None and info.get('image_size'):
    image_shape = (info['image_size'], info['image_size'], 3)
  num_classes = num_classes or info.get('num_classes')
  if image_shape is None or num_classes is None:
    from rattn import data  # pylint: disable=g-import-not-at-top
    dataset = data.dataset_info(config.data)
    image_shape = image_shape or tuple(dataset.image_shape)
    num_classes = num_classes or dataset.num_classes
  check_batch_sizes(config, mesh.size, jax.process_count())
  model = build_model(config, num_classes)
  state = init_train_state(config, model, image_shape, mesh)
  return state, make_train_step(config, mesh)
