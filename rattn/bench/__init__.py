"""What ``experiments/bench.py`` runs: the measurements (``runs``: a model's steps, an input
pipeline), their pieces (timing, memory, device peaks, profiles) and the tables (``report``)."""

from rattn.bench.hardware import PEAK_FLOPS, cpu_model, machine, peak_flops
from rattn.bench.measure import (Timing, compile_timed, compiled_memory, device_peak_bytes,
                                 exclusive, peak_rss_bytes, reset_peak_rss, time_pipelined,
                                 time_steps, xla_flops)
from rattn.bench.profile import op_breakdown, trace_steps

__all__ = ['PEAK_FLOPS', 'Timing', 'compile_timed', 'compiled_memory', 'cpu_model',
           'device_peak_bytes', 'exclusive', 'machine', 'op_breakdown', 'peak_flops',
           'peak_rss_bytes', 'reset_peak_rss', 'time_pipelined', 'time_steps', 'trace_steps',
           'xla_flops']
