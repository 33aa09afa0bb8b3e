r"""Trains (or resumes) an ImageNet config: the same loop as experiments.cifar.

  python -m experiments.imagenet --config experiments/configs/ran_imagenet.py:model=ran56 \
      --workdir /tmp/ran56_imagenet
  # several hosts (each runs the same command; or let SLURM / the TPU pod say it):
  python -m experiments.imagenet --config experiments/configs/ran_imagenet.py \
      --workdir gs://bucket/ran92 --coordinator_address host0:1234 --num_processes 4 \
      --process_id $RANK

ImageNet (tfds 'imagenet2012') must already be prepared in $TFDS_DATA_DIR (or
--config.data.data_dir): tfds cannot download it; place ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ and build it once
on a machine with TensorFlow. Each process reads its own shard of the data.
Rerunning the same command with the same --workdir resumes from its latest
checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from rattn import train
from rattn.train import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, experiments/configs/NAME.py[:ARG]; fields can be '
    'overridden with --config.FIELD=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints and metrics; rerun with it to resume.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.initialize_distributed()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
