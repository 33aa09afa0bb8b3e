"""The command lines, as a user runs them: start-up SIGTERM, a missing dataset offline,
a scalar given for a tuple field, and a table of mistakes in every command. Each mistake
ends in one paragraph, never a traceback, and leaves what the workdir holds as it was."""

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import tiny
from rattn import data, train
from rattn.data import datasets
from rattn.train import cli
from rattn.train import workdir as workdir_files

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


# Every command, imported into one process as a notebook would. Several define a flag of
# the same name with their own default and check: --batch_size (bench 64, evaluate none and
# >= 1), --model (bench, convert), --data_dir (bench, evaluate, make_standin), --step and
# --split (evaluate, visualize).
_ONE_PROCESS = """
import importlib, sys
from absl import flags
from rattn.train import cli
names = 'bench convert evaluate make_standin study summary visualize cifar imagenet'.split()
m = {n: importlib.import_module('experiments.' + n) for n in names}
def status(main, argv):
  try:
    cli.call(main, argv)
  except SystemExit as e:
    return e.code
  return 0
assert status(m['evaluate'].main, ['--workdir', sys.argv[1], '--batch_size', '3']) == 1
assert m['evaluate']._BATCH_SIZE.value == 3
assert status(m['bench'].main, ['--summarize', sys.argv[1] + '/results.jsonl']) == 1
assert m['bench']._BATCH_SIZE.value == 64, m['bench']._BATCH_SIZE.value
assert status(m['evaluate'].main, ['--workdir', sys.argv[1], '--batch_size', '0']) == 1
assert status(m['summary'].main, ['--models', 'preact_resnet20']) == 0
assert 'batch_size' not in flags.FLAGS and 'models' not in flags.FLAGS  # out again
print('done')
"""


