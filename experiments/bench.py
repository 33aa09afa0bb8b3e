r"""Benchmarks: train-step and eval throughput, compile time, memory and MFU of a model;
images/s of the input pipeline on its own.

  python -m experiments.bench --model ran92_cifar --batch_size 64 --dtype float32
  python -m experiments.bench --model ran56_cifar,ran92_cifar --steps 10 \
      --json_out benchmarks/results.jsonl
  python -m experiments.bench --input cifar10 --batch_size 128
  python -m experiments.bench --input imagenet --data_dir DIR --cores 1,2,all
  python -m experiments.bench --model ran56_cifar --profile /tmp/profiles

Model benchmarks time the train step that training runs (``rattn.train``), on
synthetic device-resident batches, so that they measure compute alone; the
input benchmark measures the grain pipeline alone (decode + augmentation +
batching on the host). Compare the two to see which one limits a run.

Conventions:
- train images/s: the median over ``--steps`` timed steps after ``--warmup``
  untimed ones (min and max beside it); each timed step includes the update of
  the donated train state and ends when the new state and metrics are ready.
  ``pipelined`` is the same number of steps dispatched back to back with one
  wait at the end, as a loop without host syncs runs.
- FLOPs: 2 per multiply-add; a train step counts 3 forward passes (forward +
  backward at twice the forward's cost), so train FLOPs = 6 x MACs per image,
  MACs counted exactly from the model's jaxpr (``rattn.models.summary``).
  Eval FLOPs = 2 x MACs. MFU = achieved FLOP/s / (peak of one device x devices),
  n/a where the peak is unknown (CPUs).
- Memory: on GPU/TPU the allocator's ``peak_bytes_in_use`` (largest so far in
  this process); everywhere, XLA's static plan of the train executable
  (arguments + outputs + temporaries - donated aliases, per device); on Linux
  the process's peak resident set over the timed steps (includes the Python and
  JAX runtime).

The measurements are ``rattn.bench.runs``, the tables ``rattn.bench.report``;
``--summarize`` prints the median over repeated runs of each configuration in
a results file (one row each), as ``benchmarks/README.md`` shows them.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
from absl import app, flags

from experiments.configs import default
from rattn import bench, data
from rattn.bench import input as input_bench
from rattn.bench import report, runs
from rattn.train import cli

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
_MODEL = flags.DEFINE_string('model', None, 'Registered model name(s), comma-separated.',
                             flag_values=FLAGS)
_INPUT = flags.DEFINE_string('input', None, 'Dataset whose input pipeline to time, e.g. cifar10.',
                             flag_values=FLAGS)
_SUMMARIZE = flags.DEFINE_string(
    'summarize', None, 'A results file (JSONL): print the median over repeated runs of each '
    'configuration in it as Markdown (measures nothing).', flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Global batch size.', flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Computation dtype (parameters stay float32).', flag_values=FLAGS)
_DEVICES = flags.DEFINE_integer(
    'devices', None, 'Use the first N devices (default: all); on CPU, N > 1 simulates N '
    'devices on the same cores.', flag_values=FLAGS)
_STEPS = flags.DEFINE_integer(
    'steps', None, 'Timed steps (default 20), or with --input timed batches (default 200: the '
    'prefetch buffer, filled before timing, must not dominate).', flag_values=FLAGS)
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps before timing.', flag_values=FLAGS)
_REMAT = flags.DEFINE_bool('remat', False, 'Pass remat=True to the model (models that have '
                           'the option).', flag_values=FLAGS)
_NUM_WORKERS = flags.DEFINE_integer('num_workers', None, '--input only: grain worker '
                                    'processes (default: the data config).', flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string('data_dir', None, '--input only: tfds data dir (default: '
                                '$TFDS_DATA_DIR).', flag_values=FLAGS)
_MODEL_KWARGS = flags.DEFINE_string('model_kwargs', '{}', 'More model keyword arguments as '
                                    'JSON, e.g. \'{"scan": true}\'.', flag_values=FLAGS)
_CORES = flags.DEFINE_string(
    'cores', '1,2,all', "--input imagenet / imagenet2012 only: worker processes (one per "
    "core) to time, comma-separated; 'all' is every core this process may use.", flag_values=FLAGS)
_NO_EVAL = flags.DEFINE_bool('no_eval', False, 'Skip the eval measurement.', flag_values=FLAGS)
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Append one JSON line per measurement to '
                                'this file.', flag_values=FLAGS)
_DEVICE_LOCK = flags.DEFINE_string(
    'device_lock', None, 'A lock file that every timed section holds: benchmark processes '
    'started side by side on one device then compile concurrently but time one at a time.',
    flag_values=FLAGS)
_PROFILE = flags.DEFINE_string(
    'profile', None, f'Also trace {runs.PROFILE_STEPS} train steps with jax.profiler into '
    'DIR/<model> (TensorBoard / Perfetto) and print the op kinds that take the most time.',
    flag_values=FLAGS)


def _use_devices(count: Optional[int]) -> List[jax.Device]:
  if count is not None and count > max(jax.config.jax_num_cpu_devices, 1):
    # Simulated CPU devices must be requested before JAX starts its backends; where
    # they have started already (an embedding program), the devices present are used.
    # The setting touches only the CPU backend, so it is harmless on GPU/TPU hosts.
    try:
      jax.config.update('jax_num_cpu_devices', count)
    except RuntimeError:
      pass
  devices = jax.devices()
  count = count or len(devices)
  if count > len(devices):
    raise app.UsageError(f'--devices {count} asked for, but only {len(devices)} '
                         f'{devices[0].platform} devices are present.')
  return devices[:count]


def _git_commit() -> Optional[str]:
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _given_flags() -> List[str]:
  """This command's flags as given (``--model x``), to record how a result was made."""
  args = []
  for flag in (FLAGS[name] for name in FLAGS):
    if flag.present:
      if isinstance(flag.value, bool):
        args.append(f'--{"" if flag.value else "no"}{flag.name}')
      else:
        args += [f'--{flag.name}', str(flag.value)]
  return args


