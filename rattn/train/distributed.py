"""Multi-process (multi-host) start-up: when and how to call ``jax.distributed.initialize``.

A run spans several processes (TPU pod slices, multi-node GPU jobs, or several
processes on one CPU machine for testing) when any of these says so:

* explicit flags: ``--coordinator_address HOST:PORT --num_processes N
  --process_id I`` (all three; the CLI passes them here);
* ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
  in the environment (the same three values);
* a cluster manager JAX detects by itself: SLURM (``SLURM_NTASKS`` > 1), Open
  MPI (``OMPI_COMM_WORLD_SIZE`` > 1), Cloud TPU pods (``TPU_WORKER_HOSTNAMES``
  lists several hosts); ``--distributed=on`` forces auto-detection elsewhere
  (e.g. Kubernetes).

Every process then runs the same program; each reads its own shard of the data.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
from absl import logging

MODES = ('auto', 'on', 'off')


def _cluster_detected() -> bool:
  env = os.environ
  return (int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or ',' in env.get('TPU_WORKER_HOSTNAMES', ''))


def initialize(mode: str = 'auto', coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None) -> bool:
  """Calls ``jax.distributed.initialize`` if this run is multi-process; returns whether it did.

  Must run before anything touches a JAX backend (device queries, arrays).
  """
  if mode not in MODES:
    raise ValueError(f'distributed mode {mode!r}: use one of {MODES}.')
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise ValueError('--coordinator_address, --num_processes and --process_id go together: '
                     'give all three or none.')
  env = os.environ
  if coordinator_address is None and 'JAX_COORDINATOR_ADDRESS' in env:
    if 'JAX_NUM_PROCESSES' not in env or 'JAX_PROCESS_ID' not in env:
      raise ValueError('JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and '
                       'JAX_PROCESS_ID as well (or unset it for a single-process run).')
    coordinator_address = env['JAX_COORDINATOR_ADDRESS']
    num_processes, process_id = int(env['JAX_NUM_PROCESSES']), int(env['JAX_PROCESS_ID'])
  if mode == 'off' or (mode == 'auto' and coordinator_address is None
                       and not _cluster_detected()):
    return False
  # CPU processes need a collectives backend to all-reduce across processes;
  # accelerators bring their own (NCCL, ICI) and ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
