"""grain input pipelines over tfds data sources: training, evaluation, throughput.

Training: each process takes a contiguous shard of the split (balanced; the
shards cover it), draws a new seeded permutation of it every epoch, and yields
local batches forever. Element k of the pipeline is step k's batch, a pure
function of (seed, k) - the permutation, and grain's ``random_map`` for the
augmentation - so the iterator's state is one position and ``set_state`` in a
new process resumes the exact stream.

Small datasets (CIFAR, Fashion-MNIST) are decoded once into a uint8 array; a
step then gathers its batch and augments it with vectorised numpy. ImageNet
reads, decodes and crops record by record.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from rattn.data import augment
from rattn.data import datasets
from rattn.data import jpeg
from rattn.data import noise

Batch = Dict[str, np.ndarray]


def _processes(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} is not in [0, process_count={count}).')
  return index, count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be a positive multiple '
                     f'of the process count {process_count}.')
  return global_batch_size // process_count


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> Tuple[int, int]:
  """[start, stop) of this process's contiguous shard; shard sizes differ by at most one."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _noise_plan(data_cfg: ml_collections.ConfigDict,
                num_examples: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  if data_cfg.label_noise <= 0:
    return None
  return noise.noise_plan(num_examples, data_cfg.label_noise,
                          datasets.spec(data_cfg).num_classes, data_cfg.noise_seed)


@dataclasses.dataclass(frozen=True)
class _ReadRecord:
  """Reads example ``start + i`` of the split as {'image', 'label': int32}.

  Images of the small datasets are uint8 HWC, resized to ``size``; ImageNet's
  stay JPEG bytes, decoded where they are cropped.
  Noise arrays cover the whole split, so noise follows the example, not the shard.
  """
  source: Sequence[Dict[str, Any]]
  start: int
  label_key: str
  size: Optional[int]
  num_classes: int
  plan: Optional[Tuple[np.ndarray, np.ndarray]] = None

  def __call__(self, i: int) -> Dict[str, Any]:
    index = self.start + int(i)
    record = self.source[index]
    image = record['image']
    if self.size is not None:
      image = augment.resize(np.asarray(image), self.size, self.size)
    label = np.int32(record[self.label_key])
    if self.plan is not None:
      flip, offset = self.plan
      label = noise.apply_noise(label, flip[index], offset[index], self.num_classes)
    return {'image': image, 'label': label}


def _decode_all(read: _ReadRecord, count: int) -> Tuple[np.ndarray, np.ndarray]:
  """The whole shard as (uint8 [N, H, W, C], int32 [N]); ~5-10k images/s per core."""
  records = [read(i) for i in range(count)]
  return (np.stack([r['image'] for r in records]),
          np.asarray([r['label'] for r in records], np.int32))


@dataclasses.dataclass(frozen=True)
class _Gather:
  """A batch of shard indices -> the images and labels (padding where index >= count)."""
  images: np.ndarray
  labels: np.ndarray
  with_mask: bool = False

  def __call__(self, indices: np.ndarray) -> Batch:
    valid = indices < len(self.labels)
    safe = np.where(valid, indices, 0)
    batch = {'image': self.images[safe], 'label': self.labels[safe]}
    if self.with_mask:
      batch['image'][~valid] = 0
      batch['label'][~valid] = 0
      batch['mask'] = valid
    return batch


@dataclasses.dataclass(frozen=True)
class _EvalRecord:
  """Index -> a model-ready record with 'mask'; indices past the shard are zero padding."""
  read: _ReadRecord
  count: int
  shape: Tuple[int, int, int]
  centre_crop: bool

  def __call__(self, i: int) -> Dict[str, Any]:
    if i >= self.count:
      return {'image': np.zeros(self.shape, np.uint8), 'label': np.int32(0), 'mask': False}
    record = self.read(i)
    if self.centre_crop:
      image = np.empty(self.shape, np.uint8)
      jpeg.eval_crop(record['image'], image)
      record['image'] = image
    return {**record, 'mask': True}


