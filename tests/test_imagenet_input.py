"""The ImageNet stand-in, the JPEG transforms (draft decode, crop boxes) and the input benchmark."""

import io
import json
import math
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import bench
from rattn import data
from rattn.bench import input as input_bench
from rattn.data import augment, jpeg, standin
from rattn.train import cli

NUM_TRAIN, NUM_VAL = 24, 8
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def standin_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  standin.build(path, NUM_TRAIN, NUM_VAL, seed=0)
  return path


def standin_config(data_dir, **overrides):
  cfg = data.data_config()
  cfg.update(dataset='imagenet_standin', data_dir=data_dir, eval_split='validation',
             image_size=32, **overrides)
  return cfg


def jpeg_bytes(pixels, mode='RGB', quality=90):
  return standin.encode(pixels, mode, quality)


# ---------------------------------------------------------------- the stand-in


def test_standin_reads_back_through_tfds_with_imagenets_features(standin_dir):
  sources = tfds.data_source('imagenet_standin', data_dir=standin_dir)
  assert {split: len(source) for split, source in sources.items()} == {
      'train': NUM_TRAIN, 'validation': NUM_VAL}
  features = tfds.builder('imagenet_standin', data_dir=standin_dir).info.features
  assert features['image'].encoding_format == 'jpeg' and features['image'].shape == (None, None, 3)
  assert features['label'].num_classes == 1000 and features['label'].names[0] == 'n01440764'
  assert isinstance(features['file_name'], tfds.features.Text)
  raw = tfds.data_source('imagenet_standin', data_dir=standin_dir, split='train',
                         decoders={'image': jpeg.RAW})
  modes = [Image.open(io.BytesIO(raw[i]['image'])).mode for i in range(NUM_TRAIN)]
  assert modes.count('L') == 1 and modes.count('CMYK') == 1  # at least one of each per split


def test_standin_images_are_a_pure_function_of_seed_split_and_index(standin_dir):
  raw = tfds.data_source('imagenet_standin', data_dir=standin_dir, split='train',
                         decoders={'image': jpeg.RAW})
  record = raw[3]
  index = int(record['file_name'].decode().split('_')[1].split('.')[0])
  plan = standin.split_plan(NUM_TRAIN, 0, 'train')
  height, width = plan['size'][index]
  pixels = standin.render(np.random.default_rng([0, 0, index]), int(height), int(width))
  assert record['image'] == standin.encode(pixels, plan['mode'][index], int(plan['quality'][index]))
  assert record['label'] == plan['label'][index]
  assert not np.array_equal(standin.split_plan(NUM_TRAIN, 1, 'train')['size'], plan['size'])


def test_standin_sizes_follow_imagenets_spread():
  sizes = standin.image_sizes(np.random.default_rng(0), 20000)
  heights, widths = sizes[:, 0], sizes[:, 1]
  assert np.median(widths) == 500 and np.median(heights) == 375
  within = ((sizes >= 150) & (sizes <= 800)).all(axis=1)
  assert within.mean() > 0.85
  assert 0.003 < (sizes.max(axis=1) >= 2000).mean() < 0.008
  assert 0.003 < (sizes.max(axis=1) < 100).mean() < 0.008
  assert (widths > heights).mean() > 0.5  # mostly landscape, as photographs are


def test_standin_jpegs_compress_like_photographs():
  pixels = standin.render(np.random.default_rng(0), 375, 500)
  bytes_per_pixel = len(jpeg_bytes(pixels)) / (375 * 500)
  assert 0.3 < bytes_per_pixel < 0.8  # ImageNet's photographs: ~0.5; flat colour: < 0.05


