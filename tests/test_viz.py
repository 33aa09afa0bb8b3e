"""Seeing attention: mask collection, display helpers, the visualize CLI and the notebook."""

from __future__ import annotations

import io
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from PIL import Image

from rattn import viz
from rattn.attention import list_attentions
from rattn.data.augment import Normalise
from rattn.models import create_model

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'visualize_masks.ipynb'

# RAN-56 at 1/16 of its widths: stages of 4, 8 and 16 channels.
TINY_RAN = dict(width=1 / 16)
# Arguments some attention layers need on the tiny backbone (4..16 channels).
ATTENTION_KWARGS = {'se': dict(reduction=4), 'cbam': dict(reduction=4),
                    'cbam_channel': dict(reduction=4), 'sge': dict(groups=2),
                    'danet': dict(reduction=2), 'danet_position': dict(reduction=2)}


# ----------------------------------------------------------------------------- display


def test_unnormalize_inverts_the_pipeline():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
  mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
  normalised = Normalise(mean, std)({'image': pixels})['image']
  np.testing.assert_allclose(viz.unnormalize(normalised, mean, std), pixels / 255.0, atol=1e-5)


@pytest.mark.parametrize('channels', [1, 3])
def test_overlay_is_rgb_in_unit_range(channels):
  rng = np.random.default_rng(channels)
  image = rng.uniform(-0.5, 1.5, (7, 9, channels))  # out of range on purpose: clipped
  heat = rng.normal(0.0, 3.0, (7, 9))
  out = viz.overlay(image, heat, *viz.value_range(heat))
  assert out.shape == (7, 9, 3)
  assert out.min() >= 0.0 and out.max() <= 1.0
  with pytest.raises(ValueError, match='upsample'):
    viz.overlay(image, heat[:3], 0.0, 1.0)


def test_upsample_stays_within_the_maps_range():
  maps = np.random.default_rng(0).uniform(0.2, 0.7, (2, 4, 4))
  up = viz.upsample(maps, (16, 16))
  assert up.shape == (2, 16, 16)
  assert up.min() >= maps.min() - 1e-6 and up.max() <= maps.max() + 1e-6


def test_value_range_widens_saturated_maps():
  lo, hi = viz.value_range(np.full((3, 3), 0.99999))
  assert hi - lo == pytest.approx(0.01 * 0.99999) and lo < 0.99999 < hi


# ----------------------------------------------------------------------------- collection


