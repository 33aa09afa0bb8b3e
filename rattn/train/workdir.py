"""A training workdir: the names of its files, writing the run files, reading them back.

    workdir/
      config.json         the config of the (latest) run, written when training starts
      dataset_info.json   what the model was trained on: classes, image shape, mean/std,
                          split sizes (trained on, validation, test), the validation
                          split's identity and the tfds dir the data came from
      checkpoints/        orbax checkpoints (rattn.train.checkpoint)
      metrics.jsonl       one JSON object per logged step (rattn.train.metric_writer)
      tensorboard/        TensorBoard events
      lock.json           while a run trains: who it is (rattn.train.lock)

Nothing else knows these names: the trainer, evaluation, the metric writer and
the command lines all come here.

A workdir is a storage path, not necessarily a local one: anything etils.epath
understands (a local directory, ``gs://bucket/run``). On a pod the hosts share
no disk, so the workdir is a bucket; every file of a workdir goes through
``resolve`` and epath, and orbax writes its arrays there natively.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np
from absl import logging
from etils import epath

CONFIG_FILE = 'config.json'
DATASET_INFO_FILE = 'dataset_info.json'
CHECKPOINT_DIR = 'checkpoints'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class WorkdirError(ValueError):
  """The workdir cannot hold this run; the message says why and what to do instead."""


# What makes a saved run another run: its checkpoints would not fit, or would mean another thing.
RUN_IDENTITY = ('model', 'model_kwargs', 'data.dataset')


def is_remote(path: str | os.PathLike) -> bool:
  """Whether ``path`` names an object store (``gs://...``, any URL) rather than a local path."""
  return '://' in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """``path`` as an epath: a URL (``gs://bucket/run``) as it is, a local path made absolute."""
  text = os.fspath(path)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def move_tree(source: epath.Path, target: epath.Path) -> None:
  """Moves the directory ``source`` to ``target`` (whose parent is created).

  A rename on a local disk. An object store has neither directories nor rename:
  every object is copied, and the source objects are deleted only once all copies
  exist, so an interrupted move leaves the source whole.
  """
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(source):
    source.rename(target)
    return
  folders = [source]
  while folders:
    for item in sorted(folders.pop().iterdir()):
      if item.is_dir():
        folders.append(item)
      else:
        item.copy(target / os.fspath(item.relative_to(source)), overwrite=True)
  source.rmtree()


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return resolve(workdir) / CHECKPOINT_DIR


def metrics_file(workdir: str | os.PathLike) -> epath.Path:
  return resolve(workdir) / METRICS_FILE


def tensorboard_dir(workdir: str | os.PathLike) -> epath.Path:
  return resolve(workdir) / TENSORBOARD_DIR


def write_run_files(workdir: epath.Path, config: ml_collections.ConfigDict, info: Any,
                    data_dir: Optional[str], weights: Optional[Dict[str, str]] = None,
                    validation: Optional[Dict[str, Any]] = None) -> None:
  """config.json and dataset_info.json, read back by ``read_run_files``.

  ``info`` is the ``rattn.data.DatasetInfo`` trained on and ``data_dir`` the tfds
  dir it was read from (config or $TFDS_DATA_DIR), recorded so that evaluating
  the run later finds the data without the environment it was trained in.
  ``weights`` (a converted checkpoint's source ``file`` and ``sha256``) is recorded
  as the info's ``weights``; ``validation`` (``DataPlan.validation_record()``: which
  examples were held out of training) as its ``validation``, which a resumed run
  must match (``check_same_split``) and evaluation of 'minival' reproduces.
  """
  workdir = resolve(workdir)
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
  if data_dir and not is_remote(data_dir):  # gs://... and other URLs stay as they are
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  info_dict = {'name': info.name, 'num_classes': int(info.num_classes),
               'image_shape': [int(d) for d in info.image_shape],
               'num_train': int(info.num_train),
               'num_validation': int(getattr(info, 'num_validation', 0)),
               'num_eval': int(info.num_eval),
               'mean': [float(m) for m in np.ravel(info.mean)],
               'std': [float(s) for s in np.ravel(info.std)],
               'data_dir': data_dir}
  if weights:
    info_dict['weights'] = dict(weights)
  if validation is not None:
    info_dict['validation'] = dict(validation)
  (workdir / DATASET_INFO_FILE).write_text(json.dumps(info_dict, indent=2) + '\n')


def read_run_files(workdir: str | os.PathLike) -> Tuple[ml_collections.ConfigDict,
                                                        Dict[str, Any]]:
  """``(config, dataset_info)`` as training wrote them; FileNotFoundError for a non-workdir."""
  workdir = resolve(workdir)
  config_path, info_path = workdir / CONFIG_FILE, workdir / DATASET_INFO_FILE
  if not config_path.exists() or not info_path.exists():
    raise FileNotFoundError(
        f'{workdir} is not a training workdir: it lacks {CONFIG_FILE} or '
        f'{DATASET_INFO_FILE}, which training writes when it starts. Pass the --workdir '
        'that was given to experiments.cifar / experiments.imagenet.')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  return config, json.loads(info_path.read_text())


def make_workdir(workdir: str | os.PathLike,
                 purpose: str = 'training writes its checkpoints, config and metrics there'
                 ) -> None:
  """Creates ``workdir`` (and its parents) and proves it writable by writing a file there.

  ``purpose`` (what the command writes there) goes into the error message.

  The write test, not permission bits, decides: root passes any bit check, yet
  cannot write to a read-only mount or under /proc; a bucket's permissions are
  only known by writing to it.
  """
  workdir = resolve(workdir)
  problem = None
  try:
    if workdir.exists() and not workdir.is_dir():
      problem = 'is a file, not a directory'
    else:
      workdir.mkdir(parents=True, exist_ok=True)
      probe = workdir / f'.write_test_{socket.gethostname()}_{os.getpid()}'
      probe.write_text('')
      probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # OSError locally; storage clients raise their own
    problem = f'cannot be created or written to ({getattr(e, "strerror", None) or e})'
  if problem:
    example = 'gs://BUCKET/NAME (a bucket you can write to)' if is_remote(workdir) else 'runs/NAME'
    raise WorkdirError(f'--workdir {workdir} {problem}: {purpose}. Pass a directory you can '
                       f'write to (it is created if missing), e.g. --workdir {example}.')


def _field(config: Dict[str, Any], path: str) -> Any:
  for part in path.split('.'):
    config = (config or {}).get(part)
  return config


def check_same_run(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume ``workdir``'s checkpoints with a config of another run (another
  model, model_kwargs or dataset than its config.json records); nothing is changed."""
  workdir = resolve(workdir)
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


# What identifies a validation split (DataPlan.validation_record()): the examples held out.
_SPLIT_IDENTITY = ('of', 'num_examples', 'indices_sha256')


def check_same_split(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                     record: Dict[str, Any]) -> None:
  """Refuses to resume ``workdir``'s checkpoints with another validation split than the one
  its dataset_info.json records (``record`` is this config's); nothing is changed.

  The checkpoints' input positions and their "best" ranking refer to the recorded
  split: resuming with another would train on examples validated on before, or rank
  checkpoints on different examples. A run recorded before validation splits held
  out none.
  """
  workdir = resolve(workdir)
  info_path, checkpoints = workdir / DATASET_INFO_FILE, checkpoint_dir(workdir)
  if not (info_path.exists() and checkpoints.is_dir()
          and any(p.name.isdigit() for p in checkpoints.iterdir())):
    return
  saved = json.loads(info_path.read_text()).get('validation')
  if saved is None:  # written before validation splits: trained on the whole train split
    same = record['num_examples'] == 0
    was = 'held out no validation examples (it predates validation splits)'
  else:
    same = all(saved.get(k) == record.get(k) for k in _SPLIT_IDENTITY)
    was = (f'held out {saved.get("num_examples")} validation examples of '
           f'{saved.get("of")!r} ({saved.get("selection")}, validation_seed '
           f'{saved.get("seed")})')
  if same:
    return
  setting = 'data.validation=0' if saved is None or not saved.get('num_examples') else (
      f'the data.validation and data.validation_seed it was trained with (its {CONFIG_FILE})')
  raise WorkdirError(
      f'--workdir {workdir} holds a run that {was}, as its {DATASET_INFO_FILE} records; this '
      f'config holds out {record["num_examples"]} of {record["of"]!r} '
      f'(data.validation={config.data.get("validation")}, validation_seed='
      f'{config.data.get("validation_seed")}), other examples, so its checkpoints cannot be '
      f'resumed: their data positions and "best" ranking belong to that split. Nothing was '
      f'changed. Resume it with {setting}, or use a new --workdir for this run.')
