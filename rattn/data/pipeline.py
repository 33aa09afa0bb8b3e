"""grain input pipelines over tfds data sources: training, evaluation, throughput.

Training reads the training split less its validation examples ('minival',
held out by ``choose_validation``; evaluated with ``eval_iterator(split=MINIVAL)``).
Each process takes a contiguous shard of those examples (balanced; the shards
cover them), draws a new seeded permutation of it every epoch, and yields
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
import hashlib
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from rattn.data import augment
from rattn.data.config import check_data_config
from rattn.data import datasets
from rattn.data import jpeg
from rattn.data import noise

Batch = Dict[str, np.ndarray]

# The split name of the validation examples held out of train_split (data.validation).
# Not 'validation': that is ImageNet's tfds split, its test set here.
MINIVAL = 'minival'


def _processes(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} is not in [0, process_count={count}).')
  return index, count


def split_batch(global_batch_size: int, parts: int, unit: str = 'process',
                name: str = 'global_batch_size', flag: str = '') -> int:
  """``global_batch_size // parts``; a ValueError naming sizes that split evenly.

  The one batch-divisibility check: over processes here, over devices in the
  run plan and the benchmark (``name`` and ``flag`` spell the setting).
  """
  size = int(global_batch_size)
  if size <= 0 or size % parts:
    units = f'{unit}es' if unit.endswith('s') else f'{unit}s'
    lower = max(size - size % parts, 0)
    suggestion = f'{flag}{lower} or {lower + parts}' if lower else f'{flag}{parts}'
    raise ValueError(
        f'{name}={size} does not divide evenly over the {parts} {units} of this run: every '
        f'{unit} must get the same number of examples. Use a positive multiple of the {unit} '
        f'count, e.g. {suggestion}.')
  return size // parts


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> Tuple[int, int]:
  """[start, stop) of this process's contiguous shard; shard sizes differ by at most one."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def choose_validation(num_examples: int, count: int, seed: int,
                      labels: Optional[np.ndarray] = None) -> np.ndarray:
  """The sorted indices of ``count`` of a split's ``num_examples``, held out for validation.

  With ``labels``, class-balanced: every class gives its share of ``count`` (largest
  remainders round the shares), drawn at random within the class; without, a uniform
  draw. A pure function of its arguments: the same split and seed give the same
  examples on every host, in every run.
  """
  rng = np.random.default_rng([int(seed), 0x76616c])  # its own stream, whatever the seed
  if count <= 0:
    return np.zeros(0, np.int64)
  if labels is None:
    return np.sort(rng.choice(num_examples, count, replace=False)).astype(np.int64)
  classes, sizes = np.unique(labels, return_counts=True)
  shares = sizes * count / num_examples
  quota = np.floor(shares).astype(np.int64)
  # The classes with the largest remainders take the rest (ties: the smaller label).
  order = np.lexsort((classes, -(shares - quota)))
  quota[order[:count - int(quota.sum())]] += 1
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _ReadRecord:
  """Reads example ``indices[i]`` of the split as {'image', 'label': int32}.

  Images of the small datasets are uint8 HWC, resized to ``size``; ImageNet's
  stay JPEG bytes, decoded where they are cropped.
  Noise arrays cover the whole split, so noise follows the example, not the shard.
  """
  source: Sequence[Dict[str, Any]]
  indices: np.ndarray  # this shard's examples, as indices into the split
  label_key: str
  size: Optional[int]
  num_classes: int
  plan: Optional[Tuple[np.ndarray, np.ndarray]] = None

  def __call__(self, i: int) -> Dict[str, Any]:
    index = int(self.indices[i])
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
  """The whole shard as (uint8 [N, H, W, C], int32 [N]), decoded record by record."""
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
  shuffle, which took a large share of the in-memory CIFAR pipeline's time.
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