def _variables(model, images):
  """Random variables from the shapes alone.

  ``model.init`` compiles every initialiser for every parameter shape, 10-30 s
  per model on a busy CPU; the collection logic does not care how the
  weights were drawn. Running statistics are the identity (mean 0, variance 1).
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', '')
    if path[0].key == 'batch_stats':
      return np.full(leaf.shape, 1.0 if name == 'var' else 0.0, leaf.dtype)
    return rng.normal(0.0, 0.5, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _attention_module_paths(variables, name: str = 'attention'):
  """Paths of every submodule called ``name`` in the variables tree (the model's structure)."""
  found = []

  def walk(tree, prefix):
    for key, value in tree.items():
      if key == name:
        found.append('/'.join(prefix + (key,)))
      elif isinstance(value, dict):
        walk(value, prefix + (key,))

  walk(variables['params'], ())
  return found


@pytest.mark.parametrize('attention', list_attentions())
def test_collect_attention_finds_every_module_of_an_attention_resnet(attention):
  model = create_model('preact_resnet20', num_classes=10, widths=(4, 8, 16), attention=attention,
                       attention_kwargs=ATTENTION_KWARGS.get(attention))
  images = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
  variables = _variables(model, images)
  collected = viz.collect_attention(model, variables, images)

  modules = _attention_module_paths(variables)
  assert len(modules) == 9  # 3 stages x 3 blocks
  assert sorted({key.rpartition('/')[0] for key in collected}) == sorted(modules)
  assert all(value.shape[0] == 2 for value in collected.values())
  # Every module's gate reaches one of the drawable views.
  drawn = {**viz.channel_weights(collected), **viz.spatial_maps(collected),
           **viz.channel_affinities(collected)}
  assert {key.rpartition('/')[0] for key in drawn} == set(modules)
  for key, heat in viz.spatial_maps(collected).items():
    # Sigmoid gates, their products, or averaged softmax rows: all within [0, 1].
    assert heat.shape[0] == 2 and heat.ndim == 3, key
    assert 0.0 <= heat.min() and heat.max() <= 1.0, key
  figures = viz.attention_figures(model, variables, images, (0.5,) * 3, (0.25,) * 3)
  for figure in figures.values():
    figure.savefig(io.BytesIO(), dpi=30)  # lays out and draws every panel


@pytest.mark.parametrize('scan', [False, True])
def test_collect_attention_finds_every_ran_mask(scan):
  model = create_model('ran56_cifar', num_classes=10, modules_per_stage=(2, 1, 1), scan=scan,
                       **TINY_RAN)
  images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
  variables = _variables(model, images)
  collected = viz.collect_attention(model, variables, images)
  masks = viz.ran_masks(collected)

  params = variables['params']
  if scan:  # stacked parameters: the leading axis counts the modules
    expected = sum(jax.tree.leaves(params[f'stage{s}_attentions'])[0].shape[0]
                   for s in (1, 2, 3))
  else:
    expected = sum(bool(re.fullmatch(r'stage\d_attention\d', name)) for name in params)
  assert expected == sum(model.modules_per_stage) == 4
  assert list(masks) == ['stage1/attention1', 'stage1/attention2', 'stage2/attention1',
                         'stage3/attention1']
  assert [m.shape[1:] for m in masks.values()] == [(16, 16, 4), (16, 16, 4), (8, 8, 8),
                                                   (4, 4, 16)]
  for mask in masks.values():  # mixed attention: a sigmoid per channel and position
    assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_ran_mask_figure_rejects_a_missing_channel():
  masks = {'stage1/attention1': np.full((1, 4, 4, 8), 0.5)}
  with pytest.raises(ValueError, match='0..7'):
    viz.ran_mask_figure(np.zeros((1, 8, 8, 1)), masks, channel=8)


def test_plain_backbone_has_nothing_to_draw():
  model = create_model('preact_resnet20', num_classes=10, widths=(4, 8, 16))
  images = np.zeros((1, 8, 8, 3), np.float32)
  variables = _variables(model, images)
  assert viz.collect_attention(model, variables, images) == {}
  with pytest.raises(ValueError, match='attention='):
    viz.attention_figures(model, variables, images, (0.5,) * 3, (0.25,) * 3)


# ----------------------------------------------------------------------------- CLI


def test_output_paths_use_out_as_a_prefix_for_several_figures():
  from experiments.visualize import output_paths

  assert output_paths('a/m.png', ['ran_masks']) == {'ran_masks': pathlib.Path('a/m.png')}
  assert output_paths('a/m.png', ['channel_gates', 'spatial_maps']) == {
      'channel_gates': pathlib.Path('a/m_channel_gates.png'),
      'spatial_maps': pathlib.Path('a/m_spatial_maps.png')}
  with pytest.raises(ValueError, match='.png'):
    output_paths('masks.pdf', ['ran_masks'])


def test_cli_explains_a_workdir_without_checkpoints(tmp_path, capsys):
  from experiments import visualize
  from experiments.configs import tiny
  from rattn.train import cli

  with pytest.raises(SystemExit, match='1'):
    cli.call(visualize.main, ['--workdir', str(tmp_path / 'nothing'), '--out',
                              str(tmp_path / 'm.png')])
  assert 'experiments.cifar' in capsys.readouterr().err
  # What a run leaves before its first checkpoint: the run files only.
  started = tmp_path / 'started'
  started.mkdir()
  (started / 'config.json').write_text(tiny.get_config().to_json_best_effort())
  (started / 'dataset_info.json').write_text('{}')
  with pytest.raises(SystemExit, match='1'):
    cli.call(visualize.main, ['--workdir', str(started), '--out', str(tmp_path / 'm.png')])
  err = capsys.readouterr().err
  assert 'no checkpoint' in err and 'experiments.cifar' in err


def _assert_png_has_content(path: pathlib.Path) -> None:
  assert path.stat().st_size > 20_000
  with Image.open(path) as png:
    png.load()
    assert png.width > 300 and png.height > 300
    # Not a blank canvas: overlays or bars cover a good part of it.
    pixels = np.asarray(png.convert('RGB'))
    assert (pixels < 250).any(axis=-1).mean() > 0.05


# ----------------------------------------------------------------------------- notebook


def test_stored_notebook_has_no_outputs():
  import nbformat

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  assert sum('parameters' in cell.metadata.get('tags', []) for cell in code) == 1


def test_notebook_runs_top_to_bottom_then_the_cli_draws_its_ran(real_data_dir, tmp_path, capsys):
  """One test, so that the RAN the notebook trains (most of the time here) serves both.

  Split in two, the tests could land on different pytest-xdist workers and
  train twice.
  """
  import nbformat
  from nbclient import NotebookClient

  from experiments import visualize
  from rattn import train
  from rattn.train import cli

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # As papermill does: a cell after the 'parameters' cell overrides them, here to
  # train for 2 steps and draw one other layer (CBAM: both a channel and a spatial gate).
  index = next(i for i, cell in enumerate(notebook.cells)
               if 'parameters' in cell.metadata.get('tags', []))
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      "TRAIN_STEPS = 2\nNUM_IMAGES = 2\nOTHER_ATTENTIONS = ('cbam',)"))
  # TMPDIR: the notebook trains into a tempfile.mkdtemp() directory, found here after.
  env = dict(os.environ, TFDS_DATA_DIR=real_data_dir, MPLBACKEND='Agg', TMPDIR=str(tmp_path))
  client = NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  executed = client.execute(env=env)
  outputs = [out for cell in executed.cells if cell.cell_type == 'code' for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == 'error']
  images = [out for out in outputs if out.output_type == 'display_data'
            and 'image/png' in out.get('data', {})]
  assert len(images) == 3  # RAN masks; CBAM's channel gates and spatial maps

  (workdir,) = tmp_path.glob('ran56_fashion_mnist_*')
  out = tmp_path / 'masks.png'
  assert cli.call(visualize.main, ['--workdir', str(workdir), '--out', str(out),
                                   '--num_images', '3', '--channel', '5',
                                   '--split', 'test[:16]']) == 0
  assert capsys.readouterr().out.split() == [str(out)]  # one figure: exactly --out
  _assert_png_has_content(out)

  # collect_attention finds one mask per attention module of the trained model.
  model, variables, config = train.load_trained(str(workdir))
  images = visualize.read_images(config.data, 'test[:2]', 2)
  masks = viz.ran_masks(viz.collect_attention(model, variables, images))
  modules = [name for name in variables['params'] if re.fullmatch(r'stage\d+_attention\d+', name)]
  assert len(masks) == len(modules) == sum(model.modules_per_stage)
  assert [m.shape[1:3] for m in masks.values()] == [(28, 28), (14, 14), (7, 7)]
