"""Checkpoints: the train state and the input pipeline's position, saved together.

One orbax ``CheckpointManager`` (the ``args=`` API) under ``WORKDIR/checkpoints``.
Each step directory holds two items:

* ``state``: the TrainState (params, optimiser state, BatchNorm statistics,
  step), saved with ``StandardSave`` and restored with ``StandardRestore`` into
  an abstract target that carries the shardings, so every array comes back
  already placed on the mesh.
* ``data``: the grain iterator's state, one small JSON file per process, so a
  resumed run reads exactly the batches an uninterrupted run would have read.

Retention: the latest ``keep`` checkpoints, plus the one with the best eval
accuracy (eval steps pass their metrics to ``save``). Saves are asynchronous;
``close`` waits for the last one.
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, Optional

import grain
import orbax.checkpoint as ocp

BEST_METRIC = 'accuracy'
_MAX_DETAIL = 1500


class CheckpointError(RuntimeError):
  """A checkpoint could not be restored; the message says why and what to do."""


def _best_metric(metrics: Dict[str, float]) -> float:
  # Checkpoints saved between evals carry empty metrics and rank below every evaluated one.
  return metrics.get(BEST_METRIC, float('-inf'))


class Checkpointer:
  """Saves and restores (state, data iterator) pairs in ``directory``.

  ``read_only`` opens an existing directory for restoring alone (evaluation,
  visualisation); it never creates, writes or deletes anything.
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
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

  # ---------------------------------------------------------------- queries

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best eval accuracy; the latest step if none was evaluated."""
    evaluated = [s for s in self._manager.all_steps() if BEST_METRIC in (self.metrics(s) or {})]
    return self._manager.best_step() if evaluated else self.latest_step()

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
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    # Empty metrics rather than None: orbax warns on every save without them.
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics or {},
                       force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the state at ``step`` into ``abstract_state``'s shapes and shardings.

    With ``data_iterator``, also moves that iterator to the saved position.

    Raises:
      CheckpointError: there is no checkpoint at ``step``, or it is damaged or was
        written for a different model/optimiser; nothing is deleted.
    """
    if step not in self.all_steps():
      raise CheckpointError(f'No checkpoint at step {step} in {self.directory}; the saved steps '
                            f'are {self.all_steps()}.')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; all mean the same to the user.
      detail = str(e)
      if len(detail) > _MAX_DETAIL:  # orbax can dump whole tensorstore specs
        detail = detail[:_MAX_DETAIL] + ' [...]'
      raise CheckpointError(
          f'Could not restore the checkpoint at step {step} in {self.directory}: '
          f'{type(e).__name__}: {detail}\n'
          'It is damaged, or it was written by a different config (another model, '
          'model_kwargs, optimiser or dtype layout, or another number of input '
          'processes). Nothing has been deleted. To resume it, run with the config '
          'it was written with (saved beside it in config.json); to start afresh, '
          'use a new --workdir; to fall back to an earlier checkpoint, move the '
          f'directory {self.directory / str(step)} out of the way.') from e
    return restored['state']

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves to land, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
