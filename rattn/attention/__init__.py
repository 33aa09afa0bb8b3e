"""Visual attention layers as Flax linen modules, behind one registry.

Importing this package registers every family; see ``list_attentions()``.
"""

from rattn.attention.registry import ATTENTIONS, create_attention, list_attentions, register_attention

# Each family registers its modules on import.
from rattn.attention.cbam import CBAM, CBAMChannelGate, CBAMSpatialGate
from rattn.attention.coord import CoordinateAttention, coord_hidden_channels
from rattn.attention.danet import DANetChannelAttention, DANetPositionAttention, DualAttention
from rattn.attention.eca import ECA, eca_kernel_size
from rattn.attention.se import SqueezeExcite
from rattn.attention.sge import SpatialGroupEnhance
