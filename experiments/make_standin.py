r"""Builds the ImageNet stand-in (tfds 'imagenet_standin', array_record) into a data dir.

  python -m experiments.make_standin --data_dir /tmp/tfds --num_train 4000 --num_val 500
  python -m experiments.bench --input imagenet --data_dir /tmp/tfds
  python -m experiments.imagenet --config experiments/configs/ran_imagenet.py \
      --config.data.dataset=imagenet_standin --config.data.data_dir=/tmp/tfds --workdir ...

No download and no TensorFlow; the same seed builds the same files. What the
images look like (sizes, greyscale and CMYK shares, compression) is described
in rattn/data/standin.py. A data dir holds one build: delete
DATA_DIR/imagenet_standin to rebuild it with other sizes.
"""

import os
import statistics

from absl import app, flags
import numpy as np

import tensorflow_datasets as tfds

from rattn.data import jpeg, standin
from rattn.train import cli

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data dir to write into.', flag_values=FLAGS)
_NUM_TRAIN = flags.DEFINE_integer('num_train', 4000, "Images in the 'train' split.",
                                  flag_values=FLAGS)
_NUM_VAL = flags.DEFINE_integer('num_val', 500, "Images in the 'validation' split.",
                                flag_values=FLAGS)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every size, label and pixel.', flag_values=FLAGS)
flags.mark_flag_as_required('data_dir', flag_values=FLAGS)


@cli.command(FLAGS)
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if _NUM_TRAIN.value < 1 or _NUM_VAL.value < 1:
    raise app.UsageError(f'--num_train and --num_val must be at least 1 (got '
                         f'{_NUM_TRAIN.value} and {_NUM_VAL.value}).')
  try:
    os.makedirs(_DATA_DIR.value, exist_ok=True)
  except OSError as e:
    raise app.UsageError(f'--data_dir {_DATA_DIR.value} cannot be created ({e.strerror or e}); '
                         'give a directory you can write to.') from None
  tfds.disable_progress_bar()
  builder = standin.build(_DATA_DIR.value, _NUM_TRAIN.value, _NUM_VAL.value, _SEED.value)
  wanted = {'train': _NUM_TRAIN.value, 'validation': _NUM_VAL.value}
  for split in standin.SPLITS:
    source = builder.as_data_source(split, decoders={'image': jpeg.RAW})
    if len(source) != wanted[split]:
      raise app.UsageError(
          f'{builder.data_dir} already holds a build with {len(source)} {split} images, not '
          f'{wanted[split]}; delete {builder.data_dir} and rerun to rebuild it.')
    jpegs = [source[i]['image'] for i in range(len(source))]
    shapes = np.array([jpeg.header_size(data) for data in jpegs])
    print(f'{split}: {len(source)} JPEGs, median {statistics.median(shapes[:, 1]):.0f} x '
          f'{statistics.median(shapes[:, 0]):.0f} px (W x H), mean '
          f'{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB, '
          f'{np.mean(shapes.max(1) > 1000):.1%} with a side > 1000 px, '
          f'{np.mean(shapes.min(1) < 100):.1%} with a side < 100 px')
  print(f'Written to {builder.data_dir}.')


if __name__ == '__main__':
  cli.run(main)
