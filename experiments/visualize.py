r"""Draws what a trained model attends to: RAN soft masks, channel gates, spatial gates.

  python -m experiments.visualize --workdir /tmp/ran56 --out masks.png
  python -m experiments.visualize --workdir /tmp/ran56 --out masks.png \
      --num_images 4 --channel 0 --split test

Loads the workdir's best checkpoint (``rattn.train.load_trained``), reads the
first ``--num_images`` images of ``--split`` of the dataset it was trained on,
runs one forward pass and draws every mask and gate the model sows
(``rattn.viz.attention_figures``):

  ran_masks           a Residual Attention Network's soft masks, shallow to deep
                      (channel mean, channel max, channel --channel), as in the
                      paper's Figure 1
  channel_gates       SE / ECA / CBAM channel weights, bar charts
  spatial_maps        CBAM spatial gate, coordinate attention (a_h x a_w), SGE,
                      DANet position attention, overlaid on the images
  channel_affinities  DANet channel-attention matrices

Output naming: a model that gives one figure (every RAN) writes exactly
``--out``; a model that gives several (e.g. CBAM: channel gates and spatial
maps) uses ``--out`` as a prefix: ``masks.png`` -> ``masks_channel_gates.png``,
``masks_spatial_maps.png``. The paths written are printed, one per line.
Runs on a CPU in seconds for the CIFAR-sized models.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Dict, List, Optional, Sequence

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from rattn import data, train, viz
from rattn.train.checkpoint import CheckpointError


def png_path(out: str) -> pathlib.Path:
  path = pathlib.Path(out)
  if path.suffix.lower() != '.png':
    raise ValueError(f'--out {out!r} must name a .png file (or prefix), e.g. masks.png.')
  return path


def output_paths(out: str, names: Sequence[str]) -> Dict[str, pathlib.Path]:
  """Where each figure goes: ``out`` itself for one figure, ``<stem>_<name><suffix>`` for several."""
  path = png_path(out)
  if len(names) == 1:
    return {names[0]: path}
  return {name: path.with_name(f'{path.stem}_{name}{path.suffix}') for name in names}


def read_images(data_cfg: ml_collections.ConfigDict, split: Optional[str],
                num_images: int) -> np.ndarray:
  """The first ``num_images`` images of ``split``, normalised as in training."""
  batch = next(iter(data.make_eval_iterator(data_cfg, split=split,
                                            global_batch_size=num_images)))
  return np.asarray(batch['image'])[np.asarray(batch['mask'], bool)]


def visualize(workdir: str, out: str, num_images: int = 4, channel: int = 0,
              split: Optional[str] = None, step: Optional[int] = None, dpi: int = 100
              ) -> List[pathlib.Path]:
  """Writes the attention figures of ``workdir``'s checkpoint; returns the paths written."""
  if num_images < 1:
    raise ValueError(f'--num_images must be at least 1, got {num_images}.')
  png_path(out)  # a bad --out fails before the model loads
  model, variables, config = train.load_trained(workdir, step=step)
  images = read_images(config.data, split, num_images)
  info = config.dataset_info
  figures: Dict[str, Figure] = viz.attention_figures(
      model, variables, images, info['mean'], info['std'], channel=channel,
      label=f'{config.model} on {info["name"]}, step {config.restored_step}')
  paths = output_paths(out, list(figures))
  for name, figure in figures.items():
    paths[name].parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(paths[name], dpi=dpi)
  return list(paths.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.visualize',
      description="Draws a trained model's attention masks and gates.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--workdir', required=True, help='a training workdir with checkpoints')
  parser.add_argument('--out', required=True,
                      help='PNG path; a prefix when the model gives several figures')
  parser.add_argument('--num_images', type=int, default=4, help='test images to show')
  parser.add_argument('--channel', type=int, default=0,
                      help='the single RAN mask channel drawn beside the mean and max')
  parser.add_argument('--split', default=None,
                      help="tfds split to read images from (default: the workdir's eval split)")
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the best by eval accuracy)')
  parser.add_argument('--dpi', type=int, default=100)
  args = parser.parse_args(argv)
  try:
    paths = visualize(args.workdir, args.out, num_images=args.num_images,
                      channel=args.channel, split=args.split, step=args.step, dpi=args.dpi)
  except (FileNotFoundError, CheckpointError) as e:
    print(f'error: {e}\nTrain a model into the workdir first, e.g. a small RAN (a few '
          'minutes on a CPU):\n  python -m experiments.cifar --config '
          'experiments/configs/fashion_mnist_ran.py --config.num_train_steps=300 '
          f'--workdir {args.workdir}\nthen run this command again.', file=sys.stderr)
    return 1
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for path in paths:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
