"""Checkpoints: the train state and the input pipeline's position, saved together.

One orbax ``CheckpointManager`` (the ``args=`` API) under ``WORKDIR/checkpoints``.
Each step directory holds two items:

* ``state``: the TrainState (params, optimiser state, BatchNorm statistics,
  step), saved with ``StandardSave`` and restored with ``StandardRestore`` into
  an abstract target that carries the shardings, so every array comes back
  already placed on the mesh.
* ``data``: the grain iterator's state, one small JSON file per process, so a
  resumed run reads exactly the batches an uninterrupted run would have read.
* ``checksums``: a JSON item, a CRC-32 of the host bytes of every state array
  keyed by its tree path, checked on every restore together with finiteness
  (the state is replicated, so one addressable shard holds the whole array).

A checkpoint that fails that check, or does not load at all (a truncated array
file, a missing ``_METADATA``), is damaged. Resuming training
(``restore_latest_intact``) moves it, never deletes it, to the sibling
directory ``checkpoints_damaged/`` (which the manager does not scan), logs why
in one line and falls back to the newest intact checkpoint; read-only restores
(evaluation, visualisation) refuse it with a ``DamagedCheckpointError`` and
move nothing. A checkpoint written before checksums existed restores
unverified (said in one info line) and is still checked for finiteness. A
checkpoint whose arrays do not fit the config's state is not damaged: that is
a ``CheckpointError`` naming the first difference, and nothing moves.

Retention: the latest ``keep`` checkpoints, plus the one with the best
validation accuracy (``BEST_METRIC``: validation steps pass their metrics to
``save``; the test split never ranks a checkpoint). ``choose`` names the step
a reader loads: the final (latest) one by default, the best on validation only
when asked. Saves are asynchronous; ``close`` waits for the last one. A save whose
write fails (a full disk, a quota, a read-only device) ends in one
``CheckpointWriteError`` naming the directory, the intact checkpoints and the
fix; its half-written step is removed and never counts, and nothing saved
earlier is touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rattn.train import workdir as workdir_files

# Accuracy on the validation examples held out of train ('minival', rattn.data.MINIVAL).
# Checkpoints of runs from before validation splits carry test 'accuracy': never ranked.
BEST_METRIC = 'minival_accuracy'
CHOICES = ('final', 'best')  # what ``choose`` takes besides a step number
CHECKSUMS = 'checksums'
DAMAGED_SUFFIX = '_damaged'  # checkpoints/ -> checkpoints_damaged/
_MAX_REASON = 200  # orbax errors can dump whole tensorstore specs


class CheckpointError(RuntimeError):
  """A checkpoint could not be restored; the message says why and what to do."""


class CheckpointWriteError(CheckpointError):
  """A save failed to write (a full disk, a quota, a read-only or failing device); the
  message names the directory, the intact checkpoints and the fix."""


# The errors of a failed write, as the OS and tensorstore word them.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EFBIG)


def write_failure(error: BaseException) -> Optional[str]:
  """What went wrong if ``error`` (or an error it was raised from) is a failed write."""
  seen, visited = error, set()
  while seen is not None and id(seen) not in visited:
    visited.add(id(seen))
    if isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS:
      return f'{seen.strerror or os.strerror(seen.errno)} (errno {seen.errno})'
    text = str(seen)
    for code in _WRITE_ERRNOS:
      if os.strerror(code) in text:
        return f'{os.strerror(code)} (errno {code})'
    seen = seen.__cause__ or seen.__context__
  return None


class DamagedCheckpointError(CheckpointError):
  """A checkpoint failed its checksum or finiteness check, or could not be read."""

  def __init__(self, message: str, step: int, reason: str):
    super().__init__(message)
    self.step = step
    self.reason = reason


def _best_metric(metrics: Dict[str, float]) -> float:
  # Checkpoints saved between evals carry empty metrics and rank below every evaluated one.
  return metrics.get(BEST_METRIC, float('-inf'))


def _short(error: Exception) -> str:
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(first) > _MAX_REASON:
    first = first[:_MAX_REASON] + '...'
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def _path_name(path: Tuple[Any, ...]) -> str:
  """'params/Conv_0/kernel' alike for the live state (attributes) and orbax metadata (keys)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def _host_leaves(state: Any) -> List[Tuple[str, np.ndarray]]:
  """(tree path, host copy) per leaf; a replicated array's first local shard is all of it."""
  leaves = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    leaves.append((_path_name(path), np.asarray(leaf)))
  return leaves


