"""Faults a real run meets, in real processes: Ctrl-C (once: the step is saved; twice: out at
once), two runs on one workdir and a lock left by a killed run, a disk that fills during a
save."""

import errno
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattn import train
from rattn.train import cli, lock, trainer
from rattn.train.checkpoint import CheckpointWriteError
from train_worker import register, tiny_config

register()

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = [sys.executable, '-m', 'experiments.cifar', '--config', 'experiments/configs/tiny.py']
# Long enough to be interrupted while it trains; a train line for every step.
LONG = ['--config.num_train_steps=100000', '--config.log_every=1',
        '--config.eval_every=100000', '--config.checkpoint_every=100000']


def _default_sigint():
  # A shell's background jobs (and CI runners) may start with SIGINT ignored, which Python
  # keeps; a terminal's Ctrl-C reaches a process with the default handler.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(workdir, data_dir, *extra):
  return subprocess.Popen(CIFAR + ['--workdir', str(workdir), *extra], cwd=REPO, text=True,
                          stderr=subprocess.PIPE, preexec_fn=_default_sigint,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TFDS_DATA_DIR=data_dir))


def _read_until(process, pattern):
  """stderr lines up to and including the first that matches ``pattern``."""
  lines = []
  for line in process.stderr:
    lines.append(line)
    if re.search(pattern, line):
      return lines
  raise AssertionError(f'{pattern!r} never came:\n' + ''.join(lines[-30:]))


def _said(stderr):
  """What a run said besides absl's log lines."""
  return [line for line in stderr.splitlines()
          if line.strip() and not re.match(r'[IWE]\d{4} \d\d:\d\d:\d\d', line)]


def test_ctrl_c_saves_the_current_step_and_says_how_to_resume(real_data_dir, tmp_path):
  process = _start(tmp_path, real_data_dir, *LONG)
  _read_until(process, r'step +3/100,000')
  process.send_signal(signal.SIGINT)
  rest = process.communicate(timeout=180)[1]
  assert process.returncode == 130, rest[-3000:]
  assert 'Traceback' not in rest and 'KeyboardInterrupt' not in rest, rest[-3000:]
  said = _said(rest)
  assert len(said) == 1, rest[-3000:]
  match = re.fullmatch(r'Interrupted \(Ctrl-C\) at step (\d+) of 100,000: the checkpoint of '
                       r'this step is saved in (.+)\. Rerun the same command to resume from it\.',
                       said[0])
  assert match, said[0]
  step = int(match.group(1))
  assert step >= 3 and match.group(2) == str(tmp_path / 'checkpoints')
  checkpoints = train.Checkpointer(tmp_path / 'checkpoints', read_only=True)
  assert checkpoints.all_steps() == [step]
  checkpoints.close()


# The training command with every checkpoint save held back by a minute: a second Ctrl-C
# then comes while the first one's save is under way.
_SLOW_SAVE = """
import sys, time
from rattn.train import checkpoint, cli
save = checkpoint.Checkpointer.save
def slow_save(*args, **kwargs):
  sys.stderr.write('saving slowly\\n')
  time.sleep(60)
  return save(*args, **kwargs)
checkpoint.Checkpointer.save = slow_save
cli.run(cli.train_main)
"""


def test_a_second_ctrl_c_exits_at_once(real_data_dir, tmp_path):
  process = subprocess.Popen(
      [sys.executable, '-c', _SLOW_SAVE, '--config', 'experiments/configs/tiny.py',
       '--workdir', str(tmp_path), *LONG], cwd=REPO, text=True, stderr=subprocess.PIPE,
      preexec_fn=_default_sigint,
      env=dict(os.environ, PYTHONPATH=str(REPO), TFDS_DATA_DIR=real_data_dir))
  _read_until(process, r'step +2/100,000')
  process.send_signal(signal.SIGINT)
  _read_until(process, r'^saving slowly')  # the first Ctrl-C's save has begun
  sent = time.monotonic()
  process.send_signal(signal.SIGINT)
  rest = process.communicate(timeout=60)[1]
  assert time.monotonic() - sent < 20, 'it waited for the save'
  assert process.returncode == 130, rest[-3000:]
  assert _said(rest) == ['Second Ctrl-C: stopped at once, without saving the current step (a '
                         'checkpoint being written does not count; earlier ones are intact). '
                         'Rerun the same command to resume from the latest checkpoint.']
  checkpoints = train.Checkpointer(tmp_path / 'checkpoints', read_only=True)
  assert checkpoints.all_steps() == []
  checkpoints.close()


# ---------------------------------------------------------------- the workdir lock


def _owner(path):
  return json.loads((path / lock.LOCK_FILE).read_text())