class DataPlan:
  """The input of a run, assembled once from ``config.data``.

  Checks the data config once (dataset, augmentation, caching, label source),
  opens each tfds split once, holds out the validation examples, and holds what
  every consumer asks for: the dataset's ``info``, the label-noise plan, the
  training and eval iterators, the validation split's ``validation_record()``
  and ``describe()``.
  """

  def __init__(self, data_cfg: ml_collections.ConfigDict):
    check_data_config(data_cfg)
    self.config = data_cfg
    self.spec = datasets.spec(data_cfg)
    self.augment = datasets.augment_name(data_cfg)
    self.in_memory = datasets.in_memory(data_cfg)
    self.image_size = datasets.image_size(data_cfg)
    self.train_label_key = datasets.label_key(data_cfg, train=True)
    self.label_noise = datasets.label_noise(data_cfg)
    self._sources: Dict[str, Sequence[Dict[str, Any]]] = {}

  @functools.cached_property
  def info(self) -> datasets.DatasetInfo:
    """What the model and the trainer need to know about the data (split sizes read once)."""
    return datasets.DatasetInfo(
        name=self.config.dataset, num_classes=self.spec.num_classes,
        image_shape=(self.image_size, self.image_size, self.spec.channels),
        num_train=len(self.split[0]),
        num_eval=len(self.source(self.config.eval_split)),
        mean=self.spec.mean, std=self.spec.std, num_validation=len(self.split[1]))

  @functools.cached_property
  def split(self) -> Tuple[np.ndarray, np.ndarray]:
    """(training, validation) example indices into train_split: disjoint, sorted, covering it.

    Class-balanced on the small datasets (their clean labels are read once, images
    left encoded); a uniform draw on ImageNet (``data.validation``'s docstring).
    """
    cfg = self.config
    source = self.source(cfg.train_split)
    count = datasets.validation_size(cfg, len(source))
    labels = (datasets.read_labels(cfg, cfg.train_split, source)
              if count and self.spec.small else None)
    held_out = choose_validation(len(source), count, int(cfg.get('validation_seed', 0)),
                                 labels)
    return np.setdiff1d(np.arange(len(source), dtype=np.int64), held_out), held_out

  def validation_record(self) -> Dict[str, Any]:
    """What identifies the validation split, for the workdir: a resumed run must match it."""
    cfg, held_out = self.config, self.split[1]
    return {
        'split': MINIVAL, 'of': cfg.train_split,
        'selection': ('none' if not len(held_out) else
                      'class-balanced' if self.spec.small else 'uniform'),
        'seed': int(cfg.get('validation_seed', 0)), 'num_examples': int(len(held_out)),
        'indices_sha256': hashlib.sha256(held_out.astype('<i8').tobytes()).hexdigest(),
    }

  @functools.cached_property
  def noise(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Per training example: whether its label flips and by how much (None: no noise)."""
    cfg = self.config
    if self.label_noise <= 0:
      return None
    # Over the whole split, validation examples included: an example's noise does not
    # depend on which examples are held out.
    return noise.noise_plan(len(self.source(cfg.train_split)), self.label_noise,
                            self.spec.num_classes, cfg.noise_seed)

  def source(self, split: str) -> Sequence[Dict[str, Any]]:
    """The tfds data source of ``split``, opened on first use (MINIVAL: train_split's)."""
    if split == MINIVAL:
      split = self.config.train_split
    if split not in self._sources:
      try:
        self._sources[split] = datasets.open_split(self.config, split)
      except datasets.DataConfigError as e:
        field = {self.config.train_split: 'data.train_split',
                 self.config.eval_split: 'data.eval_split'}.get(split)
        raise (datasets.DataConfigError(f'{field}={split!r}: {e}') if field else e) from None
    return self._sources[split]

  def _reader(self, split: str, train: bool, process_index: int,
              process_count: int) -> Tuple[_ReadRecord, int, int]:
    """This process's reader, its shard size, and the split size.

    ``train``: train_split's training examples (its noisy labels); MINIVAL: its
    validation examples; any other split whole. The last two with clean labels.
    """
    source = self.source(split)
    if train:
      examples = self.split[0]
    elif split == MINIVAL:
      examples = self.split[1]
      if not len(examples):
        raise datasets.DataConfigError(
            f'{self.config.dataset}:{self.config.train_split} has no validation examples '
            f"('{MINIVAL}') here: data.validation={self.config.get('validation')} holds out "
            'none. Evaluate another split, or train with a validation split (data.validation).')
    else:
      examples = np.arange(len(source), dtype=np.int64)
    num_examples = len(examples)
    start, stop = shard_bounds(num_examples, process_index, process_count)
    size = self.image_size if self.spec.small else None
    read = _ReadRecord(source, examples[start:stop], self.train_label_key if train else 'label',
                       size, self.spec.num_classes, self.noise if train else None)
    return read, stop - start, num_examples

  def train_iterator(self, *, global_batch_size: int, seed: int,
                     process_index: Optional[int] = None,
                     process_count: Optional[int] = None) -> grain.DatasetIterator:
    """Endless {'image': float32 [B, H, W, C], 'label': int32 [B]} with B = global / processes.

    With ``data.normalise_on_device`` the images stay uint8 (``model_input``
    standardises them in the jitted step).

    Returns a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` (or
    ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` with orbax)
    resume it exactly, in a new process too.
    """
    cfg = self.config
    index, count = _processes(process_index, process_count)
    local = split_batch(global_batch_size, count)
    read, shard_size, _ = self._reader(cfg.train_split, True, index, count)
    if shard_size == 0:
      raise ValueError(f'{cfg.dataset}:{cfg.train_split} has too few examples for '
                       f'{count} processes.')
    shuffle_seed, augment_seed = _seeds(seed)

    # Element k is training step k's batch: a pure function of (seed, k), so the
    # iterator's state is one integer. Batches run across epoch boundaries.
    ds = grain.MapDataset.range(sys.maxsize).map(
        _StepIndices(shard_size, local, shuffle_seed, cfg.shuffle))
    if self.in_memory:
      ds = ds.map(_Gather(*_decode_all(read, shard_size)))
    else:
      shape = (self.image_size, self.image_size, self.spec.channels)
      ds = ds.random_map(_ReadBatch(read, shape, not self.spec.small,
                                    self.augment == 'imagenet'), seed=augment_seed)
    if self.augment == 'cifar':
      ds = ds.random_map(augment.PadCropFlip(), seed=augment_seed)
    if not cfg.normalise_on_device:
      ds = ds.map(augment.Normalise(self.spec.mean, self.spec.std))
    return iter(_iter_dataset(ds, cfg, cfg.num_workers))

  def eval_iterator(self, *, global_batch_size: int, split: Optional[str] = None,
                    process_index: Optional[int] = None,
                    process_count: Optional[int] = None) -> grain.IterDataset:
    """One pass over ``split`` (default eval_split): {'image', 'label', 'mask'} batches.

    ``split=MINIVAL`` passes over the validation examples held out of train_split.

    Every example appears exactly once across processes; the last batches are
    padded (mask False) so that every process yields the same number of
    batches, which a multi-host jit needs. Labels are always the clean ones.
    The returned dataset can be iterated again for every evaluation.
    """
    cfg = self.config
    index, count = _processes(process_index, process_count)
    local = split_batch(global_batch_size, count)
    read, shard_size, num_examples = self._reader(split or cfg.eval_split, False, index, count)
    largest_shard = -(-num_examples // count)
    num_batches = -(-largest_shard // local)

    ds = grain.MapDataset.range(num_batches * local)
    if self.in_memory:
      ds = ds.batch(local).map(_Gather(*_decode_all(read, shard_size), with_mask=True))
    else:
      shape = (self.image_size, self.image_size, self.spec.channels)
      ds = ds.map(_EvalRecord(read, shard_size, shape, not self.spec.small)).batch(local)
    if not cfg.normalise_on_device:
      ds = ds.map(augment.Normalise(self.spec.mean, self.spec.std))
    # In memory, eval is a gather and a scale: faster here than starting worker
    # processes, which every pass over an IterDataset does anew.
    return _iter_dataset(ds, cfg, 0 if self.in_memory else cfg.num_workers)

  def describe(self) -> Dict[str, Any]:
    """A flat summary of the input, for the experiment's log (incl. 'flipped_fraction')."""
    cfg, info = self.config, self.info
    return {
        'dataset': info.name,
        'train_split': cfg.train_split,
        'eval_split': cfg.eval_split,
        'num_train': info.num_train,
        'num_validation': info.num_validation,
        'validation': self.validation_record()['selection'],
        'num_eval': info.num_eval,
        'num_classes': info.num_classes,
        'image_shape': info.image_shape,
        'augment': self.augment,
        'in_memory': self.in_memory,
        'label_source': cfg.label_source,
        'label_noise': float(cfg.label_noise),
        # Of the examples trained on.
        'flipped_fraction': (float(self.noise[0][self.split[0]].mean())
                             if self.noise is not None else 0.0),
    }


def dataset_info(data_cfg: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """Shapes, class count and true split sizes (read off the data sources)."""
  return DataPlan(data_cfg).info


def make_train_iterator(data_cfg: ml_collections.ConfigDict, **kwargs) -> grain.DatasetIterator:
  """``DataPlan(data_cfg).train_iterator(**kwargs)``, for a single iterator."""
  return DataPlan(data_cfg).train_iterator(**kwargs)


def make_eval_iterator(data_cfg: ml_collections.ConfigDict, **kwargs) -> grain.IterDataset:
  """``DataPlan(data_cfg).eval_iterator(**kwargs)``, for a single iterator."""
  return DataPlan(data_cfg).eval_iterator(**kwargs)


def measure_throughput(data_cfg: ml_collections.ConfigDict, global_batch_size: int,
                       num_batches: int, seed: int = 0) -> float:
  """Images per second this host's training iterator delivers, augmentation included.

  Building the iterator (decoding a small dataset into memory) and the first
  batch (worker start-up) are not timed.
  """
  iterator = DataPlan(data_cfg).train_iterator(global_batch_size=global_batch_size, seed=seed)
  try:
    batch = next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - start
  finally:
    iterator.close()
  return num_batches * len(batch['label']) / elapsed
