"""Runs a study's cells as ordinary training commands, skipping finished ones.

Each cell is ``python -m experiments.cifar --config ... --workdir DIR/<cell>``
in a subprocess, its output in ``DIR/<cell>/train.log``. When the command
succeeds, the runner reads the run's own files (config.json,
dataset_info.json, metrics.jsonl) into one result row and writes it to
``DIR/<cell>/study_cell.json``: that marker is what makes a rerun skip the
cell. A cell without it (never started, failed, or stopped) is simply run
again; the trainer resumes it from its latest checkpoint. Up to ``parallel``
cells run side by side (on one accelerator each gets an equal share of its
memory).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from rattn.study.spec import Cell, Study
from rattn.train.metric_writer import format_duration
from rattn.train.workdir import CONFIG_FILE, DATASET_INFO_FILE, METRICS_FILE, is_remote

DONE_FILE = 'study_cell.json'
LOG_FILE = 'train.log'
RESULTS_FILE = 'results.jsonl'
# What the accelerator's cells may take together; the rest stays for XLA's own use.
DEVICE_MEMORY_SHARE = 0.9


class CellFailed(RuntimeError):
  """A cell's training command exited with an error (its log says why)."""


def read_done(cell_dir: pathlib.Path) -> Optional[Dict[str, Any]]:
  """The result row of a finished cell, or None if the cell has not finished."""
  path = cell_dir / DONE_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _read_jsonl(path: pathlib.Path) -> List[Dict[str, Any]]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steady_images_per_s(records: Sequence[Mapping[str, Any]]) -> Optional[float]:
  """Median training images/s, leaving out each invocation's first log row (compilation)."""
  values, after_start = [], True
  for record in records:
    if record.get('event') == 'start':
      after_start = True
    elif record.get('split') == 'train' and 'images_per_s' in record:
      if not after_start:
        values.append(record['images_per_s'])
      after_start = False
  return statistics.median(values) if values else None


def _model_counts(config: Mapping[str, Any], info: Mapping[str, Any],
                  cache: Dict[str, Dict[str, int]]) -> Dict[str, int]:
  """Parameters and multiply-adds per image of the cell's model (counted once per model)."""
  from rattn.models.summary import model_summary  # pylint: disable=g-import-not-at-top
  height, _, channels = info['image_shape']
  key = json.dumps([config['model'], config['model_kwargs'], info['image_shape'],
                    info['num_classes']], sort_keys=True)
  if key not in cache:
    counts = model_summary(config['model'], num_classes=info['num_classes'],
                           image_size=height, channels=channels, **config['model_kwargs'])
    cache[key] = {'params': counts['params'], 'macs': counts['macs']}
  return cache[key]


def result_row(study: Study, scale: str, cell: Cell, cell_dir: pathlib.Path, wall_s: float,
               resumed: bool, counts_cache: Dict[str, Dict[str, int]]) -> Dict[str, Any]:
  """One results.jsonl line, read off the finished run's files.

  The test figures come from the run's final ``report`` event: ``final_accuracy``
  (the final state), and ``best_step`` / ``best_validation_accuracy`` /
  ``best_step_accuracy`` (the checkpoint best on the validation split, its
  validation and its test accuracy; None for a run without a validation split).
  No test figure chooses anything.
  """
  config = json.loads((cell_dir / CONFIG_FILE).read_text())
  info = json.loads((cell_dir / DATASET_INFO_FILE).read_text())
  records = _read_jsonl(cell_dir / METRICS_FILE)
  steps = int(config['num_train_steps'])
  reports = [r for r in records if r.get('event') == 'report' and r.get('step') == steps]
  if not reports:
    raise CellFailed(f'{cell.name}: {cell_dir / METRICS_FILE} has no final report (the test '
                     f'evaluation at the final step {steps}); rerun the study to finish the '
                     'cell.')
  report, best = reports[-1], reports[-1]['best'] or {}  # later lines win
  return {
      'study': study.name, 'scale': scale, 'cell': cell.name,
      'group': dict(zip((a.name for a in study.axes), cell.group)), 'x': cell.x,
      'seed': cell.seed, 'config': cell.config, 'overrides': cell.overrides,
      'model': config['model'], 'dataset': info['name'], 'steps': steps,
      'num_train': report.get('num_train'), 'num_validation': report.get('num_validation'),
      'final_accuracy': report['final']['test']['accuracy'],
      'best_step': best.get('step'),
      'best_validation_accuracy': best.get('minival_accuracy'),  # rattn.data.MINIVAL's
      'best_step_accuracy': best['test']['accuracy'] if best else None,
      **_model_counts(config, info, counts_cache),
      'images_per_s': steady_images_per_s(records), 'wall_s': round(wall_s, 1),
      'resumed': resumed,
  }


