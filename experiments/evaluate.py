r"""Evaluates a trained workdir's checkpoint and prints its accuracy.

  python -m experiments.evaluate --workdir /tmp/ran56
  python -m experiments.evaluate --workdir /tmp/ran56 --split train --step 160000
  python -m experiments.evaluate --workdir /tmp/ran56 --checkpoint best --split minival
  python -m experiments.evaluate --workdir /tmp/run --dataset cifar10 --data_dir ../shared/tfds

By default the final (latest) checkpoint on the training config's eval split (the
test set); --checkpoint best takes the checkpoint best on the run's validation
split instead, --step any saved one. --split minival evaluates the validation
examples training held out. Prints which checkpoint it loads and why, one
human-readable line of results and, with --json, the metrics as one JSON object.
"""

import json

from absl import app, flags

from rattn import train
from rattn.train import cli

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
flags.adopt_module_key_flags(cli)  # --workdir and the multi-process flags
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: --checkpoint\'s).',
                             flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'final', ['final', 'best'],
                                'final: the latest checkpoint; best: the best on the run\'s '
                                'validation split (held out of train).', flag_values=FLAGS)
_DATASET = flags.DEFINE_string('dataset', None, 'tfds dataset (default: the training one).',
                               flag_values=FLAGS)
_SPLIT = flags.DEFINE_string('split', None, 'Split, e.g. test, train[:10%] or minival (the '
                             'validation examples held out of train) (default: the config\'s '
                             'eval split).', flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data dir (default: the training '
                                "config's, else $TFDS_DATA_DIR, else the dir training read).",
                                flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Global eval batch size (default: '
                                   'the config\'s eval_batch_size).', flag_values=FLAGS)
_JSON = flags.DEFINE_bool('json', False, 'Also print the metrics as one JSON line.',
                          flag_values=FLAGS)
flags.register_validator('batch_size', lambda size: size is None or size >= 1,
                         "--batch_size must be a positive number of images (leave it out for "
                         "the training config's eval_batch_size).", flag_values=FLAGS)
flags.register_validator('step', lambda step: step is None or step >= 0,
                         '--step must be a checkpoint step, a number >= 0 (leave it out for '
                         'the final checkpoint).', flag_values=FLAGS)


@cli.command(FLAGS)
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.require('workdir')
  if _STEP.value is not None and FLAGS['checkpoint'].present:
    raise app.UsageError(f'Give --step or --checkpoint, not both (--step {_STEP.value}, '
                         f'--checkpoint {_CHECKPOINT.value}).')
  cli.initialize_distributed()
  metrics = train.evaluate_workdir(cli.WORKDIR.value, step=_STEP.value,
                                   checkpoint=_CHECKPOINT.value, dataset=_DATASET.value,
                                   split=_SPLIT.value, data_dir=_DATA_DIR.value,
                                   batch_size=_BATCH_SIZE.value)
  print(f'Checkpoint: {metrics["checkpoint"]}.')
  print(f'{metrics["dataset"]}:{metrics["split"]} at step {metrics["step"]:,}: '
        f'accuracy {100 * metrics["accuracy"]:.2f}%, top-5 {100 * metrics["top5_accuracy"]:.2f}%, '
        f'loss {metrics["loss"]:.4f} ({metrics["count"]:,} images)')
  if _JSON.value:
    print(json.dumps(metrics))


if __name__ == '__main__':
  cli.run(main)
