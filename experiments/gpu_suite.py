r"""One command for the project's GPU evidence: benchmarks and studies into one folder.

  bash benchmarks/gpu.sh OUT                        # on a GPU host: ~9 min, one GPU
  python -m experiments.gpu_suite --out OUT         # the same without the wheel set-up
  python -m experiments.gpu_suite --out OUT --dry_run   # the whole suite on a CPU, tiny

Three phases, each a set of ordinary commands (their logs in OUT/logs/):

1. bench: every configuration of ``BENCH`` (model, batch, dtype) is one
   ``python -m experiments.bench`` process. ``--compile_parallel`` of them run
   side by side: they compile concurrently on the host's cores, then each times
   its steps alone on the device, holding a lock file (``--device_lock``). So
   the compile times are those of N compilations sharing the host (each record
   says N), the step times those of a device to itself.
2. studies: ``arl_vs_nal`` and ``ran_vs_resnet`` at the gpu scale, side by side,
   ``--study_parallel`` cells each, seed by seed within what is left of
   ``--budget_s`` (``experiments.study --budget_s``: seed 1 of every config
   always runs, later seeds only while they are expected to end in time).
   Cells share a persistent compilation cache (OUT/jax_cache), so a later
   seed of a config reuses the first one's executables.
3. report: OUT/table.md (the tables), OUT/records.jsonl (every benchmark
   record and every study cell's row, each with the device, versions and
   commit), OUT/profiles.md (the op kinds that take each profiled step's time;
   the traces in OUT/profiles/) and OUT/suite.json (the plan, phase times,
   what failed or did not fit).

``--dry_run`` runs the same three phases on the CPU with stand-in models
(``DRY_BENCH``), batches of 1-4, 2 timed steps, and one cell of each study at
its smoke scale with a budget of 0 (seed 1 runs, seed 2 is left out): it checks the command end to end (tests/test_gpu_suite.py), not
the numbers. Nothing here installs anything; on a GPU host the packages JAX
lacks come from wheels (``benchmarks/gpu.sh``, ``../shared/gpu/README.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags
from etils import epath

from rattn.bench import report
from rattn.models.summary import format_table
from rattn.train import cli

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
_OUT = flags.DEFINE_string('out', None, 'The output folder (created; reuse one only to '
                           'rerun the studies: finished cells are kept).', flag_values=FLAGS)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Run the whole suite on the CPU with stand-in '
                             'models, tiny batches and steps and the smoke scale (a test of '
                             'the command, not a measurement).', flag_values=FLAGS)
_BUDGET_S = flags.DEFINE_float(
    'budget_s', None, 'Wall-time budget of the whole suite in seconds (default 540, dry run '
    '0): the studies start later seeds only while they are expected to end within it.',
    lower_bound=0, flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer('seeds', None, 'The most seeds a study config gets (the '
                              'budget decides how many run); default 8, dry run 2.',
                              lower_bound=1, flag_values=FLAGS)
_COMPILE_PARALLEL = flags.DEFINE_integer(
    'compile_parallel', None, 'Benchmark processes side by side (compiling concurrently, '
    'timing one at a time); default 4, dry run 2.', lower_bound=1, flag_values=FLAGS)
_STUDY_PARALLEL = flags.DEFINE_integer(
    'study_parallel', None, 'Cells of each study side by side on the device; default 4 (8 '
    'for the two studies), dry run 1.', lower_bound=1, flag_values=FLAGS)
_PHASES = flags.DEFINE_list('phases', ['bench', 'studies'], 'Phases to run (the report '
                            'always follows): bench, studies.', flag_values=FLAGS)

DEFAULT_BUDGET_S = 540.0
REPORT_MARGIN_S = 10.0  # kept back from the studies' budget for the report
STUDIES = ('arl_vs_nal', 'ran_vs_resnet')
# The facts of the machine that the bench records carry and the study rows get from them.
MACHINE_KEYS = ('platform', 'device_kind', 'device_count', 'cpu_model', 'cpu_cores', 'hostname',
                'python_version', 'jax_version', 'jaxlib_version', 'platform_version',
                'flax_version', 'optax_version')


@dataclasses.dataclass(frozen=True)
class BenchRun:
  """One ``experiments.bench`` process: a model at one batch size and dtype."""
  model: str
  batch_size: int
  dtype: str
  eval: bool = False  # also time the eval step (one more compilation)
  profile: bool = False  # also trace 3 steps and keep the op kinds' shares
  stands_for: Optional[str] = None  # dry run: the GPU suite's model this one replaces

  @property
  def tag(self) -> str:
    return f'{self.model}_{self.dtype}_b{self.batch_size}'

  def argv(self, out: epath.Path, steps: int, warmup: int) -> List[str]:
    args = ['-m', 'experiments.bench', '--model', self.model, '--batch_size',
            str(self.batch_size), '--dtype', self.dtype, '--steps', str(steps), '--warmup',
            str(warmup), '--json_out', str(out / 'bench' / f'{self.tag}.jsonl'),
            '--device_lock', str(out / 'bench' / 'device.lock')]
    if not self.eval:
      args.append('--no_eval')
    if self.profile:
      args += ['--profile', str(out / 'profiles' / self.tag)]
    return args


def _cifar_and_imagenet(cifar: Sequence[str], imagenet: Sequence[str], sweep: Sequence[int],
                        cifar_batch: int, imagenet_batch: int,
                        stands_for: Optional[Dict[str, str]] = None) -> tuple:
  """The plan's shape: the CIFAR pair in bf16 at each batch of ``sweep`` and in float32 at
  ``cifar_batch``; the ImageNet pair in both dtypes at ``imagenet_batch``. The reference
  batches time the eval step too, their bf16 runs are profiled."""
  names = stands_for or {}
  # Each model's reference run first, then the rest: the first processes started compile
  # different models, and the later ones of a model find its initialisation compiled.
  first = [BenchRun(m, cifar_batch, 'bfloat16', eval=True, profile=True,
                    stands_for=names.get(m)) for m in cifar]
  first += [BenchRun(m, imagenet_batch, 'bfloat16', eval=True, profile=True,
                     stands_for=names.get(m)) for m in imagenet]
  rest = [BenchRun(m, b, 'bfloat16', stands_for=names.get(m))
          for b in sweep if b != cifar_batch for m in cifar]
  rest += [BenchRun(m, cifar_batch, 'float32', eval=True, stands_for=names.get(m))
           for m in cifar]
  rest += [BenchRun(m, imagenet_batch, 'float32', eval=True, stands_for=names.get(m))
           for m in imagenet]
  return tuple(first + rest)


# Attention-92 and pre-act ResNet-164 (same depth, CIFAR 32x32), Attention-56 and
# ResNet-50 (ImageNet 224).
BENCH = _cifar_and_imagenet(('ran92_cifar', 'preact_resnet164'), ('ran56', 'resnet50'),
                            sweep=(128, 256, 512), cifar_batch=256, imagenet_batch=128)
BENCH_STEPS, BENCH_WARMUP = 20, 3
# The dry run: one model that compiles in seconds on a CPU in each of the two places (the
# initialisation of a RAN, or of any model in bfloat16, compiles for minutes on a busy
# 2-core CPU).
DRY_BENCH = _cifar_and_imagenet(
    ('preact_resnet20',), ('resnet18',), sweep=(2, 4), cifar_batch=2, imagenet_batch=1,
    stands_for={'preact_resnet20': 'ran92_cifar, preact_resnet164',
                'resnet18': 'ran56, resnet50'})
DRY_STEPS, DRY_WARMUP = 2, 1
# The studies: scale and study options. The dry run keeps one cell of each study: the
# smoke Attention-56 with attention residual learning, and the smoke pre-act ResNet-20.
STUDY_ARGS = {'gpu': {'arl_vs_nal': [], 'ran_vs_resnet': []},
              'smoke': {'arl_vs_nal': ['--only=depth=ran56', '--only=learning=arl'],
                        'ran_vs_resnet': ['--only=model=preact20']}}


def git_commit(root: epath.Path) -> Dict[str, Any]:
  """The checkout's commit and whether it has uncommitted changes; on a host without the
  git history (a copied tree) ``$RATTN_GIT_COMMIT`` names it."""
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, text=True,
                          capture_output=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                                cwd=root, text=True, capture_output=True,
                                check=True).stdout.strip())
    return {'git_commit': head, 'git_dirty': dirty}
  except (OSError, subprocess.CalledProcessError):
    return {'git_commit': os.environ.get('RATTN_GIT_COMMIT') or None, 'git_dirty': None}


def _usage_error(message: str):
  sys.exit(f'ERROR: {message}')


def _check_data(scale: str) -> None:
  """Stops before any GPU time is spent when a study's dataset is not in the data dir."""
  from experiments.studies import STUDIES as ALL  # pylint: disable=g-import-not-at-top
  data_dir = os.environ.get('TFDS_DATA_DIR')
  for name in STUDIES:
    config_file = ALL[name].scales[scale].config.split(':')[0]
    module = importlib.import_module(config_file.removesuffix('.py').replace('/', '.'))
    dataset = module.get_config().data.dataset
    if not data_dir or not epath.Path(data_dir, dataset).is_dir():
      _usage_error(f'The {name} study needs the tfds dataset {dataset!r} in $TFDS_DATA_DIR '
                   f'(now {data_dir or "unset"}). Copy it there first (bash '
                   f'../shared/gpu/wheels.sh .whl {dataset} puts it in .data; benchmarks/gpu.sh '
                   'sets TFDS_DATA_DIR=.data), or run with --phases=bench.')


