"""What the benchmark runs on: device peaks for MFU, and a description of the machine.

Peaks are dense (no structured sparsity) per JAX device, in FLOP/s, from the
vendors' data sheets. float32 on NVIDIA GPUs is the non-tensor-core FP32 peak
(XLA may run float32 matmuls as TF32 on tensor cores, so float32 MFU can exceed
1 there); TPUs publish no float32 peak, so float32 MFU is n/a on TPU. CPUs have
no peak here: their MFU is n/a.
"""

from __future__ import annotations

import os
import platform
from typing import Dict, Optional, Tuple

import flax
import jax
import jaxlib
import optax

# (substring of jax.Device.device_kind, lower-cased) -> {dtype: peak FLOP/s per device}.
# Ordered: the first match wins, so the more specific names come first.
PEAK_FLOPS: Tuple[Tuple[str, Dict[str, float]], ...] = (
    ('h200', {'bfloat16': 989e12, 'float32': 67e12}),  # H100 SXM compute, more memory
    ('h100 pcie', {'bfloat16': 756e12, 'float32': 51e12}),
    ('h100 nvl', {'bfloat16': 835e12, 'float32': 60e12}),
    ('h100', {'bfloat16': 989e12, 'float32': 67e12}),  # SXM ('NVIDIA H100 80GB HBM3')
    ('a100', {'bfloat16': 312e12, 'float32': 19.5e12}),
    ('l4', {'bfloat16': 121e12, 'float32': 30.3e12}),
    ('v100', {'float32': 15.7e12}),  # no bfloat16 units
    # JAX exposes one device per TPU chip from v4 on (per core before).
    ('tpu v6 lite', {'bfloat16': 918e12}),  # v6e (Trillium)
    ('tpu v5 lite', {'bfloat16': 197e12}),  # v5e
    ('tpu v5', {'bfloat16': 459e12}),  # v5p
    ('tpu v4', {'bfloat16': 275e12}),
    ('tpu v3', {'bfloat16': 61.5e12}),  # per core (123 per chip)
)


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak FLOP/s of one device of ``device_kind`` computing in ``dtype``, or None if unknown."""
  kind = device_kind.lower()
  for pattern, peaks in PEAK_FLOPS:
    if pattern in kind:
      return peaks.get(dtype)
  return None


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), with its family/model numbers.

  Virtual machines often report a bare name ('AMD EPYC'); the family and model
  numbers still tell the generation (e.g. AMD family 25 model 17 is Zen 4, Genoa).
  """
  fields: Dict[str, str] = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key in ('model name', 'cpu family', 'model') and key not in fields:
          fields[key] = value.strip()
        if not line.strip() and fields:
          break  # the first processor's block is enough
  except OSError:
    pass
  if 'model name' not in fields:
    return platform.processor() or platform.machine()
  numbers = (f" (family {fields['cpu family']} model {fields['model']})"
             if 'cpu family' in fields and 'model' in fields else '')
  return fields['model name'] + numbers


def machine() -> Dict[str, object]:
  """The facts a reader needs to compare two measurements."""
  device = jax.devices()[0]
  load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
  return {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'cpu_model': cpu_model(),
      # The cores this process may use (a container or taskset can give fewer than the host has).
      'cpu_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
      'load_avg_1m': round(load[0], 2),
      'hostname': platform.node(),
      'python_version': platform.python_version(),
      'jax_version': jax.__version__,
      'jaxlib_version': jaxlib.__version__,
      # The runtime behind the device: on GPUs the PJRT plugin with its CUDA version.
      'platform_version': str(getattr(device.client, 'platform_version', '')),
      'flax_version': flax.__version__,
      'optax_version': optax.__version__,
  }
