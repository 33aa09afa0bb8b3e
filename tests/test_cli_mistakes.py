"""The command lines, as a user runs them: start-up SIGTERM, a missing dataset offline,
a scalar given for a tuple field. Each mistake ends in one paragraph, never a traceback."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import types
from unittest import mock

import pytest
import tensorflow_datasets as tfds

from rattn import data, train
from rattn.data import datasets
from rattn.train import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = [sys.executable, '-m', 'experiments.cifar', '--config', 'experiments/configs/tiny.py']


def _env(**extra):
  return dict(os.environ, PYTHONPATH=str(REPO), **extra)


def test_sigterm_during_start_up_exits_143_within_seconds(real_data_dir, tmp_path):
  process = subprocess.Popen(CIFAR + ['--workdir', str(tmp_path)], cwd=REPO, text=True,
                             stderr=subprocess.PIPE, env=_env(TFDS_DATA_DIR=real_data_dir))
  for line in process.stderr:  # the first line the trainer logs, before loading the data
    if 'process(es)' in line:
      break
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  rest = process.communicate(timeout=120)[1]
  waited = time.monotonic() - sent
  assert process.returncode == 143, rest[-2000:]
  assert waited < 15, waited
  assert 'Stopped by SIGTERM during start-up' in rest and 'Traceback' not in rest
  assert not list(tmp_path.glob('checkpoints/*'))


def test_scalar_for_a_tuple_field_is_refused_in_one_paragraph(tmp_path):
  out = subprocess.run(CIFAR + ['--workdir', str(tmp_path), '--config.model_kwargs.widths=4'],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=_env())
  assert out.returncode == 1
  assert ("--config.model_kwargs.widths=4: model_kwargs.widths is a tuple (the config file "
          "gives (4, 8, 16)), and a single value would silently become the one-element (4,). "
          "Give the whole tuple, e.g. --config.model_kwargs.widths='(4, 8, 16)'") in out.stderr
  assert 'Traceback' not in out.stderr and not list(tmp_path.iterdir())


def test_missing_dataset_offline_fails_within_seconds(tmp_path):
  started = time.monotonic()
  out = subprocess.run(CIFAR + ['--workdir', str(tmp_path / 'run'),
                                '--config.data.dataset=cifar100'],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=_env(TFDS_DATA_DIR=str(tmp_path / 'nonexistent'),
                                RATTN_DATA_DOWNLOAD='false'))
  assert time.monotonic() - started < 30
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  error = [line for line in out.stderr.splitlines() if line.startswith('ERROR')]
  assert len(error) == 1 and "Dataset 'cifar100'" in error[0], out.stderr[-2000:]
  assert 'downloading is off' in error[0] and 'TFDS_DATA_DIR' in error[0]


def test_auto_download_fails_at_once_when_the_network_does_not_answer(tmp_path, monkeypatch):
  monkeypatch.delenv('RATTN_DATA_DOWNLOAD')
  cfg = data.data_config()
  cfg.data_dir = str(tmp_path)
  # Port 9 (discard) on this machine: closed, so the probe is refused at once.
  with mock.patch.object(datasets, '_NETWORK_PROBE', ('127.0.0.1', 9)), \
      mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare') as prepare:
    with pytest.raises(data.DatasetNotFoundError, match='the network does not answer'):
      data.dataset_info(cfg)
    prepare.assert_not_called()
    (tmp_path / 'downloads' / 'manual').mkdir(parents=True)
    (tmp_path / 'downloads' / 'manual' / 'cifar-10-binary.tar.gz').write_bytes(b'')
    with pytest.raises(Exception):  # the manual files make it worth trying
      data.dataset_info(cfg)
    prepare.assert_called_once_with(file_format='array_record')


def test_harmless_orbax_warnings_are_filtered_and_others_kept(tmp_path):
  kept = []
  handler = logging.Handler()
  handler.emit = kept.append
  handler.addFilter(cli._HideHarmlessWarnings())  # pylint: disable=protected-access
  logging.getLogger('absl').addHandler(handler)
  try:
    train.Checkpointer(tmp_path, read_only=True).close()  # orbax: 'Given directory is read only'
    orbax_file = '/site-packages/orbax/checkpoint/_src/path/atomicity.py'
    for msg in ('Attempted to create temporary directory %s which already exists. Removing '
                'existing directory since it is not finalized.',
                'Metadata file does not exist: %s', 'Item "%s" was found in the checkpoint'):
      handler.handle(logging.LogRecord('absl', logging.WARNING, orbax_file, 1, msg, ('x',), None))
  finally:
    logging.getLogger('absl').removeHandler(handler)
  assert [r.msg for r in kept] == ['Item "%s" was found in the checkpoint']


def test_closed_event_loop_errors_after_a_failed_restore_are_hidden_others_kept():
  shown = []
  hook = cli._hide_closed_loop_errors(shown.append)  # pylint: disable=protected-access
  closed = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=RuntimeError('something else'))
  hook(closed)
  hook(other)
  assert shown == [other]
