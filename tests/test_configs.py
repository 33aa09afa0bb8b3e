"""Every config file loads and documents itself; config mistakes fail with clear messages."""

import importlib
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

from rattn import train
from rattn.models import MODELS
from rattn.train.plan import check_input_size
from train_worker import register, tiny_config

register()
REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'experiments' / 'configs'
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem != '__init__')
# Small enough to build here; the rest are checked for their model name only.
SMALL = ('tiny', 'fashion_mnist_ran', 'fashion_mnist_ran_quick', 'fashion_mnist_resnet',
         'cifar10_subset_ran', 'cifar10_subset_resnet')
IMAGE_SHAPES = {'fashion_mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}


def _plan(config, image_shape=(8, 8, 3)):
  return train.make_plan(config, image_shape=image_shape, num_classes=10)


def _module(name):
  return importlib.import_module(f'experiments.configs.{name}')


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_locked_and_documented(name):
  module = _module(name)
  config = module.get_config()
  assert config.is_locked
  assert config.model in MODELS, config.model
  train.check_config(config)
  doc = module.__doc__
  if name != 'default':
    assert f'experiments/configs/{name}.py' in doc and 'python -m experiments.' in doc
    assert 'Runtime' in doc or 'Measured' in doc or 'runtime' in doc
  with pytest.raises(AttributeError, match='batch_size'):
    config.batchsize = 1  # a typo in a config file fails and names the real field


@pytest.mark.parametrize('name', SMALL)
def test_small_configs_build_for_their_data(name):
  config = _module(name).get_config()
  shape = IMAGE_SHAPES[config.data.dataset]
  if config.data.image_size:
    shape = (config.data.image_size, config.data.image_size, shape[2])
  state = _plan(config, shape).abstract_state()
  assert state.params


def test_ran_cifar_arguments():
  ran_cifar = _module('ran_cifar')
  config = ran_cifar.get_config(
      'model=ran56_cifar,dataset=cifar100,attention=spatial,learning=nal,noise=0.3,seed=2')
  assert (config.model, config.data.dataset, config.data.label_noise, config.seed) == (
      'ran56_cifar', 'cifar100', 0.3, 2)
  assert dict(config.model_kwargs) == {'attention_type': 'spatial', 'residual_learning': False,
                                       'remat': False}
  baseline = ran_cifar.get_config('model=preact_resnet164,noise=0.5')
  assert baseline.model == 'preact_resnet164' and not baseline.model_kwargs
  for bad, match in (('modle=ran56_cifar', 'bad config argument'),
                     ('attention=soft', "attention='soft' is not valid"),
                     ('model=preact_resnet164,attention=spatial', 'apply to the Residual'),
                     ('noise=1.5', 'noise=1.5')):
    with pytest.raises(ValueError, match=match):
      ran_cifar.get_config(bad)


# ---------------------------------------------------------------- clear errors


def _run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.cifar', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_misspelt_override_names_the_right_field(tmp_path):
  out = _run_cli('--config', 'experiments/configs/tiny.py', '--workdir', str(tmp_path),
                 '--config.optimizer.momentun=0.5')
  assert out.returncode != 0
  assert ('--config.optimizer.momentun: the config has no field \'momentun\'. '
          'Did you mean --config.optimizer.momentum=0.5?') in out.stderr
  assert 'Traceback' not in out.stderr


def test_cli_reports_config_errors_without_traceback(tmp_path):
  out = _run_cli('--config', 'experiments/configs/tiny.py', '--workdir', str(tmp_path),
                 '--config.model=preact_resnet2O')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert "ERROR (ConfigError): config.model: Unknown model 'preact_resnet2O'" in out.stderr
  assert "Did you mean 'preact_resnet20'" in out.stderr


def test_unknown_model():
  with pytest.raises(train.ConfigError, match="config.model: Unknown model 'resnet05'.*resnet50"):
    _plan(tiny_config(model='resnet05'))


@pytest.mark.parametrize('model, typo, field', [
    ('train_test_tiny', 'widht', 'width'), ('ran56_cifar', 'attention_tpye', 'attention_type'),
    ('resnet18', 'atention', 'attention'), ('preact_resnet20', 'zero_init', 'bottleneck')])
def test_unknown_model_kwarg_lists_the_valid_ones(model, typo, field):
  config = tiny_config(model=model)
  config.model_kwargs = {typo: 8}
  with pytest.raises(train.ConfigError,
                     match=f"unexpected keyword argument '{typo}'. It accepts: .*{field}"):
    _plan(config)


def test_unknown_attention():
  config = tiny_config(model='preact_resnet20')
  config.model_kwargs = {'attention': 'sse'}
  with pytest.raises(train.ConfigError, match="Unknown attention 'sse'.*Did you mean 'se'"):
    _plan(config)


def test_unknown_ran_attention_type():
  config = tiny_config(model='ran56_cifar')
  config.model_kwargs = {'attention_type': 'both', 'width': 0.25}
  with pytest.raises(train.ConfigError, match="Unknown attention_type 'both'.*mixed.*Without "
                     'model_kwargs it initialises'):
    _plan(config, (32, 32, 3)).abstract_state()


def test_a_model_far_from_its_design_input_size_is_refused_unless_meant():
  config = _module('fashion_mnist_ran').get_config()  # ran56_cifar, designed for 32 px
  for size in (16, 28, 64):  # up to 2x off either way: tiny.py's 16 px, Fashion-MNIST's 28
    check_input_size(config, size)
  for size in (15, 65):
    with pytest.raises(train.ConfigError, match=f"'ran56_cifar' was designed for 32x32 "
                       f'images, but the data gives {size}x{size}'):
      check_input_size(config, size)
  config.model = 'ran56'
  with pytest.raises(train.ConfigError, match=r"designed for 224x224 images, but the data gives "
                     r"32x32 \(config.data.dataset='fashion_mnist'\).*this input \(registered "
                     r'for this size: .*ran56_cifar.*--config.data.image_size=224.*'
                     r'--config.allow_input_size_mismatch=True'):
    check_input_size(config, 32)
  config.allow_input_size_mismatch = True
  check_input_size(config, 32)


def test_batch_not_divisible_by_devices(tmp_path):
  # Caught before any data is read or any step compiled.
  with pytest.raises(train.ConfigError, match=r'batch_size=12 does not divide evenly over the 8 '
                     r'devices.*--config.batch_size=8 or 16'):
    train.train_and_evaluate(tiny_config(batch_size=12), tmp_path)


class _Flat(nn.Module):
  """A model that only takes 28x28 images (it reshapes them to 784 pixels)."""
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], 28 * 28, -1).mean(-1))


def test_wrong_image_shape_for_the_model():
  if 'config_test_flat' not in MODELS:
    MODELS.register('config_test_flat', _Flat, image_size=28, num_classes=10)
  config = tiny_config(model='config_test_flat')
  config.model_kwargs = {}
  with pytest.raises(train.ConfigError, match=r'fails to initialise on images of shape \(8, 8, '
                     r'3\).*designed for 28x28 images.*--config.data.image_size=28'):
    _plan(config).abstract_state()


class _Broken(nn.Module):
  """A model with a bug: it fails to initialise whatever the config."""
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    raise ZeroDivisionError('a bug in the model')


def test_a_model_bug_is_not_reported_as_a_config_mistake():
  if 'config_test_broken' not in MODELS:
    MODELS.register('config_test_broken', _Broken, image_size=8, num_classes=10)
  config = tiny_config(model='config_test_broken')
  config.model_kwargs = {}
  with pytest.raises(ZeroDivisionError, match='a bug in the model'):
    _plan(config).init_state()
