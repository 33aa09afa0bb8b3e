"""Visual attention layers as Flax linen modules, behind one registry.

Importing this package registers every family; see ``list_attentions()``.
"""

from rattn.attention.registry import ATTENTIONS, create_attention, list_attentions, register_attention

# Each family registers its modules on import.
# (families are imported below as they are added)
