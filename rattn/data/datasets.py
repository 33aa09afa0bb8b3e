"""What rattn knows about each dataset, and how it opens a tfds split for reading.

Reading goes through ``tfds`` data sources (array_record files, random access),
which needs no TensorFlow. Only *preparing* a dataset that is not on disk yet
runs tfds's stock builder, which does need TensorFlow; where TensorFlow is
absent (accelerator machines), or where preparing cannot succeed (offline with
no manual files: tfds would retry its downloads for minutes), a missing dataset
is one clear error at once instead (``data.download`` says when to try).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from rattn.data import jpeg
from rattn.data import standin  # registers 'imagenet_standin' with tfds

_log = logging.getLogger(__name__)

# Per-channel statistics of the full training sets (pixels scaled to [0, 1]);
# fixed constants, so that every subset and every host normalises alike.
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# CIFAR-10N's human label sets (Wei et al., ICLR 2022), named after tfds's features.
CIFAR10N_LABELS = {
    'cifar10n_aggre': 'aggre_label',
    'cifar10n_worse': 'worse_label',
    'cifar10n_random1': 'random_label1',
    'cifar10n_random2': 'random_label2',
    'cifar10n_random3': 'random_label3',
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a supported dataset."""
  num_classes: int
  channels: int
  native_size: Optional[int]  # side of the stored images; None where it varies
  default_size: int  # side fed to the model when config.image_size is None
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  default_augment: str
  offline_files: str = ''  # what to place in downloads/manual/ for an offline build
  build_command: Optional[str] = None  # builds it here instead of tfds's stock builder
  # data.validation when unset: the fraction of the training split held out as 'minival'.
  validation: float = 0.05

  @property
  def small(self) -> bool:
    """Fixed-size images that fit in memory: batch-level numpy augmentation."""
    return self.native_size is not None


# Where tfds fetches its files; offline, connecting fails fast and preparing is not tried.
_NETWORK_PROBE = ('storage.googleapis.com', 443)
_PROBE_SECONDS = 3.0

_CIFAR10_FILES = 'the official archive cifar-10-binary.tar.gz'
SPECS: Dict[str, DatasetSpec] = {
    'cifar10': DatasetSpec(10, 3, 32, 32, _CIFAR10_MEAN, _CIFAR10_STD, 'cifar',
                           _CIFAR10_FILES),
    'cifar100': DatasetSpec(100, 3, 32, 32, _CIFAR100_MEAN, _CIFAR100_STD, 'cifar',
                            'the official archive cifar-100-binary.tar.gz'),
    # Pad-crop + flip as for CIFAR: the recipe Fashion-MNIST baselines use (e.g.
    # Zhong et al., Random Erasing, AAAI 2020); a mirrored garment is still one.
    'fashion_mnist': DatasetSpec(10, 1, 28, 28, (0.2860,), (0.3530,), 'cifar',
                                 'the four official *-ubyte.gz files'),
    'cifar10_n': DatasetSpec(10, 3, 32, 32, _CIFAR10_MEAN, _CIFAR10_STD, 'cifar',
                             _CIFAR10_FILES + ' and the CIFAR-N files that '
                             "tfds's cifar10_n manual instructions name"),
    # 1% of train (12,812 images) as big_vision's ImageNet minival; 5% would cost a
    # 64k-image pass at every eval.
    'imagenet2012': DatasetSpec(1000, 3, None, 224, _IMAGENET_MEAN, _IMAGENET_STD,
                                'imagenet', 'ILSVRC2012_img_train.tar and '
                                'ILSVRC2012_img_val.tar (from image-net.org)',
                                validation=0.01),
    # Synthetic JPEGs with ImageNet's statistics (rattn/data/standin.py): same transforms.
    standin.NAME: DatasetSpec(1000, 3, None, 224, _IMAGENET_MEAN, _IMAGENET_STD, 'imagenet',
                              build_command='python -m experiments.make_standin --data_dir DIR',
                              validation=0.01),
}
AUGMENTS = ('cifar', 'imagenet', 'none')


class DataConfigError(ValueError):
  """A data config field (or a split asked for) cannot be used; the message says what to
  change. Raised by the checks below, which ``DataPlan`` runs once."""


class DatasetNotFoundError(ValueError):
  """The dataset is not prepared in the data dir and cannot be prepared here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the trainer need to know about the configured dataset."""
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]  # (H, W, C) as fed to the model
  num_train: int  # the examples trained on: train_split less the validation examples
  num_eval: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  num_validation: int = 0  # held out of train_split ('minival'); 0: no validation split


