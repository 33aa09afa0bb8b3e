"""Faults a real run meets, in real processes: Ctrl-C (once: the step is saved; twice: out at
once), two runs on one workdir and a lock left by a killed run, a disk that fills during a
save."""

import errno
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from rattn import train
from rattn.train import workdir as workdir_files

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
