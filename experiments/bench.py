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
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from experiments.configs import default
from rattn import bench, data, train
from rattn.bench import input as input_bench
from rattn.models import MODELS, create_model
from rattn.models.summary import count_macs, count_params, format_table

DTYPES = ('float32', 'bfloat16')
PROFILE_STEPS = 3


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.bench', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument('--model', help='registered model name(s), comma-separated')
  what.add_argument('--input', help='dataset whose input pipeline to time, e.g. cifar10')
  what.add_argument('--summarize', metavar='JSONL',
                    help='print the median over repeated runs of each configuration in a '
                    'results file as Markdown (measures nothing)')
  parser.add_argument('--batch_size', type=int, default=64, help='global batch size')
  parser.add_argument('--dtype', choices=DTYPES, default='float32',
                      help='computation dtype (parameters stay float32)')
  parser.add_argument('--devices', type=int, default=None,
                      help='use the first N devices (default: all); on CPU, N > 1 simulates '
                      'N devices on the same cores')
  parser.add_argument('--steps', type=int, default=None,
                      help='timed steps (default 20), or with --input timed batches (default '
                      '200: the prefetch buffer, filled before timing, must not dominate)')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps before timing')
  parser.add_argument('--remat', action='store_true',
                      help="pass remat=True to the model (models that have the option)")
  parser.add_argument('--num_workers', type=int, default=None,
                      help='--input only: grain worker processes (default: the data config)')
  parser.add_argument('--data_dir', default=None,
                      help='--input only: tfds data dir (default: $TFDS_DATA_DIR)')
  parser.add_argument('--cores', default='1,2,all',
                      help="--input imagenet(2012) only: worker processes (one per core) to "
                      "time, comma-separated; 'all' is every core this process may use")
  parser.add_argument('--model_kwargs', type=json.loads, default={},
                      help='more model keyword arguments as JSON, e.g. \'{"scan": true}\'')
  parser.add_argument('--no_eval', action='store_true', help='skip the eval measurement')
  parser.add_argument('--json_out', help='append one JSON line per measurement to this file')
  parser.add_argument('--profile', metavar='DIR',
                      help=f'also trace {PROFILE_STEPS} train steps with jax.profiler into '
                      'DIR/<model> (TensorBoard / Perfetto) and print the op kinds that take '
                      'the most time')
  args = parser.parse_args(argv)
  if args.steps is None:
    args.steps = 200 if args.input and not input_bench.handles(args.input) else 20
  return args


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
    raise ValueError(f'--devices {count} asked for, but only {len(devices)} '
                     f'{devices[0].platform} devices are present.')
  return devices[:count]


def _git_commit() -> Optional[str]:
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


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


# ---------------------------------------------------------------- model benchmark


def _train_config(name: str, args: argparse.Namespace, model_kwargs: Dict[str, Any]):
  """The default training config with this benchmark's model, batch size and dtype."""
  config = default.get_config()
  config.model = name
  config.model_kwargs = ml_collections.ConfigDict(model_kwargs)
  config.batch_size = args.batch_size
  config.eval_batch_size = args.batch_size
  config.dtype = args.dtype
  return config


