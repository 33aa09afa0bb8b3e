"""Where training metrics go: the console, TensorBoard and ``metrics.jsonl``.

Only process 0 writes; the others stay silent. TensorBoard event files come
from tensorboardX, which needs no TensorFlow (the training path must run where
TF is not installed). ``metrics.jsonl`` holds one JSON object per line, e.g.
``{"step": 400, "split": "train", "loss": 1.23, ...}``, and non-metric events
such as ``{"step": 0, "event": "start", ...}``. It holds one row per step and
split across resumes: a run resuming from the checkpoint at step ``s`` first
drops the rows after ``s`` that the interrupted run had written (that work is
redone; the file is rewritten atomically, earlier rows kept), then marks the
resumed segment with ``{"step": s, "event": "resume", "dropped_rows": n}``.

Object stores (a ``gs://`` workdir) cannot append: there the file's rows are
kept in memory and the whole file is uploaded at every flush (each eval, each
checkpoint, every ``REMOTE_FLUSH_SECONDS`` and at close). A run killed between
flushes loses only rows after its last checkpoint, which resuming redoes anyway.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Tuple

import jax
from absl import logging
from etils import epath

from rattn.train import workdir as workdir_files


def _jsonable(value):
  """numpy scalars/arrays as Python numbers/lists; anything else as its str()."""
  if hasattr(value, 'tolist'):
    return value.tolist()
  return str(value)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


REMOTE_FLUSH_SECONDS = 60.0


def _drop_rows_after(path: epath.Path, step: int) -> Tuple[List[str], int]:
  """Rewrites ``path`` (atomically) without its rows after ``step``; returns the kept rows
  and how many went."""
  def keep(line: str) -> bool:
    try:
      return json.loads(line).get('step', 0) <= step
    except ValueError:  # a line cut short by a killed process
      return False

  lines = path.read_text().splitlines(keepends=True)
  kept = [line if line.endswith('\n') else line + '\n' for line in lines if keep(line)]
  if len(kept) < len(lines):
    if workdir_files.is_remote(path):
      path.write_text(''.join(kept))  # an object is replaced whole by one upload
    else:
      partial = path.parent / (path.name + '.tmp')
      partial.write_text(''.join(kept))
      partial.replace(path)
  return kept, len(lines) - len(kept)


class _JsonlFile:
  """``metrics.jsonl``: appended on a local disk; on an object store, uploaded whole."""

  def __init__(self, path: epath.Path, rows: List[str]):
    self._path = path
    self._remote = workdir_files.is_remote(path)
    self._rows = list(rows) if self._remote else None
    self._file = None if self._remote else open(path, 'a', buffering=1)
    self._dirty = False
    self._flushed_at = time.monotonic()

  def write(self, line: str) -> None:
    if self._remote:
      self._rows.append(line)
      self._dirty = True
      if time.monotonic() - self._flushed_at > REMOTE_FLUSH_SECONDS:
        self.flush()
    else:
      self._file.write(line)

  def flush(self) -> None:
    if self._remote:
      if self._dirty:
        self._path.write_text(''.join(self._rows))
        self._dirty = False
      self._flushed_at = time.monotonic()
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()


class MetricWriter:
  """Logs train and eval metrics, with throughput and an ETA for the console."""

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int,
               batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.enabled = jax.process_index() == 0
    self._last_step = start_step
    self._last_time = time.perf_counter()
    # The first interval includes compilation; the ETA uses the steps after it.
    self._steady_since: Optional[tuple[int, float]] = None
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      metrics_path = workdir_files.metrics_file(workdir)
      self._tb = SummaryWriter(str(workdir_files.tensorboard_dir(workdir)))
      resumed = metrics_path.exists()
      kept, dropped = _drop_rows_after(metrics_path, start_step) if resumed else ([], 0)
      self._jsonl = _JsonlFile(metrics_path, kept)
      if resumed:
        self.write_event(start_step, 'resume', dropped_rows=dropped)

  def _record(self, step: int, split: str, values: Dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in values.items():
      self._tb.add_scalar(f'{split}/{name}', value, step)
    self._jsonl.write(
        json.dumps({'step': step, 'split': split, **values}, default=_jsonable) + '\n')

  def write_train(self, step: int, metrics: Dict[str, float], lr: float) -> None:
    """Logs the train metrics averaged since the previous call, with images/s and ETA."""
    now = time.perf_counter()
    steps_done = step - self._last_step
    images_per_s = steps_done * self.batch_size / max(now - self._last_time, 1e-9)
    compiling = self._steady_since is None
    if compiling:
      self._steady_since = (step, now)
      steps_per_s = steps_done / max(now - self._last_time, 1e-9)
    else:
      first_step, first_time = self._steady_since
      steps_per_s = (step - first_step) / max(now - first_time, 1e-9)
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    self._last_step, self._last_time = step, now
    # float32 learning rates print as 0.10000000149; 7 digits is all they hold.
    self._record(step, 'train', {**metrics, 'lr': float(f'{lr:.7g}'),
                                 'images_per_s': images_per_s})
    if self.enabled:
      width = len(f'{self.total_steps:,}')
      logging.info(
          'step %*s/%s  loss %.4f  acc %5.1f%%  lr %.4g  grad %.3g  %s img/s%s  ETA %s',
          width, f'{step:,}', f'{self.total_steps:,}', metrics['loss'],
          100 * metrics['accuracy'], lr, metrics['grad_norm'], f'{images_per_s:,.0f}',
          ' (incl. compilation)' if compiling else '', format_duration(eta))

  def exclude_pause(self, seconds: float) -> None:
    """Keeps time spent outside train steps (evals, saves) out of the next images/s.

    The ETA still counts it: it is the wall-clock time to expect.
    """
    self._last_time += seconds

  def write_eval(self, step: int, split: str, metrics: Dict[str, float], *, seconds: float,
                 best: Optional[tuple[float, int]] = None) -> None:
    self._record(step, split, metrics)
    if self.enabled:
      best_text = f'  best {100 * best[0]:.2f}% @ {best[1]:,}' if best else ''
      logging.info('eval  step %s  %s accuracy %.2f%%  loss %.4f  (%d images, %.1fs)%s',
                   f'{step:,}', split, 100 * metrics['accuracy'], metrics['loss'],
                   metrics['count'], seconds, best_text)
    # Whoever has paid for an eval wants to see its result on disk straight away.
    self.flush()

  def write_event(self, step: int, event: str, **details) -> None:
    """A non-metric record in metrics.jsonl (e.g. a divergence), for scripts to find."""
    if self.enabled:
      self._jsonl.write(
          json.dumps({'step': step, 'event': event, **details}, default=_jsonable) + '\n')

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
