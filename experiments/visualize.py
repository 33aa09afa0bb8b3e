r"""Draws what a trained model attends to: RAN soft masks, channel gates, spatial gates.

  python -m experiments.visualize --workdir /tmp/ran56 --out masks.png
  python -m experiments.visualize --workdir /tmp/ran56 --out masks.png \
      --num_images 4 --channel 0 --split test

Loads the workdir's final checkpoint (``rattn.train.load_trained``; --checkpoint
best: the best on its validation split; --step: any saved one), reads the
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

from typing import Dict, List, Optional, Sequence

import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from matplotlib.figure import Figure

from rattn import data, train, viz
from rattn.train import cli
from rattn.train.checkpoint import CheckpointError, DamagedCheckpointError

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
flags.adopt_module_key_flags(cli)  # --workdir
_OUT = flags.DEFINE_string('out', None, 'PNG path; a prefix when the model gives several '
                           'figures.', flag_values=FLAGS)
_NUM_IMAGES = flags.DEFINE_integer('num_images', 4, 'Test images to show.', flag_values=FLAGS)
_CHANNEL = flags.DEFINE_integer('channel', 0, 'The single RAN mask channel drawn beside the '
                                'mean and max.', flag_values=FLAGS)
_SPLIT = flags.DEFINE_string('split', None, "tfds split to read images from (default: the "
                             "workdir's eval split).", flag_values=FLAGS)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: --checkpoint\'s).',
                             flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'final', ['final', 'best'],
                                'final: the latest checkpoint; best: the best on the run\'s '
                                'validation split (held out of train).', flag_values=FLAGS)
_DPI = flags.DEFINE_integer('dpi', 100, 'Resolution of the PNG files.', flag_values=FLAGS)
flags.register_validator('num_images', lambda n: n >= 1, '--num_images must be at least 1.',
                         flag_values=FLAGS)
flags.register_validator('out', lambda out: out is None or out.lower().endswith('.png'),
                         '--out must name a .png file (or prefix), e.g. masks.png.',
                         flag_values=FLAGS)


def png_path(out: str) -> epath.Path:
  path = epath.Path(out)  # a local file or an object (gs://bucket/masks.png)
  if path.suffix.lower() != '.png':
    raise ValueError(f'--out {out!r} must name a .png file (or prefix), e.g. masks.png.')
  return path


def output_paths(out: str, names: Sequence[str]) -> Dict[str, epath.Path]:
  """Where each figure goes: ``out`` itself for one figure, ``<stem>_<name><suffix>`` for several."""
  path = png_path(out)
  if len(names) == 1:
    return {names[0]: path}
  return {name: path.with_name(f'{path.stem}_{name}{path.suffix}') for name in names}


def read_images(data_cfg: ml_collections.ConfigDict, split: Optional[str],
                num_images: int) -> np.ndarray:
  """The first ``num_images`` images of ``split``, normalised as in training."""
  batch = next(iter(data.DataPlan(data_cfg).eval_iterator(split=split,
                                                          global_batch_size=num_images)))
  images = np.asarray(data.model_input(batch['image'], data_cfg))
  return images[np.asarray(batch['mask'], bool)]


def visualize(workdir: str, out: str, num_images: int = 4, channel: int = 0,
              split: Optional[str] = None, step: Optional[int] = None, dpi: int = 100,
              checkpoint: str = 'final') -> List[epath.Path]:
  """Writes the attention figures of ``workdir``'s checkpoint; returns the paths written."""
  folder = png_path(out).parent  # a bad --out fails before the model loads
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise app.UsageError(f'--out {out}: its directory {folder} cannot be created '
                         f'({e.strerror or e}); give a path in a directory you can write to.'
                         ) from None
  try:
    model, variables, config = train.load_trained(workdir, step=step, checkpoint=checkpoint)
  except (FileNotFoundError, CheckpointError) as e:
    if step is not None or checkpoint != 'final' or isinstance(e, DamagedCheckpointError):
      raise
    raise type(e)(
        f'{e} Train a model into the workdir first, e.g. a small RAN (a few minutes on a '
        'CPU): `python -m experiments.cifar --config '
        f'experiments/configs/fashion_mnist_ran_quick.py --workdir {workdir}`, then run this '
        'command again.') from None
  images = read_images(config.data, split, num_images)
  info = config.dataset_info
  try:
    figures: Dict[str, Figure] = viz.attention_figures(
        model, variables, images, info['mean'], info['std'], channel=channel,
        label=f'{config.model} on {info["name"]}, step {config.restored_step}')
  except viz.NoAttentionError as e:
    raise train.ConfigError(
        f'Nothing to draw in {workdir}: {e} (its model is {config.model!r} with '
        f'model_kwargs={config.model_kwargs.to_dict()}).') from None
  paths = output_paths(out, list(figures))
  for name, figure in figures.items():
    with paths[name].open('wb') as f:
      figure.savefig(f, format='png', dpi=dpi)
  return list(paths.values())


@cli.command(FLAGS)
def main(argv: Sequence[str]) -> int:
  """Writes the figures the flags ask for (call it with ``cli.call``)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.require('workdir', 'out')
  if _STEP.value is not None and FLAGS['checkpoint'].present:
    raise app.UsageError(f'Give --step or --checkpoint, not both (--step {_STEP.value}, '
                         f'--checkpoint {_CHECKPOINT.value}).')
  paths = visualize(cli.WORKDIR.value, _OUT.value, num_images=_NUM_IMAGES.value,
                    channel=_CHANNEL.value, split=_SPLIT.value, step=_STEP.value, dpi=_DPI.value,
                    checkpoint=_CHECKPOINT.value)
  for path in paths:
    print(path)
  return 0


if __name__ == '__main__':
  cli.run(main)
