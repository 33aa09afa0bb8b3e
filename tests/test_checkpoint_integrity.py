"""Damaged checkpoints: detected on restore, moved aside by training, refused by evaluation."""

import json
import pathlib
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from rattn import train
from rattn.train import trainer
from train_worker import MOCK_EXAMPLES, register, tiny_config

register()


def _config():
  return tiny_config(num_train_steps=4, checkpoint_every=1, eval_every=4, log_every=1)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(_config(), workdir)
  return train.load_trained(str(workdir), step=4)[1]


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  # state/d/ holds the merged OCDBT data that restores read (ocdbt.process_*/ is its source).
  files = list((step_dir / 'state' / 'd').iterdir())
  return max(files, key=lambda p: p.stat().st_size)


def _damage(step_dir: pathlib.Path, how: str) -> None:
  if how == 'flipped_bytes':  # what a failing disk or a bad copy does
    path = _largest_array_file(step_dir)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 58] = bytes(b ^ 0xFF for b in raw[middle:middle + 58])
    path.write_bytes(bytes(raw))
  elif how == 'truncated':
    path = _largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  else:
    (step_dir / 'state' / '_METADATA').unlink()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('how', ['flipped_bytes', 'truncated', 'no_metadata'])
def test_damaged_latest_checkpoint_is_moved_aside_and_resume_matches_uninterrupted(
    tmp_path, uninterrupted, how, caplog):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(_config(), tmp_path)
    _damage(tmp_path / 'checkpoints' / '4', how)

    # evaluate / visualize refuse it, in one paragraph, and move nothing.
    with pytest.raises(train.DamagedCheckpointError) as refused:
      train.evaluate_workdir(str(tmp_path), step=4)
    message = str(refused.value)
    assert message.startswith('The checkpoint at step 4 ') and 'is damaged' in message
    assert '\n' not in message and len(message) < 900, message
    assert 'Nothing was moved or deleted' in message and '--step with one of [3]' in message
    assert (tmp_path / 'checkpoints' / '4').is_dir()

    # Training moves it aside, resumes from step 3 and redoes step 4 exactly.
    caplog.set_level('INFO')
    caplog.set_level('INFO', logger='absl')  # absl's flag parsing (another test's CLI) sets it to WARNING
    result = train.train_and_evaluate(_config(), tmp_path)
  assert result['step'] == 4
  aside = list((tmp_path / 'checkpoints_damaged').iterdir())
  assert [p.name.split('_')[0] for p in aside] == ['4'] and (aside[0] / 'state').is_dir()
  assert 'Resuming from step 3, the newest intact checkpoint' in caplog.text
  chex.assert_trees_all_equal(train.load_trained(str(tmp_path), step=4)[1], uninterrupted)


def _replicated(tree):
  return jax.device_put(tree, train.replicated(train.make_mesh()))


