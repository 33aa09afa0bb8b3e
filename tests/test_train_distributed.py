"""Real multi-process training and restart-resume, each in fresh processes (tests/train_worker.py)."""

import json
import pathlib
import subprocess
import sys
import time
from typing import NamedTuple

import chex
import numpy as np
import portpicker
import pytest
import tensorflow_datasets as tfds

from rattn import data, train
from train_worker import MOCK_EXAMPLES, flatten_variables, register, tiny_config

register()
WORKER = pathlib.Path(__file__).resolve().parent / 'train_worker.py'
TIMEOUT_S = 300


class Worker(NamedTuple):
  process: subprocess.Popen
  log: pathlib.Path  # <log>.out and <log>.err hold its output


def _start(workdir, params_out, overrides, *extra):
  """Starts a worker; its output goes to files (a full pipe would stall it) next to params_out."""
  log = pathlib.Path(params_out).with_suffix('')
  with open(f'{log}.out', 'w') as stdout, open(f'{log}.err', 'w') as stderr:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), '--workdir', str(workdir), '--params_out',
         str(params_out), '--overrides', json.dumps(overrides), *map(str, extra)],
        stdout=stdout, stderr=stderr)
  return Worker(process, log)


def _finish(*workers: Worker) -> list:
  """Waits for all; if one fails or time runs out, kills the rest (they would wait forever
  on a collective with a dead peer) and fails with the first error output. Returns stdouts."""
  processes = [w.process for w in workers]
  deadline = time.monotonic() + TIMEOUT_S
  while any(p.poll() is None for p in processes):
    if any(p.poll() not in (None, 0) for p in processes) or time.monotonic() > deadline:
      for p in processes:
        p.kill()
        p.wait()
      break
    time.sleep(0.5)
  for w in workers:
    assert w.process.returncode == 0, pathlib.Path(f'{w.log}.err').read_text()[-4000:]
  return [pathlib.Path(f'{w.log}.out').read_text() for w in workers]


def _load(path) -> dict:
  with np.load(path) as f:
    return dict(f)


def _assert_same(actual: dict, expected: dict, rtol: float, atol: float) -> None:
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.slow
def test_restart_resumes_model_optimiser_and_data_exactly(tmp_path):
  """6 steps in one process == 3 steps, exit, then a new process that resumes to 6."""
  common = {'checkpoint_every': 3, 'eval_every': 6, 'log_every': 3}
  straight = _start(tmp_path / 'straight', tmp_path / 'straight.npz',
                    {**common, 'num_train_steps': 6})
  _finish(_start(tmp_path / 'split', tmp_path / 'half.npz', {**common, 'num_train_steps': 3}))
  _finish(_start(tmp_path / 'split', tmp_path / 'split.npz', {**common, 'num_train_steps': 6}))
  _finish(straight)

  starts = [json.loads(line) for line in (tmp_path / 'split' / 'metrics.jsonl').open()
            if '"start"' in line]
  assert [s['step'] for s in starts] == [0, 3]  # the second process really resumed
  half, split, full = (_load(tmp_path / f'{n}.npz') for n in ('half', 'split', 'straight'))
  assert not all(np.array_equal(half[k], full[k]) for k in full)
  # Same devices, same order of operations: bit-for-bit (only if data order resumed too).
  _assert_same(split, full, rtol=0, atol=0)


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batches(tmp_path):
  """2 processes x 4 CPU devices (gloo) == 1 process x 8 devices fed the same global batches."""
  steps = 4
  overrides = {'num_train_steps': steps, 'checkpoint_every': 2, 'eval_every': steps,
               'log_every': 2}
  port = portpicker.pick_unused_port()
  workers = [_start(tmp_path / 'run', tmp_path / f'p{i}.npz', overrides, '--devices', 4,
                    '--coordinator', f'127.0.0.1:{port}', '--num_processes', 2,
                    '--process_id', i) for i in range(2)]
  outputs = _finish(*workers)
  multi = _load(tmp_path / 'p0.npz')
  assert json.loads(outputs[0].strip().splitlines()[-1])['step'] == steps

  # The reference: this process (8 devices) concatenates the two processes' shards.
  config = tiny_config(**overrides)
  mesh = train.make_mesh()
  plan = train.make_plan(config, mesh, image_shape=(8, 8, 3), num_classes=10)
  state, train_step = plan.init_state(), plan.train_step()
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    shards = [data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                       seed=plan.keys.data, process_index=i, process_count=2)
              for i in range(2)]
    for _ in range(steps):
      parts = [next(s) for s in shards]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      state, _ = train_step(state, train.shard_batch(batch, mesh))
  _assert_same(multi, flatten_variables(state.variables()), rtol=1e-5, atol=1e-6)
