"""What the ``experiments`` command lines share: distributed flags and clear failures.

``run(main)`` replaces ``absl.app.run(main)``: it turns a misspelt
``--config.x.y=...`` override into a one-line flag error that names the field and
suggests the right one (instead of a traceback), and turns the errors a user
can fix (config, checkpoint, data, divergence) into one clear message and exit
status 1. A run stopped by SIGTERM (its checkpoint saved) exits with 143.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable, List, Sequence

from absl import app, flags
from absl import logging as absl_logging

from rattn.data import DatasetNotFoundError
from rattn.train import distributed
from rattn.train.plan import ConfigError
from rattn.train.checkpoint import CheckpointError
from rattn.train.trainer import TrainingDiverged, TrainingPreempted

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

_QUOTED = re.compile(r"""["']([^"'\\]+)["']""")
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def initialize_distributed() -> bool:
  """Starts jax.distributed per the flags/environment; call first thing in ``main``."""
  return distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)


def config_override_message(error: Exception, argv: Sequence[str]) -> str:
  """What to tell the user when an override names a field the (locked) config lacks.

  ml_collections says only which key is missing (and maybe the closest one);
  this finds the flag that named it and spells out the corrected flag.
  """
  text = str(error).replace("\\'", "'").replace('\\n', '\n')
  names = _QUOTED.findall(text)
  field = names[0] if names else text
  suggestion = _DID_YOU_MEAN.search(text)
  flags_given = [a.split('=')[0] for a in argv if a.startswith('--config.')]
  offending = [f for f in flags_given if field in f.split('.')[1:]]
  if not offending:
    hint = f' Did you mean {suggestion.group(1)!r}?' if suggestion else ''
    return f'the config has no field {field!r}.{hint}'
  parts = offending[0].split('.')
  hint = ' Check the spelling against the config file.'
  if 'model_kwargs' in parts:
    hint += (' model_kwargs holds the keyword arguments that the config file declares; '
             'declare a new one there (config.model_kwargs = dict(...)).')
  if suggestion:
    parts[parts.index(field, 1)] = suggestion.group(1)
    hint = f' Did you mean {".".join(parts)}?'
  return (f'{offending[0]}: the config has no field {field!r}.{hint} (Configs are locked so '
          'that a misspelt override fails instead of being silently ignored.)')


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with ml_collections' override errors reported like flag errors."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    sys.stderr.write(f'FATAL Flags parsing error: {config_override_message(e, argv)}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)


class _HideLibraryInfo(logging.Filter):
  """Drops orbax's, grain's and tfds's INFO lines (dozens per checkpoint); keeps warnings."""
  _LIBRARIES = ('/orbax/', '/grain/', '/tensorflow_datasets/')

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or not any(lib in record.pathname for lib in self._LIBRARIES))


def run(main: Callable[[List[str]], None]) -> None:
  """``app.run(main)`` with clear messages (and exit status 1) for errors a user can fix."""
  def guarded(argv: List[str]) -> None:
    try:
      main(argv)
    except TrainingPreempted as e:
      sys.stderr.write(f'{e}\n')
      sys.exit(PREEMPTED_EXIT_STATUS)
    except (ConfigError, CheckpointError, TrainingDiverged, DatasetNotFoundError,
            FileNotFoundError) as e:
      sys.exit(f'ERROR ({type(e).__name__}): {e}')

  absl_logging.get_absl_handler().addFilter(_HideLibraryInfo())
  app.run(guarded, flags_parser=parse_flags)
