"""A study's table (mean ± std over seeds per cell, beside the paper) and its plot."""

from __future__ import annotations

import collections
import pathlib
import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from rattn.models.summary import format_count, format_table
from rattn.study.spec import Study

TABLE_FILE = 'table.md'


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
  """Mean and sample standard deviation (None for a single value)."""
  mean = statistics.mean(values)
  return mean, (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
  mean, std = mean_std(values)
  return f'{mean:.{digits}f}' if std is None else f'{mean:.{digits}f} ± {std:.{digits}f}'


def group_rows(rows: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, ...], List[Mapping]]:
  """Rows by their cell without the seed, in first-seen (grid) order."""
  groups: Dict[Tuple[str, ...], List[Mapping]] = collections.OrderedDict()
  for row in rows:
    groups.setdefault(tuple(row['group'].values()), []).append(row)
  return groups


def _error(row: Mapping[str, Any], key: str) -> float:
  return 100.0 * (1.0 - row[key])


FINAL_COLUMN = 'test error % (final)'
BEST_COLUMN = 'test error % (best-on-val ckpt)'


def _best_differs(row: Mapping[str, Any]) -> bool:
  """Whether the run's checkpoint best on validation is not its final one."""
  return row.get('best_step') is not None and row['best_step'] != row['steps']


def _best_error(row: Mapping[str, Any]) -> float:
  """Test error of the checkpoint best on validation (the final one where that is it)."""
  return _error(row, 'best_step_accuracy' if _best_differs(row) else 'final_accuracy')


ADDED_COLUMNS = ('added params', 'added MACs')


def _added(count: int, base: int, format_abs: Callable[[int], str]) -> str:
  """``count - base`` with its sign and as a percentage of ``base``: '+1,234 (+0.5%)'."""
  sign = '+' if count >= base else '-'
  return f'{sign}{format_abs(abs(count - base))} ({(count / base - 1) * 100:+.1f}%)'


def _baseline_group(study: Study, group: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
  """``group`` with the study's baseline option on the axis that has it."""
  for index, axis in enumerate(study.axes):
    if study.baseline in (o.label for o in axis.options):
      return group[:index] + (study.baseline,) + group[index + 1:]
  return None


def table_rows(study: Study, rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, str]]:
  """One table row per cell: test error over seeds, the paper's figure, cost (and, where the
  study has a baseline option, what each cell adds to the baseline's parameters and MACs).

  The test error is the final checkpoint's; where some seed's best checkpoint on the
  validation split is another one, ``BEST_COLUMN`` gives the test error of those best
  checkpoints (each seed's final one where that is its best), and '= final' elsewhere."""
  axis_names = [a.name for a in study.axes]
  groups = group_rows(rows)
  out = []
  for group, runs in groups.items():
    paper = study.paper.errors.get(group) if study.paper else None
    speeds = [r['images_per_s'] for r in runs if r.get('images_per_s')]
    out.append({
        **dict(zip(axis_names, group)),
        'network': runs[0]['model'],
        'seeds': str(len(runs)),
        FINAL_COLUMN: format_mean_std([_error(r, 'final_accuracy') for r in runs]),
        BEST_COLUMN: (format_mean_std([_best_error(r) for r in runs])
                      if any(map(_best_differs, runs)) else '= final'),
        'paper error %': '' if paper is None else f'{paper:.2f}',
        'params': f'{runs[0]["params"]:,}',
        'MACs': format_count(runs[0]['macs']),
        'img/s': f'{statistics.median(speeds):,.0f}' if speeds else '',
        'wall s': f'{statistics.mean(r["wall_s"] for r in runs):,.0f}',
    })
    base = groups.get(_baseline_group(study, group)) if study.baseline else None
    if base:
      out[-1]['added params'] = _added(runs[0]['params'], base[0]['params'], '{:,}'.format)
      out[-1]['added MACs'] = _added(runs[0]['macs'], base[0]['macs'], format_count)
  return out