def _context(argv: Sequence[str], devices: Sequence[jax.Device]) -> Dict[str, Any]:
  """Facts shared by every measurement of one call: where, when, with what, how invoked."""
  context = bench.machine()
  context.update(
      devices=len(devices),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=shlex.join(['python', '-m', 'experiments.bench', *argv]),
      git_commit=_git_commit(),
      # XLA's compiler/runtime switches change speed; a figure is meaningless without them.
      xla_flags=os.environ.get('XLA_FLAGS', ''))
  return context


def _train_config(name: str) -> ml_collections.ConfigDict:
  """The default training config with this benchmark's model, batch size and dtype."""
  try:
    model_kwargs = json.loads(_MODEL_KWARGS.value)
  except json.JSONDecodeError as e:
    raise app.UsageError(f'--model_kwargs is not JSON: {e}') from None
  config = default.get_config()
  config.model = name
  config.model_kwargs = ml_collections.ConfigDict(
      dict(model_kwargs, **({'remat': True} if _REMAT.value else {})))
  config.batch_size = config.eval_batch_size = _BATCH_SIZE.value
  config.dtype = _DTYPE.value
  return config


def _input_config(dataset: str) -> ml_collections.ConfigDict:
  """The data config whose training pipeline ``--input dataset`` times."""
  data_cfg = data.data_config()
  data_cfg.dataset = dataset
  if _DATA_DIR.value:
    data_cfg.data_dir = _DATA_DIR.value
  if _NUM_WORKERS.value is not None:
    data_cfg.num_workers = _NUM_WORKERS.value
  return data_cfg


def _measure(argv: Sequence[str]) -> List[Dict[str, Any]]:
  devices = _use_devices(_DEVICES.value)
  context = _context(argv, devices)
  if _INPUT.value and input_bench.handles(_INPUT.value):  # JPEGs: per core
    try:
      cores = input_bench.parse_cores(_CORES.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    return input_bench.measure(_INPUT.value, _DATA_DIR.value, cores, _BATCH_SIZE.value,
                               _STEPS.value or 20, input_bench.REPEATS, context)
  if _INPUT.value:  # the one place that decides what --input measures
    return [runs.bench_input(_input_config(_INPUT.value), context,
                             batch_size=_BATCH_SIZE.value, batches=_STEPS.value or 200)]
  try:
    data.split_batch(_BATCH_SIZE.value, len(devices), 'device', name='--batch_size')
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return [runs.bench_model(_train_config(name.strip()), devices, context,
                           steps=_STEPS.value or 20, warmup=_WARMUP.value,
                           eval_too=not _NO_EVAL.value, profile_dir=_PROFILE.value,
                           device_lock=_DEVICE_LOCK.value)
          for name in _MODEL.value.split(',') if name.strip()]


@cli.command(FLAGS)
def main(argv: Sequence[str]) -> None:
  """Runs the benchmark the flags ask for (call it with ``cli.call``)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  given = [f'--{n}' for n in ('model', 'input', 'summarize') if FLAGS[n].value]
  if len(given) != 1:
    raise app.UsageError('Give exactly one of --model, --input and --summarize'
                         + (f' (got {", ".join(given)}).' if given else '.'))
  if _SUMMARIZE.value:
    try:
      with open(_SUMMARIZE.value) as f:
        records = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
      raise app.UsageError(f'--summarize {_SUMMARIZE.value}: cannot read it as a results file '
                           f'({e}); give a JSONL file that --json_out wrote.') from None
    print(report.table(records))
    return
  records = _measure(_given_flags())
  if _INPUT.value and input_bench.handles(_INPUT.value):
    print(input_bench.report(records))
  else:
    print(report.table(records) + '\n\n' + report.machine_line(records[0]))
  for record in records:
    if record.get('profile_top_ops'):
      print('\n' + report.profile_table(record))
  if _JSON_OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON_OUT.value)), exist_ok=True)
    with open(_JSON_OUT.value, 'a') as f:
      for record in records:
        f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  cli.run(main)
