"""The training loop: ``train_and_evaluate(config, workdir)``.

One readable trainer in the big_vision manner: setup, input, model and state,
resume, steps, loop, final report. Rerunning the same command with the same
workdir resumes from the latest checkpoint: parameters, optimiser state, step
and the input pipeline's position all come back, so the resumed run computes
what an uninterrupted one would have.

Held-out data: every ``eval_every`` steps (and at the last step) the loop
evaluates the validation examples held out of the training split
(``rattn.data.MINIVAL``, ``config.data.validation``); those metrics rank the
checkpoints, so the kept "best" one is the best on validation. The test split
(``config.data.eval_split``) is read once, at the end: the final state, and the
best-on-validation checkpoint where that is another one, are evaluated on it and
reported side by side (a ``report`` event in metrics.jsonl). It never chooses
anything. A run with ``data.validation=0`` evaluates nothing until the end and
reports its final checkpoint.

The loop never waits on the device except at log, eval and checkpoint steps:
per-step metrics stay on device until then.

Preemption: SIGTERM (what Slurm, Kubernetes and preemptible VMs send before
killing a job) or Ctrl-C makes the loop save a checkpoint at the step it is on and stop
with ``TrainingPreempted``; rerunning the same command resumes from there (a second
Ctrl-C stops at once, unsaved). In a
multi-process run JAX's coordination service catches the signal and agrees on
one step at which every process saves (orbax's ``reached_preemption``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from rattn import data
from rattn.models.summary import count_params
from rattn.train import lock as workdir_lock
from rattn.train import workdir as workdir_files
from rattn.train.checkpoint import BEST_METRIC, Checkpointer
from rattn.train.init_from import initial_state
from rattn.train.metric_writer import MetricWriter
from rattn.train.plan import make_plan
from rattn.train.state import shard_batch
from rattn.train.steps import evaluate


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the message says where and what to try."""


class TrainingPreempted(RuntimeError):
  """SIGTERM or Ctrl-C arrived; a checkpoint was saved at ``step`` and rerunning resumes from
  it. ``exit_status`` is what a shell reports for the signal (143 SIGTERM, 130 Ctrl-C)."""

  def __init__(self, message: str, step: Optional[int], exit_status: int = 143):
    super().__init__(message)
    self.step = step
    self.exit_status = exit_status


def _distributed_client_started() -> bool:
  # jax.distributed installs its own SIGTERM notifier (the preemption service), even for
  # one process; a Python handler would replace it.
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.client is not None
  except (ImportError, AttributeError):
    return False


# What stopped a run: the signal's name in messages, and the exit status of a shell's job.
_STOPS = {signal.SIGTERM: ('SIGTERM', 143), signal.SIGINT: ('Ctrl-C', 130)}


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[Callable[[], Optional[int]]]:
  """Yields ``requested()``: the SIGTERM or SIGINT (Ctrl-C) that has arrived since
  entering, else None. A second Ctrl-C ends the process at once (status 130), unsaved.

  Installs handlers only in a single-process run on the main thread (Python's
  rule); runs started with ``jax.distributed`` leave SIGTERM to JAX's
  preemption service, and Ctrl-C raises KeyboardInterrupt there as usual.
  """
  if (jax.process_count() > 1 or _distributed_client_started()
      or threading.current_thread() is not threading.main_thread()):
    yield lambda: None
    return
  received: List[int] = []

  def handler(signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT and received:
      sys.stderr.write('Second Ctrl-C: stopped at once, without saving the current step (a '
                       'checkpoint being written does not count; earlier ones are intact). '
                       'Rerun the same command to resume from the latest checkpoint.\n')
      os._exit(130)  # pylint: disable=protected-access
    again = ' (press Ctrl-C again to stop at once, unsaved)' if signum == signal.SIGINT else ''
    logging.warning('%s received: stopping after the current start-up phase, or saving a '
                    'checkpoint after the current step%s.', _STOPS[signum][0], again)
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in _STOPS}
  try:
    yield lambda: received[0] if received else None
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


