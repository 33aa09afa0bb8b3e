r"""Trains (or resumes) a CIFAR / Fashion-MNIST config.

  python -m experiments.cifar --config experiments/configs/ran_cifar.py:model=ran56_cifar \
      --workdir /tmp/ran56
  python -m experiments.cifar --config experiments/configs/tiny.py --workdir /tmp/tiny \
      --config.num_train_steps=100 --config.schedule.base_lr=0.05

Rerunning the same command with the same --workdir resumes from its latest
checkpoint. The workdir receives config.json, metrics.jsonl, TensorBoard
events (tensorboard/) and checkpoints/. Multi-process runs: see
rattn/train/distributed.py (--coordinator_address, --num_processes,
--process_id, or the cluster's environment).
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
