"""Unit tests of the training pieces: schedules, optimiser, losses, sharded steps."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattn import train
from rattn.train import optim, steps
from train_worker import flatten_variables, register, tiny_config

register()
IMAGE_SHAPE = (8, 8, 3)


def _plan(config, mesh=None):
  return train.make_plan(config, mesh, image_shape=IMAGE_SHAPE, num_classes=10)


def _batch(size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {'image': rng.standard_normal((size, *IMAGE_SHAPE)).astype(np.float32),
          'label': rng.integers(0, 10, size).astype(np.int32)}


# ---------------------------------------------------------------- schedules and optimiser


def test_piecewise_schedule_is_caffe_multistep():
  config = tiny_config(**{'num_train_steps': 160_000, 'schedule.boundaries': (64_000, 96_000)})
  lr = optim.make_lr_schedule(config)
  # The update with 0-based index 64000 is Caffe's iteration 64000: already decayed.
  np.testing.assert_allclose([lr(0), lr(63_999), lr(64_000), lr(95_999), lr(96_000)],
                             [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)


def test_warmup_then_cosine():
  config = tiny_config(**{'num_train_steps': 110, 'schedule.name': 'cosine',
                          'schedule.warmup_steps': 10, 'schedule.end_lr_fraction': 0.0})
  lr = optim.make_lr_schedule(config)
  np.testing.assert_allclose([lr(0), lr(4), lr(9), lr(10), lr(60), lr(110)],
                             [0.01, 0.05, 0.1, 0.1, 0.05, 0.0], atol=1e-6)


def test_weight_decay_is_coupled_and_optionally_spares_norm_params():
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 1))}, 'bn': {'scale': jnp.ones(1)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for decay_all, scale_moves in ((True, True), (False, False)):
    config = tiny_config(**{'optimizer.decay_all_params': decay_all,
                            'optimizer.weight_decay': 0.5})
    tx = optim.make_optimizer(config, optim.make_lr_schedule(config))
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # Nesterov SGD of the decay term alone: -lr * (1 + momentum) * wd * w.
    np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 1.9 * 0.5, rtol=1e-6)
    assert bool(jnp.any(updates['bn']['scale'] != 0)) == scale_moves


def test_label_smoothing_and_mixup_targets():
  targets = steps.soft_targets(jnp.array([0, 2]), 4, 0.2)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(targets[0], [0.85, 0.05, 0.05, 0.05], rtol=1e-6)
  images = jnp.stack([jnp.zeros((2, 2, 1)), jnp.ones((2, 2, 1))])
  mixed, lam = steps.mixup(jax.random.key(0), 0.4, images)
  np.testing.assert_allclose(mixed[0], 1 - lam, rtol=1e-6)  # mixed with its neighbour


# ---------------------------------------------------------------- sharded steps


def test_sharded_train_step_equals_single_device_step():
  """8 devices, batch split 8 ways == 1 device with the whole batch: params AND BN stats."""
  assert jax.device_count() == 8
  config = tiny_config(**{'label_smoothing': 0.1, 'mixup_alpha': 0.2})
  results = []
  for mesh in (train.make_mesh(), train.make_mesh(jax.devices()[:1])):
    plan = _plan(config, mesh)
    state, step = plan.init_state(), plan.train_step()
    for i in range(2):
      batch = train.shard_batch(_batch(32, seed=i), mesh)
      assert len(batch['image'].sharding.device_set) == mesh.size
      state, metrics = step(state, batch)
    results.append((flatten_variables(state.variables()), jax.device_get(metrics)))
  (sharded, sharded_metrics), (single, single_metrics) = results
  assert any('batch_stats' in k for k in sharded)
  chex.assert_trees_all_close(sharded, single, rtol=2e-5, atol=2e-6)
  chex.assert_trees_all_close(sharded_metrics['loss'], single_metrics['loss'], rtol=1e-5)


def test_eval_step_ignores_padding():
  plan = _plan(tiny_config())
  mesh, state, eval_step = plan.mesh, plan.init_state(), plan.eval_step()
  batch = _batch(16)
  padded = jax.device_get(eval_step(state, train.shard_batch(
      dict(batch, mask=np.arange(16) < 8), mesh)))
  first_half = jax.device_get(eval_step(state, train.shard_batch(
      {k: v[:8] for k, v in batch.items()}, mesh)))
  assert padded['count'] == 8
  chex.assert_trees_all_close(padded, first_half, rtol=1e-5)


def test_plan_with_given_shapes_reads_no_data():
  """What the benchmark and a saved run's evaluation use: no data is opened."""
  config = tiny_config(**{'data.dataset': 'no_such_dataset'})  # proves no data is read
  plan = _plan(config)
  assert plan.data is None
  state, metrics = plan.train_step()(plan.init_state(),
                                     train.shard_batch(_batch(16), plan.mesh))
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))


def test_run_keys_give_every_use_its_own_stream():
  """Fails if any two uses (of any seed here) share a key: each would draw the same numbers."""
  def streams(keys):
    return {field.name: np.asarray(jax.random.key_data(value)).tobytes()
            if isinstance(value, jax.Array) else int(value).to_bytes(8, 'little')
            for field in dataclasses.fields(keys) for value in [getattr(keys, field.name)]}
  seen = {}
  for seed in (0, 1, 7):
    keys = _plan(tiny_config(seed=seed)).keys
    assert set(streams(keys)) == {'params', 'mixup', 'data'}  # every field is a use
    for name, value in streams(keys).items():
      assert value not in seen, f'seed {seed} {name} shares its key with {seen.get(value)}'
      seen[value] = f'seed {seed} {name}'
    again = train.RunKeys.from_seed(seed)  # derived from the seed alone
    assert streams(again) == streams(keys)
  assert isinstance(keys.data, int) and 0 <= keys.data < 2 ** 32


def test_bfloat16_compute_keeps_float32_params():
  plan = _plan(tiny_config(dtype='bfloat16'))
  state, metrics = plan.train_step()(plan.init_state(), train.shard_batch(_batch(16), plan.mesh))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert metrics['loss'].dtype == jnp.float32 and np.isfinite(float(metrics['loss']))


# ---------------------------------------------------------------- checkpoints


def test_checkpointer_keeps_latest_and_best_and_restores_data_position(tmp_path):
  import grain
  mesh = train.make_mesh()
  state = jax.device_put({'w': jnp.arange(8.0)}, train.replicated(mesh))
  dataset = grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset()
  iterator = iter(dataset)
  checkpoints = train.Checkpointer(tmp_path, keep=2)
  for step in range(1, 6):
    next(iterator)
    metrics = {2: {'minival_accuracy': 0.9}, 4: {'minival_accuracy': 0.5}}.get(step)
    checkpoints.save(step, jax.tree.map(lambda x: x * step, state), iterator, metrics=metrics)
  checkpoints.close()
  expected_next = next(iterator)

  reopened = train.Checkpointer(tmp_path, read_only=True)
  assert reopened.all_steps() == [2, 4, 5]  # the latest two, and the best (step 2)
  assert reopened.best_step() == 2
  fresh = iter(dataset)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = reopened.restore(5, abstract, fresh)
  chex.assert_trees_all_equal(restored['w'], 5 * np.arange(8.0))
  chex.assert_trees_all_equal(next(fresh), expected_next)
  with pytest.raises(train.CheckpointError,
                     match=r'No checkpoint at step 3 .*saved steps are \[2, 4, 5\]'):
    reopened.restore(3, abstract)
  reopened.close()
