"""Using a trained workdir: load the model for inference, or evaluate it on a split.

A workdir holds the run files (``rattn.train.workdir``: the config and the
dataset info written when training starts) and the checkpoints; that is all
these functions read, besides the eval data for ``evaluate_workdir``. The run
is assembled by ``make_plan`` from the recorded shapes, reading no data.

Which checkpoint: the final (latest) one unless asked otherwise: ``checkpoint='best'``
(the best on the run's validation split) or a ``step``. The choice and its reason
are logged, and returned with the results.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from etils import epath

from rattn import data
from rattn.train import workdir as workdir_files
from rattn.train.checkpoint import Checkpointer, CheckpointError
from rattn.train.plan import ConfigError, RunPlan, make_plan
from rattn.train.state import TrainState, make_mesh
from rattn.train.steps import evaluate


def _which(step: Optional[int], checkpoint: Optional[str]) -> str | int:
  if step is not None and checkpoint not in (None, 'final'):
    raise ValueError(f'Give a step or checkpoint={checkpoint!r}, not both (step={step}).')
  return step if step is not None else (checkpoint or 'final')


def _restore(workdir: epath.Path, which: str | int, mesh) -> Tuple[
    RunPlan, TrainState, Dict[str, Any], int, str]:
  config, info = workdir_files.read_run_files(workdir)
  checkpoints = Checkpointer(workdir_files.checkpoint_dir(workdir), read_only=True)
  try:
    step, why = checkpoints.choose(which)
    logging.info('Loading %s from %s.', why, checkpoints.directory)
    # Its training batch sizes were checked against the devices it trained on; the batch
    # that evaluates it here is the caller's to check.
    plan = make_plan(config, mesh, image_shape=tuple(info['image_shape']),
                     num_classes=info['num_classes'], check_batches=False)
    state = checkpoints.restore(step, plan.abstract_state())
  finally:
    checkpoints.close()
  return plan, state, info, step, why


def _recorded_validation(data_cfg: ml_collections.ConfigDict, info: Dict[str, Any]) -> None:
  """Makes ``data_cfg`` hold out what training held out (a run recorded before validation
  splits held out nothing)."""
  if not info.get('validation', {}).get('num_examples'):
    data_cfg.validation = 0.0


def _read_where_training_did(data_cfg: ml_collections.ConfigDict, info: Dict[str, Any],
                             dataset: Optional[str] = None) -> None:
  """Without a data dir of its own (config or ``$TFDS_DATA_DIR``), ``data_cfg`` reads the
  dir training read ($TFDS_DATA_DIR then), for the training dataset (``dataset`` unset or
  the same)."""
  if (not data.data_dir(data_cfg) and info.get('data_dir')
      and (not dataset or dataset == info['name'])):
    data_cfg.data_dir = info['data_dir']


def load_trained(workdir: str, step: Optional[int] = None, checkpoint: str = 'final') -> Tuple[
    nn.Module, Dict[str, Any], ml_collections.ConfigDict]:
  """``(model, variables, config)`` of a trained workdir, for inference and visualisation.

  The final (latest) checkpoint, unless ``checkpoint='best'`` (the best on the
  run's validation split) or a ``step`` asks for another.
  ``model.apply(variables, images, train=False)`` gives logits for images normalised as in training: ``config.dataset_info`` (added
  here) holds the dataset's ``mean``/``std``, ``num_classes`` and
  ``image_shape``, ``config.restored_step`` the step loaded and
  ``config.restored_checkpoint`` which checkpoint that is and why. Without a data
  dir in the config or ``$TFDS_DATA_DIR``, ``config.data.data_dir`` is the dir
  training read its data from.
  """
  mesh = make_mesh(jax.local_devices()[:1])
  plan, state, info, step, why = _restore(workdir_files.resolve(workdir),
                                          _which(step, checkpoint), mesh)
  config = plan.config
  _read_where_training_did(config.data, info)
  _recorded_validation(config.data, info)
  config.dataset_info = info
  config.restored_step = step
  config.restored_checkpoint = why
  return plan.model, state.variables(), config


def evaluate_workdir(workdir: str, *, step: Optional[int] = None, checkpoint: str = 'final',
                     dataset: Optional[str] = None, split: Optional[str] = None,
                     data_dir: Optional[str] = None,
                     batch_size: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates a workdir's checkpoint on a split (default: the config's eval split, the
  test set); returns the metrics.

  The final (latest) checkpoint, unless ``checkpoint='best'`` (the best on the
  run's validation split) or a ``step`` asks for another. ``split='minival'``
  evaluates the validation examples training held out (the same ones: checked
  against the workdir's record).

  ``dataset``/``split``/``data_dir`` override the training config's data section
  (e.g. a test split the run never evaluated on); without ``data_dir``, the
  config's, then ``$TFDS_DATA_DIR``, then (for the training dataset) the dir
  training read its data from (recorded in the workdir) is used. The result
  also names the step, which checkpoint that is and why (``checkpoint``), the
  dataset and the split it measured.
  """
  if batch_size is not None and batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size} (None: the training '
                     "config's eval_batch_size).")
  plan, state, info, step, why = _restore(workdir_files.resolve(workdir),
                                          _which(step, checkpoint), make_mesh())
  given, batch_size = batch_size, batch_size or int(plan.config.eval_batch_size)
  try:  # this run's batch on these devices (not the training run's batch sizes)
    data.split_batch(batch_size, plan.mesh.size, 'device', name='--batch_size',
                     flag='--batch_size=')
  except ValueError as e:
    default = '' if given else ("Without --batch_size, the training config's "
                                'eval_batch_size is used: ')
    raise ConfigError(f'{default}{e}') from None
  data_cfg = plan.config.data
  _recorded_validation(data_cfg, info)
  if dataset:
    data_cfg.dataset = dataset
  if data_dir:
    data_cfg.data_dir = data_dir
  else:
    _read_where_training_did(data_cfg, info, dataset)
  split = split or data_cfg.eval_split
  target = data.DataPlan(data_cfg)
  shape = (target.image_size, target.image_size, target.spec.channels)
  if (target.spec.num_classes, shape) != (info['num_classes'], tuple(info['image_shape'])):
    trained = tuple(info['image_shape'])
    raise data.DataConfigError(
        f'The model in {workdir} was trained on {info["name"]}: {info["num_classes"]} classes, '
        f'images of shape {trained} (height, width, channels, from its '
        f'{workdir_files.DATASET_INFO_FILE}); {data_cfg.dataset} has '
        f'{target.spec.num_classes} classes and would give images of shape {shape}, so the '
        'model cannot be evaluated there. Evaluate it on a dataset with the same classes and '
        f'image shape (e.g. its own, {info["name"]}), or train a model on {data_cfg.dataset}.')
  recorded = info.get('validation') or {}
  if split == data.MINIVAL and not dataset and recorded.get('num_examples'):
    here = target.validation_record()
    if any(here.get(k) != recorded.get(k) for k in ('num_examples', 'indices_sha256')):
      raise data.DataConfigError(
          f'The validation examples of {data_cfg.dataset}:{data_cfg.train_split} here are not '
          f'the ones training held out ({recorded.get("num_examples")} recorded in '
          f'{workdir_files.DATASET_INFO_FILE}, {here["num_examples"]} here, or other '
          'examples): the data dir holds other data than training read. Point --data_dir at '
          'the data training read, or evaluate another split.')
  eval_data = target.eval_iterator(split=split, global_batch_size=batch_size)
  metrics = evaluate(plan.eval_step(), state, eval_data, plan.mesh)
  return {**metrics, 'step': step, 'checkpoint': why, 'dataset': data_cfg.dataset,
          'split': split}
