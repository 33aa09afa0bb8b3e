r"""Runs one of the papers' claims as a study: a grid of training runs times seeds.

  python -m experiments.study arl_vs_nal --workdir runs/arl_vs_nal --scale cpu
  python -m experiments.study label_noise --workdir runs/label_noise --scale cpu --seeds 3
  python -m experiments.study attention_layers --workdir runs/attn --scale gpu --parallel 8
  python -m experiments.study ran_vs_resnet --workdir runs/rvr --scale gpu --seeds 5 --budget_s 240

Studies (experiments/studies.py): arl_vs_nal, mask_type, ran_vs_resnet,
label_noise, attention_layers. Scales: smoke (seconds a cell, for tests), cpu
(each study within ~45 min on a 2-core CPU), gpu (each within ~5 min of one
H100/H200; estimated, not yet run).

Every cell is an ordinary ``python -m experiments.cifar`` run in DIR/<cell>/
(its log in DIR/<cell>/train.log). Rerunning the same command skips the
finished cells and resumes the others from their checkpoints; Ctrl-C stops the
running cells at a checkpoint. With --budget_s the cells run seed by seed and
later seeds are left out once they would end after the budget (the most seeds
that fit; seed 1 always runs). The study writes DIR/results.jsonl (a line per
run), DIR/table.md (mean ± std over seeds beside the paper's figures) and
DIR/<study>.png where the study has an x-axis (depth, noise rate).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import time

from absl import flags

from experiments.studies import SCALES, STUDIES
from rattn.study import expand, report, runner
from rattn.train import cli
from rattn.train import workdir as workdir_files

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
# --workdir is the commands' shared flag (rattn.train.cli); here it names the study's directory.
_WORKDIR = cli.WORKDIR
flags.FLAGS['workdir'].help = ('Directory of the study: one sub-directory per cell, '
                               'results.jsonl, table.md and the plot.')
flags.declare_key_flag('workdir')
_SCALE = flags.DEFINE_string('scale', 'cpu', f'Size of every run: {", ".join(SCALES)}.',
                             flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per cell (default: the scale\'s, 2; '
                              'smoke: 1).', lower_bound=1, flag_values=FLAGS)
_PARALLEL = flags.DEFINE_integer(
    'parallel', None, 'Cells run side by side (default: 1 on a CPU; on an accelerator the '
    "scale's choice, sharing the device's memory equally).", lower_bound=1, flag_values=FLAGS)
_BUDGET_S = flags.DEFINE_float(
    'budget_s', None, 'Time budget in seconds: the cells run seed by seed, and a cell of a '
    'seed above 1 starts only if it is expected to end within the budget (seed 1 always '
    'runs); --seeds is then the most seeds a config gets.', lower_bound=0, flag_values=FLAGS)
_ONLY = flags.DEFINE_multi_string(
    'only', [], "AXIS=LABEL[,LABEL...]: run only these options of an axis at this scale "
    "(e.g. --only=depth=ran56,ran92).", flag_values=FLAGS)
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'FIELD=VALUE added to every cell as --config.FIELD=VALUE (e.g. '
    'dtype=bfloat16). Use a new --workdir: finished cells are not rerun.', flag_values=FLAGS)


def _has_accelerator() -> bool:
  """Whether a GPU/TPU is attached, without starting JAX here (the cells need the device)."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0] not in ('cpu', '')
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*'))


def _usage_error(message: str):
  # One paragraph, without absl's usage text (the module docstring) around it.
  sys.exit(f'ERROR: {message}')


def _choose(kind: str, plural: str, value: str, valid) -> str:
  if value not in valid:
    _usage_error(f'Unknown {kind} {value!r}. Valid {plural} are: {", ".join(valid)}. '
                 'Run python -m experiments.study NAME --workdir DIR --scale SCALE '
                 '(see python -m experiments.study --helpshort).')
  return value


def _restricted(study, scale_name: str, items):
  """``study`` with its scale keeping only the options that ``--only`` names."""
  only = dict(study.scales[scale_name].only)
  axes = {axis.name: [o.label for o in axis.options] for axis in study.axes}
  for item in items:
    axis, sep, labels = item.partition('=')
    if not sep or axis not in axes:
      _usage_error(f'--only={item!r}: use AXIS=LABEL[,LABEL...] with AXIS one of '
                   f'{", ".join(axes)} (study {study.name}).')
    keep = tuple(label.strip() for label in labels.split(',') if label.strip())
    unknown = [label for label in keep if label not in axes[axis]]
    if not keep or unknown:
      _usage_error(f'--only={item!r}: the {axis} axis of {study.name} has the options '
                   f'{", ".join(axes[axis])}.')
    only[axis] = keep
  scale = dataclasses.replace(study.scales[scale_name], only=only)
  return dataclasses.replace(study, scales={**study.scales, scale_name: scale})


def _overrides(items) -> dict:
  parsed = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      _usage_error(f'--override={item!r}: use FIELD=VALUE, e.g. --override=dtype=bfloat16.')
    parsed[key.removeprefix('config.')] = value
  return parsed


@cli.command(FLAGS)
def main(argv):
  cli.require('workdir')
  if len(argv) != 2:
    _usage_error(f'Name one study (got {len(argv) - 1}): python -m experiments.study NAME '
                 f'--workdir DIR, with NAME one of {", ".join(STUDIES)}.')
  study = STUDIES[_choose('study', 'studies', argv[1], list(STUDIES))]
  scale_name = _choose('scale', 'scales', _SCALE.value, SCALES)
  if _ONLY.value:
    study = _restricted(study, scale_name, _ONLY.value)
  scale = study.scales[scale_name]
  seeds = _SEEDS.value or scale.seeds
  accelerator = _has_accelerator()
  parallel = _PARALLEL.value or (scale.accelerator_parallel if accelerator else 1)
  extra = _overrides(_OVERRIDE.value)
  cells = expand(study, scale_name, seeds, extra)
  deadline = None
  if _BUDGET_S.value is not None:
    deadline = time.time() + _BUDGET_S.value
    cells.sort(key=lambda cell: cell.seed)  # seed by seed: complete seeds first
  workdir = workdir_files.resolve(_WORKDIR.value)  # a local directory or gs://bucket/study
  # This process only counts parameters and multiply-adds: keep it off the accelerator.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')

  print(f'Study {study.name}, scale {scale_name}: {len(cells)} cells ({len(cells) // seeds} '
        f'configs x {seeds} seed{"s" * (seeds > 1)}), {parallel} at a time, in {workdir}'
        + (f', within {_BUDGET_S.value:.0f} s' if deadline is not None else '') + '.',
        flush=True)
  failed = None
  try:
    rows = runner.run_cells(study, scale_name, cells, workdir, parallel=parallel,
                            log=lambda line: print(line, flush=True), deadline=deadline)
  except runner.CellFailed as e:
    failed = e
    rows = [row for row in (runner.read_done(workdir / c.name) for c in cells) if row]
  if rows:
    (workdir / report.TABLE_FILE).write_text(report.render_table(study, scale_name, rows))
    figure = report.plot(study, scale_name, rows, workdir / f'{study.name}.png')
    print(f'Wrote {workdir / runner.RESULTS_FILE}, {workdir / report.TABLE_FILE}'
          + (f' and {figure}' if figure else '') + '.', flush=True)
  if failed:
    sys.exit(f'ERROR ({type(failed).__name__}): {failed}')


if __name__ == '__main__':
  cli.run(main)