def progress_line(event: str, index: int, total: int, cell: str, elapsed_s: float,
                  eta_s: Optional[float], detail: str = '') -> str:
  """``[3/8] done  ran92_nal_seed1  (85.1%, 2m03s)  elapsed 6m10s  ETA 10m15s``."""
  eta = format_duration(eta_s) if eta_s is not None else '?'
  detail = f'  ({detail})' if detail else ''
  width = len(str(total))
  return (f'[{index:>{width}}/{total}] {event:<5} {cell}{detail}  '
          f'elapsed {format_duration(elapsed_s)}  ETA {eta}')


def eta_seconds(finished_walls: Sequence[float], remaining: int, parallel: int) -> Optional[float]:
  """Time left: the mean wall time of the cells finished so far, per remaining cell."""
  if remaining == 0:
    return 0.0
  if not finished_walls:
    return None
  return statistics.mean(finished_walls) * remaining / max(1, min(parallel, remaining))


def child_env(base: Mapping[str, str], parallel: int) -> Dict[str, str]:
  env = dict(base)
  if parallel > 1:
    # Side by side on one accelerator: an equal share of its memory each, instead of
    # the first process taking 75% of it.
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{DEVICE_MEMORY_SHARE / parallel:.3f}'
  return env


def write_results(rows: Sequence[Mapping[str, Any]], workdir: pathlib.Path) -> pathlib.Path:
  path = workdir / RESULTS_FILE
  path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  return path


def _open_log(path) -> Any:
  """The file a cell's output is appended to: ``path`` itself on a local disk; on an
  object store (which cannot append, nor take a child's output), a local temporary
  file that ``_close_log`` uploads."""
  if not is_remote(path):
    return open(path, 'a')
  return tempfile.NamedTemporaryFile('w+', suffix='.log', delete=False)


def _close_log(out: Any, path) -> None:
  out.close()
  if is_remote(path):
    local = pathlib.Path(out.name)
    earlier = path.read_text() if path.exists() else ''
    path.write_text(earlier + local.read_text())
    local.unlink()