def _synthetic_batch(batch_size: int, image_size: int, num_classes: int) -> Dict[str, np.ndarray]:
  """A host batch of the shape and dtypes the input pipeline yields (normalised float32)."""
  rng = np.random.default_rng(0)
  return {'image': rng.standard_normal((batch_size, image_size, image_size, 3), dtype=np.float32),
          'label': rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def bench_model(name: str, args: argparse.Namespace, devices: Sequence[jax.Device],
                context: Dict[str, Any]) -> Dict[str, Any]:
  """Measures one model's train step and eval step; returns one result record."""
  info = MODELS.info(name)
  image_size, num_classes = info['image_size'], info['num_classes']
  if args.batch_size % len(devices):
    raise ValueError(f'--batch_size {args.batch_size} does not split over {len(devices)} devices.')
  model_kwargs = dict(args.model_kwargs, **({'remat': True} if args.remat else {}))
  mesh = train.make_mesh(devices)
  # Sharded once and kept on device: the timed steps see no host-to-device copies.
  batch = train.shard_batch(_synthetic_batch(args.batch_size, image_size, num_classes), mesh)

  config = _train_config(name, args, model_kwargs)
  state, train_step = train.create_train_and_step(config, mesh)
  compiled, compile_s = bench.compile_timed(train_step, state, batch)
  plan = bench.compiled_memory(compiled)
  rss_reset = bench.reset_peak_rss()
  step = lambda carry: compiled(carry[0], batch)  # noqa: E731  (state, metrics) in and out
  timing, carry = bench.time_steps(step, (state, {}), steps=args.steps, warmup=args.warmup)
  pipelined_s, carry = bench.time_pipelined(step, carry, steps=args.steps)
  peak_rss = bench.peak_rss_bytes()
  profile = {}
  if args.profile:
    logdir = os.path.join(os.path.abspath(args.profile), name)
    carry = bench.trace_steps(step, carry, steps=PROFILE_STEPS, logdir=logdir)
    profile = {'profile_dir': logdir,
               'profile_top_ops': bench.op_breakdown(logdir, steps=PROFILE_STEPS)}
  state = carry[0]

  model = create_model(name, num_classes=num_classes, **model_kwargs)
  macs = count_macs(model, (1, image_size, image_size, 3))
  train_rate = timing.rate(args.batch_size)
  peak = bench.peak_flops(context['device_kind'], args.dtype)
  train_flops = 6 * macs * train_rate['median']
  record = {
      'kind': 'model', 'model': name, 'batch_size': args.batch_size, 'dtype': args.dtype,
      'model_kwargs': model_kwargs, 'image_size': image_size, 'num_classes': num_classes,
      'params': count_params(model, (1, image_size, image_size, 3)), 'macs_per_image': macs,
      'steps': args.steps, 'warmup': args.warmup,
      'train_images_per_s': train_rate['median'], 'train_images_per_s_min': train_rate['min'],
      'train_images_per_s_max': train_rate['max'], 'train_step_s_median': timing.median,
      'train_images_per_s_pipelined': args.steps * args.batch_size / pipelined_s,
      'compile_s': compile_s,
      'flops_convention': '2 FLOPs per multiply-add; train = 3 x forward (6 x MACs per image)',
      'train_flops_per_s': train_flops,
      'xla_flops_per_step': bench.xla_flops(compiled),
      'peak_flops_per_s': peak * len(devices) if peak else None,
      'mfu': train_flops / (peak * len(devices)) if peak else None,
      'device_peak_bytes': bench.device_peak_bytes(devices[0]),
      'xla_train_bytes': plan['total'], 'xla_train_temp_bytes': plan['temp'],
      'peak_rss_bytes': peak_rss,
      'peak_rss_scope': 'timed train steps' if rss_reset else 'process so far',
      **profile,
  }
  if not args.no_eval:
    record.update(_bench_eval(state, batch, mesh, args, macs, peak, len(devices)))
  record.update(context)
  # The load when the measurement ended: with the one at the start, it says how quiet it was.
  record['load_avg_1m_end'] = round(os.getloadavg()[0], 2)
  return record


def _bench_eval(state: train.TrainState, batch: Dict[str, jax.Array], mesh: Mesh, args: argparse.Namespace, macs: int,
                peak: Optional[float], device_count: int) -> Dict[str, Any]:
  eval_step = train.make_eval_step(mesh)
  compiled, compile_s = bench.compile_timed(eval_step, state, batch)
  timing, _ = bench.time_steps(lambda _: compiled(state, batch), None, steps=args.steps,
                               warmup=args.warmup)
  rate = timing.rate(args.batch_size)
  flops = 2 * macs * rate['median']
  return {'eval_images_per_s': rate['median'], 'eval_images_per_s_min': rate['min'],
          'eval_images_per_s_max': rate['max'], 'eval_compile_s': compile_s,
          'eval_flops_per_s': flops,
          'eval_mfu': flops / (peak * device_count) if peak else None}


# ---------------------------------------------------------------- input benchmark


def bench_input(dataset: str, args: argparse.Namespace,
                context: Dict[str, Any]) -> Dict[str, Any]:
  """Images/s that the training input pipeline delivers on this host, augmentation included.

  The pipeline is rattn.data's: tfds array_record sources fed by grain (not tf.data).
  """
  data_cfg = data.data_config()
  data_cfg.dataset = dataset
  if args.data_dir:
    data_cfg.data_dir = args.data_dir
  if args.num_workers is not None:
    data_cfg.num_workers = args.num_workers
  described = data.describe(data_cfg)
  images_per_s = data.measure_throughput(data_cfg, global_batch_size=args.batch_size,
                                         num_batches=args.steps)
  record = {'kind': 'input', 'dataset': dataset, 'pipeline': 'grain',
            'augment': described['augment'], 'in_memory': described['in_memory'],
            'num_workers': data_cfg.num_workers, 'batch_size': args.batch_size,
            'batches': args.steps, 'input_images_per_s': images_per_s}
  record.update(context)
  record['load_avg_1m_end'] = round(os.getloadavg()[0], 2)
  return record


# ---------------------------------------------------------------- report


def _si(value: Optional[float], unit: str = '') -> str:
  if value is None:
    return 'n/a'
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.2f}{prefix}{unit}'
  return f'{value:.3g}{unit}'


