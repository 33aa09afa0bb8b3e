"""Input pipelines: real offline data (../shared/tfds) for CIFAR-10 / Fashion-MNIST,
tfds.testing.mock_data for the datasets that are not on disk here."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import types
from typing import Dict, Iterator, List
from unittest import mock

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from rattn import data
from rattn.data import augment
from rattn.data import datasets
from rattn.data import jpeg

REPO = pathlib.Path(__file__).resolve().parents[1]
# A black (zero) pixel after CIFAR-10's normalisation: what padding looks like.
BLACK = -np.asarray(datasets.SPECS['cifar10'].mean) / np.asarray(datasets.SPECS['cifar10'].std)


# ---------------------------------------------------------------- helpers


def real_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """CIFAR-10 (unless overridden) from the prepared offline data."""
  cfg = data.data_config()
  cfg.data_dir = data_dir
  cfg.update(overrides)
  return cfg


def take(iterator, n: int) -> List[Dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(n)]


def same_batches(a, b) -> bool:
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def split_labels(cfg, split: str) -> np.ndarray:
  source = tfds.data_source(cfg.dataset, split=split, data_dir=cfg.data_dir, download=False)
  return np.asarray([source[i]['label'] for i in range(len(source))])


def image_keys(images: np.ndarray) -> List[bytes]:
  return [image.tobytes() for image in images]


@contextlib.contextmanager
def mocked(num_examples: int) -> Iterator[None]:
  """tfds's fake data; 'preparing' it is the mock's no-op, whether or not TF is here."""
  with tfds.testing.mock_data(num_examples=num_examples), \
      mock.patch.object(datasets, '_tensorflow_importable', return_value=True):
    yield


# ---------------------------------------------------------------- config and info


def test_config_has_every_field_the_pipeline_reads():
  cfg = data.data_config()
  assert set(cfg) == {'dataset', 'data_dir', 'train_split', 'eval_split', 'validation',
                      'validation_seed', 'augment',
                      'image_size', 'label_noise', 'noise_seed', 'label_source', 'num_workers',
                      'prefetch', 'shuffle', 'cache_in_memory', 'download',
                      'normalise_on_device'}
  cfg.lock()
  cfg.image_size = 64  # placeholders accept their type once locked
  cfg.data_dir = '/data'
  with pytest.raises(AttributeError):
    cfg.batch_size = 1


def test_dataset_info_reads_true_split_sizes(real_data_dir):
  # 5% of the 4,153 training images held out for validation: 208.
  assert data.dataset_info(real_config(real_data_dir)) == data.DatasetInfo(
      'cifar10', 10, (32, 32, 3), 3945, 1017, datasets.SPECS['cifar10'].mean,
      datasets.SPECS['cifar10'].std, num_validation=208)
  info = data.dataset_info(real_config(real_data_dir, dataset='fashion_mnist', validation=0))
  assert (info.image_shape, info.num_train, info.num_eval, info.num_validation) == (
      (28, 28, 1), 60000, 10000, 0)


@pytest.mark.parametrize('overrides, message', [
    ({'augment': 'mixup'}, 'Unknown augment'),
    ({'augment': 'imagenet'}, "use 'cifar'"),
    ({'label_source': 'cifar10n_worse'}, "dataset='cifar10_n'"),
    ({'cache_in_memory': 'maybe'}, 'cache_in_memory'),
    ({'dataset': 'mnist'}, 'Valid datasets'),
])
def test_bad_configs_fail_with_the_fix(real_data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    data.make_train_iterator(real_config(real_data_dir, **overrides), global_batch_size=8, seed=0)


def test_data_plan_opens_each_split_once(real_data_dir, monkeypatch):
  opened = []
  real_open = datasets.open_split
  monkeypatch.setattr(datasets, 'open_split',
                      lambda cfg, split: opened.append(split) or real_open(cfg, split))
  plan = data.DataPlan(real_config(real_data_dir, label_noise=0.2, train_split='train[:256]'))
  assert plan.describe()['flipped_fraction'] > 0
  next(plan.train_iterator(global_batch_size=8, seed=0))
  next(iter(plan.eval_iterator(global_batch_size=8)))
  assert plan.info.num_train + plan.info.num_validation == 256
  assert plan.describe()['num_eval'] == plan.info.num_eval
  assert sorted(opened) == ['test', 'train[:256]']


def test_batch_must_split_evenly_over_processes(real_data_dir):
  with pytest.raises(ValueError, match='multiple of the process count'):
    data.make_eval_iterator(real_config(real_data_dir), global_batch_size=9, process_index=0,
                            process_count=2)


# ---------------------------------------------------------------- batches and augmentation


def test_train_batches_are_normalised_float_images(real_data_dir):
  cfg = real_config(real_data_dir, augment='none', train_split='train[:1024]')
  batch = next(data.make_train_iterator(cfg, global_batch_size=512, seed=0))
  assert batch['image'].shape == (512, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (512,) and batch['label'].dtype == np.int32
  # The subset's statistics are within ~0.01 std of the full training set's constants.
  np.testing.assert_allclose(batch['image'].mean(axis=(0, 1, 2)), 0.0, atol=0.1)
  np.testing.assert_allclose(batch['image'].std(axis=(0, 1, 2)), 1.0, atol=0.1)
  assert 0 <= batch['label'].min() and batch['label'].max() < 10


def test_fashion_mnist_is_grayscale_28x28(real_data_dir):
  cfg = real_config(real_data_dir, dataset='fashion_mnist', train_split='train[:600]',
              eval_split='test[:100]')
  batch = next(data.make_train_iterator(cfg, global_batch_size=64, seed=0))
  assert batch['image'].shape == (64, 28, 28, 1)
  eval_batch = next(iter(data.make_eval_iterator(cfg, global_batch_size=64)))
  assert eval_batch['image'].shape == (64, 28, 28, 1)


def test_image_size_resizes_small_datasets(real_data_dir):
  cfg = real_config(real_data_dir, dataset='fashion_mnist', image_size=32, train_split='train[:64]')
  assert data.dataset_info(cfg).image_shape == (32, 32, 1)
  assert next(data.make_train_iterator(cfg, global_batch_size=16, seed=0))['image'].shape == (
      16, 32, 32, 1)


def test_cifar_augmentation_is_a_padded_crop_and_a_flip(real_data_dir):
  """Every augmented image is one of the 9 x 9 x 2 crops/flips of its clean image."""
  plain = real_config(real_data_dir, augment='none', shuffle=False, train_split='train[:64]')
  clean = next(data.make_train_iterator(plain, global_batch_size=64, seed=3))['image']
  auged_cfg = real_config(real_data_dir, shuffle=False, train_split='train[:64]')
  auged = next(data.make_train_iterator(auged_cfg, global_batch_size=64, seed=3))['image']
  assert auged.shape == clean.shape
  offsets, flips = [], []
  for x, y in zip(clean, auged):
    padded = np.pad(x - BLACK, ((4, 4), (4, 4), (0, 0))) + BLACK
    found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
             if np.allclose((padded[dy:dy + 32, dx:dx + 32][:, ::-1] if f else
                             padded[dy:dy + 32, dx:dx + 32]), y, atol=1e-5)]
    assert found, 'an augmented image is no crop/flip of its clean image'
    offsets.append(found[0][:2])
    flips.append(found[0][2])
  assert 10 < sum(flips) < 54  # about half flipped
  assert sum(o != (4, 4) for o in offsets) > 40  # most crops moved


def test_pad_crop_flip_flips_and_crops():
  images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
  rng = mock.Mock(integers=mock.Mock(side_effect=[np.array([1, 0]), np.array([1, 2])]),
                  random=mock.Mock(return_value=np.array([0.9, 0.1])))
  out = augment.pad_crop_flip(images, rng, pad=1)
  np.testing.assert_array_equal(out[0], images[0])  # centred, not flipped
  expected = np.pad(images[1, :, :, 0], 1)[0:4, 2:6][:, ::-1]  # shifted, then mirrored
  np.testing.assert_array_equal(out[1, :, :, 0], expected)


@pytest.mark.parametrize('shape', [(300, 200, 3), (120, 500, 3), (40, 30, 3)])
def test_imagenet_crops_have_the_requested_size(shape):
  image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
  rng = np.random.default_rng(1)
  out = np.zeros((56, 56, 3), np.uint8)
  jpeg.train_crop(image, rng, out)
  assert out.any()
  out[:] = 0
  jpeg.eval_crop(image, out)
  assert out.any()


def test_eval_is_deterministic_and_unaugmented(real_data_dir):
  cfg = real_config(real_data_dir, train_split='train[:100]')
  eval_ds = data.make_eval_iterator(cfg, split='train[:100]', global_batch_size=50)
  first, second = list(eval_ds), list(eval_ds)
  assert same_batches(first, second)
  plain = real_config(real_data_dir, augment='none', shuffle=False, train_split='train[:100]',
                      validation=0)  # trains on every example of the split, in order
  train = next(data.make_train_iterator(plain, global_batch_size=50, seed=0))
  np.testing.assert_array_equal(first[0]['image'], train['image'])


# ---------------------------------------------------------------- eval padding, sharding


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_sees_every_example_once_with_equal_batch_counts(real_data_dir, process_count):
  cfg = real_config(real_data_dir)
  batches = [list(data.make_eval_iterator(cfg, global_batch_size=200, process_index=p,
                                          process_count=process_count))
             for p in range(process_count)]
  assert len({len(b) for b in batches}) == 1  # every host runs the same number of steps
  local = 200 // process_count
  labels = []
  for per_process in batches:
    for batch in per_process:
      assert batch['image'].shape == (local, 32, 32, 3) and batch['mask'].dtype == bool
      padding = ~batch['mask']
      np.testing.assert_allclose(batch['image'][padding] - BLACK, 0.0, atol=1e-6)
      assert not batch['label'][padding].any()
      labels.extend(batch['label'][batch['mask']])
  # Shards are contiguous and in order, so this is "every example exactly once".
  np.testing.assert_array_equal(labels, split_labels(cfg, 'test'))


def test_train_shards_are_disjoint_and_cover_every_epoch(real_data_dir):
  cfg = real_config(real_data_dir, augment='none', train_split='train[:301]')
  plan = data.DataPlan(cfg)

  def keys(split):
    return image_keys(np.concatenate(
        [b['image'][b['mask']] for b in plan.eval_iterator(split=split, global_batch_size=301)]))
  held_out = keys(data.MINIVAL)
  assert len(held_out) == 15  # 5% of 301
  # The training examples: the split less the validation examples (286, in shards of 143).
  every = [k for k in keys('train[:301]') if k not in set(held_out)]
  seen = collections.Counter()
  for p, shard in enumerate((143, 143)):
    iterator = data.make_train_iterator(cfg, global_batch_size=100, seed=0, process_index=p,
                                        process_count=2)
    stream = np.concatenate([b['image'] for b in take(iterator, 7)])  # > 2 epochs of 50s
    epoch1, epoch2 = stream[:shard], stream[shard:2 * shard]
    assert sorted(image_keys(epoch1)) == sorted(image_keys(epoch2))  # the same shard...
    assert not np.array_equal(epoch1, epoch2)  # ...reshuffled
    seen.update(image_keys(epoch1))
  assert seen == collections.Counter(every)


# ---------------------------------------------------------------- validation split


def test_choose_validation_is_seeded_class_balanced_and_uniform_without_labels():
  labels = np.repeat([0, 1, 2], [50, 30, 20])
  chosen = data.choose_validation(100, 10, seed=0, labels=labels)
  assert np.array_equal(chosen, np.unique(chosen)) and chosen.dtype == np.int64
  assert np.bincount(labels[chosen]).tolist() == [5, 3, 2]  # each class its share
  np.testing.assert_array_equal(chosen, data.choose_validation(100, 10, 0, labels))
  assert not np.array_equal(chosen, data.choose_validation(100, 10, 1, labels))
  # Shares 2.38, 2.31, 2.31: the largest remainder rounds up; then ties go to the
  # smaller label.
  near = np.repeat([0, 1, 2], [34, 33, 33])
  assert np.bincount(near[data.choose_validation(100, 7, 0, near)]).tolist() == [3, 2, 2]
  assert np.bincount(near[data.choose_validation(100, 8, 0, near)]).tolist() == [3, 3, 2]
  uniform = data.choose_validation(1000, 50, seed=3)
  assert len(np.unique(uniform)) == 50 and uniform.max() < 1000
  assert len(data.choose_validation(100, 0, 0, labels)) == 0


@pytest.mark.parametrize('value, message', [
    (-0.1, r'a fraction in \(0, 1\), a count, or 0 for none.*must be None or a finite '
           'number >= 0'),
    (2.5, 'cannot be held out.*a whole number of examples, 0 for no validation split'),
    (400, 'leaving none to train on.*a whole number of examples, 0 for no validation split')])
def test_bad_validation_settings_fail_with_the_fix(real_data_dir, value, message):
  cfg = real_config(real_data_dir, train_split='train[:400]', validation=value)
  with pytest.raises(data.DataConfigError, match=message):
    data.DataPlan(cfg).info  # noqa: B018


def test_validation_examples_are_disjoint_from_training_and_test(real_data_dir):
  """What the trainer validates on never trains and is no test image; together with the
  training examples it is the whole training split, with every class's share."""
  cfg = real_config(real_data_dir, augment='none', shuffle=False, normalise_on_device=True)
  plan = data.DataPlan(cfg)
  assert (plan.info.num_train, plan.info.num_validation) == (3945, 208)  # 5% of 4,153

  def images_and_labels(split):
    batches = list(plan.eval_iterator(split=split, global_batch_size=512))
    return (np.concatenate([b['image'][b['mask']] for b in batches]),
            np.concatenate([b['label'][b['mask']] for b in batches]))
  held_out, held_out_labels = images_and_labels(data.MINIVAL)
  whole, whole_labels = images_and_labels('train')
  test, _ = images_and_labels('test')
  iterator = plan.train_iterator(global_batch_size=3945, seed=0)
  epoch = next(iterator)['image']  # without shuffling: every training example once
  iterator.close()
  assert len(held_out) == 208
  assert not set(image_keys(held_out)) & set(image_keys(epoch))
  assert not set(image_keys(held_out)) & set(image_keys(test))
  assert collections.Counter(image_keys(held_out)) + collections.Counter(image_keys(epoch)) == \
      collections.Counter(image_keys(whole))
  shares = 208 * np.bincount(whole_labels, minlength=10) / len(whole_labels)
  assert np.abs(np.bincount(held_out_labels, minlength=10) - shares).max() < 1
  # The validation split is a function of the data and validation_seed alone.
  again = data.DataPlan(real_config(real_data_dir, label_noise=0.3, noise_seed=5))
  np.testing.assert_array_equal(again.split[1], plan.split[1])
  other = data.DataPlan(real_config(real_data_dir, validation_seed=1))
  assert not np.array_equal(other.split[1], plan.split[1])
  assert other.validation_record()['indices_sha256'] != plan.validation_record()['indices_sha256']
  none = data.DataPlan(real_config(real_data_dir, validation=0))
  assert (none.info.num_train, none.validation_record()['selection']) == (4153, 'none')
  with pytest.raises(data.DataConfigError, match='holds out none'):
    none.eval_iterator(split=data.MINIVAL, global_batch_size=8)
  count = data.DataPlan(real_config(real_data_dir, validation=100))
  assert count.info.num_validation == 100