def _seeds(seed: int) -> Tuple[int, int]:
  """Independent seeds for shuffling and for augmentation."""
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(augment_seed)


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  # A batch spans at most two epochs, and threads or workers run a few batches
  # ahead: a small cache computes each epoch's permutation about once.
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class _StepIndices:
  """Training step -> the shard indices of its batch, epoch after epoch without gaps.

  One vectorised permutation per epoch instead of grain's per-element index
  shuffle, which cost ~20 us an element here: half the in-memory CIFAR pipeline.
  """
  num_examples: int
  batch_size: int
  seed: int
  shuffle: bool

  def __call__(self, step: int) -> np.ndarray:
    positions = step * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(positions, self.num_examples)
    if not self.shuffle:
      return offsets
    indices = np.empty_like(offsets)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = _epoch_order(self.num_examples, self.seed, int(epoch))[offsets[here]]
    return indices


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
  """Shard indices -> a uint8 batch read record by record (ImageNet: cropped and flipped).

  Each image is written straight into its slot of the batch: no per-image array to stack.
  """
  read: _ReadRecord
  shape: Tuple[int, int, int]
  crop: bool  # JPEGs: cropped (randomly if random_crop) to shape; else fixed-size images
  random_crop: bool

  def __call__(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
    images = np.empty((len(indices), *self.shape), np.uint8)
    labels = np.empty(len(indices), np.int32)
    for k, i in enumerate(indices):
      record = self.read(i)
      if not self.crop:
        images[k] = record['image']
      elif self.random_crop:
        jpeg.train_crop(record['image'], rng, images[k])
      else:
        jpeg.eval_crop(record['image'], images[k])
      labels[k] = record['label']
    return {'image': images, 'label': labels}


def _iter_dataset(ds: grain.MapDataset, data_cfg: ml_collections.ConfigDict,
                  num_workers: int) -> grain.IterDataset:
  """Threads read ahead in this process; worker processes where num_workers > 0."""
  # Two threads overlap input with the training step; more only contend for the
  # GIL. Decoding-heavy input (ImageNet) scales with worker processes instead.
  read = grain.ReadOptions(num_threads=min(data_cfg.prefetch, 2),
                           prefetch_buffer_size=data_cfg.prefetch)
  ds = ds.to_iter_dataset(read)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags (with defaults); outside an absl app (pytest,
      # an argparse script) nobody parsed them, and reading would raise.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, data_cfg.prefetch)))
  return ds


def _reader(data_cfg: ml_collections.ConfigDict, split: str, train: bool,
            process_index: int, process_count: int) -> Tuple[_ReadRecord, int, int]:
  """This process's reader, its shard size, and the split size."""
  source = datasets.open_split(data_cfg, split)
  num_examples = len(source)
  start, stop = shard_bounds(num_examples, process_index, process_count)
  ds_spec = datasets.spec(data_cfg)
  size = datasets.image_size(data_cfg) if ds_spec.small else None
  plan = _noise_plan(data_cfg, num_examples) if train else None
  read = _ReadRecord(source, start, datasets.label_key(data_cfg, train), size,
                     ds_spec.num_classes, plan)
  return read, stop - start, num_examples


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int,
                        seed: int, process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> grain.DatasetIterator:
  """Endless {'image': float32 [B, H, W, C], 'label': int32 [B]} with B = global / processes.

  With ``data_cfg.normalise_on_device`` the images stay uint8 (``model_input`` normalises them).

  Returns a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` (or
  ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` with orbax) resume it
  exactly, in a new process too.
  """
  index, count = _processes(process_index, process_count)
  local = _local_batch(global_batch_size, count)
  ds_spec = datasets.spec(data_cfg)
  augment_kind = datasets.augment_name(data_cfg)
  read, shard_size, _ = _reader(data_cfg, data_cfg.train_split, True, index, count)
  if shard_size == 0:
    raise ValueError(f'{data_cfg.dataset}:{data_cfg.train_split} has too few examples for '
                     f'{count} processes.')
  shuffle_seed, augment_seed = _seeds(seed)

  # Element k is training step k's batch: a pure function of (seed, k), so the
  # iterator's state is one integer. Batches run across epoch boundaries.
  ds = grain.MapDataset.range(sys.maxsize).map(
      _StepIndices(shard_size, local, shuffle_seed, data_cfg.shuffle))
  if datasets.in_memory(data_cfg):
    ds = ds.map(_Gather(*_decode_all(read, shard_size)))
  else:
    size = datasets.image_size(data_cfg)
    ds = ds.random_map(_ReadBatch(read, (size, size, ds_spec.channels), not ds_spec.small,
                                  augment_kind == 'imagenet'), seed=augment_seed)
  if augment_kind == 'cifar':
    ds = ds.random_map(augment.PadCropFlip(), seed=augment_seed)
  if not data_cfg.normalise_on_device:
    ds = ds.map(augment.Normalise(ds_spec.mean, ds_spec.std))
  return iter(_iter_dataset(ds, data_cfg, data_cfg.num_workers))


def make_eval_iterator(data_cfg: ml_collections.ConfigDict, *, split: Optional[str] = None,
                       global_batch_size: int, process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> grain.IterDataset:
  """One pass over ``split`` (default eval_split): {'image', 'label', 'mask'} batches.

  Every example appears exactly once across processes; the last batches are
  padded (mask False) so that every process yields the same number of batches,
  which a multi-host jit needs. Labels are always the clean ones. The returned
  dataset can be iterated again for every evaluation.
  """
  index, count = _processes(process_index, process_count)
  local = _local_batch(global_batch_size, count)
  ds_spec = datasets.spec(data_cfg)
  datasets.augment_name(data_cfg)  # the same checks as for training
  read, shard_size, num_examples = _reader(data_cfg, split or data_cfg.eval_split, False,
                                           index, count)
  largest_shard = -(-num_examples // count)
  num_batches = -(-largest_shard // local)

  ds = grain.MapDataset.range(num_batches * local)
  memory = datasets.in_memory(data_cfg)
  if memory:
    ds = ds.batch(local).map(_Gather(*_decode_all(read, shard_size), with_mask=True))
  else:
    size = datasets.image_size(data_cfg)
    shape = (size, size, ds_spec.channels)
    ds = ds.map(_EvalRecord(read, shard_size, shape, not ds_spec.small)).batch(local)
  if not data_cfg.normalise_on_device:
    ds = ds.map(augment.Normalise(ds_spec.mean, ds_spec.std))
  # In memory, eval is a gather and a scale: faster here than starting worker
  # processes, which every pass over an IterDataset does anew.
  return _iter_dataset(ds, data_cfg, 0 if memory else data_cfg.num_workers)


def describe(data_cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """A flat summary of the input, for the experiment's log (incl. 'flipped_fraction')."""
  info = datasets.dataset_info(data_cfg)
  plan = _noise_plan(data_cfg, info.num_train)
  return {
      'dataset': info.name,
      'train_split': data_cfg.train_split,
      'eval_split': data_cfg.eval_split,
      'num_train': info.num_train,
      'num_eval': info.num_eval,
      'num_classes': info.num_classes,
      'image_shape': info.image_shape,
      'augment': datasets.augment_name(data_cfg),
      'in_memory': datasets.in_memory(data_cfg),
      'label_source': data_cfg.label_source,
      'label_noise': float(data_cfg.label_noise),
      'flipped_fraction': float(plan[0].mean()) if plan is not None else 0.0,
  }


def measure_throughput(data_cfg: ml_collections.ConfigDict, global_batch_size: int,
                       num_batches: int, seed: int = 0) -> float:
  """Images per second this host's training iterator delivers, augmentation included.

  Building the iterator (decoding a small dataset into memory) and the first
  batch (worker start-up) are not timed.
  """
  iterator = make_train_iterator(data_cfg, global_batch_size=global_batch_size, seed=seed)
  try:
    batch = next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - start
  finally:
    iterator.close()
  return num_batches * len(batch['label']) / elapsed
