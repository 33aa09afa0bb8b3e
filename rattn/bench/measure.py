"""Timing, compilation and memory measurements of jitted JAX functions.

JAX dispatches asynchronously: a call returns before the device has finished,
so every timed interval here ends with ``jax.block_until_ready`` on everything
the call produced. Timings are reported as the median over repeated calls
after warm-up, with the min and max, because one slow call (a page fault, a
neighbour's process) says nothing about the steady state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import statistics
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall-clock seconds of each timed call."""
  seconds: Tuple[float, ...]

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def min(self) -> float:
    return min(self.seconds)

  @property
  def max(self) -> float:
    return max(self.seconds)

  def rate(self, items_per_call: int) -> Dict[str, float]:
    """Items per second at the median, best (min time) and worst (max time) call."""
    return {'median': items_per_call / self.median, 'max': items_per_call / self.min,
            'min': items_per_call / self.max}


def time_steps(step: Callable[[Any], Any], carry: Any, *, steps: int,
               warmup: int) -> Tuple[Timing, Any]:
  """Times ``carry = step(carry)`` one call at a time, blocking on each result.

  The carry threads a donated train state from call to call, as a training
  loop does, so each timed call includes the update of the whole state.
  Returns the timings of the ``steps`` calls that follow ``warmup`` untimed ones,
  and the last carry.
  """
  if steps < 1:
    raise ValueError(f'steps must be at least 1, got {steps}.')
  for _ in range(warmup):
    carry = jax.block_until_ready(step(carry))
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    carry = jax.block_until_ready(step(carry))
    seconds.append(time.perf_counter() - start)
  return Timing(tuple(seconds)), carry


def time_pipelined(step: Callable[[Any], Any], carry: Any, *, steps: int) -> Tuple[float, Any]:
  """Seconds for ``steps`` calls dispatched back to back, blocking only after the last.

  This is how a training loop without host syncs runs: the host enqueues the
  next step while the device computes the current one. Compared with
  ``time_steps`` it shows what a per-step sync (e.g. ``float(loss)``) costs.
  """
  carry = jax.block_until_ready(carry)
  start = time.perf_counter()
  for _ in range(steps):
    carry = step(carry)
  carry = jax.block_until_ready(carry)
  return time.perf_counter() - start, carry


def compile_timed(fn: Any, *args: Any) -> Tuple[jax.stages.Compiled, float]:
  """Lowers and compiles the jitted ``fn`` for ``args``; returns it and the seconds taken."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


@contextlib.contextmanager
def exclusive(lock_path: Optional[str]) -> Iterator[float]:
  """Holds an exclusive lock on the file ``lock_path`` (created if absent); yields the seconds
  waited for it.

  Benchmark processes started side by side on one device compile concurrently (compilation
  runs on the host's cores) but time their steps one at a time, each inside this lock, so
  that no timed step shares the device. ``None`` locks nothing.
  """
  if not lock_path:
    yield 0.0
    return
  with open(lock_path, 'a') as f:
    start = time.perf_counter()
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield time.perf_counter() - start
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def compiled_memory(compiled: jax.stages.Compiled) -> Dict[str, Optional[int]]:
  """XLA's static memory plan of one executable, per device, in bytes.

  ``total`` = arguments + outputs + temporaries - aliased (donated inputs reused
  as outputs are otherwise counted twice). This is what the executable needs on
  each device, known without running it; it excludes the runtime's own overhead.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return {'argument': None, 'output': None, 'temp': None, 'alias': None, 'total': None}
  parts = {'argument': stats.argument_size_in_bytes, 'output': stats.output_size_in_bytes,
           'temp': stats.temp_size_in_bytes, 'alias': stats.alias_size_in_bytes}
  parts['total'] = parts['argument'] + parts['output'] + parts['temp'] - parts['alias']
  return parts


def xla_flops(compiled: jax.stages.Compiled) -> Optional[float]:
  """XLA's own FLOP count of the executable (a cross-check of the analytic count)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, Sequence) and not isinstance(analysis, dict):
    analysis = analysis[0] if analysis else None
  flops = analysis.get('flops') if analysis else None
  return float(flops) if flops else None


def device_peak_bytes(device: jax.Device) -> Optional[int]:
  """The allocator's peak bytes in use on ``device`` since the process started (GPU/TPU).

  None where the backend keeps no statistics (CPU). The allocator cannot be
  reset, so with several measurements in one process this is the largest so far.
  """
  stats = device.memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def reset_peak_rss() -> bool:
  """Resets the kernel's record of this process's peak resident set (Linux >= 4.0).

  Lets each measurement in one process report its own peak. Returns False
  where that is not possible; the peak is then the process's peak so far.
  """
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> Optional[int]:
  """This process's peak resident set size (VmHWM) in bytes, or None off Linux."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None
