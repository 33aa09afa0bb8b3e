"""Tests of the attention layers.

The first group runs over ``list_attentions()``, so a newly registered module is
checked without edits; the rest pin each family's facts against hand computations.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattn.attention import (ECA, CoordinateAttention, SpatialGroupEnhance, create_attention,
                             eca_kernel_size, list_attentions)

SHAPE = (2, 8, 8, 64)  # batch, height, width, channels
# SGE's default 64 groups would leave one channel per group at 64 channels.
SMALL_KWARGS = {'sge': {'groups': 8}}
ALL = list_attentions()
# The modules this file's family-specific tests know about (new ones get the generic tests).
FAMILY_NAMES = ['se', 'cbam', 'cbam_channel', 'cbam_spatial', 'eca', 'sge', 'danet_position',
                'danet_channel', 'danet', 'coord']
BATCH_NORM_OWNERS = {'cbam', 'cbam_spatial', 'coord'}
DANET = ['danet', 'danet_channel', 'danet_position']


def build(name, **kwargs):
  return create_attention(name, **{**SMALL_KWARGS.get(name, {}), **kwargs})


def make_input(shape=SHAPE, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def abstract_init(module, shape=SHAPE):
  """Variable shapes without running anything (cheap, and raises what init raises)."""
  return jax.eval_shape(module.init, jax.random.key(0),
                        jax.ShapeDtypeStruct(shape, jnp.float32))


# Eager Flax compiles every op on its own, which costs seconds per module on CPU;
# the tests share one jitted init and forward per module instead.


@functools.cache
def init_variables(name):
  return jax.jit(build(name).init)(jax.random.key(1), make_input())


@functools.cache
def forward(name, dtype=jnp.float32):
  """Jitted ``(variables, x) -> (y, intermediates)`` in eval mode."""
  module = build(name, dtype=dtype)

  @jax.jit
  def run(variables, x):
    y, state = module.apply(variables, x, mutable=['intermediates'])
    return y, state['intermediates']

  return run


@functools.cache
def live_variables(name):
  """Initial variables with every parameter nudged off its init.

  DANet's gamma/beta and SGE's weight start at 0, which would make those modules
  trivial (and their other parameters gradient-free) in the generic tests.
  """
  variables = init_variables(name)
  rng = np.random.default_rng(2)  # NumPy noise: no per-shape JAX compilations
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32),
                        variables['params'])
  return {**variables, 'params': params}


def count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------- every registered module


@pytest.mark.parametrize('name', ALL)
def test_shape_dtype_and_jit(name):
  variables, x = live_variables(name), make_input()
  y = build(name).apply(variables, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_allclose(forward(name)(variables, x)[0], y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ALL)
def test_gradients_are_finite_and_reach_every_parameter(name):
  module, variables, x = build(name), live_variables(name), make_input()
  cotangent = make_input(seed=3)

  def loss(params, inputs):
    return jnp.sum(module.apply({**variables, 'params': params}, inputs) * cotangent)

  param_grads, input_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)
  for path, grad in jax.tree_util.tree_leaves_with_path(param_grads):
    assert bool(jnp.all(jnp.isfinite(grad))), jax.tree_util.keystr(path)
    assert float(jnp.max(jnp.abs(grad))) > 0, f'no gradient reaches {jax.tree_util.keystr(path)}'
  assert bool(jnp.all(jnp.isfinite(input_grad))) and float(jnp.max(jnp.abs(input_grad))) > 0


@pytest.mark.parametrize('name', ALL)
def test_bfloat16_compute_stays_close_to_float32(name):
  variables, x = live_variables(name), make_input()
  y32, _ = forward(name)(variables, x)
  y16, _ = forward(name, jnp.bfloat16)(variables, x)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('name', ALL)
def test_wrong_rank_input_is_a_clear_error(name):
  with pytest.raises(ValueError, match=r'expects NHWC input of rank 4.*rank 3'):
    abstract_init(build(name), SHAPE[1:])


@pytest.mark.parametrize('name', ALL)
def test_train_updates_batch_stats_only_where_batch_norm_exists(name):
  module, variables, x = build(name), init_variables(name), make_input() * 3 + 1

  @jax.jit
  def batch_stats_after(variables, x):
    return [module.apply(variables, x, train=train, mutable=['batch_stats'])[1]
            for train in (False, True)]

  eval_state, train_state = batch_stats_after(variables, x)
  if 'batch_stats' not in variables:
    assert not train_state and not eval_state
    return
  before = jax.tree.leaves(variables['batch_stats'])
  assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(eval_state)))
  assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(train_state)))


def test_batch_norm_owners():
  owners = {name for name in FAMILY_NAMES if 'batch_stats' in init_variables(name)}
  assert owners == BATCH_NORM_OWNERS


@pytest.mark.parametrize('name', ALL)
def test_sown_gates_lie_in_the_unit_interval_and_maps_are_distributions(name):
  _, sown = forward(name)(live_variables(name), make_input())
  assert sown, f'{name} sows nothing into intermediates'
  for key, (value,) in sown.items():
    if 'gate' in key:
      assert bool(jnp.all((value > 0) & (value < 1))), key
    else:
      assert key.endswith('_map'), f'unexpected sown name {key!r}'
      assert bool(jnp.all(value >= 0)), key
      np.testing.assert_allclose(jnp.sum(value, axis=-1), 1.0, rtol=1e-5, err_msg=key)


# ---------------------------------------------------------------- registry


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match='Valid attention names are') as err:
    create_attention('squeeze_excite')
  for name in ALL:
    assert name in str(err.value)


@pytest.mark.parametrize('empty', [None, ''])
def test_empty_name_gives_no_module(empty):
  assert create_attention(empty) is None


def test_family_names_are_registered():
  assert set(FAMILY_NAMES) <= set(ALL)


# ---------------------------------------------------------------- parameter counts

def se_count(c):
  return (c * (c // 16) + c // 16) + (c // 16 * c + c)  # two Dense layers with biases


def position_count(c):
  return 2 * (c * (c // 8) + c // 8) + (c * c + c) + 1  # query, key, value, gamma


def coord_count(c):
  m = max(8, c // 32)
  return (c * m + m) + 2 * m + 2 * (m * c + c)  # conv1, BN scale/bias, conv_h, conv_w


SPATIAL_COUNT = 7 * 7 * 2 + 2  # 7x7 conv 2 -> 1 without bias, BN scale and bias
PARAM_COUNTS = {
    'se': se_count,
    'cbam_channel': se_count,
    'cbam_spatial': lambda c: SPATIAL_COUNT,
    'cbam': lambda c: se_count(c) + SPATIAL_COUNT,
    'eca': lambda c: {64: 3, 512: 5}[c],  # the kernel size; see test_eca_kernel_size_by_hand
    'sge': lambda c: 2 * SMALL_KWARGS['sge']['groups'],
    'danet_position': position_count,
    'danet_channel': lambda c: 1,
    'danet': lambda c: position_count(c) + 1,
    'coord': coord_count,
}


@pytest.mark.parametrize('channels', [64, 512])
@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_parameter_count_matches_closed_form(name, channels):
  shapes = abstract_init(build(name), (1, 8, 8, channels))
  assert count(shapes['params']) == PARAM_COUNTS[name](channels)


# ---------------------------------------------------------------- SE and CBAM


def test_se_gate_equals_hand_computation():
  variables, x = live_variables('se'), make_input()
  _, sown = forward('se')(variables, x)
  p = variables['params']
  z = np.asarray(x).mean(axis=(1, 2))
  hidden = np.maximum(z @ p['fc1']['kernel'] + p['fc1']['bias'], 0)
  gate = 1 / (1 + np.exp(-(hidden @ p['fc2']['kernel'] + p['fc2']['bias'])))
  np.testing.assert_allclose(sown['gate'][0][:, 0, 0], gate, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['cbam_channel', 'cbam'])
def test_cbam_channel_gate_uses_one_shared_mlp(name):
  variables, x = live_variables(name), make_input()
  p = variables['params']
  # One Dense pair for both pooled paths; only the full CBAM adds the spatial conv+BN.
  expected = {'fc1', 'fc2'} | ({'conv', 'bn'} if name == 'cbam' else set())
  assert set(p) == expected

  def mlp(v):
    return np.maximum(v @ p['fc1']['kernel'] + p['fc1']['bias'], 0) @ p['fc2']['kernel'] \
        + p['fc2']['bias']

  xs = np.asarray(x)
  gate = 1 / (1 + np.exp(-(mlp(xs.mean(axis=(1, 2))) + mlp(xs.max(axis=(1, 2))))))
  _, sown = forward(name)(variables, x)
  np.testing.assert_allclose(sown['channel_gate'][0][:, 0, 0], gate, rtol=1e-5, atol=1e-6)


def test_cbam_spatial_gate_pools_max_then_mean():
  variables, x = init_variables('cbam_spatial'), make_input()
  for pooled_channel, pool in [(0, np.max), (1, np.mean)]:
    kernel = np.zeros((7, 7, 2, 1), np.float32)
    kernel[3, 3, pooled_channel, 0] = 1  # the centre tap reads one pooled map
    params = {**variables['params'], 'conv': {'kernel': jnp.asarray(kernel)}}
    _, sown = forward('cbam_spatial')({**variables, 'params': params}, x)
    # Eval-mode BN with its initial statistics (mean 0, var 1) divides by sqrt(1 + eps).
    logits = pool(np.asarray(x), axis=-1) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(sown['spatial_gate'][0][..., 0], 1 / (1 + np.exp(-logits)),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- ECA


def test_eca_kernel_size_by_hand():
  # t = int(|(log2 C + 1) / 2|); k = t if t is odd else t + 1:
  #   C=64:   (6 + 1)/2 = 3.5 -> t=3 (odd)  -> 3
  #   C=128:  (7 + 1)/2 = 4.0 -> t=4 (even) -> 5
  #   C=256:  (8 + 1)/2 = 4.5 -> t=4 (even) -> 5
  #   C=512:  (9 + 1)/2 = 5.0 -> t=5 (odd)  -> 5
  #   C=1024: (10 + 1)/2 = 5.5 -> t=5 (odd) -> 5
  #   C=2048: (11 + 1)/2 = 6.0 -> t=6 (even) -> 7
  assert [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]


def test_eca_kernel_size_override_and_validation():
  for k in (1, 7):
    shapes = abstract_init(ECA(kernel_size=k))
    assert shapes['params']['conv']['kernel'].shape == (k, 1, 1)
  with pytest.raises(ValueError, match='odd'):
    abstract_init(ECA(kernel_size=4))


def test_eca_gate_is_a_zero_padded_conv_across_channels():
  variables, x = live_variables('eca'), make_input()
  w = np.asarray(variables['params']['conv']['kernel'])[:, 0, 0]  # k = 3 at 64 channels
  z = np.pad(np.asarray(x).mean(axis=(1, 2)), ((0, 0), (1, 1)))
  logits = w[0] * z[:, :-2] + w[1] * z[:, 1:-1] + w[2] * z[:, 2:]
  _, sown = forward('eca')(variables, x)
  np.testing.assert_allclose(sown['gate'][0][:, 0, 0], 1 / (1 + np.exp(-logits)),
                             rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- SGE


def test_sge_official_init_gates_everything_at_sigmoid_one():
  x = make_input()
  y, sown = forward('sge')(init_variables('sge'), x)
  sigmoid_one = 1 / (1 + math.exp(-1))
  np.testing.assert_allclose(sown['gate'][0], sigmoid_one, rtol=1e-6)
  np.testing.assert_allclose(y, x * sigmoid_one, rtol=1e-6, atol=1e-7)


def test_sge_gate_equals_hand_computation():
  variables, x = live_variables('sge'), make_input()
  p, groups = variables['params'], SMALL_KWARGS['sge']['groups']
  grouped = np.asarray(x).reshape(*SHAPE[:3], groups, SHAPE[3] // groups)
  similarity = (grouped * grouped.mean(axis=(1, 2), keepdims=True)).sum(-1)
  centred = similarity - similarity.mean(axis=(1, 2), keepdims=True)
  standardised = centred / (similarity.std(axis=(1, 2), keepdims=True, ddof=1) + 1e-5)
  gate = 1 / (1 + np.exp(-(standardised * p['weight'] + p['bias'])))
  _, sown = forward('sge')(variables, x)
  np.testing.assert_allclose(sown['gate'][0], gate, rtol=1e-4, atol=1e-6)


def test_sge_groups_must_divide_channels():
  with pytest.raises(ValueError, match='groups=7 must divide the 64'):
    abstract_init(SpatialGroupEnhance(groups=7))


# ---------------------------------------------------------------- DANet


@pytest.mark.parametrize('name', DANET)
def test_danet_is_exactly_the_identity_at_init(name):
  x = make_input() * 10
  np.testing.assert_array_equal(forward(name)(init_variables(name), x)[0], x)


@pytest.mark.parametrize('name', ['danet', 'danet_position'])
def test_danet_guards_the_quadratic_position_map(name):
  with pytest.raises(ValueError, match=r'64 positions, more than max_positions=32'):
    abstract_init(build(name, max_positions=32))


# ---------------------------------------------------------------- coordinate attention


@pytest.mark.parametrize('channels, mip', [(16, 8), (64, 8), (256, 8), (512, 16), (1024, 32)])
def test_coord_bottleneck_width_is_max_8_c_over_32(channels, mip):
  shapes = abstract_init(CoordinateAttention(), (1, 4, 6, channels))
  p = shapes['params']
  assert p['conv1']['kernel'].shape == (1, 1, channels, mip)
  assert p['conv_h']['kernel'].shape == p['conv_w']['kernel'].shape == (1, 1, mip, channels)


# ---------------------------------------------------------------- spatial permutations

# Global-pool gates and all-pairs attention treat positions as a set; conv and
# coordinate gates know where each position is.
PERMUTATION_EQUIVARIANT = ['se', 'eca', 'cbam_channel', 'sge', 'danet_position',
                           'danet_channel', 'danet']
NOT_PERMUTATION_EQUIVARIANT = ['cbam', 'cbam_spatial', 'coord']


def permute_positions(x, perm):
  b, h, w, c = x.shape
  return x.reshape(b, h * w, c)[:, perm].reshape(b, h, w, c)


@pytest.mark.parametrize('name', PERMUTATION_EQUIVARIANT + NOT_PERMUTATION_EQUIVARIANT)
def test_spatial_permutation_equivariance(name):
  run, variables, x = forward(name), live_variables(name), make_input()
  perm = np.random.default_rng(0).permutation(SHAPE[1] * SHAPE[2])
  permuted_out = run(variables, permute_positions(x, perm))[0]
  out_permuted = permute_positions(run(variables, x)[0], perm)
  if name in PERMUTATION_EQUIVARIANT:
    np.testing.assert_allclose(permuted_out, out_permuted, rtol=1e-4, atol=1e-5)
  else:
    assert float(jnp.max(jnp.abs(permuted_out - out_permuted))) > 1e-2


def test_coord_is_equivariant_to_row_and_column_permutations():
  run, variables, x = forward('coord'), live_variables('coord'), make_input()
  rng = np.random.default_rng(1)
  rows, cols = rng.permutation(SHAPE[1]), rng.permutation(SHAPE[2])
  y = run(variables, x)[0]
  np.testing.assert_allclose(run(variables, x[:, rows])[0], y[:, rows], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(run(variables, x[:, :, cols])[0], y[:, :, cols],
                             rtol=1e-5, atol=1e-6)
