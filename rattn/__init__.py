"""rattn: attention in convolutional networks, in JAX/Flax.

Subpackages:
  attention  the visual attention layers and their registry (``create_attention``)
  models     backbones, the Residual Attention Network, the model registry (``create_model``)
  data       tfds + grain input pipelines
  train      train state, sharded steps, the training loop, checkpoints
"""

__version__ = "0.1.0"

from rattn import _xla_flags

_xla_flags.configure()  # before JAX starts a backend: see rattn/_xla_flags.py