def make_standin(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.make_standin', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_make_standin_reports_the_build_and_refuses_other_sizes(standin_dir):
  done = make_standin('--data_dir', standin_dir, '--num_train', str(NUM_TRAIN), '--num_val',
                      str(NUM_VAL))
  assert done.returncode == 0, done.stderr
  assert f'train: {NUM_TRAIN} JPEGs' in done.stdout and 'KiB' in done.stdout
  other = make_standin('--data_dir', standin_dir, '--num_train', '6', '--num_val', str(NUM_VAL))
  assert other.returncode == 1 and 'Traceback' not in other.stderr
  assert f'already holds a build with {NUM_TRAIN} train images' in other.stderr
  assert 'delete' in other.stderr


def test_missing_standin_names_the_command_that_builds_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match='experiments.make_standin'):
    data.dataset_info(standin_config(str(tmp_path)))


# ---------------------------------------------------------------- transforms


def test_random_resized_boxes_stay_within_scale_and_ratio_bounds():
  rng = np.random.default_rng(0)
  boxes = np.array([augment.random_resized_box(375, 500, rng) for _ in range(2000)])
  width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 500).all() and (boxes[:, 3] <= 375).all()
  area = width * height / (375 * 500)
  assert area.min() > 0.075 and area.max() <= 1.0 and 0.4 < area.mean() < 0.6
  aspect = width / height
  assert aspect.min() > 0.74 and aspect.max() < 1.35
  assert np.median(np.log(aspect)) == pytest.approx(0, abs=0.05)  # log-uniform ratio


def test_random_resized_box_falls_back_to_a_clamped_centre_crop():
  # No 3/4-4/3 crop of 8% or more fits a 10 x 1000 strip: the centre crop, aspect clamped.
  box = augment.random_resized_box(10, 1000, np.random.default_rng(0))
  assert box == (493, 0, 506, 10)  # width round(10 * 4 / 3), as torchvision


def test_draft_decode_matches_full_decode_of_the_same_box():
  pixels = standin.render(np.random.default_rng(1), 1200, 1600)
  data_ = jpeg_bytes(pixels)
  box = (100, 50, 1100, 850)  # 1000 x 800 to 224: decodable at 1/2 scale
  full = jpeg.open_image(data_)
  reference = jpeg.crop_resize(full, jpeg.decode(full, box, 10_000), 224)  # no draft possible
  drafted = jpeg.open_image(data_)
  scaled_box = jpeg.decode(drafted, box, 224)
  assert drafted.size == (800, 600) and scaled_box == (50, 25, 550, 425)
  difference = np.abs(np.asarray(jpeg.crop_resize(drafted, scaled_box, 224), np.float32)
                      - np.asarray(reference, np.float32))
  assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6


def test_draft_never_shrinks_the_box_below_the_output_size():
  data_ = jpeg_bytes(standin.render(np.random.default_rng(2), 600, 800))
  for size, decoded_width in ((301, 800), (300, 400), (150, 200), (10, 100)):
    image = jpeg.open_image(data_)
    box = jpeg.decode(image, (0, 0, 800, 600), size)  # the box's shorter side: 600
    assert image.width == decoded_width
    assert min(box[2] - box[0], box[3] - box[1]) >= size


def test_eval_crop_is_resize_256_then_centre_224():
  pixels = standin.render(np.random.default_rng(3), 300, 400)
  out = np.zeros((224, 224, 3), np.uint8)
  jpeg.eval_crop(jpeg_bytes(pixels), out)
  decoded = Image.open(io.BytesIO(jpeg_bytes(pixels)))
  resized = np.asarray(decoded.resize((341, 256), Image.BILINEAR))  # shorter side 256
  expected = resized[16:240, 58:282]
  assert np.abs(out.astype(int) - expected).max() <= 1


def test_write_fills_the_batch_slot_mirrored_on_request():
  pixels = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  batch = np.zeros((2, 8, 8, 3), np.uint8)
  jpeg.write(Image.fromarray(pixels), batch[0])
  jpeg.write(Image.fromarray(pixels), batch[1], flip=True)
  np.testing.assert_array_equal(batch[0], pixels)
  np.testing.assert_array_equal(batch[1], pixels[:, ::-1])