def spec(data_cfg: ml_collections.ConfigDict) -> DatasetSpec:
  name = data_cfg.dataset
  if name not in SPECS:
    raise DataConfigError(f'Unknown dataset {name!r} (data.dataset). Valid datasets are: '
                          f'{", ".join(sorted(SPECS))}.')
  return SPECS[name]


def image_size(data_cfg: ml_collections.ConfigDict) -> int:
  size = data_cfg.image_size
  if size is None:
    return spec(data_cfg).default_size
  if size <= 0:
    raise DataConfigError(f'data.image_size must be positive, got {size}: give the side of the '
                          'square images the model sees, or None for the dataset\'s own size '
                          f'({spec(data_cfg).default_size}).')
  return size


def augment_name(data_cfg: ml_collections.ConfigDict) -> str:
  """The augmentation 'auto' resolves to, checked against the dataset."""
  ds_spec = spec(data_cfg)
  name = ds_spec.default_augment if data_cfg.augment == 'auto' else data_cfg.augment
  if name not in AUGMENTS:
    raise DataConfigError(f"Unknown augment {name!r} (data.augment); use 'auto', "
                          f"{', '.join(map(repr, AUGMENTS))}.")
  if name == 'cifar' and not ds_spec.small:
    raise DataConfigError(f"augment='cifar' needs fixed-size images; use 'imagenet' for "
                          f'{data_cfg.dataset}.')
  if name == 'imagenet' and ds_spec.small:
    raise DataConfigError(f"augment='imagenet' is for ImageNet; use 'cifar' for "
                          f'{data_cfg.dataset}.')
  return name


def in_memory(data_cfg: ml_collections.ConfigDict) -> bool:
  value = str(data_cfg.cache_in_memory).lower()
  if value not in ('auto', 'true', 'false'):
    raise DataConfigError(f"data.cache_in_memory must be 'auto', 'true' or 'false', got "
                          f'{value!r}.')
  if value == 'true' and not spec(data_cfg).small:
    raise DataConfigError(f'{data_cfg.dataset} is too large (and its images vary in size) to '
                          "cache in memory; use cache_in_memory='auto' or 'false'.")
  return spec(data_cfg).small and value != 'false'


def label_key(data_cfg: ml_collections.ConfigDict, train: bool) -> str:
  """The feature holding the labels: CIFAR-10N's human labels only ever for training."""
  source = data_cfg.label_source
  if source == 'clean':
    return 'label'
  if source not in CIFAR10N_LABELS:
    raise DataConfigError(f"Unknown label_source {source!r} (data.label_source); use 'clean' "
                          f'or one of {", ".join(sorted(CIFAR10N_LABELS))}.')
  if data_cfg.dataset != 'cifar10_n':
    raise DataConfigError(f"label_source={source!r} needs dataset='cifar10_n' "
                          f'(got {data_cfg.dataset!r}).')
  return CIFAR10N_LABELS[source] if train else 'label'


def label_noise(data_cfg: ml_collections.ConfigDict) -> float:
  """The training labels' noise rate, checked."""
  rate = float(data_cfg.label_noise)
  if not 0.0 <= rate <= 1.0:
    raise DataConfigError(f'data.label_noise={data_cfg.label_noise} is not a rate: give the '
                          'fraction of training labels to corrupt, in [0, 1] (0: clean).')
  return rate


def validation_size(data_cfg: ml_collections.ConfigDict, num_examples: int) -> int:
  """How many of the training split's ``num_examples`` ``data.validation`` holds out, checked.

  None: the dataset's default fraction; 0: none; a fraction in (0, 1): that share of
  the split (rounded, at least 1); a whole number >= 1: that many examples.
  """
  value = data_cfg.get('validation')
  if value is None:
    value = spec(data_cfg).validation
  value = float(value)
  fix = ('give a fraction of data.train_split in (0, 1) (e.g. 0.05), a whole number of '
         'examples, 0 for no validation split, or leave it unset for the dataset\'s default '
         f'({spec(data_cfg).validation:g})')
  if value < 0 or (value >= 1 and not value.is_integer()):
    raise DataConfigError(f'data.validation={data_cfg.validation} cannot be held out: {fix}.')
  count = int(value) if value >= 1 else max(1, round(value * num_examples)) if value else 0
  if count and count >= num_examples:
    raise DataConfigError(
        f'data.validation={data_cfg.validation} would hold out {count} of the {num_examples} '
        f'examples of {data_cfg.dataset}:{data_cfg.train_split}, leaving none to train on: '
        f'{fix}.')
  return count


