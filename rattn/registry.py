"""A name -> constructor registry shared by the attention layers and the models."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable, Dict, List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Entry:
  """What a registered name stands for: its constructor and the module class behind it.

  ``module`` is the Python module that defines the class (e.g.
  ``rattn.models.resnet``), ``family`` its last component (``resnet``), and
  ``fields`` the keyword arguments the class takes (its dataclass fields, Flax's
  ``parent``/``name`` excluded); empty where the constructor is not a dataclass.
  """
  name: str
  constructor: Callable[..., Any]
  cls: Any
  module: str
  family: str
  fields: Tuple[str, ...]
  info: Dict[str, Any]


def _entry(name: str, constructor: Callable[..., Any], builds: Optional[Callable[..., Any]],
           info: Dict[str, Any]) -> Entry:
  cls = builds if builds is not None else constructor
  while isinstance(cls, functools.partial):  # the one place that sees through partials
    cls = cls.func
  fields = (tuple(f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name'))
            if dataclasses.is_dataclass(cls) else ())
  module = getattr(cls, '__module__', '') or ''
  return Entry(name, constructor, cls, module, module.rsplit('.', 1)[-1], fields, dict(info))


class Registry:
  """Maps lower-case names to constructors; unknown names fail with the valid ones listed."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Entry] = {}

  def register(self, name: str, constructor: Callable[..., Any] | None = None, *,
               builds: Callable[..., Any] | None = None, **info):
    """Registers ``constructor`` under ``name``; usable as a decorator.

    ``builds`` names the class (or a partial of it) that ``constructor`` wraps,
    where it is a plain function; the entry records that class's module and
    fields. ``info`` is free metadata kept beside the entry (e.g. a model's
    default input size and the paper's parameter count), read back with
    ``info(name)``.
    """

    def add(fn):
      key = name.lower()
      if key in self._entries:
        raise ValueError(f'{self.kind} {key!r} is registered twice.')
      self._entries[key] = _entry(key, fn, builds, info)
      return fn

    return add(constructor) if constructor is not None else add

  def names(self) -> List[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return isinstance(name, str) and name.lower() in self._entries

  def entry(self, name: str) -> Entry:
    key = name.lower() if isinstance(name, str) else name
    if key not in self._entries:
      close = difflib.get_close_matches(str(key), self._entries, n=3)
      hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
      raise ValueError(
          f'Unknown {self.kind} {name!r}.{hint} Valid {self.kind} names are: '
          f'{", ".join(self.names())}. Pick one of these (names are case-insensitive), '
          f'or register a new one with rattn.{self.kind}s.')
    return self._entries[key]

  def info(self, name: str) -> Dict[str, Any]:
    return dict(self.entry(name).info)

  def get(self, name: str) -> Callable[..., Any]:
    return self.entry(name).constructor
