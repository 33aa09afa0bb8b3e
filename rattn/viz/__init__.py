"""Seeing attention: read every sown mask and gate of a model, and draw them.

    from rattn import viz
    attention = viz.collect_attention(model, variables, images)   # one forward pass
    figures = viz.attention_figures(model, variables, images, mean, std, channel=0)
    figures['ran_masks'].savefig('masks.png')

``collect`` reads the ``intermediates`` collection (RAN soft masks through
``rattn.models.ran.collect_masks``) and reduces each kind of gate to drawable
arrays; ``display`` turns normalised images and maps into pixels; ``figures``
builds matplotlib figures (no pyplot: nothing touches the interactive backend).
Command line: ``python -m experiments.visualize --workdir DIR --out masks.png``.
"""

from rattn.viz.collect import (channel_affinities, channel_weights, collect_attention,
                               ran_masks, spatial_maps)
from rattn.viz.display import overlay, to_rgb, unnormalize, upsample, value_range
from rattn.viz.figures import (NoAttentionError, affinity_figure, attention_figures,
                               channel_gate_figure, ran_mask_figure, spatial_map_figure)

__all__ = [
    'NoAttentionError',
    'affinity_figure', 'attention_figures', 'channel_affinities', 'channel_gate_figure',
    'channel_weights', 'collect_attention', 'overlay', 'ran_mask_figure', 'ran_masks',
    'spatial_map_figure', 'spatial_maps', 'to_rgb', 'unnormalize', 'upsample', 'value_range',
]
