"""benchmarks/gpu.sh: its plan covers what the GPU table needs, and its dry run writes the
whole report (the command run end to end on the CPU, so that it cannot rot)."""

import json
import os
import pathlib
import subprocess
import sys

from experiments import gpu_suite
from experiments.studies import STUDIES
from rattn.models.registry import MODELS
from rattn.study import expand

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_plan_holds_the_models_dtypes_and_batches():
  runs = {(r.model, r.dtype, r.batch_size) for r in gpu_suite.BENCH}
  for model in ('ran92_cifar', 'preact_resnet164', 'ran56', 'resnet50'):
    assert model in MODELS
    assert {d for m, d, _ in runs if m == model} == {'bfloat16', 'float32'}, model
  for model in ('ran92_cifar', 'preact_resnet164'):  # the CIFAR pair: a batch sweep
    assert len({b for m, d, b in runs if m == model and d == 'bfloat16'}) >= 3
    assert MODELS.info(model)['image_size'] == 32
  assert all(MODELS.info(m)['image_size'] == 224 for m in ('ran56', 'resnet50'))
  assert len({r.tag for r in gpu_suite.BENCH}) == len(gpu_suite.BENCH)
  assert all(r.model in MODELS for r in gpu_suite.DRY_BENCH)
  # The gpu scale of ran_vs_resnet compares Attention-92 with pre-act ResNet-164.
  models = {c.overrides['model'] for c in expand(STUDIES['ran_vs_resnet'], 'gpu', 1)}
  assert {'ran92_cifar', 'preact_resnet164'} <= models


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_dry_run_writes_tables_records_and_profiles(tmp_path):
  out = tmp_path / 'gpu'
  env = {**os.environ, 'PYTHON': sys.executable, 'PYTHONPATH': str(ROOT)}
  result = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh'), str(out), '--dry-run'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  suite = json.loads((out / 'suite.json').read_text())
  assert suite['dry_run'] and not suite['bench']['failed']
  assert set(suite['bench']['ran']) == {r.tag for r in gpu_suite.DRY_BENCH}
  assert {name: s['exit_status'] for name, s in suite['studies'].items()} == {
      'arl_vs_nal': 0, 'ran_vs_resnet': 0}

  records = _lines(out / 'records.jsonl')
  bench = [r for r in records if r['kind'] == 'model']
  studies = [r for r in records if r['kind'] == 'study']
  assert sorted(f"{r['model']}_{r['dtype']}_b{r['batch_size']}" for r in bench) == sorted(
      r.tag for r in gpu_suite.DRY_BENCH)
  for record in records:  # the device, versions and commit in every record
    for key in gpu_suite.MACHINE_KEYS + ('git_commit', 'suite', 'suite_date'):
      assert record.get(key) not in (None, ''), (record.get('cell') or record['model'], key)
    assert record['suite'] == 'dry_run' and record['platform'] == 'cpu'
  assert all(r['train_images_per_s'] > 0 and r['compile_s'] > 0 and r['stands_for']
             for r in bench)
  # The budget of a dry run is 0: seed 1 of every config runs, no later seed starts.
  assert sorted((r['study'], r['cell']) for r in studies) == [
      ('arl_vs_nal', 'ran56_arl_seed1'), ('ran_vs_resnet', 'preact20_seed1')]
  assert 'Time budget reached: 1 of 2 cells not started' in (
      out / 'logs' / 'study_arl_vs_nal.log').read_text()
  assert all(0 <= r['final_accuracy'] <= 1 for r in studies)

  table = (out / 'table.md').read_text()
  assert table.startswith('# Dry run (CPU, stand-in models; not a measurement)')
  rows = [line for line in table.splitlines() if ' (for ' in line]
  for run in gpu_suite.DRY_BENCH:  # one row per benchmark, naming what it stands for
    assert sum(line.startswith(f'| {run.model} (for {run.stands_for})') and
               f'| {run.batch_size} ' in line and f'| {run.dtype} ' in line
               for line in rows) == 1, (run.tag, rows)
  assert '### arl_vs_nal' in table and '### ran_vs_resnet' in table
  assert table.count('1 cell, 1 seed per config') == 2
  profiled = [r for r in gpu_suite.DRY_BENCH if r.profile]
  profiles = (out / 'profiles.md').read_text()
  assert profiles.count("train step's op time goes") == len(profiled)
  for run in profiled:
    assert list((out / 'profiles' / run.tag).glob('**/*.trace.json.gz'))
