"""Images/s per host core of the ImageNet input pipeline, and where one core's time goes.

    python -m experiments.bench --input imagenet --data_dir DIR --cores 1,2,all

Runs rattn.data's own iterators (grain, one worker process per core) for the
training transform (random-resized crop, flip) and the evaluation transform
(resize, centre crop) on a JPEG dataset: 'imagenet' is the stand-in
(``experiments.make_standin``), 'imagenet2012' the real data. Then times the
stages of that work one at a time in this process, on one core, to show what
limits it.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from rattn import data
from rattn.data import augment, datasets, jpeg
from rattn.data import standin
from rattn.models.summary import format_table

ALIASES = {'imagenet': standin.NAME}
STAGE_IMAGES = 200  # images timed stage by stage
REPEATS = 3  # runs per core count; the report gives their median and range


def handles(name: str) -> bool:
  """Whether ``--input name`` is a JPEG dataset that this benchmark measures."""
  name = ALIASES.get(name, name)
  return name in datasets.SPECS and not datasets.SPECS[name].small


def parse_cores(text: str) -> List[int]:
  """'1,2,all' -> [1, 2, <cores this process may use>], without repeats."""
  available = len(os.sched_getaffinity(0))
  cores = []
  for part in text.split(','):
    part = part.strip()
    count = available if part == 'all' else int(part) if part.isdigit() else 0
    if count < 1:
      raise ValueError(f"--cores takes positive counts and 'all', comma-separated (e.g. "
                       f"'1,2,all'); got {text!r}.")
    if count not in cores:
      cores.append(count)
  return cores


def bench_config(name: str, data_dir: Optional[str], workers: int) -> ml_collections.ConfigDict:
  """The data config this benchmark reads ``name`` ('imagenet': the stand-in) with."""
  cfg = data.data_config()
  # uint8 batches, normalised by the jitted step: how a GPU run should read ImageNet.
  cfg.update(dataset=ALIASES.get(name, name), eval_split='validation', num_workers=workers,
             normalise_on_device=True)
  if data_dir:
    cfg.data_dir = data_dir
  return cfg


def _timed_rate(batches: Callable[[], Any], count: int, warmup: int) -> float:
  """Images/s over ``count`` batches after ``warmup`` untimed ones (worker start-up)."""
  iterator = batches()
  try:
    for _ in range(warmup):
      next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(count):
      images += len(next(iterator)['label'])
    elapsed = time.perf_counter() - start  # wall time: what a consumer sees
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  return images / elapsed


def pipeline_rates(cfg: ml_collections.ConfigDict, batch_size: int,
                   batches: int) -> Dict[str, float]:
  """Training and evaluation images/s of the iterators ``cfg`` configures (fresh workers each).

  Timing starts once every worker has delivered a batch, so that no worker's start-up counts.
  """
  warmup = max(1, cfg.num_workers)
  train = _timed_rate(lambda: data.make_train_iterator(cfg, global_batch_size=batch_size,
                                                       seed=0), batches, warmup)
  # Short of the pass's end: stopping grain's workers there would be timed too.
  available = len(datasets.open_split(cfg, cfg.eval_split)) // batch_size
  eval_batches = min(batches, available - warmup)
  if eval_batches < 1:
    raise ValueError(f'The {cfg.eval_split} split of {cfg.dataset} is too small to time with '
                     f'{cfg.num_workers} workers: give it at least {warmup + 1} batches '
                     f'({(warmup + 1) * batch_size} images) or lower --batch_size.')
  evals = _timed_rate(lambda: iter(data.make_eval_iterator(cfg, global_batch_size=batch_size)),
                      eval_batches, warmup)
  return {'train': train, 'eval': evals}


def stage_times(cfg: ml_collections.ConfigDict, batch_size: int,
                count: int = STAGE_IMAGES) -> Dict[str, Dict[str, float]]:
  """CPU milliseconds per image of each stage, run one after the other in this process.

  The same functions the pipeline's workers run, on the first ``count`` images
  of each split, so that the shares say which stage to make faster. CPU time
  (not wall time) of this process: other processes on the cores hardly move it.
  """
  size = datasets.image_size(cfg)
  rng = np.random.default_rng(0)
  result = {}
  for transform, split in (('train', cfg.train_split), ('eval', cfg.eval_split)):
    source = datasets.open_split(cfg, split)
    # No 'normalise': it runs on the device (normalise_on_device).
    totals = dict.fromkeys(('read', 'decode', 'crop/resize', 'batch'), 0.0)
    batch = np.empty((batch_size, size, size, 3), np.uint8)
    n = min(count, len(source))
    for i in range(n):
      # jpeg.train_crop / eval_crop, a stage at a time.
      t0 = time.process_time()
      record = source[i]
      t1 = time.process_time()
      image = jpeg.open_image(record['image'])
      if transform == 'train':
        box = augment.random_resized_box(image.height, image.width, rng)
        flip = rng.random() < 0.5
      else:
        box, flip = augment.centre_box(image.height, image.width, size), False
      box = jpeg.decode(image, box, size)
      t2 = time.process_time()
      image = jpeg.crop_resize(image, box, size)
      t3 = time.process_time()
      jpeg.write(image, batch[i % batch_size], flip)
      t4 = time.process_time()
      totals['read'] += t1 - t0
      totals['decode'] += t2 - t1
      totals['crop/resize'] += t3 - t2
      totals['batch'] += t4 - t3
    result[transform] = {stage: 1e3 * seconds / n for stage, seconds in totals.items()}
  return result


def measure(name: str, data_dir: Optional[str], cores: Sequence[int], batch_size: int,
            batches: int, repeats: int, context: Dict[str, Any]) -> List[Dict[str, Any]]:
  """One record per core count (median images/s of ``repeats`` runs), then the stage times."""
  records = []
  for count in cores:
    cfg = bench_config(name, data_dir, count)
    runs = [pipeline_rates(cfg, batch_size, batches) for _ in range(repeats)]
    records.append({
        'kind': 'imagenet_input', 'dataset': cfg.dataset, 'workers': count,
        'batch_size': batch_size, 'batches': batches, 'repeats': repeats,
        **{f'{t}_images_per_s': statistics.median(r[t] for r in runs) for t in ('train', 'eval')},
        **{f'{t}_images_per_s_runs': [r[t] for r in runs] for t in ('train', 'eval')},
        **context, 'load_avg_1m_end': round(os.getloadavg()[0], 2)})
  cfg = bench_config(name, data_dir, 0)
  records.append({'kind': 'imagenet_input_stages', 'dataset': cfg.dataset,
                  'batch_size': batch_size, 'images': STAGE_IMAGES,
                  'ms_per_image': stage_times(cfg, batch_size), **context,
                  'load_avg_1m_end': round(os.getloadavg()[0], 2)})
  return records


def report(records: Sequence[Dict[str, Any]]) -> str:
  """The per-core table, the per-stage table and the machine line, as Markdown."""
  rates = [r for r in records if r['kind'] == 'imagenet_input']
  rows = []
  for r in rates:
    row = {'cores (workers)': r['workers']}
    for t in ('train', 'eval'):
      runs = r[f'{t}_images_per_s_runs']
      median = r[f'{t}_images_per_s']
      row[f'{t} img/s (min-max)'] = f'{median:.0f} ({min(runs):.0f}-{max(runs):.0f})'
      row[f'{t} img/s per core'] = f"{median / r['workers']:.0f}"
    rows.append(row)
  lines = [f"{rates[0]['dataset']}, batch {rates[0]['batch_size']}, {rates[0]['batches']} "
           f"timed batches, median of {rates[0]['repeats']} runs:",
           format_table(rows, list(rows[0]))]
  stages = next(r for r in records if r['kind'] == 'imagenet_input_stages')
  rows = []
  for transform, times in stages['ms_per_image'].items():
    total = sum(times.values())
    rows.append({'transform': transform,
                 **{stage: f'{ms:.2f} ({ms / total:.0%})' for stage, ms in times.items()},
                 'total ms': f'{total:.2f}', 'img/s on 1 core': f'{1e3 / total:.0f}'})
  lines += [f"Where one core's time goes (CPU ms per image, {stages['images']} images, "
            'stage by stage in one process):', format_table(rows, list(rows[0]))]
  first = records[0]
  lines.append(f"{first['cpu_model']}, {first['cpu_cores']} cores, load "
               f"{first['load_avg_1m']}-{records[-1]['load_avg_1m_end']} (1 min), "
               f"{first['date']}")
  return '\n\n'.join(lines)

