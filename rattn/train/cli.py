"""What the ``experiments`` command lines share: one flag convention and clear failures.

Every command is an absl app (flags, ``--helpshort``) run with ``run(main)``
instead of ``absl.app.run(main)``: a misspelt ``--config.x.y=...`` override
becomes a one-line flag error that names the field and suggests the right one
(instead of a traceback), and the errors a user can fix (a bad flag, config,
checkpoint, data, divergence) end in one clear message and exit status 1. A run
stopped by SIGTERM (its checkpoint saved) exits with 143, by Ctrl-C with 130. ``call(main, argv)``
runs a command's main the same way inside this process (tests, notebooks).

A command defines its own flags in its own registry, ``FLAGS = command_flags()``
(``flags.DEFINE_*(..., flag_values=FLAGS)``), and marks its main with
``@command(FLAGS)``. They join absl's global flags (where ``--config``,
``--workdir`` and absl's own live) only while that command parses and runs, so
every command module can be imported into one process (a notebook, a test
session) although several define a flag of the same name (``--model``,
``--batch_size``, ``--data_dir``, ``--step``, ``--split``), each with its own
default and help.

``train_main`` is the main of both training commands, ``experiments.cifar`` and
``experiments.imagenet``.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
import re
import runpy
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from rattn.convert import ConversionError
from rattn.data import DataConfigError, DatasetNotFoundError
from rattn.train import distributed
from rattn.train.checkpoint import CheckpointError
from rattn.train.checkpoint import write_failure
from rattn.train.plan import ConfigError
from rattn.train.trainer import TrainingDiverged, TrainingPreempted, train_and_evaluate
from rattn.train.workdir import WorkdirError


class _ConfigFileParser(flags.ArgumentParser):
  """ml_collections' --config parser (wrapped), with a config file that cannot be loaded
  reported in one line (absl shows it as a flag error) instead of a traceback."""

  def __init__(self, parser: flags.ArgumentParser):
    self._parser = parser

  def flag_type(self) -> str:
    return self._parser.flag_type()

  def parse(self, argument: str) -> Any:
    file = argument.split(':', 1)[0]
    if not os.path.isfile(file):
      what = 'is a directory' if os.path.isdir(file) else 'does not exist'
      raise ValueError(f'{file} {what} (from {os.getcwd()}): give a config file, e.g. '
                       'experiments/configs/tiny.py, or NAME.py:ARGUMENT for a config that '
                       'takes one.')
    try:
      return self._parser.parse(argument)
    except SyntaxError as e:
      raise ValueError(f'{file} has a syntax error, line {e.lineno}: {e.msg}: '
                       f'{(e.text or "").strip()!r}. Fix the file and rerun.') from None
    except ValueError as e:  # raised by get_config(ARGUMENT); ml_collections adds its trace
      raise ValueError(str(e.__context__ or e)) from None


_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, experiments/configs/NAME.py[:ARG]; fields can be '
    'overridden with --config.FIELD=VALUE.', lock_config=True)
flags.FLAGS['config'].parser = _ConfigFileParser(flags.FLAGS['config'].parser)
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'The run\'s directory: checkpoints and metrics (rerun with it to '
    'resume); what experiments.evaluate and experiments.visualize read.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', distributed.MODES,
    "Multi-process start-up: 'auto' initialises jax.distributed when the flags below, "
    "JAX_COORDINATOR_ADDRESS or a cluster manager (SLURM, Open MPI, TPU pod) say the run "
    "spans several processes; 'on' always does (JAX auto-detects the cluster); 'off' never.")
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')

# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: the job did not
# finish, and a scheduler that requeues preempted jobs recognises it.
PREEMPTED_EXIT_STATUS = 143
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT: Ctrl-C (the step is checkpointed first)

_QUOTED = re.compile(r"""["']([^"'\\]+)["']""")
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def initialize_distributed() -> bool:
  """Starts jax.distributed per the flags/environment; call first thing in ``main``."""
  return distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)


# Names other training code uses for a field, by the field's own leaf name: a hint for an
# override that names a field the config lacks.
_OTHER_NAMES = {
    'base_lr': ('learning_rate', 'lr', 'base_learning_rate', 'initial_lr', 'init_lr', 'max_lr'),
    'num_train_steps': ('epochs', 'num_epochs', 'steps', 'train_steps', 'num_steps',
                        'max_steps', 'total_steps', 'iterations', 'max_iter', 'iters'),
    'boundaries': ('milestones', 'lr_steps', 'decay_steps', 'lr_boundaries', 'steps_at'),
    'decay_factor': ('gamma', 'lr_decay', 'decay_rate', 'lr_gamma'),
    'warmup_steps': ('warmup', 'warmup_iters', 'warmup_epochs', 'warm_up'),
    'weight_decay': ('wd', 'l2', 'decay', 'l2_reg'),
    'batch_size': ('bs', 'train_batch_size', 'global_batch_size', 'per_device_batch_size'),
    'eval_batch_size': ('test_batch_size', 'val_batch_size'),
    'model': ('arch', 'architecture', 'network', 'net', 'model_name'),
    'label_smoothing': ('smoothing', 'smooth'),
    'mixup_alpha': ('mixup',),
    'num_workers': ('workers', 'worker_count', 'data_workers'),
    'image_size': ('img_size', 'input_size', 'resolution', 'crop_size'),
    'label_noise': ('noise', 'noise_rate', 'noisy_rate'),
    'dataset': ('dataset_name', 'data_name'),
    'seed': ('random_seed', 'rng_seed'),
    'checkpoint_every': ('save_every', 'ckpt_every', 'save_interval', 'checkpoint_interval'),
    'eval_every': ('eval_interval', 'val_every', 'test_every'),
    'log_every': ('log_interval', 'print_every', 'log_freq'),
}


def _leaf_paths(node: Any, prefix: str = '') -> List[str]:
  """Every dotted path to a non-section field of a config (sections recursed into)."""
  paths = []
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict) and key != 'model_kwargs':
      paths += _leaf_paths(value, f'{prefix}{key}.')
    else:
      paths.append(f'{prefix}{key}')
  return paths


def _config_file_paths(argv: Sequence[str]) -> List[str]:
  """The field paths of the config file that ``argv``'s --config names, before overrides;
  [] if it cannot be read."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
  if not spec:
    return []
  file, sep, argument = spec.partition(':')
  try:
    get_config = runpy.run_path(file)['get_config']
    return _leaf_paths(get_config(argument) if sep else get_config())
  except Exception:  # pylint: disable=broad-except  # only the hint is lost
    return []


