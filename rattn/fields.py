"""Type and range rules for config fields, and the check that applies them.

A rule says what a field is (for the message) and which values it takes; a
table maps dotted field paths to rules (``rattn.data.config.DATA_FIELDS``, the
training config's ``rattn.train.plan.FIELDS``). ``check_fields`` applies a table
to a config and raises one paragraph for the first value that breaks its
rule, naming the field, the value, what the field is and a value that works.
A field the config lacks is skipped (a config saved before the field existed).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence, Type

# A value's problem, phrased to follow "it must be", or None when the value is fine.
Check = Callable[[Any], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field means (``meaning``, to follow "it is"), its check, and a value that
  works as it is typed after ``--config.FIELD=`` (quoted where a shell needs it)."""
  meaning: str
  check: Check
  example: str


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Check:
  """An integer (not a bool) in [low, high]."""
  bounds = (f' >= {low}' if high is None else f' in [{low}, {high}]') if low is not None else ''

  def check(value: Any) -> Optional[str]:
    if not _is_int(value) or (low is not None and value < low) or (
        high is not None and value > high):
      return f'an integer{bounds}'
    return None
  return check


def number(low: Optional[float] = None, high: Optional[float] = None, *,
           low_open: bool = False, high_open: bool = False) -> Check:
  """A finite real number (not a bool) between ``low`` and ``high``, each end open or closed."""
  if low is not None and high is not None:
    bounds = f' in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
  elif low is not None:
    bounds = f' {">" if low_open else ">="} {low:g}'
  elif high is not None:
    bounds = f' {"<" if high_open else "<="} {high:g}'
  else:
    bounds = ''

  def check(value: Any) -> Optional[str]:
    fine = _is_number(value) and math.isfinite(value)
    if fine and low is not None:
      fine = value > low if low_open else value >= low
    if fine and high is not None:
      fine = value < high if high_open else value <= high
    return None if fine else f'a finite number{bounds}'
  return check


def boolean(value: Any) -> Optional[str]:
  return None if isinstance(value, bool) else 'True or False'


def text(value: Any) -> Optional[str]:
  """A non-empty string."""
  return None if isinstance(value, str) and value.strip() else 'a non-empty string'


def any_text(value: Any) -> Optional[str]:
  """A string, possibly empty."""
  return None if isinstance(value, str) else 'a string'


def one_of(choices: Sequence[Any], *, lower: bool = False) -> Check:
  """One of ``choices``; with ``lower``, compared as ``str(value).lower()``."""
  def check(value: Any) -> Optional[str]:
    key = str(value).lower() if lower else value
    return None if key in tuple(choices) else f'one of {", ".join(map(repr, choices))}'
  return check


def optional(inner: Check) -> Check:
  """None, or a value ``inner`` accepts."""
  def check(value: Any) -> Optional[str]:
    problem = None if value is None else inner(value)
    return f'None or {problem}' if problem else None
  return check


def integers(low: int = 1, *, increasing: bool = False, empty: bool = True) -> Check:
  """A tuple (or list) of integers >= ``low``, strictly increasing if asked."""
  what = (f'a tuple of{" strictly increasing" if increasing else ""} integers >= {low}'
          f'{"" if empty else " (at least one)"}')

  def check(value: Any) -> Optional[str]:
    if not isinstance(value, (tuple, list)) or (not empty and not value):
      return what
    if any(not _is_int(v) or v < low for v in value):
      return what
    if increasing and any(b <= a for a, b in zip(value, value[1:])):
      return what
    return None
  return check


def mapping(value: Any) -> Optional[str]:
  return None if isinstance(value, Mapping) or hasattr(value, 'to_dict') else 'a mapping'


def check_fields(config: Any, rules: Mapping[str, Rule], error: Type[Exception], *,
                 prefix: str = 'config.') -> None:
  """Raises ``error`` for the first field of ``config`` (dotted paths in ``rules``) whose
  value breaks its rule; fields the config lacks are skipped."""
  for path, rule in rules.items():
    node, present = config, True
    for part in path.split('.'):
      if node is not None and part in node:
        node = node[part]
      else:
        present = False
        break
    if not present:
      continue
    problem = rule.check(node)
    if problem:
      raise error(f'{prefix}{path}={node!r} is not valid: it is {rule.meaning}, and must be '
                  f'{problem}. Give such a value, e.g. --{prefix}{path}={rule.example}.')
