"""The train state, the device mesh and the shardings every step agrees on.

Data parallelism the way current JAX wants it: one 1-D ``('data',)`` mesh over
all devices of all processes; the train state is replicated, batches are split
along their leading axis; ``jax.jit`` inserts the gradient all-reduce, and
BatchNorm, which reduces over the batch axis of a *global* array, sees the whole
global batch (sync-BN for free, no ``axis_name``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


@dataclasses.dataclass(frozen=True)
class RunKeys:
  """The run's randomness, all derived here, once, from ``config.seed``: one stream per use.

  ``jax.random.split`` of ``jax.random.key(seed)`` gives each use its own key, so
  no two uses draw the same numbers (``tests/test_train.py`` checks every field).
  The data config's own seeds (``data.noise_seed``, ``data.validation_seed``) are
  independent of it on purpose: a study's seeds compare models on the same labels
  and validation examples.
  """
  params: jax.Array  # model initialisation
  mixup: jax.Array  # folded with the step inside the train step
  data: int  # the input pipeline's seed (shuffling and augmentation)

  @classmethod
  def from_seed(cls, seed: int) -> 'RunKeys':
    params, mixup, data = jax.random.split(jax.random.key(int(seed)), 3)
    # grain and numpy take an integer seed: 32 bits drawn from the data stream's key.
    return cls(params=params, mixup=mixup, data=int(jax.random.bits(data, dtype=jnp.uint32)))


class TrainState(train_state.TrainState):
  """flax's TrainState plus the BatchNorm running statistics."""
  batch_stats: Any = None

  def variables(self) -> dict:
    """The variables ``model.apply`` takes for inference."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global arrays split over the mesh's data axis.

  Each process passes its own slice of the global batch; the global batch is
  the processes' slices concatenated in process order.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def _init_fn(model: nn.Module, tx: optax.GradientTransformation,
             image_shape: Tuple[int, int, int], key: jax.Array):

  def init() -> TrainState:
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init(key, dummy, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             batch_stats=variables.get('batch_stats', {}))

  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: Tuple[int, int, int], mesh: Mesh,
                       key: jax.Array) -> TrainState:
  """Initialises the model and optimiser directly into replicated device memory.

  Initialisation runs under ``jit`` with a replicated output sharding, so every
  process computes the same parameters from ``key`` (``RunKeys.params``) and no
  host ever holds a copy that must be broadcast.
  """
  return jax.jit(_init_fn(model, tx, image_shape, key), out_shardings=replicated(mesh))()


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: Tuple[int, int, int], mesh: Mesh) -> TrainState:
  """The train state's shapes, dtypes and (replicated) shardings, computing nothing.

  This is the target a checkpoint is restored into.
  """
  shapes = jax.eval_shape(_init_fn(model, tx, image_shape, jax.random.key(0)))
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)