@pytest.mark.parametrize('mode', ['L', 'CMYK'])
def test_greyscale_and_cmyk_jpegs_come_out_rgb(mode):
  pixels = standin.render(np.random.default_rng(4), 120, 160)
  out = np.zeros((32, 32, 3), np.uint8)
  jpeg.eval_crop(jpeg_bytes(pixels, mode), out)
  expected = np.zeros_like(out)
  jpeg.eval_crop(np.asarray(Image.fromarray(pixels).convert(mode).convert('RGB')), expected)
  assert np.abs(out.astype(int) - expected).mean() < 3
  if mode == 'L':
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


# ---------------------------------------------------------------- pipeline


def test_standin_trains_and_evaluates_in_uint8_deterministically(standin_dir):
  cfg = standin_config(standin_dir, normalise_on_device=True)
  assert data.DataPlan(cfg).describe()['augment'] == 'imagenet'
  first = data.make_train_iterator(cfg, global_batch_size=8, seed=3)
  batches = [next(first) for _ in range(4)]  # crosses the 24-image epoch
  assert batches[0]['image'].shape == (8, 32, 32, 3) and batches[0]['image'].dtype == np.uint8
  second = data.make_train_iterator(cfg, global_batch_size=8, seed=3)
  next(second)
  state = second.get_state()
  chex.assert_trees_all_equal(next(second), batches[1])
  resumed = data.make_train_iterator(cfg, global_batch_size=8, seed=3)
  resumed.set_state(state)
  chex.assert_trees_all_equal(next(resumed), batches[1])
  other = next(data.make_train_iterator(cfg, global_batch_size=8, seed=4))
  assert not np.array_equal(other['image'], batches[0]['image'])
  evals = list(data.make_eval_iterator(cfg, global_batch_size=8))
  assert len(evals) == 1 and evals[0]['image'].dtype == np.uint8 and evals[0]['mask'].all()


def test_model_input_normalises_uint8_like_the_host_did(standin_dir):
  cfg = standin_config(standin_dir, normalise_on_device=True)
  uint8 = next(data.make_train_iterator(cfg, global_batch_size=8, seed=0))
  cfg.normalise_on_device = False
  host = next(data.make_train_iterator(cfg, global_batch_size=8, seed=0))
  assert host['image'].dtype == np.float32
  on_device = jax.jit(lambda images: data.model_input(images, standin_config(
      standin_dir, normalise_on_device=True)))(uint8['image'])
  np.testing.assert_allclose(np.asarray(on_device), host['image'], atol=1e-5)
  chex.assert_trees_all_equal(data.model_input(host['image'], cfg), host['image'])


# ---------------------------------------------------------------- benchmark


def test_parse_cores():
  assert input_bench.parse_cores('1,2,1') == [1, 2]
  with pytest.raises(ValueError, match="'1,2,all'"):
    input_bench.parse_cores('1,two')


def test_bench_input_imagenet_prints_the_per_core_and_stage_tables(standin_dir, monkeypatch,
                                                                    capsys, tmp_path):
  monkeypatch.setattr(input_bench, 'REPEATS', 1)
  monkeypatch.setattr(input_bench, 'STAGE_IMAGES', 8)
  results = tmp_path / 'input.jsonl'
  cli.call(bench.main, ['--input', 'imagenet', '--data_dir', standin_dir, '--cores', '1',
                        '--batch_size', '2', '--steps', '2', '--json_out', str(results)])
  out = capsys.readouterr().out
  records = [json.loads(line) for line in results.read_text().splitlines()]
  assert 'train img/s per core' in out and 'eval img/s per core' in out
  assert "Where one core's time goes" in out and 'decode' in out
  rates = records[0]
  assert rates['workers'] == 1 and rates['train_images_per_s'] > 0 < rates['eval_images_per_s']
  stages = records[1]['ms_per_image']
  assert set(stages) == {'train', 'eval'} and all(
      math.isfinite(ms) and ms >= 0 for times in stages.values() for ms in times.values())