def _state(scale: float):
  return _replicated({'w': scale * jnp.arange(16.0), 'b': {'c': jnp.ones((3, 3))}})


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def _save_plain(directory, step, state):
  """A checkpoint as written before checksums existed: the state item alone."""
  with ocp.CheckpointManager(directory) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_checksums_finiteness_and_old_checkpoints(tmp_path, caplog):
  state = _state(1.0)
  checkpoints = train.Checkpointer(tmp_path / 'checkpoints', keep=5)
  for step in (1, 2, 3, 4):
    checkpoints.save(step, _state(float(step)))
  checkpoints.close()
  assert (tmp_path / 'checkpoints' / '4' / 'checksums').is_dir()

  # Step 4's arrays replaced by other values (what flipped bits inside raw data give):
  # it still loads, and only the checksums tell.
  _save_plain(tmp_path / 'other', 4, _state(-7.0))
  shutil.rmtree(tmp_path / 'checkpoints' / '4' / 'state')
  shutil.copytree(tmp_path / 'other' / '4' / 'state', tmp_path / 'checkpoints' / '4' / 'state')
  # Step 3 emptied _METADATA; step 2 a pre-checksum checkpoint holding a NaN.
  (tmp_path / 'checkpoints' / '3' / 'state' / '_METADATA').write_bytes(b'')
  shutil.rmtree(tmp_path / 'checkpoints' / '2')
  _save_plain(tmp_path / 'nan', 2, _state(float('nan')))
  shutil.move(tmp_path / 'nan' / '2', tmp_path / 'checkpoints' / '2')

  reader = train.Checkpointer(tmp_path / 'checkpoints', read_only=True)
  with pytest.raises(train.DamagedCheckpointError,
                     match=r'step 4 .*1 of 2 arrays fail their checksum'):
    reader.restore(4, _abstract(state))
  with pytest.raises(train.DamagedCheckpointError, match='step 3 .*metadata cannot be read'):
    reader.restore(3, _abstract(state))
  with pytest.raises(train.DamagedCheckpointError, match='step 2 .*hold NaN or Inf'):
    reader.restore(2, _abstract(state))
  with pytest.raises(train.DamagedCheckpointError):  # read-only: refuses, moves nothing
    reader.restore_latest_intact(_abstract(state))
  reader.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2', '3', '4']

  # A config whose arrays differ is not damage: a clear error, and nothing moves.
  wider = {'w': np.zeros(32, np.float32), 'b': {'c': np.zeros((3, 3), np.float32)}}
  checkpoints = train.Checkpointer(tmp_path / 'checkpoints', keep=5)
  with pytest.raises(train.CheckpointError, match=r"does not fit this config: w is "
                     r"float32\[16\] in the checkpoint but float32\[32\]"):
    checkpoints.restore_latest_intact(_abstract(_replicated(wider)))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2', '3', '4']

  caplog.set_level('INFO')
  caplog.set_level('INFO', logger='absl')
  step, restored = checkpoints.restore_latest_intact(_abstract(state))
  assert step == 1 and checkpoints.last_good_step() == 1
  np.testing.assert_array_equal(restored['w'], np.arange(16.0))
  assert sorted(p.name.split('_')[0] for p in (tmp_path / 'checkpoints_damaged').iterdir()) == [
      '2', '3', '4']
  assert checkpoints.all_steps() == [1]
  assert 'Resuming from step 1, the newest intact checkpoint' in caplog.text
  checkpoints.close()

  # A pre-checksum checkpoint that is finite restores, unverified, with one info line.
  _save_plain(tmp_path / 'old', 5, state)
  old = train.Checkpointer(tmp_path / 'old', read_only=True)
  np.testing.assert_array_equal(old.restore(5, _abstract(state))['w'], np.arange(16.0))
  assert 'step 5 predates checksums: restored unverified' in caplog.text
  assert old.last_good_step() is None
  old.close()


def test_resumed_run_that_diverges_again_names_a_verified_step_and_the_way_back(tmp_path):
  config = tiny_config(num_train_steps=4, checkpoint_every=2, eval_every=4, log_every=2)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    train.train_and_evaluate(config, tmp_path)
    config.num_train_steps = 8
    config.schedule.base_lr = 1e36
    with pytest.raises(train.TrainingDiverged) as raised:
      train.train_and_evaluate(config, tmp_path)
  message = str(raised.value)
  directory = tmp_path / 'checkpoints'
  assert f'last good checkpoint, step 4 in {directory} (checksummed and finite)' in message
  assert 'This run had resumed from step 4' in message and 'a new --workdir' in message
  assert (f'go back to step 2 by moving the later checkpoints aside (mkdir -p '
          f'{tmp_path}/checkpoints_set_aside && mv {directory}/4 ') in message


def test_metrics_jsonl_keeps_one_row_per_step_across_a_resume(tmp_path, monkeypatch):
  config = tiny_config(num_train_steps=6, checkpoint_every=3, eval_every=100, log_every=1)
  real, calls = trainer.shard_batch, {'n': 0}

  def killed_at_sixth(batch, mesh):  # a crash after steps 4 and 5 were logged, unsaved
    calls['n'] += 1
    if calls['n'] == 6:
      raise KeyboardInterrupt
    return real(batch, mesh)

  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    monkeypatch.setattr(trainer, 'shard_batch', killed_at_sixth)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, tmp_path)
    monkeypatch.setattr(trainer, 'shard_batch', real)
    train.train_and_evaluate(config, tmp_path)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r.get('split') == 'train'] == [1, 2, 3, 4, 5, 6]
  assert [(r['step'], r['event']) for r in records if 'event' in r] == [
      (0, 'start'), (3, 'resume'), (3, 'start'), (6, 'report')]
  assert [r for r in records if r.get('event') == 'resume'][0]['dropped_rows'] == 2
