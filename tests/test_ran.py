"""Residual Attention Network: resampling semantics, mask properties, layouts, depths, steps."""

import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rattn.models import ran
from rattn.models.layers import PreActBottleneck
from rattn.models.registry import MODELS, create_model
from rattn.models.summary import count_macs, count_params

RAN_NAMES = ['ran56', 'ran92', 'ran128', 'ran164',
             'ran56_cifar', 'ran92_cifar', 'ran128_cifar', 'ran164_cifar', 'ran236_cifar',
             'ran452_cifar']
SCANNED = {'ran164', 'ran236_cifar'}


def _abstract_params(model, size):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)['params']


def _is_unit(tree):
  return isinstance(tree, dict) and {'conv1', 'conv2', 'conv3', 'bn1'} <= set(tree)


def _count_units(tree):
  if _is_unit(tree):
    return 1
  return sum(_count_units(v) for v in tree.values()) if isinstance(tree, dict) else 0


def _synthetic_variables(model, x):
  """Variables in the model's exact tree, filled by numpy: He-normal kernels, identity BN.

  ``model.init`` would compile the network a second time (or dispatch it op by op), which
  costs more than the train step itself for the deep nets; the tree still comes from
  tracing ``init``, and real initialisation is exercised by the smaller tests.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.RandomState(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':  # conv (kh, kw, in, out), possibly stacked by scan; dense (in, out)
      fan_in = np.prod(leaf.shape[-4:-1]) if leaf.ndim >= 4 else leaf.shape[-2]
      return rng.normal(0., np.sqrt(2. / fan_in), leaf.shape).astype(leaf.dtype)
    return np.full(leaf.shape, 1. if name in ('scale', 'var') else 0., leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _check_forward_and_train_step(model, shape, num_classes):
  tx = optax.sgd(0.01, momentum=0.9)

  @jax.jit  # one compile for both the inference forward and the SGD step
  def step(variables, opt_state, x, y):
    logits = model.apply(variables, x, train=False)

    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                    x, train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates['batch_stats']

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    updates, opt_state = tx.update(grads, opt_state, variables['params'])
    return optax.apply_updates(variables['params'], updates), stats, opt_state, loss, logits

  x = jax.random.normal(jax.random.key(1), shape)
  y = jnp.arange(shape[0]) % num_classes
  variables = _synthetic_variables(model, x)
  params, stats, _, loss, logits = step(variables, tx.init(variables['params']), x, y)
  assert logits.shape == (shape[0], num_classes) and bool(jnp.all(jnp.isfinite(logits)))
  assert np.isfinite(float(loss))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, variables['params'])
  assert all(jax.tree.leaves(moved)), 'every parameter should receive a gradient'
  assert not np.allclose(stats['final_bn']['mean'], variables['batch_stats']['final_bn']['mean'])


# ---------------------------------------------------------------------------
# Caffe-compatible resampling.
# ---------------------------------------------------------------------------


def test_resize_align_corners_matches_hand_computation():
  x = jnp.array([[0., 10.], [20., 70.]])[None, :, :, None]
  expected = [[0., 5., 10.], [10., 25., 40.], [20., 45., 70.]]
  np.testing.assert_allclose(ran.resize_align_corners(x, (3, 3))[0, :, :, 0], expected)
  # 3 -> 5 samples positions 0, .5, 1, 1.5, 2; 5 -> 3 samples 0, 2, 4 exactly.
  row = jnp.array([1., 3., 9.])[None, None, :, None]
  np.testing.assert_allclose(ran.resize_align_corners(row, (1, 5))[0, 0, :, 0],
                             [1., 2., 3., 6., 9.])
  five = jnp.array([4., -1., 7., 2., 5.])[None, :, None, None]
  np.testing.assert_array_equal(ran.resize_align_corners(five, (3, 1))[0, :, 0, 0], [4., 7., 5.])
  # A 1-pixel output takes the first row/column, as Caffe's Interp does.
  np.testing.assert_array_equal(ran.resize_align_corners(five, (1, 1))[0, 0, 0, 0], 4.)


@pytest.mark.parametrize('src,dst', [((7, 4), (13, 7)), ((4, 15), (7, 29)), ((13, 8), (4, 57)),
                                     ((2, 3), (2, 3))])
def test_resize_align_corners_keeps_corners_and_matches_loop(src, dst):
  x = jax.random.normal(jax.random.key(0), (2, *src, 3))
  y = ran.resize_align_corners(x, dst)
  assert y.shape == (2, *dst, 3)
  for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    np.testing.assert_array_equal(y[:, i, j], x[:, i, j])
  # Reference: Caffe's Interp loop, one output pixel at a time.
  xn, ref = np.asarray(x, np.float64), np.zeros((2, *dst, 3))
  scale = [(s - 1) / (d - 1) if d > 1 else 0. for s, d in zip(src, dst)]
  for i in range(dst[0]):
    for j in range(dst[1]):
      hi, wj = i * scale[0], j * scale[1]
      h0, w0 = int(hi), int(wj)
      h1, w1 = min(h0 + 1, src[0] - 1), min(w0 + 1, src[1] - 1)
      a, b = hi - h0, wj - w0
      ref[:, i, j] = ((1 - a) * ((1 - b) * xn[:, h0, w0] + b * xn[:, h0, w1])
                      + a * ((1 - b) * xn[:, h1, w0] + b * xn[:, h1, w1]))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size,expected', [(112, 56), (56, 28), (28, 14), (14, 7), (7, 3),
                                           (32, 16), (16, 8), (8, 4), (15, 7), (57, 28),
                                           (2, 1), (1, 1)])
def test_max_pool_ceil_mode_sizes(size, expected):
  assert ran.max_pool_ceil(jnp.zeros((1, size, size, 1))).shape[1:3] == (expected, expected)


def test_max_pool_ceil_mode_values():
  x = jnp.arange(16.).reshape(1, 4, 4, 1)
  # Windows rows/cols {0,1,2} and {2,3}: the clipped window is the max of what exists.
  np.testing.assert_array_equal(ran.max_pool_ceil(x)[0, :, :, 0], [[10., 11.], [14., 15.]])
  np.testing.assert_array_equal(ran.max_pool_ceil(-x)[0, :, :, 0], [[0., -2.], [-8., -10.]])


@pytest.mark.parametrize('height,width', [(32, 32), (57, 28), (7, 2), (1, 4)])
def test_max_pool_ceil_equals_reduce_window_with_gradient(height, width):
  # The strided-slice implementation must be flax's max_pool with ceil-mode padding, values and
  # gradients (random input: no ties, so the subgradient is unique).
  x = jax.random.normal(jax.random.key(height), (2, height, width, 3))
  pads = [(0, (-(-max(n - 3, 0) // 2)) * 2 + 3 - n) for n in (height, width)]
  reference = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)
  np.testing.assert_array_equal(ran.max_pool_ceil(x), reference(x))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)))
  np.testing.assert_allclose(jax.grad(loss(ran.max_pool_ceil))(x), jax.grad(loss(reference))(x),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# The attention module.
# ---------------------------------------------------------------------------


def _module_masks(module, x):
  variables = module.init(jax.random.key(0), x)
  y, state = module.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'])
  return variables, y, state['intermediates']['mask'][0]


@pytest.mark.parametrize('attention_type', ['mixed', 'channel', 'spatial'])
def test_mask_activation_properties(attention_type):
  module = ran.AttentionModule(16, pool_levels=2, attention_type=attention_type)
  _, y, mask = _module_masks(module, jax.random.normal(jax.random.key(1), (2, 15, 15, 16)))
  assert mask.shape == y.shape == (2, 15, 15, 16)
  if attention_type == 'channel':
    # Unit norm, except where ReLU zeroed every input of the last conv (a zero logit vector).
    norm = np.asarray(jnp.linalg.norm(mask, axis=-1))
    np.testing.assert_allclose(norm[norm > 0], 1., rtol=1e-5)
    assert np.mean(norm > 0) > .99
  else:
    assert float(mask.min()) >= 0. and float(mask.max()) <= 1.
  if attention_type == 'spatial':  # standardised logits: each channel's mean sigmoid ~ 1/2
    np.testing.assert_allclose(jnp.mean(mask, axis=(1, 2)), .5, atol=.1)


def test_unknown_attention_type_lists_valid_ones():
  with pytest.raises(ValueError, match='channel, mixed, spatial'):
    jax.eval_shape(ran.AttentionModule(8, 1, attention_type='softmax').init,
                   jax.random.key(0), jnp.zeros((1, 8, 8, 8)))


@pytest.mark.parametrize('residual_learning', [True, False])
@pytest.mark.parametrize('zero_by', ['kernel', 'activation'])
def test_zero_mask_gives_trunk_or_zero(residual_learning, zero_by, monkeypatch):
  # M = 0: ARL's (1 + M) T is the trunk T, NAL's M T is 0; the p post units follow.
  x = jax.random.normal(jax.random.key(1), (2, 15, 15, 16))
  if zero_by == 'kernel':  # the channel mask of an all-zero last conv is 0/eps = 0
    module = ran.AttentionModule(16, 2, attention_type='channel',
                                 residual_learning=residual_learning)
    variables = flax.core.unfreeze(module.init(jax.random.key(0), x))
    kernel = variables['params']['mask_branch']['conv2']['kernel']
    variables['params']['mask_branch']['conv2']['kernel'] = jnp.zeros_like(kernel)
  else:
    monkeypatch.setitem(ran.MASK_ACTIVATIONS, 'mixed', jnp.zeros_like)
    module = ran.AttentionModule(16, 2, residual_learning=residual_learning)
    variables = module.init(jax.random.key(0), x)
  y, state = module.apply(variables, x, capture_intermediates=True,
                          mutable=['intermediates'])
  inter = state['intermediates']
  np.testing.assert_array_equal(inter['mask'][0], 0.)
  trunk = inter['trunk2']['__call__'][0]
  post_input = trunk if residual_learning else jnp.zeros_like(trunk)
  post = PreActBottleneck(16).apply(
      {'params': variables['params']['post1'],
       'batch_stats': variables['batch_stats']['post1']}, post_input)
  np.testing.assert_allclose(y, post, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('size', [7, 15, 57, (15, 9)])
def test_down_up_returns_the_trunk_size(size):
  h, w = (size, size) if isinstance(size, int) else size
  x = jax.ShapeDtypeStruct((1, h, w, 8), jnp.float32)
  for levels in (0, 1, 2, 3):
    module = ran.AttentionModule(8, pool_levels=levels)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    y, state = jax.eval_shape(
        lambda v, x: module.apply(v, x, mutable=['intermediates']), variables, x)
    assert y.shape == state['intermediates']['mask'][0].shape == (1, h, w, 8)


def test_every_stage_mask_matches_its_trunk_at_odd_input_sizes():
  for name, size in [('ran56', 97), ('ran56', 57), ('ran56_cifar', 33), ('ran56_cifar', 15)]:
    model = create_model(name, num_classes=3, width=1 / 16 if 'cifar' not in name else .25)
    x = jnp.ones((1, size, size, 3))
    fn = lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    logits, state = jax.eval_shape(fn, variables, x)
    assert logits.shape == (1, 3)
    masks = ran.collect_masks(state['intermediates'])
    for key, mask in masks.items():
      trunk = state['intermediates'][key.replace('/', '_')]['__call__'][0]
      assert mask.shape == trunk.shape, (name, size, key)


# ---------------------------------------------------------------------------
# Layouts and depths.
# ---------------------------------------------------------------------------


def test_registry_entries_and_metadata():
  for name in RAN_NAMES:
    info = MODELS.info(name)
    cifar = name.endswith('_cifar')
    assert info['dataset'] == ('cifar' if cifar else 'imagenet')
    assert info['image_size'] == (32 if cifar else 224)
    assert info['num_classes'] == (10 if cifar else 1000)
    assert create_model(name, num_classes=7).depth == info['depth']
  assert MODELS.info('ran452_cifar')['paper_params'] == 8.6e6
  assert create_model('ran452_cifar', num_classes=10).p == 2


def _mask_units(levels, r):
  # down r per level, 2r at the bottom, r per level up, one skip per level above the bottom
  return 2 * r if levels == 0 else 2 * r * levels + levels - 1


@pytest.mark.parametrize('name', RAN_NAMES)
def test_depth_formula_from_the_parameter_tree(name):
  model = create_model(name, num_classes=10, width=.25)
  params = _abstract_params(model, 32)
  trunk_units, modules = 0, {}
  for key, sub in params.items():
    match = re.fullmatch(r'stage(\d)_attention(\d+)', key)
    if match:
      stage = int(match.group(1))
      modules[stage] = modules.get(stage, 0) + 1
      in_module = _count_units({k: v for k, v in sub.items() if k != 'mask_branch'})
      assert in_module == 2 * model.p + model.t
      levels = model.pool_levels[stage - 1]
      assert _count_units(sub['mask_branch']) == _mask_units(levels, model.r), key
      trunk_units += in_module
    else:
      trunk_units += _count_units(sub)
  assert tuple(modules[s] for s in sorted(modules)) == tuple(model.modules_per_stage)
  # Weighted layers along the trunk: 3 per unit + the stem conv + the classifier.
  assert 3 * trunk_units + 2 == model.depth == MODELS.info(name)['depth']
  m, rest = divmod(model.depth - 20, 36)
  assert rest == 0 and sum(model.modules_per_stage) * (2 * model.p + model.t) == 12 * m


@pytest.mark.parametrize('name', ['ran56', 'ran92'])
def test_imagenet_counts_match_the_paper(name):
  info = MODELS.info(name)
  model = create_model(name, num_classes=1000)
  assert abs(count_params(model) / info['paper_params'] - 1) < .03
  assert abs(count_macs(model) / info['paper_macs'] - 1) < .03


def test_collect_masks_names_and_order():
  model = create_model('ran92', num_classes=4, width=1 / 16)
  x = jnp.ones((1, 64, 64, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, x)
  masks = ran.collect_masks(state)
  assert list(masks) == ['stage1/attention1', 'stage2/attention1', 'stage2/attention2',
                         'stage3/attention1', 'stage3/attention2', 'stage3/attention3']
  assert [m.shape[1] for m in masks.values()] == [16, 8, 8, 4, 4, 4]


# ---------------------------------------------------------------------------
# Steps, remat and scan.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', [
    'ran56', 'ran92', 'ran128', 'ran56_cifar', 'ran92_cifar',
    pytest.param('ran164', marks=pytest.mark.slow),
    pytest.param('ran236_cifar', marks=pytest.mark.slow)])
def test_forward_and_train_step(name):
  # Reduced width; ImageNet nets on 64x64 inputs (stages at 16, 8, 4, then 2). The two
  # deepest run scanned, so a registered net also steps in that form; ran452_cifar steps
  # at full width below.
  imagenet = not name.endswith('_cifar')
  model = create_model(name, num_classes=5, width=1 / 16 if imagenet else .25,
                       scan=name in SCANNED)
  size = 64 if imagenet else 32
  _check_forward_and_train_step(model, (2, size, size, 3), 5)


@pytest.mark.slow
def test_ran452_cifar_full_width_train_step():
  model = create_model('ran452_cifar', num_classes=10, scan=True, remat=True)
  _check_forward_and_train_step(model, (2, 32, 32, 3), 10)


def _stack_modules(tree):
  """A plain model's variables in the layout of its scanned twin."""
  out, stacks = {}, {}
  for key, value in tree.items():
    match = re.fullmatch(r'(stage\d+)_attention(\d+)', key)
    if match:
      stacks.setdefault(f'{match.group(1)}_attentions', []).append(value)
    else:
      out[key] = value
  out.update({k: jax.tree.map(lambda *a: jnp.stack(a), *v) for k, v in stacks.items()})
  return out


