"""Markdown tables of benchmark records: one call's measurements, or a results file's repeats.

One table layout for both. Runs of the same configuration (``config_key``) are
one row: each figure is the median over the runs, and the range in brackets is
that of the runs' medians (how much the machine's load moved them). A row of a
single run shows the range of its own timed steps instead.
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rattn.models.summary import format_table


def config_key(record: Dict[str, Any]) -> Tuple:
  """What must match for two runs to be repeats of one measurement."""
  return (record['kind'], record.get('model') or record.get('dataset'), record['batch_size'],
          record.get('dtype'), record['devices'], json.dumps(record.get('model_kwargs')),
          record.get('num_workers'), record['device_kind'], record.get('xla_flags', ''))


def _si(value: Optional[float], unit: str = '') -> str:
  if value is None:
    return 'n/a'
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.2f}{prefix}{unit}'
  return f'{value:.3g}{unit}'


def _mib(values: Sequence[Optional[float]]) -> str:
  values = [v for v in values if v is not None]
  return f'{statistics.median(values) / 2**20:.0f}' if values else 'n/a'


def _rate(runs: Sequence[Dict[str, Any]], key: str, digits: int) -> str:
  """The median over runs, with the runs' range (one run: its timed steps' range)."""
  values = [r[key] for r in runs if r.get(key) is not None]
  if not values:
    return '-'
  if len(runs) == 1 and f'{key}_min' in runs[0]:
    low, high = runs[0][f'{key}_min'], runs[0][f'{key}_max']
  elif len(values) == 1:
    return f'{values[0]:.{digits}f}'
  else:
    low, high = min(values), max(values)
  return f'{statistics.median(values):.{digits}f} ({low:.{digits}f}-{high:.{digits}f})'


def _row(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  first = runs[0]
  values = lambda key: [r[key] for r in runs if r.get(key) is not None]  # noqa: E731
  # The load at the start and at the end of each run: how busy the machine was.
  loads = [r[k] for r in runs for k in ('load_avg_1m', 'load_avg_1m_end') if k in r]
  common = {'runs': len(runs),
            'load (1 min)': f'{min(loads):.1f}-{max(loads):.1f}' if loads else 'n/a'}
  if first['kind'] == 'input':
    return {'input': f"{first['dataset']} (grain, augment={first['augment']}, "
                     f"in_memory={first['in_memory']}, workers={first['num_workers']})",
            'batch': first['batch_size'], 'img/s': _rate(runs, 'input_images_per_s', 0),
            **common}
  mfu, flops = values('mfu'), values('train_flops_per_s')
  xla_flags = first.get('xla_flags', '').strip()
  return {
      'model': first['model'] + ''.join(f' {k}={v}' for k, v in first['model_kwargs'].items())
               + (f' (XLA_FLAGS={xla_flags})' if xla_flags else ''),
      'batch': first['batch_size'], 'dtype': first['dtype'], 'dev': first['devices'],
      'train img/s': _rate(runs, 'train_images_per_s', 2),
      'pipelined img/s': _rate(runs, 'train_images_per_s_pipelined', 2),
      'eval img/s': _rate(runs, 'eval_images_per_s', 1),
      'compile s': _rate(runs, 'compile_s', 0),
      'MACs/img': _si(first['macs_per_image']),
      'train FLOP/s': _si(statistics.median(flops)) if flops else 'n/a',
      'MFU': f'{statistics.median(mfu):.1%}' if mfu else 'n/a',
      'XLA MiB': _mib(values('xla_train_bytes')),
      'peak RSS MiB': _mib(values('peak_rss_bytes')),
      'device peak MiB': _mib(values('device_peak_bytes')),
      **common}


def table(records: Sequence[Dict[str, Any]]) -> str:
  """Markdown tables (models, then input pipelines), one row per configuration."""
  groups: Dict[Tuple, List[Dict[str, Any]]] = {}
  for record in records:
    groups.setdefault(config_key(record), []).append(record)
  rows = [_row(runs) for runs in groups.values()]
  tables = []
  for kind in ('model', 'input'):
    same = [row for row in rows if kind in row]
    if same:
      tables.append(format_table(same, list(same[0])))
  return '\n\n'.join(tables)


def machine_line(record: Dict[str, Any]) -> str:
  """Where and when a measurement ran, for under a table."""
  return (f"{record['device_kind']} x{record['devices']} ({record['cpu_model']}, "
          f"{record['cpu_cores']} cores, load {record['load_avg_1m']}), "
          f"jax {record['jax_version']}, {record['date']}")


def profile_table(record: Dict[str, Any]) -> str:
  """The op kinds that take a profiled train step's time, largest first."""
  rows = [{'op kind': r['op'], 'ms/step': f"{r['ms_per_step']:.1f}",
           'share': f"{r['share']:.1%}", 'ops/step': f"{r['count_per_step']:.0f}"}
          for r in record['profile_top_ops']]
  return (f"Where the {record['model']} train step's op time goes (summed over threads; "
          f"trace in {record['profile_dir']}):\n{format_table(rows, list(rows[0]))}")
