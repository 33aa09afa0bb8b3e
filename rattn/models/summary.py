"""Parameter and multiply-add counts for any registered model.

Multiply-adds are counted exactly from the model's jaxpr: every convolution
and matrix product contributes (output elements) x (reduction length); the
element-wise work (BN, activations, pooling, resizing) is left out, as in the
papers' "FLOPs" figures, which are multiply-adds.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

from rattn.models.registry import create_model


def abstract_variables(model, input_shape: Sequence[int]):
  """The model's variables as shapes only (nothing is allocated or computed)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False),
                        jax.random.key(0), x)


def count_params(model=None, input_shape: Sequence[int] = (1, 224, 224, 3),
                 variables=None) -> int:
  """Trainable parameters (the ``params`` collection; BatchNorm statistics excluded).

  ``variables`` (concrete or abstract, e.g. a train state's) skips tracing
  ``model.init`` when at hand; ``model`` is then not needed.
  """
  if variables is None:
    variables = abstract_variables(model, input_shape)
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables['params'])))


def _eqn_macs(eqn) -> int:
  prim = eqn.primitive.name
  if prim == 'conv_general_dilated':
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params['dimension_numbers'].rhs_spec[0]
    return math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
  if prim == 'dot_general':
    out = eqn.outvars[0].aval.shape
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def jaxpr_macs(jaxpr) -> int:
  """Multiply-adds of a jaxpr, descending into calls, remat and scan bodies."""
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    subs = list(_sub_jaxprs(eqn))
    if not subs:
      continue
    if eqn.primitive.name == 'cond':  # one branch runs: count the largest
      total += max(jaxpr_macs(s) for s in subs)
    else:
      inner = sum(jaxpr_macs(s) for s in subs)
      total += inner * eqn.params.get('length', 1)
  return total


def count_macs(model, input_shape: Sequence[int] = (1, 224, 224, 3), variables=None) -> int:
  """Multiply-adds of one inference forward pass, per image."""
  if variables is None:
    variables = abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return jaxpr_macs(closed.jaxpr) // input_shape[0]


def model_summary(name: str, num_classes: int, image_size: int, channels: int = 3,
                  **kwargs) -> Dict[str, Any]:
  """Parameter and multiply-add counts of the registered model ``name``."""
  model = create_model(name, num_classes=num_classes, **kwargs)
  shape: Tuple[int, ...] = (1, image_size, image_size, channels)
  variables = abstract_variables(model, shape)
  return {'model': name, 'params': count_params(model, shape, variables),
          'macs': count_macs(model, shape, variables), 'input': shape[1:]}


def format_count(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(int(n))


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
  """A Markdown table, so that the same output can go into the README."""
  cells = [[str(r.get(c, '')) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
            for i, c in enumerate(columns)]
  line = lambda vals: '| ' + ' | '.join(v.ljust(w) for v, w in zip(vals, widths)) + ' |'
  out = [line(columns), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
  out += [line(row) for row in cells]
  return '\n'.join(out)


__all__ = ['abstract_variables', 'count_params', 'count_macs', 'jaxpr_macs', 'model_summary',
           'format_count', 'format_table']
