"""gs:// workdirs end to end, against a real GCS API emulator on 127.0.0.1 (tests/gcs_emulator.py).

Every command runs as a real subprocess whose storage clients (orbax/tensorstore,
etils.epath/gcsfs, tensorboardX) all talk to the emulator; what lands in the
bucket is read back over the emulator's plain JSON API.
"""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gcs_emulator import GcsEmulator
from train_worker import reference_of_processes, register, tiny_config

register()

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / 'tests' / 'train_worker.py'
TIMEOUT_S = 400

# The tiny CIFAR config with an ECA gate in every block (visualize needs something to draw).
TINY_SE = '''
from experiments.configs import tiny

def get_config(arg=None):
  config = tiny.get_config(arg)
  config.model_kwargs = dict(widths=(4, 8, 16), attention='eca')
  return config
'''
# Long enough that a kill -9 after the first checkpoints lands well before the end.
STEPS = 200
RUN = ['--config.num_train_steps=200', '--config.checkpoint_every=20', '--config.log_every=10',
       '--config.eval_every=100', '--config.schedule.boundaries=(150,)',
       '--config.keep_checkpoints=3']


@pytest.fixture(scope='module')
def gcs():
  with GcsEmulator() as emulator:
    yield emulator


def _command(module, *args):
  return [sys.executable, '-m', module, *map(str, args)]


def _run(argv, env, timeout=TIMEOUT_S):
  out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def _committed_steps(gcs, prefix):
  """Steps whose checkpoint orbax has finished (gs:// marks each with commit_success.txt)."""
  steps = set()
  for name in gcs.names(prefix + '/checkpoints/'):
    match = re.fullmatch(re.escape(prefix) + r'/checkpoints/(\d+)/commit_success\.txt', name)
    if match:
      steps.add(int(match.group(1)))
  return steps


def _checksums_object(gcs, prefix, step):
  """The checkpoint's per-array CRC-32s (rattn.train.checkpoint's `checksums` item)."""
  [name] = [n for n in gcs.names(f'{prefix}/checkpoints/{step}/checksums/')
            if not n.endswith(('commit_success.txt', '_METADATA'))]
  return json.loads(gcs.read(name))


def _local_checksums(workdir, step):
  folder = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'checksums'
  [path] = [p for p in folder.iterdir() if p.name not in ('commit_success.txt', '_METADATA')]
  return json.loads(path.read_text())


