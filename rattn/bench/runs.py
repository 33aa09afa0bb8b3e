"""The two measurements of ``experiments.bench``: a model's train and eval steps, an input pipeline.

Each returns one flat record (a JSON line of ``benchmarks/results.jsonl``);
``context`` holds the facts shared by every record of one call (machine, date,
command, commit). The conventions (what a FLOP is, which steps are timed, what
each memory figure covers) are the command's docstring, ``experiments/bench.py``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rattn import data, train
from rattn.bench import hardware, measure, profile
from rattn.models.summary import count_macs, count_params

PROFILE_STEPS = 3


def _synthetic_batch(batch_size: int, image_size: int, num_classes: int) -> Dict[str, np.ndarray]:
  """A host batch of the shape and dtypes the input pipeline yields (normalised float32)."""
  rng = np.random.default_rng(0)
  return {'image': rng.standard_normal((batch_size, image_size, image_size, 3), dtype=np.float32),
          'label': rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def _finish(record: Dict[str, Any], context: Dict[str, Any]) -> Dict[str, Any]:
  record.update(context)
  # The load when the measurement ended: with the one at the start, it says how quiet it was.
  record['load_avg_1m_end'] = round(os.getloadavg()[0], 2)
  return record


def bench_model(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                context: Dict[str, Any], *, steps: int, warmup: int, eval_too: bool = True,
                profile_dir: Optional[str] = None,
                device_lock: Optional[str] = None) -> Dict[str, Any]:
  """Measures the train step (and eval step) of ``config``'s model on synthetic batches.

  The run is assembled by ``rattn.train.make_plan`` as training assembles it,
  at the model's registered input size and class count (no data is read).
  Both steps are compiled first; everything that runs them (timing, profile)
  holds ``device_lock`` (``measure.exclusive``), so that processes sharing a
  device can compile side by side and still time alone.
  """
  name, batch_size = config.model, int(config.batch_size)
  info = train.model_entry(config).info  # a ConfigError for an unknown name
  image_size, num_classes = info['image_size'], info['num_classes']
  plan = train.make_plan(config, train.make_mesh(devices),
                         image_shape=(image_size, image_size, 3), num_classes=num_classes)
  # Sharded once and kept on device: the timed steps see no host-to-device copies.
  batch = train.shard_batch(_synthetic_batch(batch_size, image_size, num_classes), plan.mesh)
  state = plan.init_state()
  compiled, compile_s = measure.compile_timed(plan.train_step(), state, batch)
  if eval_too:  # compiled for the initial state's shapes, which every later state has
    compiled_eval, eval_compile_s = measure.compile_timed(plan.eval_step(), state, batch)
  memory = measure.compiled_memory(compiled)
  step = lambda carry: compiled(carry[0], batch)  # noqa: E731  (state, metrics) in and out
  with measure.exclusive(device_lock) as lock_wait_s:
    rss_reset = measure.reset_peak_rss()
    timing, carry = measure.time_steps(step, (state, {}), steps=steps, warmup=warmup)
    pipelined_s, carry = measure.time_pipelined(step, carry, steps=steps)
    peak_rss = measure.peak_rss_bytes()
    traced = {}
    if profile_dir:
      logdir = os.path.join(os.path.abspath(profile_dir), name)
      carry = profile.trace_steps(step, carry, steps=PROFILE_STEPS, logdir=logdir)
      traced = {'profile_dir': logdir,
                'profile_top_ops': profile.op_breakdown(logdir, steps=PROFILE_STEPS)}
    state = carry[0]
    if eval_too:
      eval_timing, _ = measure.time_steps(lambda _: compiled_eval(state, batch), None,
                                          steps=steps, warmup=warmup)
    device_peak = measure.device_peak_bytes(devices[0])

  macs = count_macs(plan.model, (1, image_size, image_size, 3))
  train_rate = timing.rate(batch_size)
  peak = hardware.peak_flops(context['device_kind'], config.dtype)
  peak_total = peak * len(devices) if peak else None
  train_flops = 6 * macs * train_rate['median']
  record = {
      'kind': 'model', 'model': name, 'batch_size': batch_size, 'dtype': config.dtype,
      'model_kwargs': config.model_kwargs.to_dict(), 'image_size': image_size,
      'num_classes': num_classes, 'params': count_params(variables=state.variables()),
      'macs_per_image': macs, 'steps': steps, 'warmup': warmup,
      'train_images_per_s': train_rate['median'], 'train_images_per_s_min': train_rate['min'],
      'train_images_per_s_max': train_rate['max'], 'train_step_s_median': timing.median,
      'train_images_per_s_pipelined': steps * batch_size / pipelined_s,
      'compile_s': compile_s,
      'flops_convention': '2 FLOPs per multiply-add; train = 3 x forward (6 x MACs per image)',
      'train_flops_per_s': train_flops,
      'xla_flops_per_step': measure.xla_flops(compiled),
      'peak_flops_per_s': peak_total,
      'mfu': train_flops / peak_total if peak_total else None,
      'device_peak_bytes': device_peak,
      'xla_train_bytes': memory['total'], 'xla_train_temp_bytes': memory['temp'],
      'peak_rss_bytes': peak_rss,
      'peak_rss_scope': 'timed train steps' if rss_reset else 'process so far',
      **({'device_lock_wait_s': lock_wait_s} if device_lock else {}),
      **traced,
  }
  if eval_too:
    rate = eval_timing.rate(batch_size)
    flops = 2 * macs * rate['median']
    record.update({'eval_images_per_s': rate['median'], 'eval_images_per_s_min': rate['min'],
                   'eval_images_per_s_max': rate['max'], 'eval_compile_s': eval_compile_s,
                   'eval_flops_per_s': flops,
                   'eval_mfu': flops / peak_total if peak_total else None})
  return _finish(record, context)


def bench_input(data_cfg: ml_collections.ConfigDict, context: Dict[str, Any], *,
                batch_size: int, batches: int) -> Dict[str, Any]:
  """Images/s that the training input pipeline delivers on this host, augmentation included.

  The pipeline is rattn.data's: tfds array_record sources fed by grain (not tf.data).
  """
  plan = data.DataPlan(data_cfg)  # the checks and settings only: no split is opened yet
  images_per_s = data.measure_throughput(data_cfg, global_batch_size=batch_size,
                                         num_batches=batches)
  return _finish({'kind': 'input', 'dataset': data_cfg.dataset, 'pipeline': 'grain',
                  'augment': plan.augment, 'in_memory': plan.in_memory,
                  'num_workers': data_cfg.num_workers, 'batch_size': batch_size,
                  'batches': batches, 'input_images_per_s': images_per_s}, context)