def data_dir(data_cfg: ml_collections.ConfigDict) -> Optional[str]:
  """The tfds data dir a data config reads: its ``data_dir``, else ``$TFDS_DATA_DIR`` (else None)."""
  return data_cfg.data_dir or os.environ.get('TFDS_DATA_DIR')


_STOCK_PREPARE = tfds.core.DatasetBuilder.download_and_prepare
_NO_TENSORFLOW = ('and TensorFlow, which preparing it needs, is not installed (`pip install -e '
                  '".[prepare]"`)')


def hide_gpus_from_tensorflow() -> None:
  """Keeps TensorFlow, which tfds's builders use to prepare a dataset, off the accelerators.

  TensorFlow reserves most of every visible GPU's memory when it first touches
  one; in a process that trains with JAX that memory is JAX's. Called before a
  dataset is prepared (the only time rattn makes tfds import TensorFlow).
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:  # then preparing fails, and is reported in one paragraph
    return
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow already initialised its devices: too late to hide them
    _log.warning('TensorFlow had already initialised its GPUs before rattn could hide them; '
                 'it may hold GPU memory that JAX then lacks.')


def _tensorflow_importable() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _network_answers() -> bool:
  """Whether a TCP connection to tfds's file host opens within a few seconds."""
  answered = threading.Event()

  def probe():  # in a thread: name resolution ignores socket timeouts
    try:
      socket.create_connection(_NETWORK_PROBE, timeout=_PROBE_SECONDS).close()
      answered.set()
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_PROBE_SECONDS)
  return answered.is_set()


def _why_not_prepare(data_cfg: ml_collections.ConfigDict, root: str,
                     builder_prepares_with_tensorflow: bool = True) -> Optional[str]:
  """Why preparing the dataset here cannot succeed (None: try it), per ``data.download``."""
  mode = str(data_cfg.get('download', 'auto')).lower()
  if mode == 'auto':
    mode = os.environ.get('RATTN_DATA_DOWNLOAD', 'auto').lower()
  if mode not in ('auto', 'true', 'false'):
    raise DataConfigError(f"data.download (or $RATTN_DATA_DOWNLOAD) must be 'auto', 'true' or "
                          f"'false', got {mode!r}.")
  if mode == 'false':
    return 'and downloading is off (data.download=false)'
  manual = os.path.join(root, 'downloads', 'manual')
  if not (mode == 'true' or (os.path.isdir(manual) and os.listdir(manual))
          or _network_answers()):
    return ('and it cannot be downloaded: the network does not answer and '
            f'{manual} holds no files (set --config.data.download=true to try anyway)')
  # Last: importing TensorFlow takes seconds. Only tfds's own download_and_prepare needs it;
  # tfds.testing.mock_data replaces it with a no-op.
  if builder_prepares_with_tensorflow and not _tensorflow_importable():
    return _NO_TENSORFLOW
  return None


def _build_message(name: str, builder: Any) -> str:
  root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
  return (f'Dataset {name!r} is not built in the data dir {root!r} (looked for '
          f'{os.fspath(builder.data_dir)!r}). Build it with `{SPECS[name].build_command}` '
          f'(no download, no TensorFlow) and point $TFDS_DATA_DIR (or '
          f'--config.data.data_dir) at DIR.')


def _not_found_message(name: str, builder: Any, why: str) -> str:
  ds_spec = SPECS[name]
  root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
  return (
      f'Dataset {name!r} (tfds version {builder.version}) is not prepared in the data dir '
      f'{root!r} (looked for {os.fspath(builder.data_dir)!r}), {why}. '
      f'Point $TFDS_DATA_DIR (or --config.data.data_dir) at a tfds data dir that holds it '
      f'in array_record format. To build '
      f'it, on a machine with TensorFlow installed (`pip install -e ".[prepare]"`, which '
      f'keeps an installed tensorflow; reading needs no TensorFlow, preparing does) run `tfds build {name} '
      f'--file_format=array_record --data_dir=DIR`; without internet, first place '
      f'{ds_spec.offline_files} in DIR/downloads/manual/, which tfds\'s stock builder '
      f'reads, checking the registered checksums.')


