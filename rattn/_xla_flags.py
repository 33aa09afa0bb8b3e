"""XLA:CPU compile options rattn sets in the process environment before JAX starts a backend.

jax lowers each threefry hash (every ``jax.random`` draw and key fold) on the CPU to a
5-iteration while loop. jaxlib 0.12's XLA:CPU (``SmallWhileLoopHoistingPass``) outlines
each such loop that is small enough into a kernel of its own, compiled through LLVM on its
own: a model's ``init`` holds one per parameter and per key fold, 184 for the README's
Attention-56, and compiling those kernels took 506 of the 518 s that the LLVM stage of its
``jit(model.init)`` took (measured on 2 shared cores). A byte threshold of 0 outlines none:
the loops run as the thunk runtime's while loops instead, with the same integer results,
so parameters stay bit-identical (``tests/test_xla_flags.py``). XLA reads ``XLA_FLAGS``
once, when JAX starts its first backend, and takes this option only from there (a
per-compile ``compiler_options`` cannot set ``xla_backend_extra_options``). Older jaxlibs
ignore the unknown key, and XLA passes no ``xla_``-prefixed key on to LLVM, so GPU and
TPU compiles are unaffected; a value the user set in ``XLA_FLAGS`` is kept.
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping

OPTION = 'xla_cpu_small_while_loop_byte_threshold'
VALUE = '0'
_EXTRA = re.compile(r'--xla_backend_extra_options=(\S*)')


def with_small_loop_threshold(xla_flags: str) -> str:
  """``xla_flags`` with ``OPTION=VALUE`` among its backend extra options, unless it sets it."""
  if OPTION in xla_flags:
    return xla_flags
  entry = f'{OPTION}={VALUE}'
  match = _EXTRA.search(xla_flags)
  if match is None:
    return f'{xla_flags} --xla_backend_extra_options={entry}'.strip()
  joined = f'{match.group(1)},{entry}' if match.group(1) else entry
  return f'{xla_flags[:match.start()]}--xla_backend_extra_options={joined}{xla_flags[match.end():]}'


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
  """Adds the option to ``environ['XLA_FLAGS']``; no effect once a backend has started."""
  environ['XLA_FLAGS'] = with_small_loop_threshold(environ.get('XLA_FLAGS', ''))
