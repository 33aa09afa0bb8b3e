"""The data section of an experiment config: ``config.data = data_config()``.

Configs are locked, so every field the input pipeline reads is declared here
with its default; an experiment overrides a few (``--config.data.label_noise=0.3``).
``check_data_config`` checks every one of them (``DATA_FIELDS``: type and range;
then what depends on the dataset), before any data is opened.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from rattn import fields
from rattn.data import datasets


def data_config() -> ml_collections.ConfigDict:
  """Returns the input-pipeline fields with their defaults.

  Fields:
    dataset: 'cifar10', 'cifar100', 'fashion_mnist', 'imagenet2012', 'cifar10_n' or
      'imagenet_standin' (synthetic JPEGs with ImageNet's statistics, built by
      ``python -m experiments.make_standin``; ImageNet's transforms).
    data_dir: tfds data dir; None reads ``$TFDS_DATA_DIR`` (else tfds's default).
    train_split / eval_split: tfds split names; slices such as 'train[:90%]' work.
      ImageNet has no 'test' split: set eval_split='validation' there. eval_split is
      the test set: evaluated once, at the end of a run, and never used to choose.
    validation: the validation examples held out of train_split, called 'minival'
      (ImageNet's tfds split 'validation' is its test set): training never sees them;
      the periodic evaluations and the kept "best" checkpoint use them. None (the
      default) holds out the dataset's share: 5% of train for cifar10 (2,500 of
      50,000; the offline subset: 208 of 4,153), cifar100 (2,500), cifar10_n (2,500)
      and fashion_mnist (3,000 of 60,000); 1% for imagenet2012 (12,812, as
      big_vision's minival) and imagenet_standin. A fraction in (0, 1) holds out that
      share, a whole number >= 1 that many examples; 0 holds out none: a run then
      evaluates only the test split at its end and reports its final checkpoint.
      The choice is class-balanced (every class gives its share of the count, by the
      clean labels) for the in-memory datasets and a uniform draw for ImageNet (its
      labels would take a pass over every JPEG); it depends on validation_seed and the
      split alone, so every seed of a study validates on the same examples, and it
      is recorded in the workdir (dataset_info.json), where resuming checks it.
      Evaluation uses the clean labels here too, also under label noise.
    validation_seed: seed of that choice (independent of the training seed).
    augment: 'auto' (the dataset's default), 'cifar' (4-pixel zero pad, random
      crop, horizontal flip), 'imagenet' (random-resized crop + flip; eval is a
      centre crop) or 'none'.
    image_size: side of the square images fed to the model; None keeps the
      dataset's own size (ImageNet: 224). Small datasets are resized once, on read.
    label_noise: rate r of the symmetric label noise on the training labels (on
      top of label_source's labels); evaluation always uses the clean labels.
    noise_seed: seed of that noise (independent of the training seed).
    label_source: 'clean', or a CIFAR-10N human label set with dataset='cifar10_n':
      'cifar10n_aggre', 'cifar10n_worse', 'cifar10n_random1' (2, 3).
    num_workers: grain worker processes; 0 reads in this process (with threads).
      Evaluation of in-memory data always runs in-process.
    prefetch: batches read ahead (per worker, when there are workers).
    shuffle: reshuffle the training data every epoch.
    cache_in_memory: 'auto' (small datasets yes, ImageNet no), 'true' or 'false':
      decode the split once into a uint8 array and augment whole batches with numpy.
    download: what to do when the dataset is not prepared in the data dir: 'auto'
      (prepare it with tfds if its manual files are in DIR/downloads/manual/ or the
      network answers within seconds; otherwise fail at once), 'true' (always try)
      or 'false' (never: fail at once). With 'auto', ``$RATTN_DATA_DOWNLOAD`` ('true'
      or 'false'), when set, decides instead (e.g. for ``experiments.evaluate``).
    normalise_on_device: False: batches are float32, standardised per channel on
      the host. True: they stay uint8 (4x fewer bytes between processes and to
      the device) and the jitted step standardises them with
      ``rattn.data.model_input``.
  """
  return ml_collections.ConfigDict({
      'dataset': 'cifar10',
      'data_dir': config_dict.placeholder(str),
      'train_split': 'train',
      'eval_split': 'test',
      'validation': config_dict.placeholder(float),
      'validation_seed': 0,
      'augment': 'auto',
      'image_size': config_dict.placeholder(int),
      'label_noise': 0.0,
      'noise_seed': 0,
      'label_source': 'clean',
      'num_workers': 0,
      'prefetch': 4,
      'shuffle': True,
      'cache_in_memory': 'auto',
      'download': 'auto',
      'normalise_on_device': False,
  })


# Every field of data_config(): its type and range. The names of datasets, augmentations,
# label sources and download modes are checked against the dataset in check_data_config.
DATA_FIELDS = {
    'dataset': fields.Rule('the tfds dataset to train on', fields.text, 'cifar10'),
    'data_dir': fields.Rule('the tfds data dir (None: $TFDS_DATA_DIR)',
                            fields.optional(fields.any_text), '/data/tfds'),
    'train_split': fields.Rule('the tfds split trained on', fields.text, 'train'),
    'eval_split': fields.Rule('the tfds split evaluated on', fields.text, 'test'),
    'augment': fields.Rule('the training augmentation', fields.text, 'auto'),
    'image_size': fields.Rule("the side of the square model input (None: the dataset's own)",
                              fields.optional(fields.integer(1)), '32'),
    'label_noise': fields.Rule('the rate of symmetric noise on the training labels',
                               fields.number(0.0, 1.0), '0.3'),
    'noise_seed': fields.Rule('the seed of the label noise', fields.integer(0), '0'),
    'validation': fields.Rule(
        "the examples held out of train_split as 'minival' (None: the dataset's default; "
        'a fraction in (0, 1), a count, or 0 for none)', fields.optional(fields.number(0.0)),
        '0.05'),
    'validation_seed': fields.Rule('the seed of the validation split', fields.integer(0), '0'),
    'label_source': fields.Rule("the training labels ('clean' or a CIFAR-10N set)",
                                fields.text, 'clean'),
    'num_workers': fields.Rule('the number of grain worker processes (0: in this process)',
                               fields.integer(0), '0'),
    'prefetch': fields.Rule('the number of batches read ahead', fields.integer(1), '4'),
    'shuffle': fields.Rule('whether the training data is reshuffled every epoch',
                           fields.boolean, 'True'),
    'cache_in_memory': fields.Rule('whether a split is decoded once into memory',
                                   fields.one_of(('auto', 'true', 'false'), lower=True), 'auto'),
    'download': fields.Rule('what to do when the dataset is not prepared',
                            fields.one_of(('auto', 'true', 'false'), lower=True), 'auto'),
    'normalise_on_device': fields.Rule('whether batches are standardised on the device',
                                       fields.boolean, 'False'),
}


def check_data_config(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ``DataConfigError`` (one paragraph) for the first field that cannot be used:
  a type or range (``DATA_FIELDS``), then a name the dataset does not know or a
  combination it does not support."""
  fields.check_fields(data_cfg, DATA_FIELDS, datasets.DataConfigError, prefix='config.data.')
  datasets.spec(data_cfg)
  datasets.augment_name(data_cfg)
  datasets.in_memory(data_cfg)
  datasets.image_size(data_cfg)
  datasets.label_key(data_cfg, train=True)
  datasets.label_noise(data_cfg)