def fingerprint(state: Any) -> Tuple[Dict[str, str], List[str]]:
  """CRC-32 (hex) of every leaf's bytes by tree path, and the paths holding NaN/Inf."""
  sums, non_finite = {}, []
  for path, value in _host_leaves(state):
    sums[path] = f'{zlib.crc32(np.ascontiguousarray(value).tobytes()):08x}'
    if jnp.issubdtype(value.dtype, jnp.inexact) and not np.isfinite(value).all():
      non_finite.append(path)
  return sums, non_finite


class Checkpointer:
  """Saves and restores (state, data iterator) pairs in ``directory``.

  ``read_only`` opens an existing directory for restoring alone (evaluation,
  visualisation); it never creates, writes, moves or deletes anything.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               read_only: bool = False):
    self.directory = workdir_files.resolve(directory)  # a local path made absolute, or gs://
    self.damaged_directory = self.directory.parent / (self.directory.name + DAMAGED_SUFFIX)
    policy = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy.AnyPreservationPolicy([
            policy.LatestN(n=max(int(keep), 1)),
            policy.BestN(get_metric_fn=_best_metric, n=1,
                         keep_checkpoints_without_metrics=False),
        ]),
        best_fn=_best_metric, best_mode='max', create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._read_only = read_only
    self._good: set[int] = set()  # checksummed and finite: saved or verified by this object
    self._saving: Optional[int] = None  # the step of the save that may still be writing
    self._failure: Optional[CheckpointWriteError] = None

  # ---------------------------------------------------------------- queries

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best validation accuracy; None where no checkpoint has one (a
    run without a validation split, or one from before validation splits)."""
    evaluated = [s for s in self._manager.all_steps() if BEST_METRIC in (self.metrics(s) or {})]
    return self._manager.best_step() if evaluated else None

  def choose(self, which: str | int | None = 'final') -> Tuple[int, str]:
    """``(step, why)``: the checkpoint a reader loads for ``which``, and the reason, for its
    log line. 'final' (or None): the latest checkpoint, the default; 'best': the best on
    the validation split; a number: that step.

    Raises:
      CheckpointError: there is no checkpoint, none with validation metrics ('best'), or
        ``which`` is not a choice.
    """
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'{self.directory} holds no checkpoint yet: training saves the '
                            'first one at config.checkpoint_every steps or at its last step.')
    if which is None or which == 'final':
      step = self.latest_step()
      return step, f'the final checkpoint, step {step:,} (the latest; the default)'
    if which == 'best':
      step = self.best_step()
      if step is None:
        raise CheckpointError(
            f'{self.directory} holds no checkpoint evaluated on a validation split, so none is '
            '"best": the run held out no validation examples (data.validation=0), or predates '
            'validation splits. Use the final checkpoint (the default) or name a step, one '
            f'of {steps}.')
      accuracy = self.metrics(step)[BEST_METRIC]
      return step, (f'the best checkpoint on the validation split, step {step:,} (validation '
                    f'accuracy {100 * accuracy:.2f}%), as asked')
    if isinstance(which, str) and not which.isdigit():
      raise CheckpointError(f'Cannot choose the checkpoint {which!r}: use one of '
                            f'{", ".join(CHOICES)} or a step number, one of {steps}.')
    step = int(which)
    if step not in steps:
      raise CheckpointError(f'No checkpoint at step {step} in {self.directory}; the saved steps '
                            f'are {steps}.')
    return step, f'the checkpoint at step {step:,}, as asked'

  def last_good_step(self) -> Optional[int]:
    """The newest step, still on disk, that this object saved from a finite state or
    restored with matching checksums and finite values; None if there is none."""
    good = self._good.intersection(self.all_steps())
    return max(good) if good else None

  def reached_preemption(self, step: int) -> bool:
    """Whether a multi-process run's processes agreed to save at ``step`` (JAX's preemption
    service, started by ``jax.distributed``); always False in a single process."""
    return self._manager.reached_preemption(step)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def metrics(self, step: int) -> Optional[Dict[str, float]]:
    return self._manager.metrics(step)

  # ---------------------------------------------------------------- save / restore

  def save(self, step: int, state: Any, data_iterator: Any = None,
           metrics: Optional[Dict[str, float]] = None) -> None:
    """Starts an asynchronous save of ``state`` (and the iterator's position) at ``step``.

    ``metrics`` (an eval's, with ``accuracy``) rank the checkpoint for keeping the best.
    """
    sums, non_finite = fingerprint(state)
    items = {'state': ocp.args.StandardSave(state), CHECKSUMS: ocp.args.JsonSave(sums)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._writing(self._saving):  # the previous save's failure is that save's
      self._manager.wait_until_finished()  # (orbax's save would wait for it too)
    with self._writing(step):
      # Empty metrics rather than None: orbax warns on every save without them.
      self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics or {},
                         force=True)
    self._saving = step
    if not non_finite:
      self._good.add(step)

  @contextlib.contextmanager
  def _writing(self, step: Optional[int]) -> Iterator[None]:
    """Turns a failed write of the save of ``step`` into one CheckpointWriteError."""
    if self._failure is not None:
      raise self._failure
    try:
      yield
    except CheckpointWriteError:
      raise
    except Exception as e:  # orbax and tensorstore raise many types for one full disk
      reason = write_failure(e)
      if reason is None or step is None:
        raise
      self._failure = self._write_error(step, reason)
      raise self._failure from e

  def _write_error(self, step: int, reason: str) -> CheckpointWriteError:
    self._good.discard(step)
    if jax.process_index() == 0:  # the half-written step: never a checkpoint; free its space
      for partial in self.directory.glob(f'{step}.orbax-checkpoint-tmp*'):
        if workdir_files.is_remote(partial):
          partial.rmtree(missing_ok=True)
        else:
          shutil.rmtree(os.fspath(partial), ignore_errors=True)
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except  # the listing below is then orbax's last
      pass
    intact = [s for s in self.all_steps() if s != step]
    try:
      left = shutil.disk_usage(os.fspath(self.directory)).free  # OSError on gs://
      free = (f' ({left / 2**20:,.0f} MiB free now)' if left >= 2**20 else
              f' ({left // 1024:,} KiB free now)')
    except OSError:
      free = ''
    kept = (f'The checkpoints saved before it are intact and untouched: steps '
            f'{", ".join(map(str, intact))}; rerunning resumes from step {intact[-1]}.'
            if intact else 'No checkpoint had been saved before it, so a rerun starts afresh.')
    return CheckpointWriteError(
        f'Saving the checkpoint of step {step} in {self.directory} failed: {reason}{free}. '
        f'Step {step} is not a checkpoint (a half-written step never counts; its partial '
        f'files were removed). {kept} Free space on that disk (or fix what refuses the '
        'write), then rerun the same command; or copy the workdir to a disk with room and '
        'rerun with that --workdir.')

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores and verifies the state at ``step`` into ``abstract_state``'s shapes and
    shardings. With ``data_iterator``, also moves that iterator to the saved position.

    Raises:
      DamagedCheckpointError: the checkpoint fails its checks or cannot be read; nothing
        is moved or deleted.
      CheckpointError: there is no checkpoint at ``step``, or it was written for a
        different model/optimiser.
    """
    if step not in self.all_steps():
      raise CheckpointError(f'No checkpoint at step {step} in {self.directory}; the saved steps '
                            f'are {self.all_steps()}.')
    return self._load(step, abstract_state, data_iterator)

  def restore_latest_intact(self, abstract_state: Any,
                            data_iterator: Any = None) -> Tuple[Optional[int], Any]:
    """``(step, state)`` of the newest checkpoint that verifies; ``(None, None)`` if none.

    Damaged checkpoints met on the way are moved to ``damaged_directory`` (never
    deleted), each with a one-line warning.

    Raises:
      CheckpointError: a checkpoint was written for a different model/optimiser.
    """
    moved = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self._load(step, abstract_state, data_iterator)
      except DamagedCheckpointError as e:
        if self._read_only:
          raise
        target = self._move_aside(step)
        logging.warning('The checkpoint at step %d is damaged (%s); moved it to %s.',
                        step, e.reason, target)
        moved.append(step)
        continue
      if moved:
        logging.warning('Resuming from step %d, the newest intact checkpoint (damaged steps '
                        '%s moved to %s).', step, moved, self.damaged_directory)
      return step, state
    if moved:
      logging.warning('No intact checkpoint left in %s (damaged steps %s moved to %s): '
                      'training starts from scratch.', self.directory, moved,
                      self.damaged_directory)
    return None, None

  def _damaged(self, step: int, reason: str) -> DamagedCheckpointError:
    others = [s for s in self.all_steps() if s != step]
    other_text = (f'to use another checkpoint now, pass --step with one of {others}'
                  if others else 'there is no other checkpoint')
    return DamagedCheckpointError(
        f'The checkpoint at step {step} in {self.directory} is damaged: {reason}. Nothing '
        'was moved or deleted. Rerunning the training command on this workdir moves it '
        f'aside to {self.damaged_directory} and resumes from the newest intact checkpoint; '
        f'{other_text}.', step, reason)

  def _mismatch(self, step: int, abstract_state: Any) -> Optional[str]:
    """Why the checkpoint's arrays do not fit ``abstract_state``; None if they do.

    Raises DamagedCheckpointError when the checkpoint's metadata cannot be read.
    """
    try:
      handler = ocp.StandardCheckpointHandler()
      try:
        saved = handler.metadata(self.directory / str(step) / 'state')
      finally:
        handler.close()
      saved = {_path_name(p): (tuple(m.shape), np.dtype(m.dtype))
               for p, m in jax.tree_util.tree_leaves_with_path(getattr(saved, 'tree', saved))}
    except Exception as e:  # orbax raises many types; all mean unreadable metadata
      raise self._damaged(step, f'its metadata cannot be read ({_short(e)})') from e
    wanted = {_path_name(p): (tuple(a.shape), np.dtype(a.dtype))
              for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)}
    for path in sorted(set(saved) | set(wanted)):
      if path not in wanted:
        return f'the checkpoint has {path}, which this config\'s state lacks'
      if path not in saved:
        return f'this config\'s state has {path}, which the checkpoint lacks'
      if saved[path] != wanted[path]:
        (s_shape, s_dtype), (w_shape, w_dtype) = saved[path], wanted[path]
        return (f'{path} is {s_dtype}{list(s_shape)} in the checkpoint but '
                f'{w_dtype}{list(w_shape)} in this config')
    return None

  def _load(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    mismatch = self._mismatch(step, abstract_state)
    if mismatch:
      raise CheckpointError(
          f'The checkpoint at step {step} in {self.directory} does not fit this config: '
          f'{mismatch}. It was written by a different config (another model, model_kwargs, '
          'optimiser or dtype layout). Nothing has been deleted. To resume it, run with the '
          'config it was written with (saved beside it in config.json); to start afresh, '
          'use a new --workdir.')
    verified = (self.directory / str(step) / CHECKSUMS).is_dir()
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if verified:
      items[CHECKSUMS] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; all mean unreadable arrays here
      raise self._damaged(step, f'its arrays cannot be read ({_short(e)})') from e
    state = restored['state']
    sums, non_finite = fingerprint(state)
    if verified:
      bad = sorted(p for p in set(sums) | set(restored[CHECKSUMS])
                   if sums.get(p) != restored[CHECKSUMS].get(p))
      if bad:
        raise self._damaged(step, f'{len(bad)} of {len(sums)} arrays fail their checksum '
                                  f'(first {bad[0]})')
    if non_finite:
      raise self._damaged(step, f'{len(non_finite)} arrays hold NaN or Inf (first '
                                f'{non_finite[0]})')
    if verified:
      self._good.add(step)
    else:
      logging.info('The checkpoint at step %d predates checksums: restored unverified.', step)
    if data_iterator is not None:  # only once the state is known good: a fallback re-sets it
      try:
        self._manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # orbax/grain raise many types
        self._good.discard(step)
        raise self._damaged(step, f'its input-pipeline position cannot be read '
                                  f'({_short(e)})') from e
    return state

  def _move_aside(self, step: int) -> epath.Path:
    target = self.damaged_directory / f'{step}_{time.strftime("%Y%m%d-%H%M%S")}'
    if jax.process_index() == 0:
      workdir_files.move_tree(self.directory / str(step), target)
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    """Waits for the last save to land (CheckpointWriteError if its write failed)."""
    with self._writing(self._saving):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves to land, then releases the manager. A failed write is raised
    (again, if already raised), so that it is what a run ends with."""
    try:
      self.wait_until_finished()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except  # after a failed write only
        if self._failure is None:
          raise
