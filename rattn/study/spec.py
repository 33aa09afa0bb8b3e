"""What a study is: a grid of training configs times seeds, written down as data.

A :class:`Study` names its axes (e.g. depth x learning), each a tuple of
:class:`Option` s (a label, the config overrides it sets, and its x value when
the axis is the plot's x-axis). A :class:`Scale` says how big every run is
(base config file and overrides such as the step count), which options it
keeps, and the overrides an option needs at that scale only (at the ``cpu``
scale "ran" is a quarter-width Attention-56, at the ``gpu`` scale the
full-width Attention-92). :func:`expand` turns a study, a scale and a seed
count into :class:`Cell` s: one ordinary training command each.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# The config overrides' key that names the config file instead of a config field.
CONFIG_KEY = 'config'


@dataclasses.dataclass(frozen=True)
class Option:
  """One value of an axis: ``label`` (also part of the cell name) and its overrides."""
  label: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  x: Optional[float] = None  # position on the plot's x-axis, if this axis is the x-axis


@dataclasses.dataclass(frozen=True)
class Axis:
  name: str
  options: Tuple[Option, ...]


@dataclasses.dataclass(frozen=True)
class Scale:
  """How a study runs at one scale.

  config: the base config file (``experiments/configs/X.py[:ARG]``).
  overrides: ``--config.FIELD=VALUE`` for every cell (steps, eval interval...).
  option_overrides: extra overrides of one option label at this scale only.
  only: per axis, the option labels run at this scale (default: all).
  note: what the scale trains, for the table's header.
  seeds: seeds per cell unless --seeds says otherwise.
  accelerator_parallel: cells side by side on one accelerator (a CPU runs one at a time).
  """
  config: str
  overrides: Mapping[str, Any]
  option_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  only: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)
  note: str = ''
  seeds: int = 2
  accelerator_parallel: int = 4


@dataclasses.dataclass(frozen=True)
class Paper:
  """The paper's figures for a study: test error (%) per tuple of option labels."""
  source: str
  errors: Mapping[Tuple[str, ...], float]
  setting: str = ''  # what the paper trained, e.g. 'CIFAR-10, 160k steps'


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  claim: str  # the paper's claim this study tests
  axes: Tuple[Axis, ...]
  scales: Mapping[str, Scale]
  x_axis: Optional[str] = None  # the axis whose options carry x values (plotted)
  x_label: str = ''
  paper: Optional[Paper] = None
  # An option label whose cells the others are costed against: the table gains the
  # parameters and multiply-adds each cell adds to the cell with this option instead.
  baseline: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of a study: ``name`` is also its directory under the study's workdir."""
  name: str
  group: Tuple[str, ...]  # the option labels, one per axis (the cell without its seed)
  seed: int
  config: str
  overrides: Dict[str, Any]
  x: Optional[float] = None

  def argv(self, module: str, workdir: str) -> List[str]:
    """The training command line (without the interpreter)."""
    flags = [f'--config.{key}={format_value(value)}' for key, value in self.overrides.items()]
    return ['-m', module, f'--config={self.config}', f'--workdir={workdir}', *flags]


def format_value(value: Any) -> str:
  """A config override value as ml_collections' flag parser reads it."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def _options(study: Study, scale: Scale, axis: Axis) -> Tuple[Option, ...]:
  keep = scale.only.get(axis.name)
  if keep is None:
    return axis.options
  labels = [o.label for o in axis.options]
  unknown = [k for k in keep if k not in labels]
  if unknown:
    raise ValueError(f'study {study.name!r}: scale keeps unknown {axis.name} option(s) '
                     f'{unknown}; the axis has {labels}.')
  return tuple(o for o in axis.options if o.label in keep)


def expand(study: Study, scale_name: str, seeds: int,
           extra: Optional[Mapping[str, Any]] = None) -> List[Cell]:
  """Every cell of ``study`` at ``scale_name``, seeds 1..``seeds``, in grid order.

  ``extra`` overrides go to every cell, after the study's own.
  """
  scale = study.scales[scale_name]
  grid = [_options(study, scale, axis) for axis in study.axes]
  cells = []
  for combo in itertools.product(*grid):
    overrides: Dict[str, Any] = dict(scale.overrides)
    x = None
    for axis, option in zip(study.axes, combo):
      overrides.update(option.overrides)
      overrides.update(scale.option_overrides.get(option.label, {}))
      if axis.name == study.x_axis:
        x = option.x
    overrides.update(extra or {})
    config = overrides.pop(CONFIG_KEY, scale.config)
    group = tuple(o.label for o in combo)
    for seed in range(1, seeds + 1):
      # The seed drives initialisation, data order and the label-noise draw; cells of one
      # seed share the noisy labels, so the compared models see the same data.
      cells.append(Cell(name='_'.join(group + (f'seed{seed}',)), group=group, seed=seed,
                        config=config, overrides={**overrides, 'seed': seed,
                                                  'data.noise_seed': seed}, x=x))
  return cells


__all__ = ['Axis', 'Cell', 'Option', 'Paper', 'Scale', 'Study', 'expand', 'format_value',
           'CONFIG_KEY']