def _mib(value: Optional[int]) -> str:
  return 'n/a' if value is None else f'{value / 2**20:.0f}'


def table(records: Sequence[Dict[str, Any]]) -> str:
  """A Markdown table of the records (model rows first, then input rows)."""
  lines = []
  models = [r for r in records if r['kind'] == 'model']
  if models:
    rows = [{
        'model': r['model'] + ''.join(f' {k}={v}' for k, v in r['model_kwargs'].items()),
        'batch': r['batch_size'], 'dtype': r['dtype'], 'dev': r['devices'],
        'train img/s (min-max)': f"{r['train_images_per_s']:.1f} "
                                 f"({r['train_images_per_s_min']:.1f}-"
                                 f"{r['train_images_per_s_max']:.1f})",
        'pipelined img/s': f"{r['train_images_per_s_pipelined']:.1f}",
        'eval img/s': f"{r['eval_images_per_s']:.1f}" if 'eval_images_per_s' in r else '-',
        'compile s': f"{r['compile_s']:.1f}",
        'MACs/img': _si(r['macs_per_image']),
        'train FLOP/s': _si(r['train_flops_per_s']),
        'MFU': 'n/a' if r['mfu'] is None else f"{r['mfu']:.1%}",
        'XLA MiB': _mib(r['xla_train_bytes']),
        'peak RSS MiB': _mib(r['peak_rss_bytes']),
        'device peak MiB': _mib(r['device_peak_bytes']),
    } for r in models]
    lines.append(format_table(rows, list(rows[0])))
  inputs = [r for r in records if r['kind'] == 'input']
  if inputs:
    rows = [{'input': f"{r['dataset']} (grain, augment={r['augment']}, "
                      f"in_memory={r['in_memory']}, workers={r['num_workers']})",
             'batch': r['batch_size'], 'batches': r['batches'],
             'img/s': f"{r['input_images_per_s']:.0f}"}
            for r in inputs]
    lines.append(format_table(rows, list(rows[0])))
  first = records[0]
  lines.append(f"{first['device_kind']} x{first['devices']} ({first['cpu_model']}, "
               f"{first['cpu_cores']} cores, load {first['load_avg_1m']}), "
               f"jax {first['jax_version']}, {first['date']}")
  return '\n\n'.join(lines)


def _config_key(record: Dict[str, Any]) -> Tuple:
  """What must match for two runs to be repeats of one measurement."""
  return (record['kind'], record.get('model') or record.get('dataset'), record['batch_size'],
          record.get('dtype'), record['devices'], json.dumps(record.get('model_kwargs')),
          record.get('num_workers'), record['device_kind'], record.get('xla_flags', ''))