def _check_accelerator() -> None:
  """Stops a full suite on a host without a GPU/TPU (it would run for hours on a CPU)."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  found = (platforms.split(',')[0] not in ('cpu', '') if platforms else
           bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*')))
  if not found:
    _usage_error('No GPU or TPU found on this host (no /dev/nvidia*, /dev/accel*, or '
                 f'JAX_PLATFORMS={platforms!r}): the full suite is sized for one. Run '
                 '--dry_run to check the command on a CPU.')


class _Pool:
  """Child processes with their logs; stopped cleanly if this command stops."""

  def __init__(self):
    self.running: Dict[str, Any] = {}  # name -> (process, log file, start, stop signal)

  def start(self, name: str, argv: Sequence[str], log_path: epath.Path, env: Dict[str, str],
            stop_signal: int = signal.SIGTERM) -> None:
    log = open(log_path, 'w')
    process = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                               env=env)
    self.running[name] = (process, log, time.time(), stop_signal)

  def finished(self) -> List[tuple]:
    """(name, exit status, wall seconds) of the children that ended since the last call."""
    done = []
    for name, (process, log, start, _) in list(self.running.items()):
      if process.poll() is not None:
        log.close()
        del self.running[name]
        done.append((name, process.returncode, time.time() - start))
    return done

  def stop(self) -> None:
    # A study stops on SIGINT (it then stops its cells at a checkpoint), a benchmark on SIGTERM.
    for process, _, _, stop_signal in self.running.values():
      process.send_signal(stop_signal)
    for process, log, _, _ in self.running.values():
      process.wait()
      log.close()
    self.running.clear()


def _child_env(dry_run: bool, **extra: str) -> Dict[str, str]:
  env = dict(os.environ)
  root = str(epath.Path(__file__).parent.parent)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (env.get('PYTHONPATH'), root) if p)
  if dry_run:
    env['JAX_PLATFORMS'] = 'cpu'
  env.update(extra)
  return env


def _log(message: str, t0: float) -> None:
  print(f'[{time.time() - t0:6.0f} s] {message}', flush=True)


def run_bench(plan: Sequence[BenchRun], out: epath.Path, *, parallel: int, steps: int,
              warmup: int, dry_run: bool, t0: float) -> Dict[str, Any]:
  """Runs the benchmark processes, ``parallel`` at a time; returns what ran and failed."""
  (out / 'bench').mkdir(parents=True, exist_ok=True)
  # A persistent compilation cache of this phase only, emptied first: it shares a model's
  # initialisation between its runs, while no train or eval step (each run's own shapes
  # and dtype, the compile time reported) can be found in it.
  cache = out / 'bench' / 'jax_cache'
  if cache.exists():
    cache.rmtree()
  # Side by side, each process takes device memory as it needs it instead of 75% up front.
  env = _child_env(dry_run, JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1',
                   **({'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'} if parallel > 1 else {}))
  pool, todo, result = _Pool(), list(plan), {'ran': {}, 'failed': {}}
  try:
    while todo or pool.running:
      while todo and len(pool.running) < parallel:
        run = todo.pop(0)
        pool.start(run.tag, run.argv(out, steps, warmup), out / 'logs' / f'bench_{run.tag}.log',
                   env)
        _log(f'bench start {run.tag}', t0)
      time.sleep(0.2)
      for tag, status, wall in pool.finished():
        key = 'ran' if status == 0 else 'failed'
        result[key][tag] = round(wall, 1)
        _log(f'bench {"done" if status == 0 else f"FAILED (exit {status})"} {tag} '
             f'({wall:.0f} s; log: {out / "logs" / f"bench_{tag}.log"})', t0)
  except BaseException:
    pool.stop()
    raise
  return result


def run_studies(out: epath.Path, *, scale: str, seeds: int, budget_s: float, parallel: int,
                dry_run: bool, t0: float) -> Dict[str, Any]:
  """Runs the studies side by side within ``budget_s``; returns each one's exit and wall."""
  # The cells take device memory as they need it (the runner also caps each one's share),
  # and share compiled executables through a persistent cache.
  env = _child_env(dry_run, XLA_PYTHON_CLIENT_PREALLOCATE='false',
                   JAX_COMPILATION_CACHE_DIR=str(out / 'jax_cache'),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1')
  pool, result = _Pool(), {}
  try:
    for name in STUDIES:
      argv = ['-m', 'experiments.study', name, f'--workdir={out / "studies" / name}',
              f'--scale={scale}', f'--seeds={seeds}', f'--budget_s={budget_s:.0f}',
              f'--parallel={parallel}', *STUDY_ARGS[scale][name]]
      pool.start(name, argv, out / 'logs' / f'study_{name}.log', env, signal.SIGINT)
      _log(f'study start {name} ({scale} scale, up to {seeds} seeds, {budget_s:.0f} s budget)',
           t0)
    while pool.running:
      time.sleep(0.5)
      for name, status, wall in pool.finished():
        result[name] = {'exit_status': status, 'wall_s': round(wall, 1)}
        _log(f'study {"done" if status == 0 else f"FAILED (exit {status})"} {name} '
             f'({wall:.0f} s; log: {out / "logs" / f"study_{name}.log"})', t0)
  except BaseException:
    pool.stop()
    raise
  return result


def _read_jsonl(path: epath.Path) -> List[Dict[str, Any]]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect_records(out: epath.Path, plan: Sequence[BenchRun], suite: Dict[str, Any],
                    parallel: int) -> List[Dict[str, Any]]:
  """Every bench record and study row, each with the machine, versions, commit and suite."""
  shared = {'suite': suite['suite'], 'suite_date': suite['date'], **suite['git']}
  records = []
  for run in plan:
    path = out / 'bench' / f'{run.tag}.jsonl'
    for record in (_read_jsonl(path) if path.exists() else []):
      commit = record.get('git_commit') or shared['git_commit']  # the bench's own, where known
      record.update(shared, git_commit=commit, concurrent_compiles=parallel,
                    stands_for=run.stands_for)
      records.append(record)
  machine = {k: records[0][k] for k in MACHINE_KEYS if records and k in records[0]}
  for name in STUDIES:
    path = out / 'studies' / name / 'results.jsonl'
    for row in (_read_jsonl(path) if path.exists() else []):
      records.append({'kind': 'study', **row, **machine, **shared})
  return records


def _rate(value: Optional[float]) -> str:
  if not value:
    return '-'
  return f'{value:,.0f}' if value >= 100 else f'{value:.3g}'


def _mib(value: Optional[float]) -> str:
  return f'{value / 2**20:,.0f}' if value is not None else 'n/a'


def headline_table(records: Sequence[Dict[str, Any]]) -> str:
  """One row per benchmark: the figures the GPU table in the README shows."""
  rows = []
  for r in (r for r in records if r['kind'] == 'model'):
    rows.append({
        'model': r['model'] + (f" (for {r['stands_for']})" if r.get('stands_for') else ''),
        'image': r['image_size'], 'batch': r['batch_size'], 'dtype': r['dtype'],
        'train img/s': _rate(r['train_images_per_s']),
        'pipelined img/s': _rate(r['train_images_per_s_pipelined']),
        'eval img/s': _rate(r.get('eval_images_per_s')),
        'MFU': f"{r['mfu']:.1%}" if r.get('mfu') is not None else 'n/a',
        'compile s': f"{r['compile_s']:.1f}",
        'device peak MiB': _mib(r.get('device_peak_bytes')),
        'XLA plan MiB': _mib(r.get('xla_train_bytes')),
    })
  return format_table(rows, list(rows[0])) if rows else '(no benchmark finished)'


def profiles_text(records: Sequence[Dict[str, Any]]) -> str:
  parts = [report.profile_table(r) for r in records
           if r['kind'] == 'model' and r.get('profile_top_ops')]
  return '\n\n'.join(parts) if parts else '(no profile was taken)'


def _study_section(out: epath.Path, name: str, rows: Sequence[Dict[str, Any]],
                   outcome: Optional[Dict[str, Any]]) -> str:
  table = out / 'studies' / name / 'table.md'
  seeds: Dict[str, int] = {}
  for row in rows:
    key = '_'.join(row['group'].values())
    seeds[key] = seeds.get(key, 0) + 1
  status = ('not run' if outcome is None else
            f"{'finished' if outcome['exit_status'] == 0 else 'FAILED'} in {outcome['wall_s']:.0f} s")
  low, high = min(seeds.values(), default=0), max(seeds.values(), default=0)
  counts = (f'{len(rows)} cell{"s" * (len(rows) != 1)}, '
            f'{low if low == high else f"{low}-{high}"} seed{"s" * (high != 1)} per config'
            if seeds else 'no finished cell')
  # The study's own table, its headings one level below this section's.
  text = table.read_text().strip() if table.exists() else '(no table)'
  text = '\n'.join('###' + line if line.startswith('#') else line for line in text.splitlines())
  return (f'### {name}\n\n{status}; {counts} (logs: logs/study_{name}.log, '
          f'studies/{name}/<cell>/train.log).\n\n{text}')


def write_report(out: epath.Path, records: Sequence[Dict[str, Any]],
                 suite: Dict[str, Any]) -> None:
  (out / 'records.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (out / 'profiles.md').write_text(f"# Where the train step's time goes\n\n"
                                   f'{profiles_text(records)}\n')
  (out / 'suite.json').write_text(json.dumps(suite, indent=2) + '\n')
  bench = [r for r in records if r['kind'] == 'model']
  machine = report.machine_line(bench[0]) if bench else 'no benchmark finished'
  failed = suite['bench'].get('failed', {})
  lines = [
      f"# {'Dry run (CPU, stand-in models; not a measurement)' if suite['dry_run'] else 'GPU suite'}"
      f": {bench[0]['device_kind'] if bench else '?'}",
      '',
      f"{machine}; commit {suite['git']['git_commit']}"
      f"{' (uncommitted changes)' if suite['git']['git_dirty'] else ''}; "
      f"`{suite['command']}`; {suite['wall_s']:.0f} s in all (budget {suite['budget_s']:.0f} s: "
      f"bench {suite['phase_s'].get('bench', 0):.0f} s, studies "
      f"{suite['phase_s'].get('studies', 0):.0f} s).",
      '',
      '## Train step',
      '',
      f"Synthetic device-resident batches, {suite['bench_steps']} timed steps after "
      f"{suite['bench_warmup']} untimed; {suite['compile_parallel']} benchmark processes "
      'compiled side by side (compile s is under that contention) and timed one at a time. '
      'MFU: 6 x MACs per image against the device\'s dense peak (rattn/bench/hardware.py). '
      'Every figure and more per run: records.jsonl.',
      '',
      headline_table(records),
      ''] + ([f"Failed (see logs/bench_<tag>.log): {', '.join(failed)}.", ''] if failed else []) + [
      'Where the time goes: profiles.md.',
      '',
      '## Studies',
      '']
  for name in STUDIES:
    rows = [r for r in records if r['kind'] == 'study' and r['study'] == name]
    lines += [_study_section(out, name, rows, suite['studies'].get(name)), '']
  (out / 'table.md').write_text('\n'.join(lines))


@cli.command(FLAGS)
def main(argv: Sequence[str]) -> None:
  """Runs the suite's phases and writes the report (call it with ``cli.call``)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not _OUT.value:
    raise app.UsageError('--out is required: the folder that receives the tables and records.')
  unknown = set(_PHASES.value) - {'bench', 'studies'}
  if unknown:
    raise app.UsageError(f'--phases: unknown {", ".join(sorted(unknown))}; use bench, studies.')
  t0 = time.time()
  dry_run = _DRY_RUN.value
  scale = 'smoke' if dry_run else 'gpu'
  if not dry_run:
    _check_accelerator()
  if 'studies' in _PHASES.value:
    _check_data(scale)
  budget_s = _BUDGET_S.value if _BUDGET_S.value is not None else (
      0.0 if dry_run else DEFAULT_BUDGET_S)
  plan = DRY_BENCH if dry_run else BENCH
  steps, warmup = (DRY_STEPS, DRY_WARMUP) if dry_run else (BENCH_STEPS, BENCH_WARMUP)
  compile_parallel = _COMPILE_PARALLEL.value or (2 if dry_run else 4)
  study_parallel = _STUDY_PARALLEL.value or (1 if dry_run else 4)
  seeds = _SEEDS.value or (2 if dry_run else 8)
  out = epath.Path(_OUT.value).absolute()
  (out / 'logs').mkdir(parents=True, exist_ok=True)
  root = epath.Path(__file__).parent.parent
  suite: Dict[str, Any] = {
      'suite': 'dry_run' if dry_run else 'gpu', 'dry_run': dry_run,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': ' '.join(['python -m experiments.gpu_suite', *sys.argv[1:]]),
      'git': git_commit(root), 'budget_s': budget_s, 'bench_steps': steps,
      'bench_warmup': warmup, 'compile_parallel': compile_parallel,
      'study_parallel': study_parallel, 'study_scale': scale, 'max_seeds': seeds,
      'bench_plan': [dataclasses.asdict(r) for r in plan], 'bench': {}, 'studies': {},
      'phase_s': {}}
  _log(f"GPU suite{' (dry run)' if dry_run else ''} into {out}: {len(plan)} benchmarks, "
       f'studies {", ".join(STUDIES)} ({scale} scale), budget {budget_s:.0f} s', t0)
  if 'bench' in _PHASES.value:
    start = time.time()
    suite['bench'] = run_bench(plan, out, parallel=compile_parallel, steps=steps,
                               warmup=warmup, dry_run=dry_run, t0=t0)
    suite['phase_s']['bench'] = round(time.time() - start, 1)
  if 'studies' in _PHASES.value:
    start = time.time()
    left = max(0.0, budget_s - (start - t0) - REPORT_MARGIN_S)
    suite['studies'] = run_studies(out, scale=scale, seeds=seeds, budget_s=left,
                                   parallel=study_parallel, dry_run=dry_run, t0=t0)
    suite['phase_s']['studies'] = round(time.time() - start, 1)
  suite['wall_s'] = round(time.time() - t0, 1)
  records = collect_records(out, plan, suite, compile_parallel)
  write_report(out, records, suite)
  _log(f'Wrote {out / "table.md"}, {out / "records.jsonl"} ({len(records)} records), '
       f'{out / "profiles.md"} and {out / "suite.json"}.', t0)
  failures = list(suite['bench'].get('failed', {})) + [
      name for name, outcome in suite['studies'].items() if outcome['exit_status'] != 0]
  if failures:
    sys.exit(f'ERROR: {len(failures)} part(s) failed: {", ".join(failures)}; the report has '
             f'the rest, the logs in {out / "logs"} say why.')


if __name__ == '__main__':
  cli.run(main)
