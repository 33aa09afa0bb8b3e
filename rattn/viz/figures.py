"""Matplotlib figures of attention: RAN soft masks, channel gates, spatial gates.

Each function takes display images (B, H, W, 1|3) in [0, 1] (``unnormalize``)
and the arrays ``rattn.viz.collect`` returns, and builds one ``Figure``; it
neither shows nor saves it. ``attention_figures`` does the whole path from a
model and a normalised batch. The figures are built with ``Figure`` directly,
not pyplot, so nothing depends on (or changes) the interactive backend; a
notebook displays a returned figure as the value of a cell.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import matplotlib.cm
import matplotlib.colors
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rattn.viz.collect import (channel_affinities, channel_weights, collect_attention,
                               ran_masks, spatial_maps)
from rattn.viz.display import overlay, unnormalize, upsample, value_range

CMAP = 'jet'
PANEL_INCHES = 1.9  # one overlay with its colour bar


def _show_image(ax: Axes, image: np.ndarray) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def _overlay_panel(fig: Figure, ax: Axes, image: np.ndarray, heat: np.ndarray) -> None:
  """``heat`` (h, w), at the network's resolution, upsampled and blended over ``image``.

  The colour range is the map's own min..max (sigmoid gates of a briefly trained
  network vary in a narrow band that a fixed 0..1 scale would flatten); the colour
  bar states the actual values.
  """
  lo, hi = value_range(heat)
  ax.imshow(overlay(image, upsample(heat, image.shape[:2]), lo, hi, cmap=CMAP))
  ax.set_xticks([])
  ax.set_yticks([])
  mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(lo, hi), CMAP)
  _colour_bar(fig, mappable, ax)


def _colour_bar(fig: Figure, mappable: Any, ax: Axes) -> None:
  bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
  bar.locator = matplotlib.ticker.MaxNLocator(3)
  # Plain tick values: an offset label ('1e-6+9.9999e-1') lands on the next panel.
  bar.formatter = matplotlib.ticker.ScalarFormatter(useOffset=False)
  bar.update_ticks()
  bar.ax.tick_params(labelsize=6)


def ran_mask_figure(images: np.ndarray, masks: Mapping[str, np.ndarray], channel: int = 0,
                    title: str = 'RAN soft masks M(x), shallow -> deep') -> Figure:
  """The paper's Figure 1 layout: each image, then its soft masks from shallow to deep.

  Three rows per image: the mask's mean over channels, its max over channels,
  and channel ``channel`` alone, each upsampled to the image and overlaid on it.

  Args:
    images: (B, H, W, 1|3) display images in [0, 1].
    masks: ``{'stage1/attention1': (B, h, w, C), ...}`` shallow to deep
      (``collect_masks`` / ``ran_masks``).
    channel: the single channel shown; must exist in every mask.
  """
  if not masks:
    raise ValueError('No RAN soft masks to draw: the model is not a Residual Attention Network.')
  for key, mask in masks.items():
    if not 0 <= channel < mask.shape[-1]:
      raise ValueError(f'channel={channel} does not exist in {key}, which has '
                       f'{mask.shape[-1]} channels; pick 0..{mask.shape[-1] - 1}.')
  reductions = (('channel mean', lambda m: m.mean(-1)), ('channel max', lambda m: m.max(-1)),
                (f'channel {channel}', lambda m: m[..., channel]))
  rows, cols = len(images) * len(reductions), len(masks) + 1
  fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * 0.85 * rows + 0.6),
               layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  for b, image in enumerate(images):
    for r, (label, reduce) in enumerate(reductions):
      row = b * len(reductions) + r
      _show_image(axes[row, 0], image)
      axes[row, 0].set_ylabel(f'image {b}\n{label}', fontsize=8)
      for col, (key, mask) in enumerate(masks.items(), start=1):
        _overlay_panel(fig, axes[row, col], image, reduce(mask[b]))
        if row == 0:
          h, w, c = mask.shape[1:]
          axes[row, col].set_title(f'{key}\n{h}x{w}x{c}', fontsize=8)
  axes[0, 0].set_title('input', fontsize=8)
  fig.suptitle(f'{title} (colour bar: mask value)', fontsize=10)
  return fig


def spatial_map_figure(images: np.ndarray, maps: Mapping[str, np.ndarray],
                       title: str = 'Spatial attention, shallow -> deep') -> Figure:
  """Each image, then every spatial map (``spatial_maps``) overlaid on it, shallow to deep."""
  if not maps:
    raise ValueError('No spatial attention maps to draw.')
  rows, cols = len(images), len(maps) + 1
  fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * 0.9 * rows + 0.6),
               layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  for b, image in enumerate(images):
    _show_image(axes[b, 0], image)
    axes[b, 0].set_ylabel(f'image {b}', fontsize=8)
    for col, (key, heat) in enumerate(maps.items(), start=1):
      _overlay_panel(fig, axes[b, col], image, heat[b])
      if b == 0:
        path, _, what = key.rpartition('/')
        axes[b, col].set_title(f'{path}\n{what} {heat.shape[1]}x{heat.shape[2]}', fontsize=7)
  axes[0, 0].set_title('input', fontsize=8)
  fig.suptitle(f'{title} (colour bar: gate value)', fontsize=10)
  return fig


def channel_gate_figure(weights: Mapping[str, np.ndarray], columns: int = 3,
                        title: str = 'Channel gates, shallow -> deep') -> Figure:
  """One bar chart per module: each channel's gate, mean over the images (bars) and range.

  Args:
    weights: ``{path: (B, C)}`` from ``channel_weights``.
    columns: charts per row.
  """
  if not weights:
    raise ValueError('No channel gates to draw.')
  rows = -(-len(weights) // columns)
  fig = Figure(figsize=(3.4 * columns, 2.1 * rows + 0.6), layout='constrained')
  axes = fig.subplots(rows, columns, squeeze=False).reshape(-1)
  for ax, (key, gate) in zip(axes, weights.items()):
    mean = gate.mean(axis=0)
    index = np.arange(gate.shape[1])
    ax.bar(index, mean, width=1.0, color='tab:blue', label='mean over images')
    # Whiskers show how much the gate changes from image to image: an input-
    # independent gate would be a plain per-channel scale.
    ax.errorbar(index, mean, yerr=(mean - gate.min(axis=0), gate.max(axis=0) - mean),
                fmt='none', ecolor='black', elinewidth=0.5, label='min..max over images')
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(-0.5, gate.shape[1] - 0.5)
    ax.set_title(key, fontsize=7)
    ax.set_xlabel('channel', fontsize=7)
    ax.set_ylabel('gate', fontsize=7)
    ax.tick_params(labelsize=6)
  axes[0].legend(fontsize=6, loc='lower right')
  for ax in axes[len(weights):]:
    ax.set_visible(False)
  fig.suptitle(f'{title} ({len(next(iter(weights.values())))} images)', fontsize=10)
  return fig


def affinity_figure(maps: Mapping[str, np.ndarray], image: int = 0,
                    title: str = 'DANet channel attention') -> Figure:
  """DANet channel-attention matrices (C x C) of one image, one panel per module."""
  if not maps:
    raise ValueError('No channel-attention matrices to draw.')
  fig = Figure(figsize=(3.0 * len(maps), 3.2), layout='constrained')
  axes = fig.subplots(1, len(maps), squeeze=False)[0]
  for ax, (key, value) in zip(axes, maps.items()):
    _colour_bar(fig, ax.imshow(value[image], cmap='viridis'), ax)
    ax.set_title(key, fontsize=7)
    ax.set_xlabel('attended channel j', fontsize=7)
    ax.set_ylabel('output channel i', fontsize=7)
    ax.tick_params(labelsize=6)
  fig.suptitle(f'{title}, image {image} (rows sum to 1)', fontsize=10)
  return fig


class NoAttentionError(ValueError):
  """The model sows no attention masks or gates: there is nothing to draw."""


def attention_figures(model: Any, variables: Mapping[str, Any], images: np.ndarray,
                      mean: Sequence[float], std: Sequence[float],
                      channel: int = 0, label: str = '') -> Dict[str, Figure]:
  """All figures for ``model`` on ``images`` (normalised as in training), by name.

  Runs ``collect_attention`` once, then draws whatever the model sowed:
  'ran_masks', 'channel_gates', 'spatial_maps', 'channel_affinities' (only the
  non-empty ones, in that order). ``mean``/``std`` un-normalise the images for
  display (``rattn.data.dataset_info`` or a trained workdir's
  ``config.dataset_info``). ``label`` (e.g. the model's name and step) opens
  every figure's title.

  Raises:
    NoAttentionError: if the model sows no attention at all (a plain backbone).
  """
  attention = collect_attention(model, variables, images)
  display = unnormalize(images, mean, std)
  prefix = f'{label}: ' if label else ''
  figures: Dict[str, Figure] = {}
  if masks := ran_masks(attention):
    figures['ran_masks'] = ran_mask_figure(
        display, masks, channel, title=f'{prefix}RAN soft masks M(x), shallow -> deep')
  if weights := channel_weights(attention):
    figures['channel_gates'] = channel_gate_figure(
        weights, title=f'{prefix}channel gates, shallow -> deep')
  if maps := spatial_maps(attention):
    figures['spatial_maps'] = spatial_map_figure(
        display, maps, title=f'{prefix}spatial attention, shallow -> deep')
  if affinities := channel_affinities(attention):
    figures['channel_affinities'] = affinity_figure(
        affinities, title=f'{prefix}DANet channel attention')
  if not figures:
    raise NoAttentionError(f'{type(model).__name__} sows no attention masks or gates into '
                     "'intermediates': build it with an attention= name, or use a RAN.")
  return figures