def _divergence_message(step: int, values: Dict[str, float], checkpoints: Checkpointer,
                        resumed_from: int, config: ml_collections.ConfigDict) -> str:
  last_good, directory = checkpoints.last_good_step(), checkpoints.directory
  kept = (f'The last good checkpoint, step {last_good:,} in {directory} (checksummed and '
          'finite), is kept and restorable; rerunning the same command resumes from it, '
          'and will most likely diverge again at the same place, because the resumed run '
          'sees the same data in the same order.'
          if last_good is not None else
          'No checkpoint had been written yet, so nothing is kept.' if not checkpoints.all_steps()
          else 'No checkpoint of this run was verified (checksummed and finite).')
  bf16 = (' If you train in bfloat16, try --config.dtype=float32.'
          if config.dtype != 'float32' else '')
  message = (
      f'Training diverged: at step {step:,} the loss was {values["loss"]} and the gradient '
      f'norm {values["grad_norm"]} (not finite), so training stopped. {kept} Things to try: '
      f'a lower learning rate (now --config.schedule.base_lr={config.schedule.base_lr}), a '
      f'longer warm-up (--config.schedule.warmup_steps, now {config.schedule.warmup_steps}), '
      f'a larger batch, or checking the input data for NaN/Inf.{bf16}')
  if resumed_from and last_good is not None:  # resuming a near-divergent state rarely helps
    later = [s for s in checkpoints.all_steps() if s >= resumed_from]
    earlier = [s for s in checkpoints.all_steps() if s < resumed_from]
    aside = directory.with_name(directory.name + '_set_aside')
    back = (f', or go back to step {earlier[-1]:,} by moving the later checkpoints aside '
            f"(mkdir -p {aside} && mv {' '.join(str(directory / str(s)) for s in later)} "
            f'{aside}/) and rerunning with the new settings' if earlier else '')
    message += (f' This run had resumed from step {resumed_from:,}, so the new settings '
                f'would continue from a state already heading for divergence: start afresh '
                f'(the same command with a new --workdir){back}.')
  return message


