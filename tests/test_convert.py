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


# --- training checkpoints, suffixes, pickled models, timm's names -------------------


def _timm_training_checkpoint(torch, module):
  """What timm's CheckpointSaver writes: the weights beside args, metric and EMA weights."""
  import argparse  # pylint: disable=g-import-not-at-top
  ema = {k: v + 1 for k, v in module.state_dict().items()}
  return {'epoch': 3, 'arch': 'seresnet50', 'state_dict': module.state_dict(),
          'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]},
          'args': argparse.Namespace(lr=0.1, model='seresnet50'), 'version': 2,
          'metric': np.float64(76.1), 'state_dict_ema': ema}


@pytest.mark.parametrize('suffix', ['.pth.tar', '.bin', '.pt'])
def test_a_training_checkpoint_unwraps_plain_or_ema_weights(tmp_path, suffix):
  torch, module, state = _torch_module_state()
  path = tmp_path / f'checkpoint{suffix}'
  torch.save(_timm_training_checkpoint(torch, module), path)
  notes = []
  read = convert.read_state_dict(path, notes=notes)
  assert read.keys() == state.keys()
  np.testing.assert_array_equal(read['fc1.weight'], state['fc1.weight'])
  assert notes == ["its 'state_dict' entry (it also holds EMA weights, 'state_dict_ema': "
                   'pass --ema to convert those)']
  ema = convert.read_state_dict(path, ema=True)
  np.testing.assert_array_equal(ema['fc1.weight'], state['fc1.weight'] + 1)


def test_model_and_module_prefixed_entries(tmp_path):
  torch, module, state = _torch_module_state()
  torch.save({'model': {f'module.{k}': v for k, v in module.state_dict().items()},
              'model_ema': module.state_dict()}, tmp_path / 'ddp.pth')
  assert convert.read_state_dict(tmp_path / 'ddp.pth').keys() == state.keys()
  assert convert.read_state_dict(tmp_path / 'ddp.pth', ema=True).keys() == state.keys()


def test_ema_asked_where_there_is_none(tmp_path):
  torch, module, _ = _torch_module_state()
  torch.save({'state_dict': module.state_dict()}, tmp_path / 'plain.pth')
  with pytest.raises(convert.ConversionError, match=r"has no EMA weights: none of the entries "
                     r'state_dict_ema, model_ema.*top-level keys: state_dict\)'):
    convert.read_state_dict(tmp_path / 'plain.pth', ema=True)


def test_a_pickled_whole_model_is_not_unpickled(tmp_path):
  torch, module, _ = _torch_module_state()
  torch.save(module, tmp_path / 'whole.pth')
  with pytest.raises(convert.ConversionError) as raised:
    convert.read_state_dict(tmp_path / 'whole.pth')
  message = str(raised.value)
  assert 'holds a pickled whole model' in message and 'SEModule' in message
  assert 'it is not loaded' in message and 'm.state_dict()' in message and '\n' not in message


def test_a_file_torch_cannot_read(tmp_path):
  pytest.importorskip('torch')
  (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
  with pytest.raises(convert.ConversionError, match='cannot be read as a PyTorch checkpoint'):
    convert.read_state_dict(tmp_path / 'junk.pt')


def test_timm_names_of_cbam_and_eca_blocks():
  rng = np.random.RandomState(0)
  conv = rng.normal(size=(1, 2, 7, 7)).astype(np.float32)
  timm_cbam = {'layer1.0.se.channel.fc1.weight': np.ones((16, 256, 1, 1), np.float32),
               'layer1.0.se.channel.fc2.weight': np.ones((256, 16, 1, 1), np.float32),
               'layer1.0.se.spatial.conv.conv.weight': conv,
               'layer1.0.se.spatial.conv.bn.running_var': np.ones(1, np.float32),
               'layer1.0.conv1.weight': np.ones((64, 64, 1, 1), np.float32)}
  assert convert.timm_block_attention(timm_cbam) == 'cbam'
  released = convert._from_timm(timm_cbam, 'cbam')  # pylint: disable=protected-access
  assert sorted(released) == [
      'layer1.0.cbam.ChannelGate.mlp.1.bias', 'layer1.0.cbam.ChannelGate.mlp.1.weight',
      'layer1.0.cbam.ChannelGate.mlp.3.bias', 'layer1.0.cbam.ChannelGate.mlp.3.weight',
      'layer1.0.cbam.SpatialGate.spatial.bn.running_var',
      'layer1.0.cbam.SpatialGate.spatial.conv.weight', 'layer1.0.conv1.weight']
  assert not released['layer1.0.cbam.ChannelGate.mlp.1.bias'].any()
  # timm pools [mean, max], the release [max, mean].
  np.testing.assert_array_equal(released['layer1.0.cbam.SpatialGate.spatial.conv.weight'],
                                conv[:, ::-1])
  timm_eca = {'layer2.3.se.conv.weight': np.ones((1, 1, 5), np.float32)}
  assert convert.timm_block_attention(timm_eca) == 'eca'
  released = convert._from_timm(timm_eca, 'eca')  # pylint: disable=protected-access
  assert list(released) == ['layer2.3.eca.conv.weight']
  assert convert.timm_block_attention({'layer1.0.se.fc1.weight': 0}) == 'se'
  assert convert.timm_block_attention({'layer1.0.conv1.weight': 0}) is None


def test_a_timm_checkpoint_of_another_attention_names_the_model():
  model = create_model('cbam_resnet50', num_classes=10)
  template = _template(model, (1, 32, 32, 3))
  with pytest.raises(convert.ConversionError, match=r"timm ResNet with ECA block attention "
                     r"\(keys such as 'layer1.0.se.conv.weight'.*cbam_resnet50 has CBAM "
                     r'attention. Convert it with --model eca_resnet50'):
    convert.convert_state_dict('cbam_resnet50', {'layer1.0.se.conv.weight': np.zeros((1, 1, 5))},
                               template)
