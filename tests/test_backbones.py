"""Tests of the ResNet backbones (rattn.models.resnet, rattn.models.preact_resnet).

The first group runs over every model these two files register, so a new entry is
checked without edits; deep networks are only traced (``jax.eval_shape``), the
cheap ones also run. The rest pin where the attention module sits, the
downsampling, and the errors.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattn.attention import ATTENTIONS
from rattn.models import MODELS, create_model, list_models
from rattn.models.layers import PreActBottleneck
from rattn.models.preact_resnet import PreActBasicBlock, PreActResNet
from rattn.models.resnet import BasicBlock, Bottleneck, per_stage_attention_kwargs

BACKBONE_FILES = ('rattn.models.resnet', 'rattn.models.preact_resnet')
BACKBONES = [n for n in list_models() if MODELS.get(n).__module__ in BACKBONE_FILES]


def registered_shape(name, batch=1):
  size = MODELS.info(name)['image_size']
  return (batch, size, size, 3)


def abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def features_shape(model, shape):
  """Shape of the feature map the model sows just before global average pooling."""
  variables = abstract_init(model, shape)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(shape), mutable=['intermediates']), variables)
  return state['intermediates']['features'][0].shape


def assert_all_changed(old, new):
  old, new = jax.tree.leaves(old), jax.tree.leaves(new)
  assert len(old) == len(new) and all(not np.allclose(a, b) for a, b in zip(old, new))


def blocks(params):
  return {k: v for k, v in params.items() if '_block' in k}


def test_the_expected_backbones_are_registered():
  assert set(BACKBONES) == {
      'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'se_resnet50',
      'cbam_resnet50', 'eca_resnet50', 'eca_resnet50_official', 'sge_resnet50',
      'preact_resnet20', 'preact_resnet56', 'preact_resnet110', 'preact_resnet164'}


@pytest.mark.parametrize('name', BACKBONES)
def test_registered_backbone_builds_and_counts(name):
  info = MODELS.info(name)
  assert info['dataset'] in ('imagenet', 'cifar') and info['source']
  model = create_model(name, num_classes=info['num_classes'])
  variables = abstract_init(model, registered_shape(name))
  assert set(variables) == {'params', 'batch_stats'}
  assert variables['params']['fc']['kernel'].shape[-1] == info['num_classes']
  num_params = sum(p.size for p in jax.tree.leaves(variables['params']))
  assert num_params > 0.1 * info.get('paper_params', 1)


def test_resnet18_forward_shape_and_train_mode_updates_batch_stats():
  model = create_model('resnet18', num_classes=7)

  @jax.jit
  def run(x):
    variables = model.init(jax.random.key(0), x)
    logits, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return variables['batch_stats'], logits, state['batch_stats']

  old_stats, logits, new_stats = run(jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  assert_all_changed(old_stats, new_stats)


def test_preact_resnet20_jitted_train_step():
  model = create_model('preact_resnet20', num_classes=10)
  labels = jnp.array([3, 7])

  @jax.jit
  def init_and_step(x):
    variables = model.init(jax.random.key(0), x)

    def loss_fn(params):
      logits, state = model.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
      loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return loss, (logits, state['batch_stats'])

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    return variables['batch_stats'], loss, aux, grads

  old_stats, loss, (logits, new_stats), grads = init_and_step(
      jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
  assert logits.shape == (2, 10) and np.isfinite(loss)
  assert_all_changed(old_stats, new_stats)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and all(n > 0 for n in norms)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = create_model('resnet18', num_classes=10, dtype=jnp.bfloat16)
  shape = (2, 32, 32, 3)
  variables = abstract_init(model, shape)
  assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape)), variables)
  assert logits.dtype == jnp.float32


# --- Downsampling --------------------------------------------------------------------


@pytest.mark.parametrize('name, expected', [
    ('resnet18', (1, 7, 7, 512)), ('resnet50', (1, 7, 7, 2048)),
    ('preact_resnet20', (1, 8, 8, 64)), ('preact_resnet164', (1, 8, 8, 256))])
def test_features_before_pooling(name, expected):
  assert features_shape(create_model(name, num_classes=10), registered_shape(name)) == expected


def test_odd_input_sizes_downsample_like_pytorch():
  # PyTorch: 225 -> conv7/2 pad 3 -> 113 -> maxpool3/2 pad 1 -> 57 -> 29 -> 15 -> 8.
  assert features_shape(create_model('resnet18', num_classes=10), (1, 225, 225, 3))[1:3] == (8, 8)


# --- Where the attention module sits -------------------------------------------------


class _ScaleBranch(nn.Module):
  """Test-only attention: records its input and multiplies it by ``factor``."""
  factor: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    self.sow('intermediates', 'input', x)
    return x * self.factor


@pytest.fixture
def scale_branch(monkeypatch):
  """Registers ``_ScaleBranch`` as attention 'test_scale_branch' for one test."""
  monkeypatch.setattr(ATTENTIONS, '_entries', dict(ATTENTIONS._entries))  # undone after
  ATTENTIONS.register('test_scale_branch', _ScaleBranch)
  return 'test_scale_branch'


# (block, name of the branch's last layer, whether a ReLU follows the addition)
BLOCKS = [(BasicBlock(16), 'bn2', True), (Bottleneck(4), 'bn3', True),
          (PreActBasicBlock(16), 'conv2', False), (PreActBottleneck(16), 'conv3', False)]


@pytest.mark.parametrize('block, last, post_relu', BLOCKS,
                         ids=[type(b).__name__ for b, _, _ in BLOCKS])
def test_attention_acts_on_the_branch_after_its_last_layer_before_the_addition(
    block, last, post_relu, scale_branch):
  scaled = block.clone(attention=scale_branch, attention_kwargs={'factor': 3.0})

  @jax.jit
  def run(x):
    variables = scaled.init(jax.random.key(0), x)
    out, state = scaled.apply(variables, x, capture_intermediates=True,
                              mutable=['intermediates'])
    # The test module has no parameters: the same variables fit all three blocks.
    plain = block.apply(variables, x)
    identity = scaled.clone(attention_kwargs={'factor': 1.0}).apply(variables, x)
    return out, state['intermediates'], plain, identity

  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
  out, inter, plain, identity = run(x)
  branch = inter[last]['__call__'][0]
  np.testing.assert_array_equal(inter['attention']['input'][0], branch)
  expected = x + 3.0 * branch  # identity shortcut: 16 channels in and out, stride 1
  np.testing.assert_allclose(out, nn.relu(expected) if post_relu else expected,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(identity, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name, num_blocks', [
    ('resnet18', 8), ('resnet50', 16), ('preact_resnet20', 9)])
def test_one_attention_module_per_block_and_none_in_the_stem(name, num_blocks):
  params = abstract_init(create_model(name, num_classes=10, attention='se'),
                         registered_shape(name))['params']
  assert len(blocks(params)) == num_blocks
  assert all(set(b) >= {'attention'} for b in blocks(params).values())
  assert 'attention' not in params and all(
      'attention' not in v for k, v in params.items() if k not in blocks(params))
  plain = abstract_init(create_model(name, num_classes=10), registered_shape(name))['params']
  for key, block in blocks(params).items():
    assert set(block) - {'attention'} == set(plain[key])


@pytest.mark.parametrize('name, kernels', [
    ('eca_resnet50', (5, 5, 5, 7)), ('eca_resnet50_official', (3, 5, 5, 7))])
def test_eca_kernel_sizes_per_stage(name, kernels):
  params = abstract_init(create_model(name, num_classes=1000), (1, 224, 224, 3))['params']
  for key, block in blocks(params).items():
    stage = int(key[len('stage')]) - 1
    assert block['attention']['conv']['kernel'].shape[0] == kernels[stage], key


def test_stage_overrides_update_the_shared_kwargs():
  assert per_stage_attention_kwargs({'reduction': 8, 'kernel_size': 7},
                                    (None, {'kernel_size': 3}, {}), 3) == [
      {'reduction': 8, 'kernel_size': 7}, {'reduction': 8, 'kernel_size': 3},
      {'reduction': 8, 'kernel_size': 7}]
  assert per_stage_attention_kwargs(None, None, 2) == [{}, {}]


def test_zero_init_last_bn_makes_blocks_start_as_the_identity():
  block = BasicBlock(16, zero_init_last_bn=True)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
  out = jax.jit(lambda x: block.apply(block.init(jax.random.key(0), x), x))(x)
  np.testing.assert_allclose(out, nn.relu(x))


# --- Errors ---------------------------------------------------------------------------


def test_unknown_model_lists_the_valid_names():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet5O'.*Valid model names.*resnet50"):
    create_model('resnet5O', num_classes=10)


@pytest.mark.parametrize('name', ['resnet18', 'preact_resnet20'])
def test_unknown_attention_fails_when_the_model_is_created(name):
  with pytest.raises(ValueError, match=r"Unknown attention 'squeeze'.*Valid attention names.*se"):
    create_model(name, num_classes=10, attention='squeeze')


def test_stage_overrides_need_one_entry_per_stage():
  model = create_model('resnet18', num_classes=10, attention='eca',
                       stage_attention_kwargs=({'kernel_size': 3},) * 3)
  with pytest.raises(ValueError, match='has 3 entries but the network has 4 stages'):
    abstract_init(model, (1, 32, 32, 3))


@pytest.mark.parametrize('depth, bottleneck', [(21, False), (30, True), (2, False)])
def test_preact_depth_must_fit_the_unit(depth, bottleneck):
  model = PreActResNet(depth=depth, bottleneck=bottleneck)
  with pytest.raises(ValueError, match=r'n \+ 2'):
    abstract_init(model, (1, 32, 32, 3))
