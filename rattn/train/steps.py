"""The jitted, sharded train and eval steps.

Both are plain functions of global arrays compiled with ``jax.jit`` over the
data mesh: no ``pmap``, no ``axis_name``. Means over the batch axis of a sharded
array are global means, so the loss, its gradient and BatchNorm's batch
statistics are exactly those of one device seeing the whole global batch; XLA
adds the all-reduces. The state is donated so its buffers are reused in place.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rattn import data
from rattn.train.state import TrainState, batch_sharded, replicated, shard_batch

Metrics = Dict[str, jax.Array]


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """One-hot targets, smoothed as in Szegedy et al. 2016 (mass spread over all K classes)."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    one_hot = one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes
  return one_hot


def mixup(key: jax.Array, alpha: float, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """mixup (Zhang et al. 2018) with one ratio per batch, mixing each example with its neighbour.

  Rolling the batch by one (as big_vision does) instead of a random permutation
  keeps the pairing cheap on a sharded batch. Returns the mixed images and the
  ratio ``lam`` that the targets must be mixed with.
  """
  lam = jax.random.beta(key, alpha, alpha)
  mixed = lam * images + (1.0 - lam) * jnp.roll(images, 1, axis=0)
  return mixed.astype(images.dtype), lam


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                    mixup_key: jax.Array) -> Callable[[TrainState, dict],
                                                      Tuple[TrainState, Metrics]]:
  """Returns ``train_step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

  The model is the state's ``apply_fn``; ``config`` supplies ``label_smoothing``
  and ``mixup_alpha``; mixup's randomness is ``mixup_key`` (``RunKeys.mixup``)
  folded with the step.

  ``batch`` holds global arrays ``image`` [B, H, W, C] and ``label`` [B] sharded
  on the leading axis. ``metrics`` are replicated scalars: ``loss`` (the
  training objective, including label smoothing and mixup), ``accuracy``
  (against the un-mixed labels) and ``grad_norm``. They stay on device until
  the loop asks for them, so the host never waits on a step it did not need.
  """
  label_smoothing = float(config.label_smoothing)
  mixup_alpha = float(config.mixup_alpha)

  def train_step(state: TrainState, batch: dict) -> Tuple[TrainState, Metrics]:
    images, labels = data.model_input(batch['image'], config.data), batch['label']
    lam = None
    if mixup_alpha > 0:
      key = jax.random.fold_in(mixup_key, state.step)
      images, lam = mixup(key, mixup_alpha, images)

    def loss_fn(params):
      logits, updates = state.apply_fn(
          {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
          mutable=['batch_stats'])
      targets = soft_targets(labels, logits.shape[-1], label_smoothing)
      if lam is not None:
        targets = lam * targets + (1.0 - lam) * jnp.roll(targets, 1, axis=0)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
        'grad_norm': optax.global_norm(grads),
    }
    return state, metrics

  return jax.jit(train_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_eval_step(mesh: Mesh, data_cfg: Optional[ml_collections.ConfigDict] = None
                   ) -> Callable[[TrainState, dict], Metrics]:
  """Returns ``eval_step(state, batch) -> sums``, jitted over ``mesh``.

  With ``data_cfg`` the images go through ``rattn.data.model_input`` first
  (standardised there if the pipeline left them uint8); without, they are
  taken as they come.

  ``batch`` may carry ``mask`` (False on the padding of the last batch; all
  examples count where it is absent); the step returns masked *sums* (``loss``, ``correct``, ``correct_top5``, ``count``)
  that the caller adds up over batches and divides at the end, so padding never
  counts and no example is dropped.
  """

  def eval_step(state: TrainState, batch: dict) -> Metrics:
    labels = batch['label']
    mask = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(labels.shape)
    images = batch['image'] if data_cfg is None else data.model_input(batch['image'], data_cfg)
    logits = state.apply_fn(state.variables(), images, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top5 = jnp.argsort(logits, axis=-1)[:, -5:]
    return {
        'loss': jnp.sum(loss * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        'count': jnp.sum(mask),
    }

  return jax.jit(eval_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh))


def evaluate(eval_step, state: TrainState, eval_data: Iterable[dict], mesh: Mesh) -> Dict[str, float]:
  """Accuracy, top-5 accuracy and mean loss over one pass of ``eval_data`` (padding masked out).

  ``eval_data`` is a ``DataPlan``'s eval iterator; it is built once (small
  datasets decode into memory then) and iterated at every eval.
  """
  sums = None
  for batch in eval_data:
    out = eval_step(state, shard_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError('The eval split is empty.')
  sums = jax.device_get(sums)
  count = float(sums['count'])
  return {'accuracy': float(sums['correct']) / count,
          'top5_accuracy': float(sums['correct_top5']) / count,
          'loss': float(sums['loss']) / count, 'count': int(count)}
