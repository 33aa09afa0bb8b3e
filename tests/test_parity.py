"""Number-for-number parity with PyTorch references written from the authors' code.

Each test builds a reference from ``tests/torch_reference`` (torch's default init, then
every constant-initialised parameter and every BatchNorm statistic set to random values,
so that nothing is compared at a trivial point such as gamma = 0), copies its
``state_dict`` into rattn with ``rattn.convert`` and compares, in float32: the eval-mode
output, the train-mode output (batch statistics), the updated running means and
variances, the gradient of a random projection of the train-mode output with respect to
the input and, for the RAN, every soft mask. One jitted function per model computes all
of it but the train-mode input gradient, which rattn computes in float64 (below).

Running variances follow rattn's convention (``rattn/norm.py``): the batch's biased
variance, where torch's BatchNorm2d uses the unbiased one. The expected values are
torch's update with that one factor, (n - 1) / n, applied to the batch term, with n
each layer's count of values per channel recorded during torch's pass.

rattn runs in float32; the reference runs in float64 (its weights are the float32 values
rattn receives), so that the comparison measures rattn's float32 error alone. Torch's own
float32 is not always that close: on the RAN's naive-attention module its train-mode
input gradient is off by 13% of the gradient's scale, where rattn's float32 is within
3e-6 of the float64 result.

The train-mode input gradient is compared with rattn in float64 too, at the same
tolerance as the rest, because in float32 it is not well posed: a ReLU whose input lies
closer to 0 than float32's error flips, and with train-mode batch statistics one flipped
unit moves the gradient of a whole image. On the ImageNet-layout RAN (jax 0.12.0.1, an
AMD EPYC CPU) one ReLU input of a stage-3 unit is -4.5e-6 in float64 and positive in
float32; it alone puts rattn's float32 gradient 7.7e-3 of the gradient's scale from the
float64 one, and rattn in float64 with that one unit switched on agrees with the float32
gradient to 5e-6 of the scale. No max-pool tie is involved (rattn's float64 gradient
matches torch's to 1e-7 of the scale). Which unit flips, if any, moves with XLA's
summation order from release to release and machine to machine, so no float32 tolerance
short of the gradient's size holds; in float64 both make the same decisions and the
comparison checks the backward pass itself.
"""

from __future__ import annotations

import copy
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from rattn import convert  # noqa: E402
from rattn.attention import create_attention, list_attentions  # noqa: E402
from rattn.models import create_model  # noqa: E402
from rattn.models import ran  # noqa: E402
from rattn.models.ran import collect_masks  # noqa: E402
from torch_reference import attention as ref_attention  # noqa: E402
from torch_reference import ran as ref_ran  # noqa: E402
from torch_reference import resnet as ref_resnet  # noqa: E402

RTOL = 1e-5
# Float32 sums of hundreds of products differ by summation order; that error scales
# with the size of the terms, not of the (possibly cancelling) result, so the absolute
# tolerance is 1e-5 of the compared tensor's largest magnitude.
SCALE_ATOL = 1e-5


def _randomize(module: torch.nn.Module, seed: int) -> None:
  """Random values for every constant-initialised parameter and all BN statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in module.named_parameters():
      if torch.all(p == p.flatten()[0]):  # BN gamma/beta, SGE weight/bias, DANet gamma
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


def _state(module: torch.nn.Module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _nhwc(t):
  t = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
  return np.transpose(t, (0, 2, 3, 1)) if t.ndim == 4 else t


def _float64():
  """A context in which jax computes in float64 (``jax.enable_x64`` from jax 0.8 on)."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _close(actual, expected, what, scale_atol=SCALE_ATOL):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  atol = scale_atol * float(np.max(np.abs(expected))) if expected.size else 0.
  chex.assert_trees_all_close(actual, expected, rtol=RTOL, atol=atol,
                              custom_message=what)


