"""Reading attention back out of a model: one forward pass, every sown mask and gate.

Every attention module sows what it multiplies the features with into the
``intermediates`` collection (``rattn.attention.common.record``); the Residual
Attention Network sows its soft masks as ``mask``. Nothing here re-implements a
forward pass: ``collect_attention`` runs the model once with that collection
mutable and reads the values off. The ``*_maps`` / ``channel_weights`` helpers
then reduce each kind of gate to something drawable:

=========================  ==========================  ===========================
sown by                    name and shape              drawn as
=========================  ==========================  ===========================
RAN attention module       ``mask`` (B, H, W, C)        overlays: channel mean, max,
                                                        one channel
SE, ECA                    ``gate`` (B, 1, 1, C)        bar chart over channels
CBAM, CBAM channel gate    ``channel_gate`` (B,1,1,C)   bar chart over channels
CBAM, CBAM spatial gate    ``spatial_gate`` (B,H,W,1)   overlay
SGE                        ``gate`` (B, H, W, G)        overlay of the group mean
coordinate attention       ``gate_h`` (B,H,1,C),        overlay of mean_c a_h a_w
                           ``gate_w`` (B,1,W,C)
DANet position attention   ``position_map`` (B, N, N)   overlay of the attention each
                                                        position receives (mean over
                                                        the N query positions)
DANet channel attention    ``channel_map`` (B, C, C)    C x C matrix
=========================  ==========================  ===========================
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterator, Mapping, Tuple

import flax.linen as nn
import jax
import numpy as np

from rattn.models.ran import collect_masks

# The RAN's soft masks ('mask') are read by collect_masks, which also splits
# scanned stages back into modules. Its keys never clash with a gate's key,
# which always ends in one of GATE_NAMES.
_RAN_KEY = re.compile(r'^stage\d+/attention\d+$')
CHANNEL_GATES = ('gate', 'channel_gate')
COORD_GATES = ('gate_h', 'gate_w')
# Every name the attention layers sow (the table above). Backbones sow other
# things too (their final 'features'), which are not attention.
GATE_NAMES = CHANNEL_GATES + COORD_GATES + ('spatial_gate', 'position_map', 'channel_map')



def _sown(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Iterator[
    Tuple[Tuple[str, ...], str, Any]]:
  """(module path, sow name, value) for every sown value, in the order modules ran.

  Walks the dicts in insertion order (the order Flax created the modules in)
  rather than flattening with ``jax.tree``, which sorts keys ('block10' before
  'block2'). ``sow`` appends to a tuple, one entry per call of the module.
  """
  for key, value in tree.items():
    if isinstance(value, tuple):
      for i, entry in enumerate(value):
        yield prefix, key if len(value) == 1 else f'{key}#{i}', entry
    elif isinstance(value, Mapping):
      yield from _sown(value, prefix + (key,))


def collect_attention(model: nn.Module, variables: Mapping[str, Any],
                      images: jax.Array) -> Dict[str, np.ndarray]:
  """Every mask and gate of one inference forward pass, keyed by module path, shallow to deep.

  Args:
    model: any rattn model (or attention module) built with sown gates.
    variables: its variables (``params``, ``batch_stats``), e.g. from
      ``rattn.train.load_trained``.
    images: a batch of NHWC images normalised as in training.

  Returns:
    RAN soft masks under ``collect_masks``' keys (``'stage1/attention1'``, ...),
    then every attention layer's gate (``GATE_NAMES``) as
    ``'<module path>/<sow name>'`` (e.g. ``'stage1_block1/attention/channel_gate'``),
    as numpy arrays with the batch first. A module that ran twice gets ``#0``, ``#1`` after its sow name.
  """
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  intermediates = state.get('intermediates', {})
  found: Dict[str, Any] = dict(collect_masks(intermediates))
  for path, name, value in _sown(intermediates):
    if name.split('#')[0] in GATE_NAMES:
      found['/'.join(path + (name,))] = value
  return {key: np.asarray(value) for key, value in found.items()}


def _split(key: str) -> Tuple[str, str]:
  """'a/b/attention/gate#1' -> ('a/b/attention', 'gate')."""
  path, _, name = key.rpartition('/')
  return path, name.split('#')[0]


def ran_masks(attention: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The RAN soft masks (B, H, W, C) among ``collect_attention``'s values."""
  return {k: v for k, v in attention.items() if _RAN_KEY.match(k)}


def channel_weights(attention: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """(B, C) channel gates: SE's and ECA's ``gate``, CBAM's ``channel_gate``."""
  return {k: v.reshape(v.shape[0], v.shape[-1]) for k, v in attention.items()
          if _split(k)[1] in CHANNEL_GATES and v.ndim == 4 and v.shape[1:3] == (1, 1)}


def _square_side(positions: int, key: str) -> int:
  side = math.isqrt(positions)
  if side * side != positions:
    raise ValueError(f'{key}: cannot lay {positions} positions out as a square map; '
                     'position maps are drawn for square feature maps only.')
  return side


def spatial_maps(attention: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """(B, h, w) spatial maps, one per module, keyed '<module path>/<what was drawn>'.

  CBAM's spatial gate as it is; SGE's per-group gates averaged over groups;
  coordinate attention's effective gate a_h * a_w averaged over channels (the
  mean of the product, not the product of the means); DANet's position map as
  the attention each position receives, averaged over the query positions.
  """
  maps: Dict[str, np.ndarray] = {}
  coord: Dict[str, Dict[str, np.ndarray]] = {}
  for key, value in attention.items():
    path, name = _split(key)
    if name == 'spatial_gate' or (name == 'gate' and value.ndim == 4
                                  and value.shape[1] * value.shape[2] > 1):
      maps[key] = value.mean(axis=-1)
    elif name in COORD_GATES:
      coord.setdefault(path, {})[name] = value
      if len(coord[path]) == 2:
        gate_h, gate_w = coord[path]['gate_h'][:, :, 0], coord[path]['gate_w'][:, 0]
        maps[f'{path}/gate_h*gate_w'] = np.einsum('bhc,bwc->bhw', gate_h, gate_w) / gate_h.shape[-1]
    elif name == 'position_map':
      side = _square_side(value.shape[-1], key)
      maps[key] = value.mean(axis=1).reshape(value.shape[0], side, side)
  return maps


def channel_affinities(attention: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """(B, C, C) DANet channel-attention maps (row i: how channel i mixes the others)."""
  return {k: v for k, v in attention.items() if _split(k)[1] == 'channel_map'}
