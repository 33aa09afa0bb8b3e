"""A name -> constructor registry shared by the attention layers and the models."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List


class Registry:
  """Maps lower-case names to constructors; unknown names fail with the valid ones listed."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Callable[..., Any]] = {}
    self._info: Dict[str, Dict[str, Any]] = {}

  def register(self, name: str, constructor: Callable[..., Any] | None = None, **info):
    """Registers ``constructor`` under ``name``; usable as a decorator.

    ``info`` is free metadata kept beside the entry (e.g. a model's default input
    size and the paper's parameter count), read back with ``info(name)``.
    """

    def add(fn):
      key = name.lower()
      if key in self._entries:
        raise ValueError(f'{self.kind} {key!r} is registered twice.')
      self._entries[key] = fn
      self._info[key] = dict(info)
      return fn

    return add(constructor) if constructor is not None else add

  def names(self) -> List[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return isinstance(name, str) and name.lower() in self._entries

  def info(self, name: str) -> Dict[str, Any]:
    self.get(name)  # raises the helpful error for unknown names
    return dict(self._info[name.lower()])

  def get(self, name: str) -> Callable[..., Any]:
    key = name.lower() if isinstance(name, str) else name
    if key not in self._entries:
      close = difflib.get_close_matches(str(key), self._entries, n=3)
      hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
      raise ValueError(
          f'Unknown {self.kind} {name!r}.{hint} Valid {self.kind} names are: '
          f'{", ".join(self.names())}. Pick one of these (names are case-insensitive), '
          f'or register a new one with rattn.{self.kind}s.')
    return self._entries[key]
