"""The attention registry: one place that maps attention names to Flax modules.

Follows timm's ``create_attn``: every attention family registers its modules under
lower-case names, and every backbone takes an ``attention=`` name. All modules share
one call convention: ``module(x, train=False)`` with NHWC ``x``, returning the same
shape, and accept ``dtype`` / ``param_dtype`` fields.
"""

from __future__ import annotations

from typing import List, Optional

import flax.linen as nn

from rattn.registry import Registry

ATTENTIONS = Registry('attention')
register_attention = ATTENTIONS.register


def create_attention(attention: Optional[str], /, **kwargs) -> Optional[nn.Module]:
  """Builds the attention module registered as ``attention``; ``None``/``''`` gives ``None``.

  ``kwargs`` go to the module (``dtype``, ``param_dtype``, Flax's ``name``, and the
  family's own fields such as ``reduction``).

  Raises:
    ValueError: if ``attention`` is not registered; the message lists the valid names.
  """
  if not attention:
    return None
  return ATTENTIONS.get(attention)(**kwargs)


def list_attentions() -> List[str]:
  return ATTENTIONS.names()