def closest_field(given: str, paths: Sequence[str], in_section: Optional[str] = None
                  ) -> Optional[str]:
  """The config field most likely meant by the path ``given``, searched over the whole
  config (``paths``): the same name in another section, then ``in_section`` (the closest
  name in the same section, per ml_collections), then a name other code uses for a
  field, then the closest name anywhere; None without a candidate."""
  name = given.rsplit('.', 1)[-1]
  same = [p for p in paths if p.rsplit('.', 1)[-1] == name and p != given]
  if same:
    return same[0]
  if in_section:
    return in_section
  for field, others in _OTHER_NAMES.items():
    if name.lower() in others:
      named = [p for p in paths if p.rsplit('.', 1)[-1] == field]
      if named:
        return named[0]
  leaves = {p.rsplit('.', 1)[-1]: p for p in paths}
  close = difflib.get_close_matches(name, list(leaves), n=1, cutoff=0.75)
  return leaves[close[0]] if close else None


def config_override_message(error: Exception, argv: Sequence[str],
                            paths: Optional[Sequence[str]] = None) -> str:
  """What to tell the user when an override names a field the (locked) config lacks.

  ml_collections says only which key is missing (and maybe the closest one in
  the same section); this finds the flag that named it, searches the whole
  config (``paths``, by default the config file's fields) for the field meant
  and spells out the corrected flag.
  """
  text = str(error).replace("\\'", "'").replace('\\n', '\n')
  names = _QUOTED.findall(text)
  field = names[0] if names else text
  suggestion = _DID_YOU_MEAN.search(text)
  given = [a for a in argv if a.startswith('--config.')]
  offending = [a for a in given if field in a.split('=')[0].split('.')[1:]]
  paths = _config_file_paths(argv) if paths is None else paths
  if not offending:
    meant = closest_field(field, paths, suggestion.group(1) if suggestion else None)
    hint = f' Did you mean {meant!r}?' if meant else ''
    return f'the config has no field {field!r}.{hint}'
  name, sep, value = offending[0].partition('=')
  parts = name.split('.')
  path = '.'.join(parts[1:parts.index(field, 1) + 1])
  in_section = None
  if suggestion:
    in_section = '.'.join(parts[1:parts.index(field, 1)] + [suggestion.group(1)])
  meant = closest_field(path, paths, in_section) if 'model_kwargs' not in parts else in_section
  hint = ' Check the spelling against the config file.'
  if 'model_kwargs' in parts and not meant:
    hint += (' model_kwargs holds the keyword arguments that the config file declares; '
             'declare a new one there (config.model_kwargs = dict(...)).')
  if meant:
    rest = parts[parts.index(field, 1) + 1:]
    if 'epoch' in field.lower():  # another unit: the value would not carry over
      hint = f' Did you mean --config.{".".join([meant] + rest)} (counted in steps, not epochs)?'
    else:
      hint = f' Did you mean --config.{".".join([meant] + rest)}{sep}{value}?'
  return (f'{name}: the config has no field {field!r}.{hint} (Configs are locked so '
          'that a misspelt override fails instead of being silently ignored.)')


