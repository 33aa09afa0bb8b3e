"""Learning-rate schedules and the SGD optimiser of the paper's recipe.

The Residual Attention Network was trained in Caffe with SGD, Nesterov momentum
0.9, weight decay 1e-4 and a step schedule (CIFAR: lr 0.1, divided by 10 at 64k
and 96k iterations, stop at 160k, batch 64). Two conventions matter here:

* Weight decay is the *coupled* L2 kind that Caffe and ``torch.optim.SGD`` use:
  ``wd * param`` is added to the gradient before momentum, not decoupled AdamW
  style. By default it applies to every parameter, BatchNorm scale/shift and the
  classifier bias included, because that is Caffe's default (``decay_mult: 1``)
  and the released prototxts set no ``decay_mult``. ``optimizer.decay_all_params
  = False`` restricts it to conv/dense kernels, the habit of later recipes.
* Nesterov momentum follows optax/PyTorch (``v = mu v + g``; step ``lr (g + mu
  v)``); Caffe multiplies the gradient by the lr *inside* the velocity. The two
  agree except for a transient right after an lr drop, which does not change the
  recipe's results in practice.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('piecewise', 'cosine')
OPTIMIZERS = ('sgd',)


def make_lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate as a function of the number of updates already applied.

  ``config.schedule.name``:
    'piecewise': ``base_lr`` times ``decay_factor`` for every boundary in
      ``boundaries`` (update counts) that has been reached, like Caffe's
      ``multistep`` policy: the update with 0-based index ``b`` already uses the
      decayed rate.
    'cosine': cosine decay from ``base_lr`` to ``base_lr * end_lr_fraction`` at
      ``num_train_steps``.
  Both ramp linearly from ``base_lr / warmup_steps`` to ``base_lr`` over the
  first ``warmup_steps`` updates (Goyal et al. 2017) when that is positive.
  """
  sched = config.schedule
  base_lr = float(sched.base_lr)
  warmup = int(sched.warmup_steps)
  total = int(config.num_train_steps)
  if sched.name == 'piecewise':
    boundaries = jnp.asarray(sorted(int(b) for b in sched.boundaries) or [total + 1])
    factor = float(sched.decay_factor)

    def after_warmup(count):
      return base_lr * factor ** jnp.sum(count >= boundaries)
  elif sched.name == 'cosine':
    end = float(sched.end_lr_fraction)
    span = max(total - warmup, 1)

    def after_warmup(count):
      progress = jnp.clip((count - warmup) / span, 0.0, 1.0)
      return base_lr * (end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress)))
  else:
    raise ValueError(f'config.schedule.name={sched.name!r} is not a schedule; '
                     f'use one of {SCHEDULES}.')

  def schedule(count: Any) -> jax.Array:
    count = jnp.asarray(count, jnp.float32)
    if warmup <= 0:
      return after_warmup(count)
    # (count + 1) so that the very first update already moves the weights.
    ramp = base_lr * jnp.minimum((count + 1.0) / warmup, 1.0)
    return jnp.where(count < warmup, ramp, after_warmup(count))

  return schedule


def _kernels_only(params: Any) -> Any:
  """True for conv/dense kernels (rank >= 2), False for BN scale/shift and biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and coupled weight decay, per ``config.optimizer``."""
  opt = config.optimizer
  if opt.name != 'sgd':
    raise ValueError(f'config.optimizer.name={opt.name!r} is not supported; use one of '
                     f'{OPTIMIZERS}.')
  parts = []
  if opt.weight_decay:
    mask = None if opt.decay_all_params else _kernels_only
    parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=mask))
  parts.append(optax.sgd(schedule, momentum=float(opt.momentum) or None,
                         nesterov=bool(opt.nesterov)))
  return optax.chain(*parts)