def _prepared_builder(data_cfg: ml_collections.ConfigDict) -> Any:
  """The dataset's tfds builder, prepared if it was not and can be (else one clear error)."""
  name = data_cfg.dataset
  spec(data_cfg)
  root = data_dir(data_cfg)
  if root and '://' in root:
    source = '--config.data.data_dir' if data_cfg.data_dir else '$TFDS_DATA_DIR'
    raise DataConfigError(
        f'The data dir {root!r} (from {source}) '
        'is an object-store URL, which the array_record reader cannot open: it reads local '
        'files only. On a pod, mount the bucket on every host with GCS FUSE (e.g. `gcsfuse '
        '--implicit-dirs BUCKET /mnt/tfds`) or copy the prepared dataset to each host\'s '
        'local SSD (`gsutil -m cp -r gs://BUCKET/tfds/NAME /mnt/tfds/`), then point '
        '$TFDS_DATA_DIR (or --config.data.data_dir) at that local directory. The workdir '
        'itself may stay on gs://.')
  builder = tfds.builder(name, data_dir=root)
  if not builder.is_prepared():
    if SPECS[name].build_command:
      raise DatasetNotFoundError(_build_message(name, builder))
    why_not = _why_not_prepare(
        data_cfg, os.path.dirname(os.path.dirname(os.fspath(builder.data_dir))),
        # tfds wraps the method: == compares what the wrappers wrap.
        type(builder).download_and_prepare == _STOCK_PREPARE)
    if why_not:
      raise DatasetNotFoundError(_not_found_message(name, builder, why_not))
    _log.warning('Preparing %s in %s with tfds (array_record); this runs once.',
                 name, builder.data_dir)
    hide_gpus_from_tensorflow()
    try:
      builder.download_and_prepare(file_format='array_record')
    except Exception as e:  # any builder failure: no network, no manual files...
      why = (f'and preparing it failed ({type(e).__name__}: {e})' if _tensorflow_importable()
             else _NO_TENSORFLOW)
      raise DatasetNotFoundError(_not_found_message(name, builder, why)) from e
  return builder


def _as_data_source(builder: Any, name: str, split: str, decoders: Any) -> Any:
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except ValueError as e:  # tfds's answer to a split name or slice it cannot read
    raise DataConfigError(f'{name} cannot read the split {split!r}: {e} Slices such as '
                          "'train[:90%]' work too.") from None


def open_split(data_cfg: ml_collections.ConfigDict, split: str) -> Sequence[Dict[str, Any]]:
  """A random-access data source over ``split``; prepares the dataset if it can.

  Raises:
    DatasetNotFoundError: the dataset is not prepared and cannot be prepared here.
  """
  name = data_cfg.dataset
  builder = _prepared_builder(data_cfg)
  # Variable-size images stay JPEG bytes: the pipeline decodes them at the scale it needs.
  return _as_data_source(builder, name, split, None if SPECS[name].small else
                         {'image': jpeg.RAW})


_LABEL_CHUNK = 4096


def read_labels(data_cfg: ml_collections.ConfigDict, split: str,
                source: Sequence[Dict[str, Any]]) -> np.ndarray:
  """The clean labels of every example of ``split`` (int64 [N]), in index order.

  Read from a second data source over the prepared files (``source``, ``open_split``'s,
  prepared them) that leaves the images encoded: a few seconds for 60,000 records,
  against about a minute with the images decoded. ``source`` is read instead where
  that cannot be (tfds's mock data in tests: never "prepared", it cannot skip
  decoding without TensorFlow, nor read in batches).
  """
  def from_source() -> np.ndarray:
    return np.asarray([source[i]['label'] for i in range(len(source))], np.int64)

  builder = tfds.builder(data_cfg.dataset, data_dir=data_dir(data_cfg))
  if not builder.is_prepared():
    return from_source()
  labels_only = _as_data_source(builder, data_cfg.dataset, split,
                                {'image': tfds.decode.SkipDecoding()})
  try:
    labels_only.__getitems__([0])
  except (ImportError, TypeError):
    return from_source()
  labels = []
  for start in range(0, len(labels_only), _LABEL_CHUNK):  # batched reads: 3x faster
    keys = list(range(start, min(start + _LABEL_CHUNK, len(labels_only))))
    labels += [r['label'] for r in labels_only.__getitems__(keys)]
  return np.asarray(labels, np.int64).reshape(len(source))