def test_a_live_lock_is_refused_naming_its_owner(tmp_path):
  other = lock.WorkdirLock(tmp_path, host='gpu-node-7', pid=4242, settle_s=0)
  other.acquire()
  try:
    with pytest.raises(train.WorkdirError) as raised:
      lock.WorkdirLock(tmp_path, settle_s=0).acquire()
    message = str(raised.value)
    assert message.startswith(f'--workdir {tmp_path} is in use by another run: process 4242 on '
                              f'host gpu-node-7, started {other.started} (its lock ')
    assert 'kill 4242 on gpu-node-7' in message and '\n' not in message
  finally:
    other.release()
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_a_lock_whose_owner_is_gone_is_taken_over(tmp_path):
  # Another host whose heartbeat stopped (its machine died) ...
  gone = lock.WorkdirLock(tmp_path, host='gpu-node-7', pid=4242, settle_s=0, stale_after_s=60)
  gone._write()  # pylint: disable=protected-access
  record = _owner(tmp_path)
  record['heartbeat'] -= 61
  (tmp_path / lock.LOCK_FILE).write_text(json.dumps(record))
  mine = lock.WorkdirLock(tmp_path, settle_s=0, stale_after_s=60)
  mine.acquire()
  assert _owner(tmp_path)['token'] == mine.token
  mine.release()
  # ... and this host's process that no longer exists, however fresh its heartbeat.
  finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                            capture_output=True, text=True, check=True)
  dead = lock.WorkdirLock(tmp_path, pid=int(finished.stdout), settle_s=0)
  dead._write()  # pylint: disable=protected-access
  mine = lock.WorkdirLock(tmp_path, settle_s=0)
  mine.acquire()
  mine.release()


def test_of_two_runs_starting_together_one_gets_the_lock(tmp_path):
  # No O_EXCL on object stores: write, settle, read back; the last writer keeps it.
  locks = [lock.WorkdirLock(tmp_path, host=f'node{i}', pid=1000 + i, settle_s=0.5)
           for i in range(2)]
  outcome = {}

  def take(i):
    try:
      locks[i].acquire()
      outcome[i] = 'held'
    except train.WorkdirError as e:
      outcome[i] = str(e)

  threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(v == 'held' for v in outcome.values()) == [False, True], outcome
  for held in locks:
    held.release()


def test_the_heartbeat_refreshes_the_lock(tmp_path):
  held = lock.WorkdirLock(tmp_path, settle_s=0, heartbeat_s=0.05)
  held.acquire()
  try:
    first = _owner(tmp_path)['heartbeat']
    time.sleep(0.5)
    assert _owner(tmp_path)['heartbeat'] > first
  finally:
    held.release()


@pytest.mark.slow  # three training processes: about 5 minutes on 2 loaded cores
def test_two_runs_on_one_workdir_and_a_killed_one(real_data_dir, tmp_path):
  first = _start(tmp_path, real_data_dir, *LONG)
  try:
    _read_until(first, r'step +2/100,000')
    second = subprocess.run(CIFAR + ['--workdir', str(tmp_path), *LONG], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO),
                                     TFDS_DATA_DIR=real_data_dir))
    assert second.returncode == 1, second.stderr[-3000:]
    said = _said(second.stderr)
    assert len(said) == 1 and said[0].startswith(
        f'ERROR (WorkdirError): --workdir {tmp_path} is in use by another run: process '
        f'{first.pid} on host {socket.gethostname()}, started '), second.stderr[-3000:]
    assert first.poll() is None  # the first run goes on
  finally:
    first.kill()  # SIGKILL: its lock stays behind
    first.communicate()
  assert _owner(tmp_path)['pid'] == first.pid
  third = subprocess.run(CIFAR + ['--workdir', str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), TFDS_DATA_DIR=real_data_dir))
  assert third.returncode == 0, third.stderr[-3000:]
  assert f'Taking over the lock {tmp_path / lock.LOCK_FILE} of process {first.pid}' in third.stderr
  assert not (tmp_path / lock.LOCK_FILE).exists()  # released at the end


# ---------------------------------------------------------------- a failed write during a save


