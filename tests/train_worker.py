"""A tiny registered model, a tiny config, and a training worker for subprocess tests.

Imported by the training tests (which then share the model and config), and run
as a script by the tests that need fresh processes (resume after a restart,
multi-process training):

  python tests/train_worker.py --workdir DIR --params_out OUT.npz \
      [--overrides JSON] [--devices N] [--coordinator HOST:PORT --num_processes N --process_id I]

The worker trains ``tiny_config()`` (updated with the JSON overrides) on
``tfds.testing.mock_data`` and saves process 0's final parameters and BatchNorm
statistics to ``--params_out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rattn.models.layers import classifier

MODEL_NAME = 'train_test_tiny'
MOCK_EXAMPLES = 96


class TinyNet(nn.Module):
  """conv-BN-ReLU -> strided conv-BN-ReLU -> mean pool -> dense: BN makes sharding matter."""
  num_classes: int
  width: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,  # noqa: E731
                                dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    x = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype,
                                param_dtype=self.param_dtype)(x)))
    x = nn.relu(norm()(nn.Conv(2 * self.width, (3, 3), strides=2, use_bias=False,
                                dtype=self.dtype, param_dtype=self.param_dtype)(x)))
    return classifier(x, self.num_classes, self.dtype, self.param_dtype)  # float32 logits


def register() -> None:
  from rattn.models import MODELS  # pylint: disable=g-import-not-at-top
  if MODEL_NAME not in MODELS:
    MODELS.register(MODEL_NAME, TinyNet, image_size=8, num_classes=10)


def tiny_config(**overrides: Any):
  """experiments/configs/tiny.py with the tiny test model on 8x8 CIFAR-10, plus overrides.

  ``overrides`` use dotted names: ``tiny_config(**{'schedule.base_lr': 1.0})``.
  """
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model = MODEL_NAME
  config.model_kwargs = {'width': 8}
  config.data.image_size = 8
  config.data.num_workers = 0
  config.batch_size = 16
  config.eval_batch_size = 32
  for name, value in overrides.items():
    *parents, leaf = name.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def flatten_variables(variables: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """Flat {path: array} of params and batch_stats, for saving and comparing.

  Reads each process's own replica, so it works on multi-process global arrays.
  """
  flat = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection]):
      flat[collection + jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_data(0))
  return flat


def restore_final(config, workdir: str) -> Dict[str, np.ndarray]:
  """The run's final checkpoint, restored onto the global mesh of all processes."""
  from rattn import train  # pylint: disable=g-import-not-at-top
  image_shape = (config.data.image_size, config.data.image_size, 3)
  plan = train.make_plan(config, image_shape=image_shape, num_classes=10)
  checkpoints = train.Checkpointer(f'{workdir}/checkpoints', read_only=True)
  state = checkpoints.restore(config.num_train_steps, plan.abstract_state())
  checkpoints.close()
  return flatten_variables(state.variables())


def reference_of_processes(config, steps: int, process_count: int) -> Dict[str, np.ndarray]:
  """What ``process_count`` processes training ``config`` for ``steps`` steps must end with:
  this process, on all its devices, fed the global batches the processes' shards make
  (each process's slice of the global batch, concatenated in process order)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rattn import data, train  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh()
  plan = train.make_plan(config, mesh, image_shape=(8, 8, 3), num_classes=10)
  state, train_step = plan.init_state(), plan.train_step()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    shards = [data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                       seed=plan.keys.data, process_index=i,
                                       process_count=process_count)
              for i in range(process_count)]
    for _ in range(steps):
      parts = [next(s) for s in shards]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      state, _ = train_step(state, train.shard_batch(batch, mesh))
  return flatten_variables(state.variables())


def main(argv) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--params_out', required=True)
  parser.add_argument('--overrides', default='{}')
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--coordinator')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  args = parser.parse_args(argv)

  jax.config.update('jax_num_cpu_devices', args.devices)
  if args.coordinator:
    from rattn.train import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize('auto', args.coordinator, args.num_processes, args.process_id)

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rattn import train  # pylint: disable=g-import-not-at-top
  register()
  config = tiny_config(**json.loads(args.overrides))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    result = train.train_and_evaluate(config, args.workdir)
  flat = restore_final(config, args.workdir)
  if jax.process_index() == 0:
    np.savez(args.params_out, **flat)
    print(json.dumps(result))


if __name__ == '__main__':
  main(sys.argv[1:])
