"""A training workdir: the names of its files, writing the run files, reading them back.

    workdir/
      config.json         the config of the (latest) run, written when training starts
      dataset_info.json   what the model was trained on: classes, image shape, mean/std,
                          split sizes and the tfds dir the data came from
      checkpoints/        orbax checkpoints (rattn.train.checkpoint)
      metrics.jsonl       one JSON object per logged step (rattn.train.metric_writer)
      tensorboard/        TensorBoard events
      lock.json           while a run trains: who it is (rattn.train.lock)

Nothing else knows these names: the trainer, evaluation, the metric writer and
the command lines all come here.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np
from absl import logging

CONFIG_FILE = 'config.json'
DATASET_INFO_FILE = 'dataset_info.json'
CHECKPOINT_DIR = 'checkpoints'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class WorkdirError(ValueError):
  """The workdir cannot hold this run; the message says why and what to do instead."""


# What makes a saved run another run: its checkpoints would not fit, or would mean another thing.
RUN_IDENTITY = ('model', 'model_kwargs', 'data.dataset')


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


def make_workdir(workdir: pathlib.Path,
                 purpose: str = 'training writes its checkpoints, config and metrics there'
                 ) -> None:
  """Creates ``workdir`` (and its parents) and proves it writable by writing a file there.

  ``purpose`` (what the command writes there) goes into the error message.

  The write test, not permission bits, decides: root passes any bit check, yet
  cannot write to a read-only mount or under /proc.
  """
  problem = None
  if workdir.exists() and not workdir.is_dir():
    problem = 'is a file, not a directory'
  else:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryFile(dir=workdir):
        pass
    except OSError as e:
      problem = f'cannot be created or written to ({e.strerror or e})'
  if problem:
    raise WorkdirError(f'--workdir {workdir} {problem}: {purpose}. Pass a directory you can '
                       'write to (it is created if missing), e.g. --workdir runs/NAME.')


def _field(config: Dict[str, Any], path: str) -> Any:
  for part in path.split('.'):
    config = (config or {}).get(part)
  return config


def check_same_run(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume ``workdir``'s checkpoints with a config of another run (another
  model, model_kwargs or dataset than its config.json records); nothing is changed."""
  config_path, checkpoints = workdir / CONFIG_FILE, checkpoint_dir(workdir)
  # Orbax names a step's directory by its number; without one there is nothing to resume.
  if not (config_path.exists() and checkpoints.is_dir()
          and any(p.name.isdigit() for p in checkpoints.iterdir())):
    return
  saved, new = json.loads(config_path.read_text()), json.loads(config.to_json_best_effort())
  changed = [f for f in RUN_IDENTITY if _field(saved, f) != _field(new, f)]
  if changed:
    others = ', '.join(f'{f}={_field(saved, f)!r}' for f in RUN_IDENTITY[1:])
    asked = ', '.join(f'{f}={_field(new, f)!r}' for f in changed)
    raise WorkdirError(
        f'--workdir {workdir} holds a run of model {saved.get("model")!r} ({others}, as its '
        f'{CONFIG_FILE} records); this config asks for {asked}, so its checkpoints cannot be '
        'resumed. Nothing was changed. Use a new --workdir for this run, or the same config '
        'as that run to resume it.')