# ---------------------------------------------------------------- resume


def test_resume_from_state_replays_the_same_batches(real_data_dir, tmp_path):
  cfg = real_config(real_data_dir, train_split='train[:500]')

  def make():
    return data.make_train_iterator(cfg, global_batch_size=64, seed=5)

  iterator = make()
  take(iterator, 9)  # past the first epoch boundary (500 / 64)
  state = iterator.get_state()
  expected = take(iterator, 3)

  restored = make()
  restored.set_state(json.loads(json.dumps(state)))  # survives serialisation
  assert same_batches(take(restored, 3), expected)

  # The trainer's way: through orbax, beside the model state.
  iterator = make()
  take(iterator, 9)
  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  manager.save(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  restored = make()
  manager.restore(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert same_batches(take(restored, 3), expected)


def test_worker_processes_give_the_same_stream_and_resume(real_data_dir):
  cfg = real_config(real_data_dir, train_split='train[:300]')
  expected = take(data.make_train_iterator(cfg, global_batch_size=32, seed=2), 6)
  cfg.num_workers = 2
  iterator = data.make_train_iterator(cfg, global_batch_size=32, seed=2)
  got = take(iterator, 3)
  state = iterator.get_state()
  iterator.close()
  restored = data.make_train_iterator(cfg, global_batch_size=32, seed=2)
  restored.set_state(state)
  got += take(restored, 3)
  restored.close()
  assert same_batches(got, expected)


def test_seed_changes_order_and_augmentation(real_data_dir):
  cfg = real_config(real_data_dir, train_split='train[:200]')
  a = next(data.make_train_iterator(cfg, global_batch_size=32, seed=0))
  b = next(data.make_train_iterator(cfg, global_batch_size=32, seed=1))
  assert not np.array_equal(a['image'], b['image'])


# ---------------------------------------------------------------- label noise


def test_symmetric_noise_matches_the_papers_confusion_matrix():
  labels = np.arange(50_000) % 10
  noisy, fraction = data.symmetric_label_noise(labels, 0.3, 10, seed=0)
  changed = noisy != labels
  assert abs(fraction - 0.3) < 0.01 and changed.mean() == fraction  # never "flipped" to itself
  assert noisy.dtype == np.int32 and noisy.min() >= 0 and noisy.max() < 10
  # q_ij = r / (K - 1): the new class is uniform over the other nine.
  counts = np.bincount(noisy[changed & (labels == 0)], minlength=10)
  assert counts[0] == 0
  assert counts[1:].min() > 0.8 * counts[1:].mean()
  again, _ = data.symmetric_label_noise(labels, 0.3, 10, seed=0)
  other, _ = data.symmetric_label_noise(labels, 0.3, 10, seed=1)
  np.testing.assert_array_equal(noisy, again)
  assert not np.array_equal(noisy, other)
  clean, none = data.symmetric_label_noise(labels, 0.0, 10, seed=0)
  np.testing.assert_array_equal(clean, labels)
  assert none == 0.0
  assert (data.symmetric_label_noise(labels, 1.0, 10, seed=0)[0] != labels).all()


def test_train_iterator_applies_the_noise_per_example(real_data_dir):
  clean_cfg = real_config(real_data_dir, augment='none', shuffle=False, train_split='train[:400]',
                          validation=0)
  noisy_cfg = real_config(real_data_dir, augment='none', shuffle=False, train_split='train[:400]',
                          label_noise=0.4, noise_seed=7, validation=0)
  clean = split_labels(clean_cfg, 'train[:400]')
  expected, fraction = data.symmetric_label_noise(clean, 0.4, 10, seed=7)
  assert data.DataPlan(noisy_cfg).describe()['flipped_fraction'] == fraction
  assert abs(fraction - 0.4) < 0.08
  # Two hosts: each shard carries the noise of its own examples.
  got = np.concatenate([next(data.make_train_iterator(noisy_cfg, global_batch_size=400, seed=0,
                                                      process_index=p, process_count=2))['label']
                        for p in range(2)])
  np.testing.assert_array_equal(got, expected)
  eval_labels = next(iter(data.make_eval_iterator(noisy_cfg, split='train[:400]',
                                                  global_batch_size=400)))['label']
  np.testing.assert_array_equal(eval_labels, clean)  # evaluation stays clean


# ---------------------------------------------------------------- mocked datasets


def test_cifar100_and_cifar10n_under_mock_data():
  with mocked(num_examples=40):
    cfg = data.data_config()
    cfg.dataset = 'cifar100'
    assert data.dataset_info(cfg).num_classes == 100
    batch = next(data.make_train_iterator(cfg, global_batch_size=16, seed=0))
    assert batch['image'].shape == (16, 32, 32, 3) and batch['label'].max() < 100
    cfg = data.data_config()
    cfg.update(dataset='cifar10_n', label_source='cifar10n_worse', shuffle=False,
               augment='none')
    worse = next(data.make_train_iterator(cfg, global_batch_size=40, seed=0))['label']
    cfg.label_source = 'clean'
    clean = next(data.make_train_iterator(cfg, global_batch_size=40, seed=0))['label']
    assert not np.array_equal(worse, clean)  # the fake human labels differ from 'label'


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None,
                    reason="tfds's mock ImageNet encodes its fake JPEGs with TensorFlow, which "
                    'is not installed; tests/test_imagenet_input.py covers the same pipeline '
                    'on real JPEGs')
def test_imagenet_random_crops_for_training_centre_crops_for_eval():
  with mocked(num_examples=10):
    cfg = data.data_config()
    cfg.update(dataset='imagenet2012', eval_split='validation', image_size=48)
    assert data.dataset_info(cfg).image_shape == (48, 48, 3)
    described = data.DataPlan(cfg).describe()
    assert described['augment'] == 'imagenet' and not described['in_memory']
    a = take(data.make_train_iterator(cfg, global_batch_size=4, seed=0), 2)
    b = take(data.make_train_iterator(cfg, global_batch_size=4, seed=0), 2)
    c = next(data.make_train_iterator(cfg, global_batch_size=4, seed=1))
    assert a[0]['image'].shape == (4, 48, 48, 3) and a[0]['image'].dtype == np.float32
    assert same_batches(a, b) and not np.array_equal(a[0]['image'], c['image'])
    per_process = [list(data.make_eval_iterator(cfg, global_batch_size=4, process_index=p,
                                                process_count=2)) for p in range(2)]
    assert [len(batches) for batches in per_process] == [3, 3]  # 5 examples in batches of 2
    assert sum(int(b['mask'].sum()) for batches in per_process for b in batches) == 10
    assert same_batches(per_process[0], list(data.make_eval_iterator(
        cfg, global_batch_size=4, process_index=0, process_count=2)))


# ---------------------------------------------------------------- missing data


def test_missing_dataset_without_tensorflow_is_one_clear_error(tmp_path):
  cfg = data.data_config()
  cfg.data_dir = str(tmp_path)
  with mock.patch.object(datasets, '_tensorflow_importable', return_value=False):
    with pytest.raises(data.DatasetNotFoundError) as error:
      data.dataset_info(cfg)
    message = str(error.value)
    for part in ("'cifar10'", '3.0.2', str(tmp_path), 'TFDS_DATA_DIR', 'data_dir',
                 'downloads/manual/', 'cifar-10-binary.tar.gz', 'TensorFlow',
                 '--file_format=array_record'):
      assert part in message, part
    cfg.dataset = 'imagenet2012'
    with pytest.raises(ValueError, match='ILSVRC2012_img_train.tar'):
      data.make_train_iterator(cfg, global_batch_size=8, seed=0)


def test_missing_dataset_is_prepared_in_array_record_when_tensorflow_is_there(tmp_path):
  with mocked(num_examples=8):
    with mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare') as prepare:
      cfg = data.data_config()
      cfg.dataset = 'cifar100'
      next(data.make_train_iterator(cfg, global_batch_size=8, seed=0))
  prepare.assert_called_once_with(file_format='array_record')
  cfg = data.data_config()
  cfg.data_dir = str(tmp_path)
  with mock.patch.object(datasets, '_tensorflow_importable', return_value=True), \
      mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare',
                        side_effect=ConnectionError('no network')):
    with pytest.raises(data.DatasetNotFoundError, match='preparing it failed.*no network'):
      data.dataset_info(cfg)