def _is_sequence_literal(text: str) -> bool:
  try:
    return isinstance(ast.literal_eval(text), (tuple, list))
  except (ValueError, SyntaxError):
    return False


def _config_file_value(path: str) -> Optional[Any]:
  """``path``'s value in the config file itself (before overrides); None if unknown."""
  try:
    config = runpy.run_path(config_flags.get_config_filename(flags.FLAGS['config']))
    node = config['get_config']()
    for part in path.split('.'):
      node = node[part]
    return node
  except Exception:  # pylint: disable=broad-except  # only the message's detail is lost
    return None


def scalar_for_sequence_message(argv: Sequence[str]) -> Optional[str]:
  """What to tell the user when a tuple/list field got a single value (which ml_collections
  silently wraps into a one-element tuple); None when every override is fine."""
  if 'config' not in flags.FLAGS or not any(a.startswith('--config.') for a in argv):
    return None
  parsed = config_flags.get_override_values(flags.FLAGS['config'])
  for arg in argv:
    name, sep, raw = arg.partition('=')
    path = name[len('--config.'):]
    if (name.startswith('--config.') and sep and isinstance(parsed.get(path), (tuple, list))
        and not _is_sequence_literal(raw)):
      before = _config_file_value(path)
      now = f' (the config file gives {before!r})' if before is not None else ''
      example = f"'{tuple(before)!r}'" if before else "'(4, 8, 16)'"
      return (f'{arg}: {path} is a tuple{now}, and a single value would silently become the '
              f'one-element {tuple(parsed[path])!r}. Give the whole tuple, e.g. {name}='
              f"{example}, or {name}='({raw},)' if one element is meant.")
  return None


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with ml_collections' override errors reported like flag errors."""
  try:
    rest = app.parse_flags_with_usage(argv)
    problem = scalar_for_sequence_message(argv)
  except (AttributeError, KeyError) as e:
    problem = config_override_message(e, argv)
  if problem:
    sys.stderr.write(f'FATAL Flags parsing error: {problem}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)
  return rest


class _HideLibraryInfo(logging.Filter):
  """Drops orbax's, grain's and tfds's INFO lines (dozens per checkpoint); keeps warnings."""
  _LIBRARIES = ('/orbax/', '/grain/', '/tensorflow_datasets/')

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or not any(lib in record.pathname for lib in self._LIBRARIES))


class _HideHarmlessWarnings(logging.Filter):
  """Drops orbax warnings about states it handles itself: a partial save left by a killed
  run (removed), a step without step metadata, and a manager opened read-only on purpose."""
  _MESSAGES = ('Attempted to create temporary directory %s which already exists.',
               'Metadata file does not exist: %s', 'Given directory is read only=%s')

  def filter(self, record: logging.LogRecord) -> bool:
    return not ('/orbax/' in record.pathname
                and any(str(record.msg).startswith(m) for m in self._MESSAGES))