def test_every_command_imports_into_one_process_with_its_own_flags(tmp_path):
  out = subprocess.run([sys.executable, '-c', _ONE_PROCESS, str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=_env())
  assert out.returncode == 0 and out.stdout.strip().endswith('done'), out.stderr[-3000:]
  assert 'is not a training workdir' in out.stderr  # evaluate ran with --batch_size 3
  assert '--batch_size must be a positive number' in out.stderr  # evaluate's own check
  assert 'cannot read it as a results file' in out.stderr  # bench ran
  helped = subprocess.run([sys.executable, '-m', 'experiments.evaluate', '--helpshort'],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
  # --helpshort lists the command's own flags beside the shared ones.
  assert '--batch_size: Global eval batch size' in helped.stdout, helped.stdout[-3000:]
  assert '--workdir' in helped.stdout


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


# ---------------------------------------------------------------- the table of mistakes

# (id, command, arguments, a phrase of the one-paragraph answer). In the arguments,
# {saved} is a workdir as training leaves it (tiny.py), {damaged} the same with a flipped
# array file, {tmp} the row's own directory, {file} a regular file in it and {torch} the
# directory of torch_files.
TINY = ['--config', 'experiments/configs/tiny.py']
MISTAKES = [
    ('config_missing', 'cifar', ['--config', 'nope.py', '--workdir', '{tmp}/run'],
     'nope.py does not exist'),
    ('config_is_a_directory', 'cifar', ['--config', 'experiments/configs', '--workdir',
                                        '{tmp}/run'], 'experiments/configs is a directory'),
    ('config_syntax_error', 'cifar', ['--config', '{tmp}/syntax.py', '--workdir', '{tmp}/run'],
     "syntax.py has a syntax error, line 1: invalid syntax: 'def get_config(:'"),
    ('config_argument', 'cifar', ['--config', 'experiments/configs/ran_cifar.py:attention=sex',
                                  '--workdir', '{tmp}/run'], "attention='sex' is not valid"),
    ('config_argument_for_another_model', 'cifar',
     ['--config', 'experiments/configs/ran_cifar.py:model=preact_resnet164,attention=spatial',
      '--workdir', '{tmp}/run'], 'apply to the Residual Attention Networks'),
    ('misspelt_field', 'cifar', TINY + ['--workdir', '{tmp}/run', '--config.batchsize=3'],
     'Did you mean --config.batch_size=3?'),
    ('field_in_another_section', 'cifar',
     TINY + ['--workdir', '{tmp}/run', '--config.optimizer.learning_rate=0.05'],
     "no field 'learning_rate'. Did you mean --config.schedule.base_lr=0.05?"),
    ('width_out_of_range', 'cifar',
     TINY + ['--workdir', '{tmp}/run', "--config.model_kwargs.widths=(4, 0, 16)"],
     'config.model_kwargs.widths=(4, 0, 16) is not valid: it is the widths of the stages'),
    ('boundaries_out_of_order', 'cifar',
     TINY + ['--workdir', '{tmp}/run', "--config.schedule.boundaries=(6, 3)"],
     'config.schedule.boundaries=(6, 3) is not valid'),
    ('momentum_out_of_range', 'cifar',
     TINY + ['--workdir', '{tmp}/run', '--config.optimizer.momentum=1.5'],
     'config.optimizer.momentum=1.5 is not valid: it is the SGD momentum'),
    ('undeclared_model_kwarg', 'cifar',
     TINY + ['--workdir', '{tmp}/run', '--config.model_kwargs.attention=sex'],
     "no field 'attention'. Check the spelling"),
    ('unknown_model', 'cifar', TINY + ['--workdir', '{tmp}/run', '--config.model=ran57'],
     "Unknown model 'ran57'. Did you mean"),
    ('imagenet_model_on_small_images', 'cifar',
     TINY + ['--workdir', '{tmp}/run', '--config.model=ran56'],
     'designed for 224x224 images, but the data gives 16x16'),
    ('unknown_dataset', 'cifar', TINY + ['--workdir', '{tmp}/run',
                                         '--config.data.dataset=imagenet3'],
     "Unknown dataset 'imagenet3' (data.dataset). Valid datasets are"),
    ('image_size', 'cifar', TINY + ['--workdir', '{tmp}/run', '--config.data.image_size=0'],
     'config.data.image_size=0 is not valid: it is the side of the square model input'),
    ('augment', 'cifar', TINY + ['--workdir', '{tmp}/run', '--config.data.augment=flip'],
     "Unknown augment 'flip' (data.augment); use 'auto'"),
    ('label_noise', 'cifar', TINY + ['--workdir', '{tmp}/run', '--config.data.label_noise=1.5'],
     'config.data.label_noise=1.5 is not valid: it is the rate of symmetric noise'),
    ('eval_split', 'cifar', TINY + ['--workdir', '{tmp}/run',
                                    '--config.data.eval_split=validation'],
     "data.eval_split='validation': cifar10 cannot read the split 'validation'"),
    ('workdir_is_a_file', 'cifar', TINY + ['--workdir', '{file}'], 'is a file, not a directory'),
    ('workdir_under_a_file', 'cifar', TINY + ['--workdir', '{file}/run'],
     'cannot be created or written to (Not a directory)'),
    # Root passes every permission check; /proc refuses root's writes too.
    ('workdir_not_writable', 'cifar', TINY + ['--workdir', '/proc/rattn_run'],
     '/proc/rattn_run cannot be created or written to'),
    ('workdir_missing', 'cifar', TINY, '--workdir must be given'),
    ('workdir_of_another_model', 'cifar',
     TINY + ['--workdir', '{saved}', "--config.model_kwargs.widths=(8, 16, 32)"],
     "holds a run of model 'preact_resnet20' (model_kwargs={'widths': [4, 8, 16]}"),
    ('evaluate_unknown_split', 'evaluate', ['--workdir', '{saved}', '--split', 'tset'],
     "cifar10 cannot read the split 'tset'"),
    ('evaluate_other_image_shape', 'evaluate', ['--workdir', '{saved}', '--dataset',
                                                'fashion_mnist'],
     'would give images of shape (16, 16, 1), so the model cannot be evaluated there'),
    ('evaluate_other_classes', 'evaluate', ['--workdir', '{saved}', '--dataset', 'cifar100'],
     'cifar100 has 100 classes'),
    ('evaluate_batch_size', 'evaluate', ['--workdir', '{saved}', '--batch_size', '0'],
     '--batch_size must be a positive number'),
    ('evaluate_step', 'evaluate', ['--workdir', '{saved}', '--step', '7'],
     'No checkpoint at step 7'),
    ('evaluate_best_without_validation', 'evaluate', ['--workdir', '{saved}', '--checkpoint',
                                                     'best'],
     'holds no checkpoint evaluated on a validation split'),
    ('evaluate_step_and_checkpoint', 'evaluate', ['--workdir', '{saved}', '--step', '2',
                                                  '--checkpoint', 'best'],
     'Give --step or --checkpoint, not both'),
    ('evaluate_minival_without_validation', 'evaluate', ['--workdir', '{saved}', '--split',
                                                         'minival'],
     "has no validation examples ('minival') here"),
    ('resume_with_another_validation_split', 'cifar', TINY + ['--workdir', '{saved}'],
     'predates validation splits'),
    ('evaluate_not_a_workdir', 'evaluate', ['--workdir', '{tmp}/run'],
     'is not a training workdir'),
    ('evaluate_damaged_checkpoint', 'evaluate', ['--workdir', '{damaged}'],
     'The checkpoint at step 2'),
    ('visualize_no_attention', 'visualize', ['--workdir', '{saved}', '--out', '{tmp}/m.png'],
     "Nothing to draw in"),
    ('visualize_out_under_a_file', 'visualize', ['--workdir', '{saved}', '--out',
                                                 '{file}/m.png'], 'cannot be created'),
    ('bench_unknown_model', 'bench', ['--model', 'ran56_cifra'],
     "Unknown model 'ran56_cifra'. Did you mean 'ran56_cifar'"),
    ('bench_misspelt_kwarg', 'bench', ['--model', 'preact_resnet20', '--model_kwargs',
                                       '{"widht": 2}'], "unexpected keyword argument 'widht'"),
    ('bench_summarize_missing', 'bench', ['--summarize', '{tmp}/results.jsonl'],
     'cannot read it as a results file'),
    ('summary_unknown_model', 'summary', ['--models', 'resnet51'], "Unknown model 'resnet51'"),
    ('convert_into_a_saved_run', 'convert', ['--model', 'resnet18', '--from', '{file}',
                                             '--workdir', '{saved}'],
     'already holds checkpoints; converting into it would mix them'),
    ('convert_workdir_under_a_file', 'convert', ['--model', 'resnet18', '--from', '{file}',
                                                 '--workdir', '{file}/run'],
     'the converted weights are written there as a step-0 checkpoint'),
    ('convert_from_missing', 'convert', ['--model', 'resnet18', '--from', '{tmp}/rn18.pth',
                                         '--workdir', '{tmp}/run'], 'No checkpoint file at'),
    ('convert_pickled_whole_model', 'convert', ['--model', 'resnet18', '--from',
                                                '{torch}/whole.pth', '--workdir', '{tmp}/run'],
     'holds a pickled whole model (or other Python objects), not only a state dict'),
    ('convert_ema_absent', 'convert', ['--model', 'resnet18', '--from', '{torch}/plain.pth.tar',
                                       '--ema', '--workdir', '{tmp}/run'],
     "has no EMA weights: none of the entries state_dict_ema"),
    ('convert_unknown_suffix', 'convert', ['--model', 'resnet18', '--from', '{torch}/weights.npz',
                                           '--workdir', '{tmp}/run'],
     'Unknown checkpoint format'),
    ('convert_timm_other_attention', 'convert',
     ['--model', 'cbam_resnet50', '--from', '{torch}/timm_eca.safetensors', '--workdir',
      '{tmp}/run'], "timm ResNet with ECA block attention"),
    ('convert_cifar_model_classes', 'convert',
     ['--model', 'ran56_cifar', '--num_classes', '1000', '--from', '{torch}/plain.pth.tar',
      '--workdir', '{tmp}/run'], '--num_classes=1000: ran56_cifar takes 32x32 images'),
    ('make_standin_data_dir', 'make_standin', ['--data_dir', '{file}/tfds'],
     'cannot be created (Not a directory)'),
]
SAVED_STEP = 2
_LOG_LINE = re.compile(r'[IWE]\d{4} \d\d:\d\d:\d\d')  # absl's log lines
_FLAGS_HELP = 'Pass --helpshort or --helpfull to see help on flags.'


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory, real_data_dir):
  """A workdir as tiny.py's training leaves it (run files, one checkpoint), made without
  training; its data dir is the prepared CIFAR-10 subset."""
  workdir = tmp_path_factory.mktemp('saved_run')
  config = tiny.get_config()
  spec = datasets.SPECS['cifar10']
  info = data.DatasetInfo('cifar10', 10, (16, 16, 3), 4153, 1017, spec.mean, spec.std)
  plan = train.make_plan(config, train.make_mesh(jax.devices()[:1]),
                         image_shape=info.image_shape, num_classes=info.num_classes)
  checkpoints = train.Checkpointer(workdir_files.checkpoint_dir(workdir))
  checkpoints.save(SAVED_STEP, plan.init_state())
  checkpoints.close()
  workdir_files.write_run_files(workdir, config, info, real_data_dir)
  return workdir


@pytest.fixture(scope='module')
def damaged_run(saved_run, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('damaged') / 'run'
  shutil.copytree(saved_run, workdir)
  # state/d/ holds the OCDBT data that restores read; flip bytes of its largest file.
  array_file = max((workdir_files.checkpoint_dir(workdir) / str(SAVED_STEP) / 'state' / 'd')
                   .iterdir(), key=lambda p: os.path.getsize(p))
  raw = bytearray(array_file.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 58] = bytes(b ^ 0xFF for b in raw[middle:middle + 58])
  array_file.write_bytes(bytes(raw))
  return workdir


@pytest.fixture(scope='module')
def torch_files(tmp_path_factory):
  """Checkpoint files the converter refuses: a pickled whole model, a training checkpoint
  without EMA weights, a .npz, and a timm ECA ResNet's block-attention key."""
  torch = pytest.importorskip('torch')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('torch_files')
  torch.save(torch.nn.Linear(2, 2), root / 'whole.pth')
  torch.save({'epoch': 1, 'state_dict': {'fc.weight': torch.zeros(2, 2)}}, root / 'plain.pth.tar')
  (root / 'weights.npz').write_bytes(b'')
  save_file({'layer1.0.se.conv.weight': np.zeros((1, 1, 5), np.float32)},
            str(root / 'timm_eca.safetensors'))
  return root


def _fill(argument, places):
  for name, path in places.items():
    argument = argument.replace('{' + name + '}', str(path))
  return argument


def _hashes(workdir: pathlib.Path):
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('command, arguments, phrase',
                         [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_ends_in_one_paragraph_and_changes_nothing(command, arguments, phrase,
                                                            request, tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n  pass\n')
  (tmp_path / 'file').write_text('not a directory\n')
  places = {'tmp': tmp_path, 'file': tmp_path / 'file'}
  joined = ' '.join(arguments)
  for name in ('saved', 'damaged'):
    if '{' + name + '}' in joined:
      places[name] = request.getfixturevalue(f'{name}_run')
  if '{torch}' in joined:
    places['torch'] = request.getfixturevalue('torch_files')
  workdirs = [places[n] for n in ('saved', 'damaged') if n in places]
  before = [_hashes(w) for w in workdirs]
  out = subprocess.run(
      [sys.executable, '-m', f'experiments.{command}',
       *(_fill(a, places) for a in arguments)],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=_env(RATTN_DATA_DOWNLOAD='false'))
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  # One paragraph: absl's log lines aside, the error line (and absl's flag-help line).
  said = [line for line in out.stderr.splitlines()
          if line.strip() and not _LOG_LINE.match(line) and line != _FLAGS_HELP]
  assert len(said) == 1, out.stderr[-3000:]
  assert said[0].startswith(('ERROR (', 'FATAL Flags parsing error: ')), said[0]
  assert phrase in said[0], said[0]
  assert [_hashes(w) for w in workdirs] == before
  # Nothing new is left behind either (e.g. an empty workdir made before the mistake showed).
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'syntax.py']


def test_a_saved_run_reads_its_data_where_training_did(saved_run, real_data_dir, monkeypatch):
  monkeypatch.delenv('TFDS_DATA_DIR')  # visualize, run without it, still finds the images
  _, _, config = train.load_trained(str(saved_run))
  assert config.data.data_dir == os.path.abspath(real_data_dir)


def test_evaluate_checks_its_own_batch_against_the_devices(saved_run, tmp_path):
  # A run trained elsewhere with batches that do not split over this process's 8 devices.
  workdir = tmp_path / 'run'
  shutil.copytree(saved_run, workdir)
  config_file = workdir / workdir_files.CONFIG_FILE
  saved = json.loads(config_file.read_text())
  saved.update(batch_size=12, eval_batch_size=60)
  config_file.write_text(json.dumps(saved))
  assert jax.device_count() == 8
  # The training batch sizes are not asked about; the evaluation's own batch is.
  metrics = train.evaluate_workdir(str(workdir), batch_size=16, split='test[:48]')
  assert metrics['count'] == 48
  with pytest.raises(train.ConfigError, match=r"^Without --batch_size, the training config's "
                     r'eval_batch_size is used: --batch_size=60 does not divide evenly over the 8 '
                     r'devices.*--batch_size=56 or 64'):
    train.evaluate_workdir(str(workdir))
  with pytest.raises(train.ConfigError, match=r'^--batch_size=20 does not divide evenly'):
    train.evaluate_workdir(str(workdir), batch_size=20)
  _, _, config = train.load_trained(str(workdir))  # visualisation's path: one device, any batch
  assert config.batch_size == 12