def run_cells(study: Study, scale: str, cells: Sequence[Cell], workdir: pathlib.Path, *,
              parallel: int = 1, module: str = 'experiments.cifar',
              env: Optional[Mapping[str, str]] = None, log: Callable[[str], None] = print,
              poll_s: float = 0.5, deadline: Optional[float] = None) -> List[Dict[str, Any]]:
  """Runs the unfinished cells, ``parallel`` at a time; returns every finished cell's row.

  ``deadline`` (a ``time.time()`` value) is a time budget: a cell of a seed above 1
  starts only if it is expected to end by then (expected: the mean wall time of the
  finished cells of its group, else the longest finished cell), and is left out
  otherwise; cells of seed 1 always start, so that every config has a result. Pass
  the cells seed by seed to get as many complete seeds as fit.

  Raises:
    CellFailed: some cell's command failed (the others still ran); the message names
      each failed cell and its log.
  """
  started = time.perf_counter()
  workdir.mkdir(parents=True, exist_ok=True)
  total = len(cells)
  rows: Dict[str, Dict[str, Any]] = {}
  walls: List[float] = []
  group_walls: Dict[Tuple[str, ...], List[float]] = {}
  for cell in cells:
    row = read_done(workdir / cell.name)
    if row is not None:
      rows[cell.name] = row
      walls.append(row['wall_s'])
      group_walls.setdefault(cell.group, []).append(row['wall_s'])
  todo = [(i, c) for i, c in enumerate(cells, 1) if c.name not in rows]
  if rows:
    log(f'{len(rows)} of {total} cells already finished in {workdir}; '
        f'{len(todo)} to run.')
  environment = child_env(os.environ if env is None else env, parallel)
  # cell name -> (index, cell, process, log file, start time, resumed)
  running: Dict[str, Any] = {}
  failures: List[str] = []
  skipped: List[str] = []
  counts_cache: Dict[str, Dict[str, int]] = {}

  def eta() -> Optional[float]:
    return eta_seconds(walls, total - len(rows) - len(failures) - len(skipped), parallel)

  def fits(cell: Cell) -> bool:
    if deadline is None or cell.seed == 1:
      return True
    same = group_walls.get(cell.group)
    expected = statistics.mean(same) if same else max(walls, default=0.0)
    return time.time() + expected <= deadline

  try:
    while todo or running:
      while todo and len(running) < parallel:
        index, cell = todo.pop(0)
        if not fits(cell):
          skipped.append(cell.name)
          log(progress_line('skip', index, total, cell.name, time.perf_counter() - started,
                            eta(), 'would end after the time budget'))
          continue
        cell_dir = workdir / cell.name
        resumed = cell_dir.exists()
        cell_dir.mkdir(parents=True, exist_ok=True)
        out = _open_log(cell_dir / LOG_FILE)
        process = subprocess.Popen([sys.executable, *cell.argv(module, str(cell_dir))],
                                   stdout=out, stderr=subprocess.STDOUT, env=environment)
        running[cell.name] = (index, cell, process, out, time.perf_counter(), resumed)
        log(progress_line('start', index, total, cell.name, time.perf_counter() - started,
                          eta(), 'resuming' if resumed else ''))
      time.sleep(poll_s)
      for name in [n for n, r in running.items() if r[2].poll() is not None]:
        index, cell, process, out, t0, resumed = running.pop(name)
        _close_log(out, workdir / name / LOG_FILE)
        wall = time.perf_counter() - t0
        cell_dir = workdir / name
        row, why = None, f'exit status {process.returncode}'
        if process.returncode == 0:
          try:
            row = result_row(study, scale, cell, cell_dir, wall, resumed, counts_cache)
          except (CellFailed, OSError, KeyError, ValueError) as e:  # unreadable run files
            why = f'{type(e).__name__}: {e}'
        if row is not None:
          (cell_dir / DONE_FILE).write_text(json.dumps(row, indent=2) + '\n')
          rows[name] = row
          walls.append(wall)
          group_walls.setdefault(cell.group, []).append(wall)
          write_results([rows[c.name] for c in cells if c.name in rows], workdir)
          detail = f'{100 * row["final_accuracy"]:.2f}%, {format_duration(wall)}'
          log(progress_line('done', index, total, name, time.perf_counter() - started,
                            eta(), detail))
        else:
          failures.append(f'{name} ({why}; log: {cell_dir / LOG_FILE})')
          log(progress_line('FAIL', index, total, name, time.perf_counter() - started,
                            eta(), why))
  except BaseException:  # Ctrl-C, or a bug here: never leave cells running unattended
    # SIGTERM makes each trainer checkpoint its current step and stop; a rerun resumes.
    for _, _, process, out, _, _ in running.values():
      process.send_signal(signal.SIGTERM)
    for name, (_, _, process, out, _, _) in running.items():
      process.wait()
      _close_log(out, workdir / name / LOG_FILE)
    raise
  ordered = [rows[c.name] for c in cells if c.name in rows]
  write_results(ordered, workdir)
  if skipped:
    log(f'Time budget reached: {len(skipped)} of {total} cells not started '
        f'({", ".join(skipped)}); rerun with a larger budget to add them.')
  if failures:
    raise CellFailed(f'{len(failures)} of {total} cells failed: {"; ".join(failures)}. The '
                     'finished cells are kept; fix the cause and rerun the same command to run '
                     'the failed ones (each resumes from its latest checkpoint).')
  return ordered


__all__ = ['CellFailed', 'DONE_FILE', 'LOG_FILE', 'RESULTS_FILE', 'child_env', 'eta_seconds',
           'progress_line', 'read_done', 'result_row', 'run_cells', 'steady_images_per_s',
           'write_results']