def test_a_gs_data_dir_is_refused_in_one_paragraph(monkeypatch):
  cfg = data.data_config()
  cfg.data_dir = 'gs://bucket/tfds'
  with pytest.raises(data.DataConfigError) as error:
    data.dataset_info(cfg)
  for part in ("'gs://bucket/tfds'", '--config.data.data_dir', 'GCS FUSE', 'local SSD',
               'TFDS_DATA_DIR'):
    assert part in str(error.value), part
  monkeypatch.setenv('TFDS_DATA_DIR', 'gs://bucket/tfds')
  with pytest.raises(data.DataConfigError, match=r'from \$TFDS_DATA_DIR'):
    data.dataset_info(data.data_config())


def test_preparing_hides_the_gpus_from_tensorflow_first(tmp_path):
  """TensorFlow would reserve the GPU memory that JAX trains in; it is hidden first."""
  calls = []
  cfg = data.data_config()
  cfg.data_dir = str(tmp_path)
  with mock.patch.object(datasets, '_tensorflow_importable', return_value=True), \
      mock.patch.object(datasets, 'hide_gpus_from_tensorflow',
                        side_effect=lambda: calls.append('hide')), \
      mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare',
                        side_effect=lambda **kw: calls.append('prepare')):
    with pytest.raises(Exception):  # the mocked preparation wrote nothing to read
      data.dataset_info(cfg)
  assert calls == ['hide', 'prepare']