def _spread(values: Sequence[float], digits: int) -> str:
  """Median of repeated runs, with their range where there is more than one."""
  median = f'{statistics.median(values):.{digits}f}'
  if len(values) == 1:
    return median
  return f'{median} ({min(values):.{digits}f}-{max(values):.{digits}f})'


def summary(records: Sequence[Dict[str, Any]]) -> str:
  """Markdown tables of the median over repeated runs (separate processes) of each configuration.

  Each run's figure is already the median over its timed steps; the range in
  brackets is that of the runs' medians, so it shows how much the machine's
  load moved them.
  """
  groups: Dict[Tuple, List[Dict[str, Any]]] = {}
  for record in records:
    groups.setdefault(_config_key(record), []).append(record)
  model_rows, input_rows = [], []
  for runs in groups.values():
    # The load at the start and at the end of each run: how busy the machine was.
    first = runs[0]
    loads = [r[k] for r in runs for k in ('load_avg_1m', 'load_avg_1m_end') if k in r]
    common = {'runs': len(runs), 'load (1 min)': f'{min(loads):.1f}-{max(loads):.1f}'}
    values = lambda key: [r[key] for r in runs if r.get(key) is not None]
    if first['kind'] == 'input':
      input_rows.append({
          'input': f"{first['dataset']} (grain, augment={first['augment']}, "
                   f"workers={first['num_workers']})",
          'batch': first['batch_size'], 'img/s': _spread(values('input_images_per_s'), 0),
          **common})
      continue
    mfu = values('mfu')
    model_rows.append({
        'model': first['model'] + ''.join(f' {k}={v}' for k, v in first['model_kwargs'].items())
                 + (f" (XLA_FLAGS={first['xla_flags'].strip()})"
                    if first.get('xla_flags', '').strip() else ''),
        'batch': first['batch_size'], 'dtype': first['dtype'], 'dev': first['devices'],
        'train img/s': _spread(values('train_images_per_s'), 2),
        'pipelined img/s': _spread(values('train_images_per_s_pipelined'), 2),
        'eval img/s': _spread(values('eval_images_per_s'), 1) if values('eval_images_per_s')
                      else '-',
        'compile s': _spread(values('compile_s'), 0),
        'MACs/img': _si(first['macs_per_image']),
        'train FLOP/s': _si(statistics.median(values('train_flops_per_s'))),
        'MFU': f'{statistics.median(mfu):.1%}' if mfu else 'n/a',
        'XLA MiB': _mib(first['xla_train_bytes']),
        'peak RSS MiB': _mib(int(statistics.median(values('peak_rss_bytes'))))
                        if values('peak_rss_bytes') else 'n/a',
        **common})
  tables = [format_table(rows, list(rows[0])) for rows in (model_rows, input_rows) if rows]
  return '\n\n'.join(tables)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.summarize:
    with open(args.summarize) as f:
      records = [json.loads(line) for line in f if line.strip()]
    print(summary(records))
    return records
  devices = _use_devices(args.devices)
  context = _context(argv, devices)
  if args.input and input_bench.handles(args.input):  # JPEGs: per core, its own report
    records = input_bench.measure(args.input, args.data_dir, input_bench.parse_cores(args.cores),
                                  args.batch_size, args.steps, input_bench.REPEATS, context)
    print(input_bench.report(records))
  elif args.input:
    records = [bench_input(args.input, args, context)]
    print(table(records))
  else:
    records = [bench_model(name.strip(), args, devices, context)
               for name in args.model.split(',') if name.strip()]
    print(table(records))
  for record in records:
    if record.get('profile_top_ops'):
      rows = [{'op kind': r['op'], 'ms/step': f"{r['ms_per_step']:.1f}",
               'share': f"{r['share']:.1%}", 'ops/step': f"{r['count_per_step']:.0f}"}
              for r in record['profile_top_ops']]
      print(f"\nWhere the {record['model']} train step's op time goes (summed over threads; "
            f"trace in {record['profile_dir']}):")
      print(format_table(rows, list(rows[0])))
  if args.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, 'a') as f:
      for record in records:
        f.write(json.dumps(record) + '\n')
  return records


if __name__ == '__main__':
  main()
