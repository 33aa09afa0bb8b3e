"""Where a step's time goes: a ``jax.profiler`` trace and its device ops grouped by kind.

``trace_steps`` records a few steps into a TensorBoard/Perfetto trace;
``op_breakdown`` reads that trace back and sums the duration of every XLA op
event by kind (the HLO instruction name without its ``.N`` suffix, e.g.
``ynn_fusion``, ``transpose_copy_fusion``, ``wrapped_reduce-window``), so one
command says which kinds of work dominate. On CPU the events are XLA's thunks
(summed over the worker threads, so shares, not wall time, are the figure to
read); on GPU they are the kernels and memcpys the trace records.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
from typing import Any, Callable, Dict, List

import jax

# An XLA op (HLO instruction or kernel) name; runtime and Python events have '::', '(',
# spaces, capitals or a leading '$' and are left out.
_OP_NAME = re.compile(r'^[a-z_][a-z0-9_\-]*(\.\d+)*$')
_SUFFIX = re.compile(r'(\.\d+)+$')


def trace_steps(step: Callable[[Any], Any], carry: Any, *, steps: int, logdir: str) -> Any:
  """Runs ``carry = step(carry)`` ``steps`` times inside a profiler trace written to ``logdir``."""
  jax.block_until_ready(carry)
  with jax.profiler.trace(logdir):
    for _ in range(steps):
      carry = step(carry)
    jax.block_until_ready(carry)
  return carry


def op_breakdown(logdir: str, steps: int, top: int = 12) -> List[Dict[str, Any]]:
  """The ``top`` op kinds of the newest trace under ``logdir``, by total duration.

  Each row: ``op`` (kind), ``ms_per_step`` (summed over threads/streams),
  ``share`` (of all op time in the trace) and ``count_per_step``.
  """
  traces = sorted(pathlib.Path(logdir).glob('**/*.trace.json.gz'), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f'No *.trace.json.gz under {logdir}: was it written by trace_steps?')
  with gzip.open(traces[-1], 'rt') as f:
    events = json.load(f).get('traceEvents', [])
  total_us: Dict[str, float] = collections.Counter()
  count: Dict[str, int] = collections.Counter()
  for event in events:
    name = event.get('name', '')
    if event.get('ph') != 'X' or not _OP_NAME.match(name):
      continue
    kind = _SUFFIX.sub('', name)
    total_us[kind] += float(event.get('dur', 0.0))
    count[kind] += 1
  everything = sum(total_us.values()) or 1.0
  return [{'op': kind, 'ms_per_step': us / 1e3 / steps, 'share': us / everything,
           'count_per_step': count[kind] / steps}
          for kind, us in sorted(total_us.items(), key=lambda kv: -kv[1])[:top]]
