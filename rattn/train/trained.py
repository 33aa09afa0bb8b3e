"""Using a trained workdir: load the model for inference, or evaluate it on a split.

A workdir holds ``config.json`` and ``dataset_info.json`` (written when training
starts) and ``checkpoints/``; that is all these functions read, besides the
eval data for ``evaluate_workdir``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import ml_collections

from rattn.train.build import build_model, init_train_state
from rattn.train.checkpoint import Checkpointer, CheckpointError
from rattn.train.state import TrainState, make_mesh
from rattn.train.steps import make_eval_step
from rattn.train.trainer import CHECKPOINT_DIR, CONFIG_FILE, DATASET_INFO_FILE, evaluate


def _read_workdir(workdir: pathlib.Path) -> Tuple[ml_collections.ConfigDict, Dict[str, Any]]:
  config_path, info_path = workdir / CONFIG_FILE, workdir / DATASET_INFO_FILE
  if not config_path.exists() or not info_path.exists():
    raise FileNotFoundError(
        f'{workdir} is not a training workdir: it lacks {CONFIG_FILE} or '
        f'{DATASET_INFO_FILE}, which training writes when it starts. Pass the --workdir '
        'that was given to experiments.cifar / experiments.imagenet.')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  return config, json.loads(info_path.read_text())


def _restore(workdir: pathlib.Path, step: Optional[int], mesh) -> Tuple[
    nn.Module, TrainState, ml_collections.ConfigDict, Dict[str, Any], int]:
  config, info = _read_workdir(workdir)
  checkpoints = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
  try:
    if not checkpoints.all_steps():
      raise CheckpointError(f'{workdir / CHECKPOINT_DIR} holds no checkpoint yet: training '
                            'saves the first one at config.checkpoint_every steps or the '
                            'first eval.')
    if step is None:
      step = checkpoints.best_step()
    model = build_model(config, info['num_classes'])
    abstract = init_train_state(config, model, tuple(info['image_shape']), mesh, abstract=True)
    state = checkpoints.restore(step, abstract)
  finally:
    checkpoints.close()
  return model, state, config, info, step


def load_trained(workdir: str, step: Optional[int] = None) -> Tuple[
    nn.Module, Dict[str, Any], ml_collections.ConfigDict]:
  """``(model, variables, config)`` of a trained workdir, for inference and visualisation.

  ``step`` None picks the checkpoint with the best eval accuracy (the latest if
  none was evaluated). ``model.apply(variables, images, train=False)`` gives
  logits for images normalised as in training: ``config.dataset_info`` (added
  here) holds the dataset's ``mean``/``std``, ``num_classes`` and
  ``image_shape``, and ``config.restored_step`` the step loaded.
  """
  mesh = make_mesh(jax.local_devices()[:1])
  model, state, config, info, step = _restore(pathlib.Path(workdir), step, mesh)
  config.dataset_info = info
  config.restored_step = step
  return model, state.variables(), config


def evaluate_workdir(workdir: str, *, step: Optional[int] = None, dataset: Optional[str] = None,
                     split: Optional[str] = None, data_dir: Optional[str] = None,
                     batch_size: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates a workdir's checkpoint (best by default) on a split; returns the metrics.

  ``dataset``/``split``/``data_dir`` override the training config's data section
  (e.g. a test split the run never evaluated on); without ``data_dir``, the
  config's, then ``$TFDS_DATA_DIR``, then (for the training dataset) the dir
  training read its data from (recorded in the workdir) is used. The result
  also names the step, dataset and split it measured.
  """
  from rattn import data  # pylint: disable=g-import-not-at-top
  mesh = make_mesh()
  _, state, config, info, step = _restore(pathlib.Path(workdir), step, mesh)
  data_cfg = config.data
  if dataset:
    data_cfg.dataset = dataset
  if data_dir:
    data_cfg.data_dir = data_dir
  elif (not data.data_dir(data_cfg) and info.get('data_dir')
        and (not dataset or dataset == info['name'])):
    data_cfg.data_dir = info['data_dir']  # where training read it ($TFDS_DATA_DIR then)
  split = split or data_cfg.eval_split
  target = data.dataset_info(data_cfg)
  if target.num_classes != info['num_classes']:
    raise ValueError(f'The model was trained on {info["name"]} ({info["num_classes"]} '
                     f'classes); {target.name} has {target.num_classes}: it cannot be '
                     'evaluated there.')
  batch_size = batch_size or int(config.eval_batch_size)
  eval_data = data.make_eval_iterator(data_cfg, split=split, global_batch_size=batch_size)
  metrics = evaluate(make_eval_step(mesh), state, eval_data, mesh)
  return {**metrics, 'step': step, 'dataset': target.name, 'split': split}