def _batch_stats(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _record_batch_sizes(module: torch.nn.Module):
  """Hooks recording, per BatchNorm2d, its values per channel (n) in the next pass."""
  counts = {}

  def hook(name):
    def record(_, inputs, __):
      assert name not in counts, f'{name} runs twice in one pass'
      counts[name] = inputs[0].numel() // inputs[0].shape[1]
    return record

  handles = [m.register_forward_hook(hook(name)) for name, m in module.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
  return counts, handles


def _biased_running_vars(before, after, counts, module):
  """torch's state after a train pass, its running variances redone with biased batch vars.

  torch: v' = (1 - m) v + m u, u the unbiased batch variance; rattn's convention uses
  the biased one, u (n - 1) / n.
  """
  state = dict(after)
  for name, m in module.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      key, n, mom = f'{name}.running_var', counts[name], m.momentum
      unbiased = (after[key] - (1 - mom) * before[key]) / mom
      state[key] = (1 - mom) * before[key] + mom * unbiased * (n - 1) / n
  return state


def check_parity(reference: torch.nn.Module, model, to_variables, x_nchw: np.ndarray,
                 masks=None) -> None:
  """Compares ``model`` (converted by ``to_variables(state_dict, template)``) to ``reference``.

  ``masks``: ``(reference module -> {name: NCHW mask}, intermediates -> {name: mask})``
  to compare the soft masks of both passes too.
  """
  x_nhwc = np.transpose(x_nchw, (0, 2, 3, 1)).astype(np.float32)
  template = jax.eval_shape(model.init, jax.random.key(0), x_nhwc)
  variables = to_variables(_state(reference), template)
  reference = reference.double()
  x_nchw = x_nchw.astype(np.float64)

  # Torch: eval output and input gradient, then (on a copy) the same in train mode and
  # the new statistics. Both gradients are of a random projection of the output.
  torch_masks = lambda m: {k: _nhwc(v) for k, v in masks[0](m).items()} if masks else {}
  rng = np.random.RandomState(1)

  def torch_pass(module):
    x = torch.from_numpy(x_nchw).requires_grad_(True)
    out = module(x)
    cotangent = rng.normal(size=out.shape)
    (out * torch.from_numpy(cotangent)).sum().backward()
    return _nhwc(out), _nhwc(x.grad), _nhwc(cotangent), torch_masks(module)

  trained = copy.deepcopy(reference).train()
  eval_out, eval_grad, eval_cot, eval_masks = torch_pass(reference.eval())
  before = _state(trained)
  counts, handles = _record_batch_sizes(trained)
  train_out, train_grad, train_cot, train_masks = torch_pass(trained)
  for handle in handles:
    handle.remove()
  new_stats = to_variables(_biased_running_vars(before, _state(trained), counts, trained),
                           template).get('batch_stats', {})

  def projected(model, variables, x, train, cotangent):
    y, state = model.apply(variables, x, train=train,
                           mutable=['batch_stats', 'intermediates'] if train else
                           ['intermediates'])
    return jnp.sum(y * cotangent), (y, state)

  @jax.jit
  def run(variables, x, eval_cot):
    eval_grad, (out, eval_state) = jax.grad(projected, argnums=2, has_aux=True)(
        model, variables, x, False, eval_cot)
    y, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'])
    return (out, eval_state['intermediates'], eval_grad, y, state['intermediates'],
            state.get('batch_stats', {}))

  out, eval_inter, grad, y, train_inter, stats = run(variables, x_nhwc,
                                                     eval_cot.astype(np.float32))
  _close(out, eval_out, 'eval output')
  _close(grad, eval_grad, 'eval input gradient')
  _close(y, train_out, 'train output')
  # The train-mode input gradient in float64 (see the module docstring): the same
  # variables, input and cotangent as torch's, exactly.
  with _float64():
    model64 = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    as64 = functools.partial(jnp.asarray, dtype=jnp.float64)
    train64 = jax.jit(lambda v, x, c: jax.grad(projected, argnums=2, has_aux=True)(
        model64, v, x, True, c))
    y_grad, _ = train64(jax.tree.map(as64, variables), as64(x_nhwc), as64(train_cot))
    assert y_grad.dtype == jnp.float64
    y_grad = np.asarray(y_grad)
  _close(y_grad, train_grad, 'train input gradient')
  ours, theirs = _batch_stats(stats), _batch_stats(new_stats)
  assert ours.keys() == theirs.keys()
  for k in ours:
    _close(ours[k], theirs[k], f'running statistic {k}')
  for name, expected, inter in (('eval', eval_masks, eval_inter),
                                ('train', train_masks, train_inter)):
    if masks:
      got = masks[1](inter)
      assert got.keys() == expected.keys()
      for k in got:
        _close(got[k], expected[k], f'{name} mask {k}')


# --- Attention layers --------------------------------------------------------

# Non-square, so that a transposed map or a swapped pooling axis cannot pass.
ATTENTION_INPUT = (2, 128, 6, 5)


@pytest.mark.parametrize('name', list_attentions())
def test_attention_layer_matches_reference(name):
  torch.manual_seed(0)
  reference = ref_attention.make_attention(name, ATTENTION_INPUT[1])
  _randomize(reference, seed=1)
  x = np.random.RandomState(2).normal(size=ATTENTION_INPUT).astype(np.float32)
  check_parity(reference, create_attention(name),
               lambda sd, tpl: convert.convert_attention_state_dict(name, sd, tpl), x)


# --- ResNets -------------------------------------------------------------------

_ECA_OFFICIAL_K = (3, 5, 5, 7)

# model -> (block, layers, attention name, attention factory (stage, channels) -> module).
# The plain ResNet-50 is the attention ResNet-50s' trunk, so it adds no check of its own.
RESNETS = {
    'resnet18': (ref_resnet.BasicBlock, (2, 2, 2, 2), None, None),
    'se_resnet50': (ref_resnet.Bottleneck, (3, 4, 6, 3), 'se',
                    lambda s, c: ref_attention.SEModule(c)),
    # Spatial-gate BN momentum 0.1: rattn's documented convention (the release: 0.01).
    'cbam_resnet50': (ref_resnet.Bottleneck, (3, 4, 6, 3), 'cbam',
                      lambda s, c: ref_attention.CBAM(c, bn_momentum=0.1)),
    'eca_resnet50_official': (ref_resnet.Bottleneck, (3, 4, 6, 3), 'eca',
                              lambda s, c: ref_attention.ECALayer(_ECA_OFFICIAL_K[s])),
    'sge_resnet50': (ref_resnet.Bottleneck, (3, 4, 6, 3), 'sge',
                     lambda s, c: ref_attention.SpatialGroupEnhance()),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(RESNETS))
def test_resnet_matches_reference(name):
  block, layers, attention, factory = RESNETS[name]
  torch.manual_seed(0)
  reference = ref_resnet.ResNet(block, layers, num_classes=10, attention_name=attention,
                                attention=factory)
  _randomize(reference, seed=1)
  # 64x64 leaves 2x2 maps in the last stage (SGE standardises over >= 2 positions).
  x = np.random.RandomState(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
  check_parity(reference, create_model(name, num_classes=10),
               lambda sd, tpl: convert.convert_state_dict(name, sd, tpl), x)


# timm builds an ECA or CBAM ResNet-50 as resnet50(block_args=dict(attn_layer=...)) and keeps
# the module as `se`; its CBAM differs from the release (no MLP biases, [mean, max] pooling).
TIMM_RESNETS = {
    'cbam_resnet50': ('timm_cbam', lambda s, c: ref_attention.TimmCbam(c)),
    'eca_resnet50': ('timm_eca', lambda s, c: ref_attention.TimmEca(c)),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(TIMM_RESNETS))
def test_timm_attention_resnet_matches_reference(name):
  attention, factory = TIMM_RESNETS[name]
  torch.manual_seed(0)
  reference = ref_resnet.ResNet(ref_resnet.Bottleneck, (3, 4, 6, 3), num_classes=10,
                                attention_name=attention, attention=factory)
  _randomize(reference, seed=1)
  assert any('.se.' in k for k in reference.state_dict())
  x = np.random.RandomState(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
  # In float64: in float32, the CBAM net's eval input gradient differed from the float64
  # reference by up to 2.0e-6 (tolerance 6.3e-8; its eval output agreed), which float64
  # removes: rounding, not the mapping.
  with jax.enable_x64(True):
    check_parity(reference, create_model(name, num_classes=10, dtype=jnp.float64,
                                         param_dtype=jnp.float64),
                 lambda sd, tpl: convert.convert_state_dict(name, sd, tpl), x)


# --- Residual Attention Network --------------------------------------------------

RAN_CASES = {
    # ImageNet layout at 96x96, width 1/8: stage maps 24, 12, 6 and 3x3 mask bottoms;
    # every ceil-mode pool (24 -> 12 -> 6 -> 3) keeps a window that floor mode would
    # drop, and the odd 3x3 bottoms make the corner-aligned upsampling fractional.
    'imagenet': ('ran56', 96, 0.125),
    # CIFAR layout at 32x32, width 1/4: stage maps 32, 16, 8 (mask levels 2, 1, 0).
    'cifar': ('ran56_cifar', 32, 0.25),
}
NETWORK_MASKS = (lambda m: m.masks, collect_masks)


def _ran_reference(model, num_classes):
  scaled = lambda c: max(4, int(round(c * model.width / 4)) * 4)  # rattn.models.ran._scaled
  return ref_ran.ResidualAttentionNetwork(
      num_classes, model.modules_per_stage, [scaled(c) for c in model.stage_widths],
      model.pool_levels, scaled(model.final_width), model.final_strides, model.stem,
      scaled(model.stem_width), model.p, model.t, model.r, model.attention_type,
      model.residual_learning)


@pytest.mark.slow
@pytest.mark.parametrize('case', list(RAN_CASES))
def test_ran_matches_reference(case):
  name, size, width = RAN_CASES[case]
  model = create_model(name, num_classes=10, width=width)
  torch.manual_seed(0)
  reference = _ran_reference(model, 10)
  _randomize(reference, seed=1)
  x = np.random.RandomState(2).normal(size=(2, 3, size, size)).astype(np.float32)
  check_parity(reference, model, lambda sd, tpl: convert.convert_state_dict(name, sd, tpl), x,
               masks=NETWORK_MASKS)


# The ablation variants on one attention module (a whole network each would cost a
# compile each): 16 channels at 16x16, mask pooling twice (16 -> 8 -> 4).
MODULE_CASES = {
    'channel': dict(attention_type='channel'),
    'spatial': dict(attention_type='spatial'),
    'nal': dict(residual_learning=False),
    'p2-t1-r2': dict(p=2, t=1, r=2),
}
MODULE_MASKS = (lambda m: {'mask': m.mask}, lambda inter: {'mask': inter['mask'][-1]})


@pytest.mark.parametrize('case', list(MODULE_CASES))
def test_ran_attention_module_matches_reference(case):
  fields = {**dict(p=1, t=2, r=1, attention_type='mixed', residual_learning=True),
            **MODULE_CASES[case]}
  model = ran.AttentionModule(16, 2, **fields)
  torch.manual_seed(0)
  reference = ref_ran.AttentionModule(16, 2, fields['p'], fields['t'], fields['r'],
                                      fields['attention_type'], fields['residual_learning'])
  _randomize(reference, seed=1)
  x = np.random.RandomState(2).normal(size=(2, 16, 16, 16)).astype(np.float32)
  # The RAN layout (rattn's own module names) fits any part of the network.
  check_parity(reference, model,
               lambda sd, tpl: convert.convert_state_dict('ran56_cifar', sd, tpl), x,
               masks=MODULE_MASKS)