def test_hide_gpus_from_tensorflow_sets_no_visible_gpu(monkeypatch):
  calls = []
  fake_tf = types.ModuleType('tensorflow')
  fake_tf.config = types.SimpleNamespace(
      set_visible_devices=lambda devices, kind: calls.append((list(devices), kind)))
  monkeypatch.setitem(sys.modules, 'tensorflow', fake_tf)
  datasets.hide_gpus_from_tensorflow()
  assert calls == [([], 'GPU')]


# ---------------------------------------------------------------- no TensorFlow, new process

# TensorFlow as if not installed: no finder finds it, so `import tensorflow` raises
# ModuleNotFoundError *and* importlib.util.find_spec('tensorflow') is None. (A finder
# that raises is not faithful: etils probes with find_spec, and tfds.builder then fails.)
_NO_TENSORFLOW = '''
import importlib.abc, json, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
  def __init__(self, finders):
    self.finders = finders

  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    for finder in self.finders:
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        return spec
    return None

sys.meta_path[:] = [NoTensorFlow(list(sys.meta_path))]
import numpy as np
from rattn import data

data_dir, state, out = sys.argv[1:]
cfg = data.data_config()
cfg.update(data_dir=data_dir, train_split='train[:500]')
train = data.make_train_iterator(cfg, global_batch_size=64, seed=5)
train.set_state(json.loads(state))
batch = next(train)
evals = next(iter(data.make_eval_iterator(cfg, global_batch_size=64)))
cfg.update(dataset='fashion_mnist', train_split='train[:100]')
fashion = next(data.make_train_iterator(cfg, global_batch_size=32, seed=0))
try:
  cfg.data_dir = out + '_empty'
  data.dataset_info(cfg)
  missing = ''
except data.DatasetNotFoundError as e:
  missing = str(e)
assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)
np.savez(out, image=batch['image'], label=batch['label'], eval_mask=evals['mask'],
         fashion=fashion['image'].shape, missing=missing)
'''


def test_training_path_runs_without_tensorflow_and_resumes_in_a_new_process(
    real_data_dir, tmp_path):
  cfg = real_config(real_data_dir, train_split='train[:500]')
  iterator = data.make_train_iterator(cfg, global_batch_size=64, seed=5)
  take(iterator, 11)
  state = iterator.get_state()
  expected = next(iterator)
  out = tmp_path / 'batch.npz'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', textwrap.dedent(_NO_TENSORFLOW), real_data_dir,
                  json.dumps(state), str(out)], check=True, cwd=REPO, env=env, timeout=120)
  got = np.load(out)
  np.testing.assert_array_equal(got['image'], expected['image'])
  np.testing.assert_array_equal(got['label'], expected['label'])
  assert got['eval_mask'].all() and tuple(got['fashion']) == (32, 28, 28, 1)
  assert 'TensorFlow' in str(got['missing']) and 'not installed' in str(got['missing'])


def test_measure_throughput_reports_images_per_second(real_data_dir):
  cfg = real_config(real_data_dir, train_split='train[:256]')
  assert data.measure_throughput(cfg, global_batch_size=64, num_batches=5) > 0