class _HideReportedWriteErrors(logging.Filter):
  """Drops orbax's error logs (each with a traceback, several per save) of a failed write:
  the Checkpointer reports it in one paragraph (CheckpointWriteError)."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ('/orbax/' in record.pathname and record.levelno >= logging.ERROR and (
        (error is not None and write_failure(error)) or write_failure(
            Exception(record.getMessage()))))


def _hide_closed_loop_errors(default_hook: Callable[[Any], None]) -> Callable[[Any], None]:
  """sys.unraisablehook without the 'Event loop is closed' errors that tensorstore's late
  callbacks raise after orbax has given up reading a damaged checkpoint (one per array)."""
  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      default_hook(unraisable)
  return hook


def require(*names: str) -> None:
  """Fails with a usage error unless every flag in ``names`` was given."""
  missing = [f'--{n}' for n in names if flags.FLAGS[n].value is None]
  if missing:
    raise app.UsageError(f'{", ".join(missing)} must be given.')


_USER_ERRORS = (ConfigError, DataConfigError, WorkdirError, CheckpointError, TrainingDiverged,
                DatasetNotFoundError, FileNotFoundError, app.UsageError, ConversionError)


def _guarded(main: Callable[[List[str]], Any]) -> Callable[[List[str]], Any]:
  def guarded(argv: List[str]) -> Any:
    try:
      return main(argv)
    except TrainingPreempted as e:
      sys.stderr.write(f'{e}\n')
      sys.exit(getattr(e, 'exit_status', PREEMPTED_EXIT_STATUS))
    except KeyboardInterrupt:  # where no handler saves first (e.g. a multi-process run)
      sys.stderr.write('Interrupted (Ctrl-C): stopped without saving anything more. A '
                       'training run resumes from its latest checkpoint when the same command '
                       'is rerun.\n')
      sys.exit(INTERRUPTED_EXIT_STATUS)
    except _USER_ERRORS as e:
      name = 'flags' if isinstance(e, app.UsageError) else type(e).__name__
      hint = ' (Pass --helpshort to see the flags.)' if isinstance(e, app.UsageError) else ''
      sys.stderr.write(f'ERROR ({name}): {e}{hint}\n')
      sys.exit(1)

  return guarded


def command_flags() -> flags.FlagValues:
  """A command's own flag registry (see the module docstring)."""
  return flags.FlagValues()


def command(flag_values: flags.FlagValues) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Marks a command's main as reading the flags of ``flag_values`` (its ``command_flags()``)."""
  def mark(main: Callable[..., Any]) -> Callable[..., Any]:
    main.command_flags = flag_values
    return main
  return mark


@contextlib.contextmanager
def _command_flags_joined(main: Callable[..., Any]) -> Iterator[None]:
  """``main``'s own flags in absl's global registry (for parsing and ``--helpshort``) while
  the block runs, then out of it again, so that another command's flags of the same name
  can join later."""
  own = getattr(main, 'command_flags', None)
  if own is None:
    yield
    return
  flags.FLAGS.append_flag_values(own)
  # Parsing sets the shared Flag objects' values; ``own``'s holders may read them then.
  own.mark_as_parsed()
  for module, module_flags in own.flags_by_module_dict().items():
    for flag in module_flags:
      flags.FLAGS.register_flag_by_module(module, flag)
  for module, module_flags in own.key_flags_by_module_dict().items():
    for flag in module_flags:
      flags.FLAGS.register_key_flag_for_module(module, flag)
  try:
    yield
  finally:
    flags.FLAGS.remove_flag_values(own)


def run(main: Callable[[List[str]], Any]) -> None:
  """``app.run(main)`` with clear messages (and exit status 1) for errors a user can fix."""
  absl_logging.get_absl_handler().addFilter(_HideLibraryInfo())
  absl_logging.get_absl_handler().addFilter(_HideHarmlessWarnings())
  absl_logging.get_absl_handler().addFilter(_HideReportedWriteErrors())
  sys.unraisablehook = _hide_closed_loop_errors(sys.unraisablehook)
  with _command_flags_joined(main):
    app.run(_guarded(main), flags_parser=parse_flags)


def call(main: Callable[[List[str]], Any], argv: Sequence[str]) -> Any:
  """``main``'s result for the command-line arguments ``argv`` (no program name), in-process.

  Flags are parsed anew (those not in ``argv`` take their defaults) and user
  errors end as ``run`` ends them (a message on stderr, SystemExit 1).
  """
  with _command_flags_joined(main):
    flags.FLAGS.unparse_flags()
    return _guarded(main)(parse_flags(['python', *argv]))


def train_main(argv: List[str]) -> None:
  """Trains (or resumes) ``--config`` in ``--workdir``: experiments.cifar and .imagenet."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  require('config', 'workdir')
  initialize_distributed()
  train_and_evaluate(_CONFIG.value, WORKDIR.value)
