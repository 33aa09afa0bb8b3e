"""experiments.study: the grid, the runner's skip/resume and progress, the table, the CLI."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.studies import STUDIES
from rattn.study import Axis, Option, Paper, Scale, Study, expand, report, runner

ROOT = pathlib.Path(__file__).resolve().parents[1]

STUDY = Study(
    name='toy', claim='a beats b',
    axes=(Axis('model', (Option('a', {'model': 'ran56_cifar'}), Option('b'))),
          Axis('noise', (Option('n10', {'data.label_noise': 0.1}, x=10),
                         Option('n50', {'data.label_noise': 0.5}, x=50),
                         Option('n70', {'data.label_noise': 0.7}, x=70)))),
    scales={'small': Scale(config='base.py', overrides={'num_train_steps': 4},
                           option_overrides={'b': {'config': 'other.py', 'model': 'resnet'}},
                           only={'noise': ('n10', 'n50')})},
    x_axis='noise', paper=Paper(source='Paper, Table 9', errors={('a', 'n10'): 4.5}))


def test_expand_names_overrides_and_seeds():
  cells = expand(STUDY, 'small', seeds=2, extra={'dtype': 'bfloat16'})
  assert [c.name for c in cells] == ['a_n10_seed1', 'a_n10_seed2', 'a_n50_seed1', 'a_n50_seed2',
                                     'b_n10_seed1', 'b_n10_seed2', 'b_n50_seed1', 'b_n50_seed2']
  a, b = cells[0], cells[-1]
  assert (a.config, a.x, a.seed, a.group) == ('base.py', 10, 1, ('a', 'n10'))
  assert a.overrides == {'num_train_steps': 4, 'model': 'ran56_cifar', 'data.label_noise': 0.1,
                         'dtype': 'bfloat16', 'seed': 1, 'data.noise_seed': 1}
  # An option's scale-specific overrides may pick another config file.
  assert (b.config, b.overrides['model'], b.overrides['seed']) == ('other.py', 'resnet', 2)
  assert b.argv('experiments.cifar', '/w')[:4] == ['-m', 'experiments.cifar',
                                                   '--config=other.py', '--workdir=/w']


def test_argv_formats_values_for_ml_collections():
  cell = expand(STUDY, 'small', 1, extra={'model_kwargs.widths': (16, 32),
                                          'model_kwargs.residual_learning': False})[0]
  flags = cell.argv('m', 'w')
  assert '--config.model_kwargs.widths=(16,32)' in flags
  assert '--config.model_kwargs.residual_learning=false' in flags


def test_every_study_expands_at_every_scale():
  for study in STUDIES.values():
    for scale in ('smoke', 'cpu', 'gpu'):
      cells = expand(study, scale, 2)
      assert cells and len({c.name for c in cells}) == len(cells), (study.name, scale)
      assert all(pathlib.Path(ROOT, c.config.split(':')[0]).exists() for c in cells)


def _row(group, seed, final, best, x, params=1000, speed=100.0, wall=60.0):
  """A result row; ``best`` is the test accuracy of the checkpoint best on validation, at
  step 2 of 4 (None: the final checkpoint is the best)."""
  return {'group': dict(zip(('model', 'noise'), group)), 'seed': seed, 'x': x,
          'final_accuracy': final, 'best_step': 4 if best is None else 2,
          'best_step_accuracy': final if best is None else best, 'model': 'm',
          'dataset': 'toy', 'steps': 4, 'num_train': 950, 'num_validation': 50,
          'params': params, 'macs': 2_500_000, 'images_per_s': speed, 'wall_s': wall}


SYNTHETIC = [_row(('a', 'n10'), 1, 0.90, 0.91, 10), _row(('a', 'n10'), 2, 0.92, 0.93, 10),
             _row(('a', 'n50'), 1, 0.70, 0.75, 50),
             _row(('b', 'n10'), 1, 0.80, None, 10, speed=300.0),
             _row(('b', 'n10'), 2, 0.84, None, 10, speed=100.0)]


def test_table_mean_std_over_seeds_and_paper_column():
  rows = report.table_rows(STUDY, SYNTHETIC)
  assert [(r['model'], r['noise'], r['network'], r['seeds']) for r in rows] == [
      ('a', 'n10', 'm', '2'), ('a', 'n50', 'm', '1'), ('b', 'n10', 'm', '2')]
  first, single, b = rows
  # errors 10 and 8: mean 9, sample std sqrt(2)
  assert first['test error % (final)'] == '9.00 ± 1.41'
  assert first[report.BEST_COLUMN] == '8.00 ± 1.41'  # the best checkpoints on validation
  assert b[report.BEST_COLUMN] == '= final'  # both seeds' best is their final checkpoint
  assert first['paper error %'] == '4.50'
  assert single['test error % (final)'] == '30.00'  # one seed: no spread to show
  assert single['paper error %'] == ''
  assert b['img/s'] == '200' and b['params'] == '1,000' and b['MACs'] == '2.50M'
  text = report.render_table(STUDY, 'small', SYNTHETIC)
  assert 'Paper, Table 9' in text and '| 9.00 ± 1.41' in text
  assert report.BEST_COLUMN in text and '50 held out, 950 trained on' in text
  assert 'The test split is evaluated once, at the end of each run' in text
  # Where every best checkpoint is the final one, only the final figure is shown, and said.
  finals = [_row(('a', 'n10'), 1, 0.9, None, 10), _row(('b', 'n10'), 1, 0.8, None, 10)]
  text = report.render_table(STUDY, 'small', finals)
  assert report.BEST_COLUMN not in text and 'is the final one in every run' in text
  unvalidated = [dict(r, num_validation=0, best_step=None) for r in finals]
  assert 'held out no validation split' in report.render_table(STUDY, 'small', unvalidated)


def test_added_columns_count_from_the_baseline_option():
  study = Study(name='layers', claim='c', axes=(Axis('attention', (Option('none'), Option('se'),
                                                                  Option('cbam'))),),
                scales={'small': Scale(config='base.py', overrides={})}, baseline='none')
  rows = [{**_row(('none',), 1, 0.9, 0.9, None, params=4000), 'macs': 2_000_000},
          {**_row(('se',), 1, 0.9, 0.9, None, params=4100), 'macs': 2_010_000},
          {**_row(('se',), 2, 0.9, 0.9, None, params=4100), 'macs': 2_010_000},
          {**_row(('cbam',), 1, 0.9, 0.9, None, params=3900), 'macs': 3_000_000}]
  for row in rows:
    row['group'] = {'attention': row['group']['model']}
  none, se, cbam = report.table_rows(study, rows)
  assert none['added params'] == '+0 (+0.0%)'
  assert se['added params'] == '+100 (+2.5%)' and se['added MACs'] == '+10.00K (+0.5%)'
  assert cbam['added params'] == '-100 (-2.5%)' and cbam['added MACs'] == '+1.00M (+50.0%)'
  header = report.render_table(study, 'small', rows).splitlines()[6]
  assert [c.strip() for c in header.split('|')[6:11]] == [
      'params', 'MACs', 'added params', 'added MACs', 'img/s']
  # Without a baseline there is nothing to count from.
  assert 'added params' not in report.table_rows(STUDY, SYNTHETIC)[0]


def test_plot_has_one_line_per_series(tmp_path):
  path = report.plot(STUDY, 'small', SYNTHETIC, tmp_path / 'toy.png')
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  no_axis = Study(name='flat', claim='', axes=STUDY.axes, scales=STUDY.scales)
  assert report.plot(no_axis, 'small', SYNTHETIC, tmp_path / 'flat.png') is None


def test_eta_and_progress_line():
  assert runner.eta_seconds([], remaining=3, parallel=1) is None
  assert runner.eta_seconds([60, 120], remaining=3, parallel=1) == 270
  assert runner.eta_seconds([60, 120], remaining=3, parallel=2) == 135
  assert runner.eta_seconds([60, 120], remaining=1, parallel=4) == 90  # one cell left: no overlap
  assert runner.eta_seconds([60], remaining=0, parallel=1) == 0
  line = runner.progress_line('done', 3, 12, 'ran92_nal_seed1', 370, 615, '85.10%, 2m03s')
  assert line == ('[ 3/12] done  ran92_nal_seed1  (85.10%, 2m03s)  elapsed 6m10s  ETA 10m15s')
  assert runner.progress_line('start', 1, 8, 'c', 0, None).endswith('elapsed 0s  ETA ?')


def test_steady_images_per_s_leaves_out_compilation_rows():
  records = [{'event': 'start'}, {'split': 'train', 'images_per_s': 5},
             {'split': 'train', 'images_per_s': 100}, {'split': 'train', 'images_per_s': 300},
             {'split': 'test', 'accuracy': 0.5},
             {'event': 'start'}, {'split': 'train', 'images_per_s': 7},  # resumed: compiles again
             {'split': 'train', 'images_per_s': 200}]
  assert runner.steady_images_per_s(records) == 200


def test_child_env_shares_the_device_memory():
  assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in runner.child_env({}, 1)
  assert runner.child_env({'A': '1'}, 4) == {'A': '1', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.225'}


# A stand-in for experiments.cifar: writes a finished run's files in a blink, logs each call,
# and fails once for the cell named in $FAIL_CELL.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, pathlib, sys
    workdir = pathlib.Path(next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir=')))
    with open(workdir.parent / 'calls.log', 'a') as f:
      f.write(workdir.name + '\\n')
    marker = workdir / 'failed_once'
    if os.environ.get('FAIL_CELL') == workdir.name and not marker.exists():
      marker.write_text('')
      sys.exit(1)
    (workdir / 'config.json').write_text(json.dumps({
        'model': 'preact_resnet20', 'model_kwargs': {'widths': [4, 8, 16]},
        'num_train_steps': 4, 'data': {'eval_split': 'test'}}))
    (workdir / 'dataset_info.json').write_text(json.dumps(
        {'name': 'fake', 'num_classes': 10, 'image_shape': [8, 8, 3]}))
    rows = [{'step': 0, 'event': 'start'}, {'step': 2, 'split': 'train', 'images_per_s': 3},
            {'step': 2, 'split': 'minival', 'accuracy': 0.6},
            {'step': 4, 'split': 'train', 'images_per_s': 90},
            {'step': 4, 'split': 'minival', 'accuracy': 0.5},
            {'step': 4, 'split': 'test', 'accuracy': 0.5},
            {'step': 4, 'event': 'report', 'eval_split': 'test',
             'final': {'step': 4, 'test': {'accuracy': 0.5}},
             'best': {'step': 2, 'selected_on': 'minival', 'minival_accuracy': 0.6,
                      'test': {'accuracy': 0.55}}, 'num_train': 91, 'num_validation': 5}]
    if os.environ.get('NO_FINAL_EVAL') == workdir.name:
      rows = rows[:5]
    (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\\n' for r in rows))
''')


def test_runner_skips_finished_cells_and_reruns_failed_ones(tmp_path):
  (tmp_path / 'fake_trainer.py').write_text(FAKE_TRAINER)
  env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}',
         'FAIL_CELL': 'b_n10_seed1'}
  cells = expand(STUDY, 'small', seeds=1)
  workdir = tmp_path / 'study'
  lines = []
  with pytest.raises(runner.CellFailed, match=r'1 of 4 cells failed: b_n10_seed1'):
    runner.run_cells(STUDY, 'small', cells, workdir, parallel=2, module='fake_trainer',
                     env=env, log=lines.append, poll_s=0.05)
  assert sum(line.split()[1] == 'start' for line in lines) == 4
  assert [r['cell'] for r in map(json.loads, (workdir / 'results.jsonl').open())] == [
      'a_n10_seed1', 'a_n50_seed1', 'b_n50_seed1']
  row = runner.read_done(workdir / 'a_n10_seed1')
  assert (row['final_accuracy'], row['best_step'], row['best_validation_accuracy'],
          row['best_step_accuracy'], row['num_validation']) == (0.5, 2, 0.6, 0.55, 5)
  assert row['images_per_s'] == 90 and row['params'] > 0 and row['macs'] > 0
  assert row['resumed'] is False and row['group'] == {'model': 'a', 'noise': 'n10'}

  lines.clear()
  rows = runner.run_cells(STUDY, 'small', cells, workdir, parallel=2, module='fake_trainer',
                          env=env, log=lines.append, poll_s=0.05)
  assert lines[0].startswith('3 of 4 cells already finished')
  calls = (workdir / 'calls.log').read_text().split()
  assert calls.count('b_n10_seed1') == 2 and calls.count('a_n10_seed1') == 1
  assert [r['cell'] for r in rows] == [c.name for c in cells]
  assert runner.read_done(workdir / 'b_n10_seed1')['resumed'] is True


def test_a_time_budget_runs_seed_one_and_leaves_out_later_seeds(tmp_path):
  (tmp_path / 'fake_trainer.py').write_text(FAKE_TRAINER)
  env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}'}
  cells = sorted(expand(STUDY, 'small', seeds=2), key=lambda cell: cell.seed)
  lines = []
  # A budget already spent: every config still gets seed 1, no cell of seed 2 starts.
  rows = runner.run_cells(STUDY, 'small', cells, tmp_path / 'spent', parallel=2,
                          module='fake_trainer', env=env, log=lines.append, poll_s=0.05,
                          deadline=time.time() - 1)
  assert [r['cell'] for r in rows] == [c.name for c in cells if c.seed == 1]
  skipped = [line.split()[2] for line in lines if line.split()[1] == 'skip']
  assert skipped == [c.name for c in cells if c.seed == 2]
  assert lines[-1].startswith('Time budget reached: 4 of 8 cells not started')
  # A budget that the finished cells' wall times say is enough: every seed runs.
  rows = runner.run_cells(STUDY, 'small', cells, tmp_path / 'ample', parallel=2,
                          module='fake_trainer', env=env, log=lambda line: None, poll_s=0.05,
                          deadline=time.time() + 3600)
  assert [r['cell'] for r in rows] == [c.name for c in cells]


def test_only_names_an_axis_and_its_options(tmp_path):
  result = _study_cli('arl_vs_nal', f'--workdir={tmp_path}', '--scale=gpu',
                      '--only=depth=ran56,ran99')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert ("--only='depth=ran56,ran99': the depth axis of arl_vs_nal has the options ran56, "
          'ran92, ran128, ran164.') in result.stderr


def test_a_run_without_its_final_eval_is_not_finished(tmp_path):
  (tmp_path / 'fake_trainer.py').write_text(FAKE_TRAINER)
  env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}',
         'NO_FINAL_EVAL': 'a_n10_seed1'}
  cells = expand(STUDY, 'small', seeds=1)[:1]
  with pytest.raises(runner.CellFailed, match='no final report .*at the final step 4'):
    runner.run_cells(STUDY, 'small', cells, tmp_path / 'study', module='fake_trainer', env=env,
                     log=lambda line: None, poll_s=0.05)
  assert runner.read_done(tmp_path / 'study' / 'a_n10_seed1') is None


def _study_cli(*args, cwd=ROOT):
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'experiments.study', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_unknown_study_or_scale_is_one_clear_error(tmp_path):
  result = _study_cli('arl_vs_nall', f'--workdir={tmp_path}', '--scale=tpu')
  assert result.returncode == 1
  assert ("Unknown study 'arl_vs_nall'. Valid studies are: arl_vs_nal, mask_type, "
          'ran_vs_resnet, label_noise, attention_layers.') in result.stderr
  assert 'Traceback' not in result.stderr


def test_smoke_study_through_the_cli_then_rerun_skips(tmp_path):
  workdir = tmp_path / 'label_noise'
  result = _study_cli('label_noise', f'--workdir={workdir}', '--scale=smoke', '--parallel=2')
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert '[1/2] start resnet_noise10_seed1' in result.stdout
  rows = [json.loads(line) for line in (workdir / 'results.jsonl').open()]
  assert [r['cell'] for r in rows] == ['resnet_noise10_seed1', 'resnet_noise50_seed1']
  assert all(r['model'] == 'preact_resnet20' and r['params'] > 0 and r['macs'] > 0 for r in rows)
  assert [r['overrides']['data.label_noise'] for r in rows] == [0.1, 0.5]
  table = (workdir / 'table.md').read_text()
  assert table.count('| resnet ') == 2
  assert (workdir / 'label_noise.png').read_bytes()[:4] == b'\x89PNG'

  again = _study_cli('label_noise', f'--workdir={workdir}', '--scale=smoke')
  assert again.returncode == 0, again.stderr[-3000:]
  assert '2 of 2 cells already finished' in again.stdout and '] start' not in again.stdout


def _built_model(cell):
  """The model a cell's command line builds (its config file plus its overrides)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from rattn import train  # pylint: disable=g-import-not-at-top
  path, _, arg = cell.config.partition(':')
  module = importlib.import_module(path.removesuffix('.py').replace('/', '.'))
  config = module.get_config(arg or None)
  config.update_from_flattened_dict(cell.overrides)
  return train.make_plan(config, image_shape=(32, 32, 3), num_classes=10).model