def render_table(study: Study, scale: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """table.md: what was run, the table, and how to read it."""
  columns = [a.name for a in study.axes] + [
      'network', 'seeds', FINAL_COLUMN, BEST_COLUMN, 'paper error %',
      'params', 'MACs', 'img/s', 'wall s']
  if not study.paper:
    columns.remove('paper error %')
  differs = any(map(_best_differs, rows))
  if not differs:
    columns.remove(BEST_COLUMN)
  if study.baseline:
    columns[columns.index('MACs') + 1:columns.index('MACs') + 1] = ADDED_COLUMNS
  first = rows[0]
  setting = f'; {study.scales[scale].note}' if study.scales[scale].note else ''
  seeds = ', '.join(sorted({str(r['seed']) for r in rows}))
  lines = [f'# Study `{study.name}`, scale `{scale}`', '',
           f'Claim tested: {study.claim}', '',
           f'Ours: {first["dataset"]}, {first["steps"]:,} steps per run{setting}. Seeds: {seeds}.',
           '',
           format_table(table_rows(study, rows), columns), '',
           'Test error = 100 − test accuracy, mean ± sample standard deviation over seeds, '
           'of the final checkpoint (the last step). '
           + (f'{_protocol(rows, differs)} ' if _protocol(rows, differs) else '')
           + 'params / MACs: trainable parameters / multiply-adds per image at this input size; img/s: median '
           'training throughput; wall s: mean wall time of one run (start-up included).'
           + (f' added params / added MACs: what the cell adds to its {study.baseline!r} '
              'counterpart.' if study.baseline else '')]
  if study.paper:
    lines += ['', f'Paper: {study.paper.source}'
              + (f' ({study.paper.setting})' if study.paper.setting else '')
              + '. Its figures come from a different, far longer setting: compare the '
              'direction and size of differences, not the values.']
  return '\n'.join(lines) + '\n'


def _protocol(rows: Sequence[Mapping[str, Any]], differs: bool) -> str:
  """How the runs used their data: what was held out, what chose, when test was read."""
  held_out = sorted({(r['num_validation'], r['num_train']) for r in rows
                     if r.get('num_validation')})
  if not held_out:
    if any(r.get('num_validation') is None for r in rows):  # rows from before the report
      return ''
    return ('The runs held out no validation split: the test split is evaluated once, at the '
            'end of each run, and no checkpoint is chosen.')
  sizes = '; '.join(f'{v:,} held out, {t:,} trained on' for v, t in held_out)
  chosen = ('The best-on-val ckpt column gives the test error of the checkpoint best on '
            'validation where, for some seed, that is not the final one (= final: it is the '
            'final one for every seed).' if differs else
            'The best checkpoint on validation is the final one in every run here.')
  return (f'The periodic evaluations use validation examples held out of the training split '
          f'({sizes}); only they rank checkpoints. The test split is evaluated once, at the '
          f'end of each run. {chosen}')


def plot(study: Study, scale: str, rows: Sequence[Mapping[str, Any]],
         path: pathlib.Path) -> Optional[pathlib.Path]:
  """Test error against the study's x-axis, one line per series (None if it has no x-axis)."""
  if study.x_axis is None:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  x_index = [a.name for a in study.axes].index(study.x_axis)
  series: Dict[Tuple[str, ...], List[Tuple[float, float, float]]] = {}
  networks: Dict[Tuple[str, ...], set] = {}
  for group, runs in group_rows(rows).items():
    mean, std = mean_std([_error(r, 'final_accuracy') for r in runs])
    key = group[:x_index] + group[x_index + 1:]
    series.setdefault(key, []).append((runs[0]['x'], mean, std or 0.0))
    networks.setdefault(key, set()).add(runs[0]['model'])
  # The paper's figures stay in the table: they come from another dataset and run length,
  # and on one axis with ours they would read as a comparison of values.
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, points in series.items():
    points.sort()
    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                marker='o', capsize=3,
                label=f'{" ".join(key)} ({", ".join(sorted(networks[key]))})')
  ax.set_xlabel(study.x_label or study.x_axis)
  ax.set_ylabel('test error % (mean ± std over seeds)')
  ax.set_xticks(sorted({r['x'] for r in rows}))
  ax.set_title(f'{study.name} ({scale} scale, {rows[0]["dataset"]})')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with path.open('wb') as f:  # an epath: a local file or an object (gs://)
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)
  return path


__all__ = ['ADDED_COLUMNS', 'BEST_COLUMN', 'FINAL_COLUMN', 'TABLE_FILE', 'format_mean_std', 'group_rows', 'mean_std', 'plot',
           'render_table', 'table_rows']
