"""A training workdir: the names of its files, writing the run files, reading them back.

    workdir/
      config.json         the config of the (latest) run, written when training starts
      dataset_info.json   what the model was trained on: classes, image shape, mean/std,
                          split sizes and the tfds dir the data came from
      checkpoints/        orbax checkpoints (rattn.train.checkpoint)
      metrics.jsonl       one JSON object per logged step (rattn.train.metric_writer)
      tensorboard/        TensorBoard events

Nothing else knows these names: the trainer, evaluation, the metric writer and
the command lines all come here.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np
from absl import logging

CONFIG_FILE = 'config.json'
DATASET_INFO_FILE = 'dataset_info.json'
CHECKPOINT_DIR = 'checkpoints'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir) / CHECKPOINT_DIR


def metrics_file(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir) / METRICS_FILE


def tensorboard_dir(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir) / TENSORBOARD_DIR


def write_run_files(workdir: pathlib.Path, config: ml_collections.ConfigDict, info: Any,
                    data_dir: Optional[str], weights: Optional[Dict[str, str]] = None) -> None:
  """config.json and dataset_info.json, read back by ``read_run_files``.

  ``info`` is the ``rattn.data.DatasetInfo`` trained on and ``data_dir`` the tfds
  dir it was read from (config or $TFDS_DATA_DIR), recorded so that evaluating
  the run later finds the data without the environment it was trained in.
  ``weights`` (a converted checkpoint's source ``file`` and ``sha256``) is recorded
  as the info's ``weights``.
  """
  config_path = workdir / CONFIG_FILE
  new = json.loads(config.to_json_best_effort())
  if config_path.exists():
    old = json.loads(config_path.read_text())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
      logging.warning('Resuming %s with a config that differs from the saved one in: %s. '
                      'The new config is saved; the checkpoint is used as it is.',
                      workdir, ', '.join(changed))
  config_path.write_text(json.dumps(new, indent=2) + '\n')
  if data_dir and '://' not in data_dir:  # gs://... and other URLs stay as they are
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  info_dict = {'name': info.name, 'num_classes': int(info.num_classes),
               'image_shape': [int(d) for d in info.image_shape],
               'num_train': int(info.num_train), 'num_eval': int(info.num_eval),
               'mean': [float(m) for m in np.ravel(info.mean)],
               'std': [float(s) for s in np.ravel(info.std)],
               'data_dir': data_dir}
  if weights:
    info_dict['weights'] = dict(weights)
  (workdir / DATASET_INFO_FILE).write_text(json.dumps(info_dict, indent=2) + '\n')


def read_run_files(workdir: pathlib.Path) -> Tuple[ml_collections.ConfigDict, Dict[str, Any]]:
  """``(config, dataset_info)`` as training wrote them; FileNotFoundError for a non-workdir."""
  config_path, info_path = workdir / CONFIG_FILE, workdir / DATASET_INFO_FILE
  if not config_path.exists() or not info_path.exists():
    raise FileNotFoundError(
        f'{workdir} is not a training workdir: it lacks {CONFIG_FILE} or '
        f'{DATASET_INFO_FILE}, which training writes when it starts. Pass the --workdir '
        'that was given to experiments.cifar / experiments.imagenet.')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  return config, json.loads(info_path.read_text())
