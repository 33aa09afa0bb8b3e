"""Pretrained weights end to end: a PyTorch checkpoint -> experiments.convert -> a
fine-tuning run with config.init_from -> experiments.evaluate; and init_from's rules."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import chex
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from experiments.configs import tiny
from rattn.train import load_trained
from rattn.train.init_from import initial_state
from rattn.train.plan import ConfigError, make_plan

torch = pytest.importorskip('torch')
from torch_reference import resnet as torch_resnet  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / 'experiments' / 'configs' / 'tiny.py')


@pytest.fixture(scope='module')
def torch_resnet18():
  """torchvision's resnet18 layout with random weights and random BatchNorm statistics."""
  torch.manual_seed(0)
  model = torch_resnet.ResNet(torch_resnet.BasicBlock, [2, 2, 2, 2]).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
  return model


def _command(name, *args):
  """``python -m experiments.NAME ARGS`` in a subprocess, as a user runs it."""
  return subprocess.run([sys.executable, '-m', f'experiments.{name}', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.fixture(scope='module')
def converted(torch_resnet18, tmp_path_factory):
  """The checkpoint saved as .safetensors and as .pth, each converted by the CLI."""
  root = tmp_path_factory.mktemp('converted')
  state = {k: v.numpy() for k, v in torch_resnet18.state_dict().items()}
  save_file(state, str(root / 'resnet18.safetensors'))
  torch.save(torch_resnet18.state_dict(), root / 'resnet18.pth')
  workdirs = {}
  for suffix in ('safetensors', 'pth'):
    workdirs[suffix] = root / f'from_{suffix}'
    run = _command('convert', '--model=resnet18', f'--from={root}/resnet18.{suffix}',
                   f'--workdir={workdirs[suffix]}')
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'onto resnet18: 11,689,512 parameters, 1000 classes' in run.stdout
  return workdirs


def test_converted_workdirs_compute_what_torch_computes(converted, torch_resnet18):
  images = np.random.RandomState(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = torch_resnet18(torch.from_numpy(images)).numpy()
  for workdir in converted.values():
    model, variables, config = load_trained(str(workdir))
    assert (config.restored_step, config.dataset_info['num_classes']) == (0, 1000)
    logits = model.apply(variables, images.transpose(0, 2, 3, 1), train=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    info = json.loads((workdir / 'dataset_info.json').read_text())
    assert len(info['weights']['sha256']) == 64 and info['weights']['file'].endswith(
        workdir.name.split('_')[1])


def test_convert_refuses_a_workdir_with_checkpoints(converted):
  before = sorted(p.relative_to(converted['pth']) for p in converted['pth'].rglob('*'))
  run = _command('convert', '--model=resnet18', f'--from={converted["pth"].parent}/resnet18.pth',
                 f'--workdir={converted["pth"]}')
  assert run.returncode == 1 and 'already holds checkpoints' in run.stderr, run.stderr[-3000:]
  assert sorted(p.relative_to(converted['pth']) for p in converted['pth'].rglob('*')) == before


def _finetune(workdir, init_from, data_dir):
  """A 2-step fine-tuning run on 16-px CIFAR-10 (a subprocess, as a user runs it).

  The ImageNet ResNet-18 on 16-px images is far from its design input: said so explicitly.
  """
  return subprocess.run(
      [sys.executable, '-m', 'experiments.cifar', f'--config={TINY}', f'--workdir={workdir}',
       '--config.model=resnet18', '--config.model_kwargs={}', f'--config.init_from={init_from}',
       '--config.num_train_steps=2', '--config.eval_every=2', '--config.checkpoint_every=2',
       '--config.allow_input_size_mismatch=True'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO), TFDS_DATA_DIR=data_dir))


def test_finetune_then_evaluate_then_resume(converted, tmp_path, real_data_dir):
  run = _finetune(tmp_path, converted['pth'], real_data_dir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert ('Re-initialised the classifier for 10 classes (the source has 1000): '
          'params/fc/bias, params/fc/kernel.') in run.stderr
  run = _command('evaluate', f'--workdir={tmp_path}')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'cifar10:test at step 2: accuracy' in run.stdout
  # The run has its own checkpoint now: init_from (here a path that does not exist) is ignored.
  run = _finetune(tmp_path, tmp_path / 'no_such_workdir', real_data_dir)
  assert run.returncode == 0 and 'config.init_from is ignored' in run.stderr, run.stderr[-3000:]


def _plan(num_classes, init_from, model='resnet18', **model_kwargs):
  config = tiny.get_config()
  config.model, config.model_kwargs = model, model_kwargs
  config.init_from = str(init_from)
  return make_plan(config, image_shape=(32, 32, 3), num_classes=num_classes)


def test_same_classes_copy_every_variable(converted):
  _, source, _ = load_trained(str(converted['safetensors']))
  state = initial_state(_plan(1000, converted['safetensors']))
  chex.assert_trees_all_equal(state.variables(), source)
  assert int(state.step) == 0


def test_other_classes_reinitialise_only_the_classifier(converted):
  _, source, _ = load_trained(str(converted['safetensors']))
  plan = _plan(10, converted['safetensors'])
  state, fresh = initial_state(plan), plan.init_state()
  flat = traverse_util.flatten_dict(state.params)
  assert sorted(k for k in flat if k[0] == 'fc') == [('fc', 'bias'), ('fc', 'kernel')]
  chex.assert_trees_all_equal(state.params['fc'], fresh.params['fc'])
  del source['params']['fc']
  chex.assert_trees_all_equal({'params': {k: v for k, v in state.params.items() if k != 'fc'},
                               'batch_stats': state.batch_stats}, source)


def test_another_model_is_a_config_error(converted):
  with pytest.raises(ConfigError, match="holds a 'resnet18' model.*--config.model=resnet18"):
    initial_state(_plan(10, converted['safetensors'], model='resnet34'))


def test_another_shape_is_a_config_error_naming_it(converted):
  with pytest.raises(ConfigError, match=r'100 variables differ, first: params/stage1_block1/bn1/'
                     r'bias: source \(64,\), this run \(32,\)'):
    initial_state(_plan(10, converted['safetensors'], width=32))


@pytest.mark.parametrize('model, num_classes, dataset, size', [
    ('resnet18', None, 'imagenet2012', 224), ('se_resnet50', 1000, 'imagenet2012', 224),
    ('ran56', None, 'imagenet2012', 224), ('ran56_cifar', None, 'cifar10', 32),
    ('ran92_cifar', 100, 'cifar100', 32), ('ran452_cifar', 10, 'cifar10', 32)])
def test_converted_run_files_describe_the_data_such_weights_take(model, num_classes, dataset,
                                                                 size):
  from experiments import convert as convert_command  # pylint: disable=g-import-not-at-top
  from rattn import data  # pylint: disable=g-import-not-at-top
  from rattn.data import datasets  # pylint: disable=g-import-not-at-top
  config, info = convert_command.run_config(model, num_classes)
  assert (config.model, config.data.dataset, info.name) == (model, dataset, dataset)
  assert info.image_shape == (size, size, 3) and info.num_classes == (num_classes or
                                                                      (10 if size == 32 else 1000))
  assert info.mean == datasets.SPECS[dataset].mean and info.std == datasets.SPECS[dataset].std
  # What evaluate checks a workdir's data against: the config's data gives the same shapes.
  plan = data.DataPlan(config.data)
  assert (plan.spec.num_classes, plan.image_size) == (info.num_classes, size)


def test_converting_a_cifar_model_with_imagenet_classes_is_refused():
  from absl import app  # pylint: disable=g-import-not-at-top
  from experiments import convert as convert_command  # pylint: disable=g-import-not-at-top
  with pytest.raises(app.UsageError, match=r'--num_classes=1000: ran56_cifar takes 32x32 '
                     r'images, and the datasets of that size have 10 or 100 classes'):
    convert_command.run_config('ran56_cifar', 1000)