@pytest.mark.slow
def test_gs_run_killed_and_resumed_equals_a_local_run_then_evaluate_visualize_init_from(
    gcs, real_data_dir, tmp_path):
  config = tmp_path / 'tiny_se.py'
  config.write_text(TINY_SE)
  env = {**gcs.env, 'TFDS_DATA_DIR': real_data_dir, 'PYTHONPATH': str(REPO)}
  train = _command('experiments.cifar', '--config', config, *RUN)
  local = tmp_path / 'local'
  straight = subprocess.Popen(train + ['--workdir', str(local)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  # The gs:// run, killed -9 once its first checkpoints are committed, then rerun.
  workdir = gcs.path('kill')
  killed = subprocess.Popen(train + ['--workdir', workdir], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + TIMEOUT_S
  while not _committed_steps(gcs, 'kill') and killed.poll() is None:
    assert time.monotonic() < deadline, 'no checkpoint was committed to the bucket in time'
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  _, stderr = killed.communicate()
  assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
  at_kill = _committed_steps(gcs, 'kill')
  assert at_kill and STEPS not in at_kill, at_kill  # really interrupted mid-run
  resumed = _run(train + ['--workdir', workdir], env)
  assert f'Resumed from the checkpoint at step {max(at_kill)}' in resumed.stderr
  assert straight.wait(TIMEOUT_S) == 0

  # Same final parameters, optimiser state and BatchNorm statistics, bit for bit.
  assert _checksums_object(gcs, 'kill', STEPS) == _local_checksums(local, STEPS)

  # metrics.jsonl (uploaded whole: object stores cannot append): one row per logged step.
  rows = [json.loads(line) for line in gcs.read('kill/metrics.jsonl').decode().splitlines()]
  train_steps = [r['step'] for r in rows if r.get('split') == 'train']
  assert train_steps == list(range(10, STEPS + 1, 10))
  assert [r['step'] for r in rows if r.get('split') == 'minival'] == [100, 200]
  assert [r['step'] for r in rows if r.get('split') == 'test'] == [STEPS]  # read once, at the end
  assert [r['step'] for r in rows if r.get('event') == 'resume'] == [max(at_kill)]
  assert json.loads(gcs.read('kill/config.json'))['num_train_steps'] == STEPS
  assert json.loads(gcs.read('kill/dataset_info.json'))['name'] == 'cifar10'
  assert any('/tensorboard/events.out.tfevents.' in n for n in gcs.names('kill/tensorboard/'))
  # Retention: the latest 3 checkpoints plus the best, deleted on gs:// too.
  assert len(_committed_steps(gcs, 'kill')) <= 4

  # evaluate reads the gs:// workdir as it reads the local one.
  evaluate = [_run(_command('experiments.evaluate', '--workdir', w, '--step', STEPS), env).stdout
              for w in (workdir, local)]
  assert evaluate[0].replace(workdir, 'W') == evaluate[1].replace(str(local), 'W')
  assert 'accuracy' in evaluate[0]

  # visualize from gs:// to gs://.
  out = gcs.path('figures', 'masks.png')
  _run(_command('experiments.visualize', '--workdir', workdir, '--out', out), env)
  assert gcs.read('figures/masks.png')[:8] == b'\x89PNG\r\n\x1a\n'

  # init_from a gs:// workdir: the new run starts from its weights.
  tuned = _run(train[:-len(RUN)] + ['--workdir', str(tmp_path / 'tuned'),
                                    '--config.num_train_steps=2', '--config.eval_every=2',
                                    f'--config.init_from={workdir}'], env)
  assert f'Initialised from {workdir}' in tuned.stderr


@pytest.mark.slow
def test_gs_damaged_checkpoint_is_moved_aside_and_the_run_resumes(gcs, real_data_dir):
  env = {**gcs.env, 'TFDS_DATA_DIR': real_data_dir, 'PYTHONPATH': str(REPO)}
  train = _command('experiments.cifar', '--config', 'experiments/configs/tiny.py')
  workdir = gcs.path('damaged')
  _run(train + ['--workdir', workdir], env)  # 8 steps, checkpoints at 6 and 8 kept
  assert _committed_steps(gcs, 'damaged') >= {8}
  # Corrupt every array chunk of the latest checkpoint's state.
  chunks = [n for n in gcs.names('damaged/checkpoints/8/state/') if '/d/' in n]
  assert chunks
  for name in chunks:
    gcs.write(name, b'\x00' * 64)
  resumed = _run(train + ['--workdir', workdir, '--config.num_train_steps=10'], env)
  assert 'The checkpoint at step 8 is damaged' in resumed.stderr
  moved = gcs.names('damaged/checkpoints_damaged/')
  assert moved and all(re.match(r'damaged/checkpoints_damaged/8_\d{8}-\d{6}/', n) for n in moved)
  assert any('/state/d/' in n for n in moved)  # the arrays moved with the step
  assert 'Resuming from step 6, the newest intact checkpoint' in resumed.stderr
  # Steps 7-10 were trained again from step 6: a new, intact step 8 and the final step 10.
  assert {8, 10} <= _committed_steps(gcs, 'damaged')


@pytest.mark.slow
def test_two_processes_share_one_gs_workdir(gcs, tmp_path):
  """2 processes x 4 CPU devices on one gs:// workdir train like one process fed their shards."""
  import portpicker  # pylint: disable=g-import-not-at-top
  steps = 4
  overrides = {'num_train_steps': steps, 'checkpoint_every': 2, 'eval_every': steps,
               'log_every': 2}
  env = {**gcs.env, 'PYTHONPATH': f'{REPO}:{REPO / "tests"}'}
  port = portpicker.pick_unused_port()
  processes = [subprocess.Popen(
      [sys.executable, str(WORKER), '--overrides', json.dumps(overrides), '--workdir',
       gcs.path('multi'), '--params_out', str(tmp_path / f'p{i}.npz'), '--devices', '4',
       '--coordinator', f'127.0.0.1:{port}', '--num_processes', '2', '--process_id', str(i)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in processes:
    try:
      _, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      raise
    assert p.returncode == 0, err[-4000:]
  assert {2, 4} <= _committed_steps(gcs, 'multi')
  rows = [json.loads(line) for line in gcs.read('multi/metrics.jsonl').decode().splitlines()]
  assert [r['step'] for r in rows if r.get('split') == 'train'] == [2, 4]  # process 0 only
  reference = reference_of_processes(tiny_config(**overrides), steps, process_count=2)
  with np.load(tmp_path / 'p0.npz') as multi:
    assert set(multi) == set(reference)
    for key, value in reference.items():
      np.testing.assert_allclose(multi[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
