"""The benchmark command runs and writes well-formed results (no timing assertions)."""

import json
import math
import statistics

import pytest

from experiments import bench as bench_cli
from rattn import bench
from rattn.train import cli

MODEL_KEYS = ('model', 'batch_size', 'dtype', 'devices', 'device_kind', 'jax_version', 'date',
              'command', 'macs_per_image', 'params', 'train_images_per_s',
              'train_images_per_s_min', 'train_images_per_s_max',
              'train_images_per_s_pipelined', 'compile_s', 'train_flops_per_s',
              'eval_images_per_s', 'xla_train_bytes', 'mfu', 'flops_convention')


def _read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _positive(record, keys):
  for key in keys:
    value = record[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_model_bench_writes_a_json_line_per_model(tmp_path, capsys):
  out = tmp_path / 'results.jsonl'
  # Two simulated devices: the batch is sharded as in training.
  cli.call(bench_cli.main, ['--model', 'preact_resnet20', '--batch_size', '8', '--steps', '2',
                            '--warmup', '1', '--devices', '2', '--json_out', str(out),
                            '--profile', str(tmp_path / 'profiles')])
  printed = capsys.readouterr().out
  assert '| preact_resnet20' in printed and 'train img/s' in printed
  # The profile: a trace on disk and the op kinds that took the most time, largest first.
  assert "Where the preact_resnet20 train step's op time goes" in printed
  assert list((tmp_path / 'profiles' / 'preact_resnet20').glob('**/*.trace.json.gz'))
  (record,) = _read_lines(out)
  assert set(MODEL_KEYS) <= set(record)
  assert record['kind'] == 'model' and record['devices'] == 2 and record['batch_size'] == 8
  assert record['command'].startswith('python -m experiments.bench --model preact_resnet20')
  _positive(record, ('macs_per_image', 'params', 'train_images_per_s', 'train_images_per_s_min',
                     'train_images_per_s_max', 'train_images_per_s_pipelined', 'compile_s',
                     'train_flops_per_s', 'eval_images_per_s', 'xla_train_bytes'))
  assert record['train_images_per_s_min'] <= record['train_images_per_s'] <= \
      record['train_images_per_s_max']
  assert record['mfu'] is None  # no known peak for CPUs
  ops = record['profile_top_ops']
  assert ops and all(0 < op['share'] <= 1 and op['ms_per_step'] > 0 for op in ops)
  assert sum(op['share'] for op in ops) <= 1 + 1e-9
  assert [op['share'] for op in ops] == sorted((op['share'] for op in ops), reverse=True)
  assert any('conv' in op['op'] or 'fusion' in op['op'] for op in ops), ops

  # A repeated run of the same configuration is summarised as one row of medians.
  with open(out, 'a') as f:
    f.write(json.dumps(dict(record, train_images_per_s=2 * record['train_images_per_s'])) + '\n')
  cli.call(bench_cli.main, ['--summarize', str(out)])
  (row,) = [line for line in capsys.readouterr().out.splitlines() if 'preact_resnet20' in line]
  cells = [cell.strip() for cell in row.strip('|').split('|')]
  rates = [record['train_images_per_s'], 2 * record['train_images_per_s']]
  assert cells[4] == f'{statistics.median(rates):.2f} ({rates[0]:.2f}-{rates[1]:.2f})'
  assert cells[-2] == '2'  # runs


def test_input_bench_measures_the_grain_pipeline(tmp_path, real_data_dir):
  out = tmp_path / 'results.jsonl'
  cli.call(bench_cli.main, ['--input', 'cifar10', '--batch_size', '16', '--steps', '3',
                            '--json_out', str(out)])
  (record,) = _read_lines(out)
  assert record['kind'] == 'input' and record['pipeline'] == 'grain'
  _positive(record, ('input_images_per_s', 'batch_size'))


@pytest.mark.parametrize('kind, dtype, expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H200', 'float32', 67e12),
    ('NVIDIA A100-SXM4-40GB', 'float32', 19.5e12),
    ('TPU v4', 'float32', None),
    ('cpu', 'float32', None),
])
def test_peak_flops_table(kind, dtype, expected):
  assert bench.peak_flops(kind, dtype) == expected


def test_timing_summaries():
  timing = bench.Timing((0.5, 0.25, 1.0))
  assert (timing.median, timing.min, timing.max) == (0.5, 0.25, 1.0)
  assert timing.rate(10) == {'median': 20.0, 'max': 40.0, 'min': 10.0}
