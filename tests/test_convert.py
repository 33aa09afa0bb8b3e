"""rattn.convert: reading checkpoints and the errors of a state dict that does not fit."""

from __future__ import annotations

import builtins

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from rattn import convert
from rattn.attention import create_attention
from rattn.models import create_model


def _template(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def _se_state(channels=32):
  rng = np.random.RandomState(0)
  return {'fc1.weight': rng.normal(size=(channels // 16, channels, 1, 1)).astype(np.float32),
          'fc1.bias': rng.normal(size=(channels // 16,)).astype(np.float32),
          'fc2.weight': rng.normal(size=(channels, channels // 16, 1, 1)).astype(np.float32),
          'fc2.bias': rng.normal(size=(channels,)).astype(np.float32)}


def test_layouts_transposed_onto_rattn():
  state = _se_state()
  variables = convert.convert_attention_state_dict(
      'se', state, _template(create_attention('se'), (1, 4, 4, 32)))
  np.testing.assert_array_equal(variables['params']['fc1']['kernel'], state['fc1.weight'][:, :, 0, 0].T)
  eca = convert.convert_attention_state_dict(
      'eca', {'conv.weight': np.arange(5, dtype=np.float32).reshape(1, 1, 5)},
      _template(create_attention('eca'), (1, 2, 2, 128)))
  assert eca['params']['conv']['kernel'].shape == (5, 1, 1)
  np.testing.assert_array_equal(eca['params']['conv']['kernel'][:, 0, 0], np.arange(5))


def test_every_problem_listed_in_one_error():
  state = _se_state()
  state['fc2.bias'] = np.zeros(31, np.float32)  # wrong shape
  del state['fc1.bias']  # missing
  state['fc3.weight'] = np.zeros((2, 2), np.float32)  # unmatched
  state['bn.num_batches_tracked'] = np.zeros((), np.int64)  # ignored
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_attention_state_dict('se', state, _template(create_attention('se'),
                                                                 (1, 4, 4, 32)))
  message = str(error.value)
  assert 'fc3.weight' in message and 'fc2.bias: (31,) -> params/fc2/bias needs (32,)' in message
  assert 'params/fc1/bias (2,)' in message and 'num_batches_tracked' not in message
  assert isinstance(error.value, ValueError)


def test_long_listings_truncated():
  state = {f'junk{i}.weight': np.zeros(1, np.float32) for i in range(30)}
  with pytest.raises(convert.ConversionError, match=r'\.\.\. and 18 more'):
    convert.convert_attention_state_dict('sge', state, _template(create_attention('sge'),
                                                                  (1, 4, 4, 128)))


def test_wrong_checkpoint_for_the_model_names_both_sides():
  # An ECA checkpoint offered to SE-ResNet-50: the attention keys fit nowhere.
  model = create_model('se_resnet50', num_classes=10)
  template = _template(model, (1, 32, 32, 3))
  with pytest.raises(convert.ConversionError, match=r'layer1\.0\.eca\.conv\.weight'):
    convert.convert_state_dict('se_resnet50', {'layer1.0.eca.conv.weight': np.zeros((1, 1, 3))},
                               template)
  with pytest.raises(convert.ConversionError, match='Convertible models: .*resnet50'):
    convert.convert_state_dict('no_such_model', {}, template)


def test_eca_resnet50_takes_release_layout_with_its_own_kernel_sizes():
  # eca_resnet50 (k = 5, 5, 5, 7 by the paper's formula) reads ECANet's keys; the official
  # release's k = 3 in stage 1 is then a shape error, not a silent mismatch.
  model = create_model('eca_resnet50', num_classes=10)
  template = _template(model, (1, 32, 32, 3))
  state = {'layer1.0.eca.conv.weight': np.zeros((1, 1, 3), np.float32)}
  with pytest.raises(convert.ConversionError,
                     match=r'layer1\.0\.eca\.conv\.weight: \(1, 1, 3\) -> '
                           r'params/stage1_block1/attention/conv/kernel needs \(5, 1, 1\)'):
    convert.convert_state_dict('eca_resnet50', state, template)


def _torch_module_state():
  torch = pytest.importorskip('torch')
  from torch_reference.attention import SEModule
  torch.manual_seed(0)
  module = SEModule(32)
  return torch, module, {k: v.numpy() for k, v in module.state_dict().items()}


def test_reads_safetensors_and_wrapped_dataparallel_pth(tmp_path):
  torch, module, state = _torch_module_state()
  save_file(state, str(tmp_path / 'se.safetensors'))
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in module.state_dict().items()}},
             tmp_path / 'se.pth')
  for name in ('se.safetensors', 'se.pth'):
    read = convert.read_state_dict(tmp_path / name)
    assert read.keys() == state.keys()
    for k in state:
      np.testing.assert_array_equal(read[k], state[k])


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  (tmp_path / 'model.pth').write_bytes(b'not read')
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(convert.ConversionError, match='needs PyTorch.*safetensors'):
    convert.read_state_dict(tmp_path / 'model.pth')


def test_unreadable_paths_raise_conversion_errors(tmp_path):
  with pytest.raises(convert.ConversionError, match='No checkpoint file'):
    convert.read_state_dict(tmp_path / 'missing.safetensors')
  (tmp_path / 'weights.npz').write_bytes(b'')
  with pytest.raises(convert.ConversionError, match='Unknown checkpoint format'):
    convert.read_state_dict(tmp_path / 'weights.npz')


def test_two_tensors_for_one_variable_is_an_error():
  # The CAM layout renames its top-level scalar to beta; a second one cannot land there too.
  state = {'gamma': np.ones(1, np.float32), 'scale': np.ones(1, np.float32)}
  with pytest.raises(convert.ConversionError, match='scale .*already filled'):
    convert.convert_attention_state_dict(
        'danet_channel', state, _template(create_attention('danet_channel'), (1, 2, 2, 8)))