# Two stages, two modules in the first so that the scan really loops; small otherwise.
_EQUIV = dict(num_classes=10, width=.25, modules_per_stage=(2, 1), stage_widths=(64, 128),
              pool_levels=(1, 0))
_EQUIV_X = np.random.RandomState(1).randn(2, 32, 32, 3).astype(np.float32)
_EQUIV_Y = np.array([3, 7])


def _loss_and_grads(model, params, stats):
  def loss_fn(p):
    logits, state = model.apply({'params': p, 'batch_stats': stats}, _EQUIV_X, train=True,
                                mutable=['batch_stats', 'intermediates'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, _EQUIV_Y).mean()
    return loss, (logits, state)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def test_remat_and_scan_match_the_plain_model():
  # One test for the three variants: the plain reference compiles once per process.
  plain = create_model('ran56_cifar', **_EQUIV)
  variables = plain.init(jax.random.key(0), _EQUIV_X)
  (loss_a, (logits_a, state_a)), grads_a = _loss_and_grads(
      plain, variables['params'], variables['batch_stats'])
  masks_a = ran.collect_masks(state_a)
  assert list(masks_a) == ['stage1/attention1', 'stage1/attention2', 'stage2/attention1']
  tol = dict(rtol=1e-4, atol=1e-5)
  close = lambda b, a: np.testing.assert_allclose(b, a, **tol)
  for remat, scan in [(True, False), (False, True), (True, True)]:
    model = create_model('ran56_cifar', remat=remat, scan=scan, **_EQUIV)
    relayout = _stack_modules if scan else (lambda t: t)
    (loss_b, (logits_b, state_b)), grads_b = _loss_and_grads(
        model, relayout(variables['params']), relayout(variables['batch_stats']))
    close(logits_b, logits_a)
    close(loss_b, loss_a)
    jax.tree.map(close, grads_b, relayout(grads_a))
    jax.tree.map(close, state_b['batch_stats'], relayout(state_a['batch_stats']))
    masks_b = ran.collect_masks(state_b)
    assert list(masks_b) == list(masks_a)
    for key in masks_a:
      close(masks_b[key], masks_a[key])


def test_bfloat16_compute_keeps_float32_params():
  model = create_model('ran56_cifar', num_classes=10, width=.25, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, x)
  assert logits.dtype == jnp.float32  # every model's logits, whatever the compute dtype
  assert all(m.dtype == jnp.bfloat16 for m in ran.collect_masks(state).values())
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
