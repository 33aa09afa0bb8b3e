"""Starting a run from another workdir's weights: ``config.init_from`` (fine-tuning).

The source is a converted (``experiments.convert``) or trained workdir. Its final
(latest) checkpoint, or the one ``config.init_from_checkpoint`` names ('best': the
best on the source's validation split; or a step number), gives the params and batch_stats;
the optimiser state and the step start afresh. The classifier, found as the
params whose shape depends on num_classes, is re-initialised when the class
counts differ; every other variable must match in path and shape. The source's
image size does not matter (no variable of a convolutional network depends on it).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Set, Tuple

import jax
from absl import logging
from flax import traverse_util

from rattn.train import workdir as workdir_files
from rattn.train.checkpoint import Checkpointer, CheckpointError
from rattn.train.plan import ConfigError, RunPlan, _build_model, make_plan
from rattn.train.state import TrainState

Path = Tuple[str, ...]


def _flat(tree: Any) -> Dict[Path, Any]:
  return traverse_util.flatten_dict(tree) if tree else {}


def classifier_paths(plan: RunPlan) -> Set[Path]:
  """The params whose shape depends on num_classes (the classifier), by comparing shapes."""
  def shapes(num_classes: int) -> Dict[Path, Tuple[int, ...]]:
    model = _build_model(plan.config, num_classes)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jax.numpy.zeros((1, *plan.image_shape)), train=False))
    return {p: v.shape for p, v in _flat(variables['params']).items()}
  ours, other = shapes(plan.num_classes), shapes(plan.num_classes + 1)
  return {p for p in ours if ours[p] != other.get(p)}


def _restore_source(path: os.PathLike, plan: RunPlan) -> Tuple[TrainState, Any, int, int, str]:
  config, info = workdir_files.read_run_files(path)
  if config.model != plan.config.model:
    raise ConfigError(
        f'config.init_from={str(path)!r} holds a {config.model!r} model, but this run trains '
        f'{plan.config.model!r}: weights only carry over to the same model. Set '
        f'--config.model={config.model} (and its model_kwargs), or drop --config.init_from.')
  checkpoints = Checkpointer(workdir_files.checkpoint_dir(path), read_only=True)
  try:
    if not checkpoints.all_steps():
      raise CheckpointError(f'config.init_from={str(path)!r} holds no checkpoint yet '
                            f'({checkpoints.directory} is empty): nothing to start from.')
    try:
      step, why = checkpoints.choose(str(plan.config.get('init_from_checkpoint', 'final')))
    except CheckpointError as e:
      raise CheckpointError(f'config.init_from_checkpoint: {e}') from None
    source = make_plan(config, plan.mesh, image_shape=tuple(info['image_shape']),
                       num_classes=info['num_classes'])
    state = checkpoints.restore(step, source.abstract_state())
  finally:
    checkpoints.close()
  return state, config, int(info['num_classes']), step, why


def initial_state(plan: RunPlan) -> TrainState:
  """The run's first state: ``plan.init_state()``, with ``config.init_from``'s weights if set."""
  fresh = plan.init_state()
  path = plan.config.get('init_from')
  if not path:
    return fresh
  path = workdir_files.resolve(path)  # a local directory or gs://bucket/run
  source, source_config, source_classes, _, why = _restore_source(path, plan)
  head = classifier_paths(plan) if source_classes != plan.num_classes else set()
  merged, mismatches = {}, []
  for collection in ('params', 'batch_stats'):
    ours, theirs = _flat(getattr(fresh, collection)), _flat(getattr(source, collection))
    values = {}
    for key, value in ours.items():
      name = '/'.join((collection, *key))
      if collection == 'params' and key in head:
        values[key] = value  # re-initialised below (logged)
      elif key not in theirs:
        mismatches.append(f'{name} {tuple(value.shape)} is not in the source')
      elif theirs[key].shape != value.shape:
        mismatches.append(f'{name}: source {tuple(theirs[key].shape)}, this run '
                          f'{tuple(value.shape)}')
      else:
        values[key] = theirs[key]
    mismatches += [f'{"/".join((collection, *k))} is only in the source'
                   for k in theirs if k not in ours]
    merged[collection] = traverse_util.unflatten_dict(values) if values else {}
  if mismatches:
    raise ConfigError(
        f'config.init_from={str(path)!r} ({source_config.model}, model_kwargs='
        f'{source_config.model_kwargs.to_dict()}) does not fit this run\'s model '
        f'({plan.config.model}, model_kwargs={plan.config.model_kwargs.to_dict()}): '
        f'{len(mismatches)} variables differ, first: {"; ".join(mismatches[:3])}. Use the '
        'model_kwargs the source was built with, or drop --config.init_from.')
  logging.info('Initialised from %s, %s (config.init_from_checkpoint): params and batch_stats '
               'copied; fresh optimiser state, starting at step 0.', path, why)
  if head:
    logging.info('Re-initialised the classifier for %d classes (the source has %d): %s.',
                 plan.num_classes, source_classes,
                 ', '.join('params/' + '/'.join(k) for k in sorted(head)))
  return fresh.replace(params=merged['params'], batch_stats=merged['batch_stats'])