@pytest.mark.parametrize('scale', ['smoke', 'cpu', 'gpu'])
@pytest.mark.parametrize('name', sorted(STUDIES))
def test_cells_build_the_network_their_labels_name(name, scale):
  # Every cell of every study at every scale is a config the trainer accepts, and builds the
  # network its labels promise: the ResNet configs declare depth/bottleneck, so a cell that
  # switches model must switch them too, and an option's overrides must survive the scale's.
  for cell in expand(STUDIES[name], scale, 1):
    model = _built_model(cell)
    labels = dict(zip((axis.name for axis in STUDIES[name].axes), cell.group))
    if name == 'attention_layers':
      assert model.bottleneck, cell.name
      assert model.attention == ('' if labels['attention'] == 'none' else labels['attention'])
      assert model.depth == (164 if scale == 'gpu' else 11), cell.name
      continue
    model_name = cell.overrides.get('model', 'ran56')  # mask_type keeps the config's Attention-56
    assert model.depth == int(re.search(r'\d+', model_name).group()), cell.name
    if name == 'arl_vs_nal':
      assert f'ran{model.depth}' == labels['depth'], cell.name
      assert model.residual_learning == (labels['learning'] == 'arl'), cell.name
    if name == 'mask_type':
      assert model.attention_type == labels['mask'], cell.name
    if name == 'label_noise':
      assert cell.overrides['data.label_noise'] * 100 == int(labels['noise'][len('noise'):])