def _mean_metrics(pending: List[Tuple[int, Dict[str, jax.Array]]]) -> Dict[str, float]:
  values = jax.device_get([m for _, m in pending])
  return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def _first_non_finite(pending) -> Optional[Tuple[int, Dict[str, float]]]:
  """The first (step, metrics) whose loss or gradient is NaN/Inf, if any (a host sync)."""
  for step, metrics in pending:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (math.isfinite(values['loss']) and math.isfinite(values['grad_norm'])):
      return step, values
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics.

  Returns a dict with ``step``, ``train_loss``, ``train_accuracy``;
  ``eval_accuracy``, ``eval_top5_accuracy``, ``eval_loss`` (the final state on
  the test split, eval_split); ``validation_accuracy`` (the final state on the
  validation split); ``best_step`` and ``best_validation_accuracy`` (the
  checkpoint best on validation) and ``best_step_eval_accuracy`` (its test
  accuracy), all three None without a validation split; ``num_train``,
  ``num_validation``, ``num_eval`` (example counts); ``num_params`` and
  ``wall_time_s`` (of this invocation).

  Raises:
    ConfigError: the config cannot run (the message says which field to change).
    DataConfigError: the data config cannot be read (e.g. a split the dataset lacks).
    WorkdirError: the workdir cannot be written, holds checkpoints of another run, or is
      in use by another live run (rattn.train.lock).
    CheckpointError: the workdir's latest checkpoint cannot be restored.
    TrainingDiverged: the loss became NaN/Inf; the last good checkpoint is kept.
    TrainingPreempted: SIGTERM or Ctrl-C arrived; the current step was checkpointed (or,
      during start-up, there was nothing to save).
  """
  with _sigterm_flag() as sigterm:  # installed first: SIGTERM is honoured during start-up too
    return _train_and_evaluate(config, workdir, sigterm)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        sigterm: Callable[[], Optional[int]]) -> Dict[str, Any]:
  started = time.perf_counter()
  workdir = workdir_files.resolve(workdir)  # a local directory or gs://bucket/run
  is_primary = jax.process_index() == 0

  # ------------------------------------------------------------------ setup
  def stop_if_terminated(phase: str) -> None:
    if sigterm():
      name, status = _STOPS[sigterm()]
      raise TrainingPreempted(
          f'Stopped by {name} during start-up ({phase}), before this run trained a step: '
          'nothing was lost and no checkpoint was needed (the workdir\'s checkpoints, if '
          'any, are as they were). Rerun the same command to start again.', None, status)

  workdir_files.check_same_run(workdir, config)  # before anything is read, moved or rewritten
  plan = make_plan(config)  # the config is checked once, here
  mesh, info = plan.mesh, plan.data.info
  validation = plan.data.validation_record()
  workdir_files.check_same_split(workdir, config, validation)  # before anything is written
  total_steps = int(config.num_train_steps)
  if is_primary:
    workdir_files.make_workdir(workdir)
  logging.info('%d process(es), %d %s device(s); global batch %d (%d per device).',
               jax.process_count(), mesh.size, jax.devices()[0].platform, config.batch_size,
               config.batch_size // mesh.size)

  with contextlib.ExitStack() as cleanup:  # closes whatever was opened, however we leave
    # One live run per workdir (released last, after the final save has landed).
    cleanup.enter_context(workdir_lock.hold(workdir, enabled=is_primary))
    # ---------------------------------------------------------------- input
    train_iter = plan.data.train_iterator(global_batch_size=config.batch_size,
                                          seed=plan.keys.data)
    cleanup.callback(train_iter.close)  # stops grain's reader threads / worker processes
    # The validation examples; the test split's iterator is only made at the end.
    validation_data = (plan.data.eval_iterator(global_batch_size=config.eval_batch_size,
                                               split=data.MINIVAL)
                       if info.num_validation else None)
    description = plan.data.describe()
    logging.info('Data: %s', description)
    if validation_data is not None:
      logging.info('Training on %s of the %s examples of %s; %s held out (%s, validation_seed '
                   '%d) as %r for the evaluations every %s steps and the best checkpoint; %s '
                   'is evaluated once, at the end (%s examples).', f'{info.num_train:,}',
                   f'{info.num_train + info.num_validation:,}', config.data.train_split,
                   f'{info.num_validation:,}', validation['selection'], validation['seed'],
                   data.MINIVAL, f'{int(config.eval_every):,}', config.data.eval_split,
                   f'{info.num_eval:,}')
    else:
      logging.info('Training on all %s examples of %s: no validation split (data.validation=0), '
                   'so nothing is evaluated before the end, where %s (%s examples) is, and the '
                   'final checkpoint is reported.', f'{info.num_train:,}',
                   config.data.train_split, config.data.eval_split, f'{info.num_eval:,}')
    stop_if_terminated('after opening the data')

    # ---------------------------------------------------------------- model, state, resume
    checkpoints = Checkpointer(workdir_files.checkpoint_dir(workdir),
                               keep=int(config.keep_checkpoints))
    cleanup.callback(checkpoints.close)  # waits for the last save to land
    latest, state = checkpoints.restore_latest_intact(plan.abstract_state(), train_iter)
    if latest is None:
      state = initial_state(plan)  # config.init_from's weights, if set
    else:
      logging.info('Resumed from the checkpoint at step %d in %s%s.', latest,
                   checkpoints.directory, ' (config.init_from is ignored: the run has its own '
                   'checkpoints)' if config.get('init_from') else '')
    start_step = latest or 0
    if is_primary:
      workdir_files.write_run_files(workdir, config, info, data.data_dir(config.data),
                                    validation=validation)
    stop_if_terminated('after creating the train state')
    num_params = count_params(variables=state.variables())
    logging.info('Model %s: %s parameters; %s images of shape %s, %d classes.', config.model,
                 f'{num_params:,}', info.name, plan.image_shape, info.num_classes)

    # ---------------------------------------------------------------- steps
    train_step = plan.train_step()
    eval_step = plan.eval_step()
    batches = (shard_batch(batch, mesh) for batch in train_iter)
    if start_step < total_steps:  # compiled before step 1, so SIGTERM can stop the run first
      first = next(batches)
      train_step = train_step.lower(state, first).compile()
      batches = itertools.chain([first], batches)
      stop_if_terminated('after compiling the train step')

    # ---------------------------------------------------------------- loop
    writer = MetricWriter(workdir, total_steps=total_steps, start_step=start_step,
                          batch_size=int(config.batch_size))
    cleanup.callback(writer.close)
    writer.write_event(start_step, 'start', model=config.model, num_params=num_params,
                       processes=jax.process_count(), devices=mesh.size, data=description)
    best_step = checkpoints.best_step()  # by validation accuracy: (accuracy, step) or None
    best = ((checkpoints.metrics(best_step)[BEST_METRIC], best_step)
            if best_step is not None else None)
    train_metrics: Dict[str, float] = {}
    validation_metrics: Optional[Dict[str, float]] = None
    pending: List[Tuple[int, Dict[str, jax.Array]]] = []

    def stop_if_diverged(steps):
      bad = _first_non_finite(steps)
      if bad is not None:
        checkpoints.wait_until_finished()
        message = _divergence_message(bad[0], bad[1], checkpoints, start_step, config)
        writer.write_event(bad[0], 'diverged', message=message)
        raise TrainingDiverged(message)

    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches))
      pending.append((step, metrics))
      is_last = step == total_steps
      # Preemption ends this step like the last one: its metrics are logged, it is evaluated
      # if it is an eval step, and it is checkpointed. Every process of a multi-process run
      # calls reached_preemption at the same steps.
      preempted = not is_last and (sigterm() or checkpoints.reached_preemption(step))

      if step % config.log_every == 0 or is_last or preempted:
        stop_if_diverged(pending)
        train_metrics = _mean_metrics(pending)
        pending = []
        writer.write_train(step, train_metrics, lr=float(plan.schedule(step - 1)))

      run_eval = validation_data is not None and (step % config.eval_every == 0 or is_last)
      if run_eval or is_last or step % config.checkpoint_every == 0 or preempted:
        pause = time.perf_counter()
        stop_if_diverged(pending)  # never save a state that a NaN has touched
        ranking = None
        if run_eval:
          validation_metrics = evaluate(eval_step, state, validation_data, mesh)
          if best is None or validation_metrics['accuracy'] > best[0]:
            best = (validation_metrics['accuracy'], step)
          writer.write_eval(step, data.MINIVAL, validation_metrics,
                            seconds=time.perf_counter() - pause, best=best)
          ranking = {BEST_METRIC: validation_metrics['accuracy']}
        checkpoints.save(step, state, train_iter, metrics=ranking)
        writer.flush()  # rows up to a checkpoint are on disk (or in the bucket) with it
        writer.exclude_pause(time.perf_counter() - pause)

      if preempted:
        checkpoints.wait_until_finished()
        name, status = _STOPS[sigterm() or signal.SIGTERM]  # SIGTERM: JAX's service
        how = 'Interrupted (Ctrl-C)' if status == 130 else 'Preempted (SIGTERM)'
        message = (f'{how} at step {step:,} of {total_steps:,}: the checkpoint of this step '
                   f'is saved in {checkpoints.directory}. Rerun the same command to resume '
                   'from it.')
        writer.write_event(step, 'preempted', message=message)
        raise TrainingPreempted(message, step, status)

    # ---------------------------------------------------------------- final report
    final_step = int(jax.device_get(state.step))
    if validation_data is not None and validation_metrics is None:
      # The workdir had already finished: report, don't retrain.
      validation_metrics = evaluate(eval_step, state, validation_data, mesh)
    # The test split, for the first time in this run: the final state, then the best one on
    # validation where that is another checkpoint. Neither result chooses anything.
    pause = time.perf_counter()
    test_data = plan.data.eval_iterator(global_batch_size=config.eval_batch_size)
    test_metrics = evaluate(eval_step, state, test_data, mesh)
    writer.write_eval(final_step, config.data.eval_split, test_metrics,
                      seconds=time.perf_counter() - pause)
    best_test = test_metrics if best is not None and best[1] == final_step else None
    if best is not None and best_test is None:
      checkpoints.wait_until_finished()
      best_state = checkpoints.restore(best[1], plan.abstract_state())
      best_test = evaluate(eval_step, best_state, test_data, mesh)
      del best_state
    writer.write_event(final_step, 'report', eval_split=config.data.eval_split,
                       final={'step': final_step, 'test': test_metrics,
                              data.MINIVAL: validation_metrics},
                       best=None if best is None else {
                           'step': best[1], 'selected_on': data.MINIVAL,
                           f'{data.MINIVAL}_accuracy': best[0], 'test': best_test},
                       num_train=info.num_train, num_validation=info.num_validation,
                       num_eval=info.num_eval)

  result = {
      'step': final_step,
      'train_loss': train_metrics.get('loss'),
      'train_accuracy': train_metrics.get('accuracy'),
      'eval_accuracy': test_metrics['accuracy'],
      'eval_top5_accuracy': test_metrics['top5_accuracy'],
      'eval_loss': test_metrics['loss'],
      'validation_accuracy': validation_metrics['accuracy'] if validation_metrics else None,
      'best_step': best[1] if best else None,
      'best_validation_accuracy': best[0] if best else None,
      'best_step_eval_accuracy': best_test['accuracy'] if best else None,
      'num_train': info.num_train,
      'num_validation': info.num_validation,
      'num_eval': info.num_eval,
      'num_params': num_params,
      'wall_time_s': time.perf_counter() - started,
  }
  split = config.data.eval_split
  if best is None:
    chosen = 'no validation split, so nothing was chosen'
  elif best[1] == final_step:
    chosen = (f'the best checkpoint on validation is the final one ({data.MINIVAL} '
              f'{100 * best[0]:.2f}%)')
  else:
    chosen = (f'the best checkpoint on validation, step {best[1]:,} ({data.MINIVAL} '
              f'{100 * best[0]:.2f}%), has {split} accuracy '
              f'{100 * result["best_step_eval_accuracy"]:.2f}%')
  logging.info('Done: step %s, %s accuracy %.2f%% (final checkpoint); %s; %s.',
               f'{final_step:,}', split, 100 * result['eval_accuracy'], chosen,
               f'{result["wall_time_s"]:.0f}s')
  return result