@pytest.fixture
def small_disk(tmp_path):
  """A 6 MiB tmpfs (root and a kernel that lets it mount; skipped elsewhere: the simulated
  failure below runs everywhere)."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  yield disk
  subprocess.run(['umount', '-l', str(disk)], check=False)


def _fill(disk):
  """Writes a filler file until the disk is full; returns it."""
  filler = disk / 'filler'
  with open(filler, 'wb', buffering=0) as f:
    try:
      while True:
        f.write(b'\0' * 4096)
    except OSError as e:
      assert e.errno == errno.ENOSPC
  return filler


def _state(value):
  return {'w': jnp.full((64, 64), value, jnp.float32), 'b': jnp.zeros(8, jnp.float32)}


def test_a_full_disk_during_a_save_keeps_what_was_saved_and_says_so(small_disk):
  checkpoints = train.Checkpointer(small_disk / 'checkpoints')
  checkpoints.save(2, _state(2.0))
  checkpoints.wait_until_finished()
  filler = _fill(small_disk)
  checkpoints.save(4, _state(4.0))  # written in the background; the failure shows at the wait
  with pytest.raises(CheckpointWriteError) as raised:
    checkpoints.wait_until_finished()
  message = str(raised.value)
  assert message.startswith(f'Saving the checkpoint of step 4 in {small_disk}/checkpoints '
                            'failed: No space left on device (errno 28)')
  assert ('Step 4 is not a checkpoint (a half-written step never counts; its partial files '
          'were removed). The checkpoints saved before it are intact and untouched: steps 2; '
          'rerunning resumes from step 2. Free space on that disk') in message
  assert sorted(p.name for p in (small_disk / 'checkpoints').iterdir()) == ['2']
  with pytest.raises(CheckpointWriteError):  # and again at close: what a run ends with
    checkpoints.close()
  filler.unlink()
  again = train.Checkpointer(small_disk / 'checkpoints')
  assert again.all_steps() == [2]
  restored = again.restore(2, jax.eval_shape(lambda: _state(0.0)))
  np.testing.assert_array_equal(restored['w'], np.full((64, 64), 2.0))
  again.save(4, _state(4.0))  # room again: the step saves
  again.close()


def test_a_failed_write_is_reported_wherever_orbax_raises_it(tmp_path, monkeypatch):
  # Simulated (no mount needed): orbax raising ENOSPC from its save call.
  checkpoints = train.Checkpointer(tmp_path / 'checkpoints')
  checkpoints.save(2, _state(2.0))
  checkpoints.wait_until_finished()
  partial = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1234'
  partial.mkdir()

  def full(*args, **kwargs):
    raise ValueError('Error writing local file "/x/d/abc": [OSError: No space left on device]')

  monkeypatch.setattr(checkpoints._manager, 'save', full)  # pylint: disable=protected-access
  with pytest.raises(CheckpointWriteError, match=r'step 4 .* failed: No space left on device '
                     r'\(errno 28\).*intact and untouched: steps 2'):
    checkpoints.save(4, _state(4.0))
  assert not partial.exists() and checkpoints.all_steps() == [2]
  monkeypatch.undo()
  with pytest.raises(CheckpointWriteError):
    checkpoints.close()
  # Another error is not a write failure and stays what it is.
  other = train.Checkpointer(tmp_path / 'other')
  manager = other._manager  # pylint: disable=protected-access
  monkeypatch.setattr(manager, 'save', lambda *a, **k: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    other.save(1, _state(1.0))
  monkeypatch.undo()
  other.close()


def test_orbax_error_logs_of_a_reported_write_failure_are_hidden():
  hide = cli._HideReportedWriteErrors()  # pylint: disable=protected-access
  orbax_file = '/site-packages/orbax/checkpoint/_src/futures/future.py'
  full = OSError(errno.ENOSPC, 'No space left on device')
  record = logging.LogRecord('absl', logging.ERROR, orbax_file, 1, 'Failed to write %s',
                             ('x',), (OSError, full, None))
  assert not hide.filter(record)
  other = logging.LogRecord('absl', logging.ERROR, orbax_file, 1, 'Something else', (), None)
  assert hide.filter(other)
  ours = logging.LogRecord('absl', logging.ERROR, '/rattn/train/trainer.py', 1, 'x', (),
                           (OSError, full, None))
  assert hide.filter(ours)


def test_training_on_a_disk_that_fills_stops_in_one_paragraph_and_resumes(
    small_disk, monkeypatch, real_data_dir):  # pylint: disable=unused-argument
  config = tiny_config(num_train_steps=6, checkpoint_every=2, eval_every=100, log_every=2)
  workdir = small_disk / 'run'
  calls = {'n': 0}
  real = trainer.shard_batch
  fillers = []

  def fill_after_the_first_save(batch, mesh):
    calls['n'] += 1
    if calls['n'] == 4:  # step 4 is being prepared: once step 2's save has landed, fill up
      waited = time.monotonic()
      while not (workdir / 'checkpoints' / '2' / 'state').is_dir():
        assert time.monotonic() - waited < 120, 'step 2 was never saved'
        time.sleep(0.1)
      time.sleep(1)
      fillers.append(_fill(small_disk))
    return real(batch, mesh)

  monkeypatch.setattr(trainer, 'shard_batch', fill_after_the_first_save)
  with pytest.raises(CheckpointWriteError, match=r'intact and untouched: steps 2; rerunning '
                     r'resumes from step 2'):
    train.train_and_evaluate(config, workdir)
  fillers[0].unlink()
  monkeypatch.setattr(trainer, 'shard_batch', real)
  result = train.train_and_evaluate(config, workdir)
  assert result['step'] == 6
