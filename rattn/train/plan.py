"""A run's plan: the config validated once, and everything a run derives from it.

    plan = make_plan(config)            # checks, model, optimiser and schedule, data, keys
    state = plan.init_state()           # or plan.abstract_state(), a checkpoint's target
    train_step, eval_step = plan.train_step(), plan.eval_step()

The trainer, evaluation of a saved run (``rattn.train.trained``), the benchmark
and visualisation all assemble a run here. Every mistake a config can hold is
caught before any step is compiled and reported as a ``ConfigError`` that names
the field, the bad value and what would work. A model that fails to initialise
for a reason that is not provably the config's is left to fail as it does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from rattn import data, fields
from rattn.models import MODELS, create_model
from rattn.registry import Entry
from rattn.train import optim
from rattn.train.state import (RunKeys, TrainState, abstract_train_state, create_train_state,
                               make_mesh)
from rattn.train.steps import make_eval_step, make_train_step

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ConfigError(ValueError):
  """The config asks for something that cannot run; the message says what to change."""


def _positive(meaning: str, example: str) -> fields.Rule:
  return fields.Rule(meaning, fields.integer(1), example)


# Every field of experiments/configs/default.py outside ``data`` (rattn.data.config.DATA_FIELDS
# has those): its type and range. Names (model, dtype, schedule, optimiser) are checked
# against what exists in check_config.
def _checkpoint_choice(value: Any) -> Optional[str]:
  fine = isinstance(value, str) and (value in ('final', 'best') or value.isdigit())
  return None if fine else "'final', 'best' or a step number (as a string, e.g. '350')"


FIELDS = {
    'model': fields.Rule('the registered model to train', fields.text, 'ran56_cifar'),
    'model_kwargs': fields.Rule("the model's keyword arguments", fields.mapping, "'{}'"),
    'allow_input_size_mismatch': fields.Rule(
        'whether a model may run on images far from its design size', fields.boolean, 'False'),
    'dtype': fields.Rule('the compute dtype', fields.one_of(tuple(DTYPES)), 'float32'),
    'init_from': fields.Rule("a workdir whose weights start the run ('': from scratch)",
                             fields.any_text, '/tmp/converted'),
    'init_from_checkpoint': fields.Rule(
        "which checkpoint of config.init_from starts the run ('final', 'best' on validation, "
        'or a step number)', _checkpoint_choice, 'final'),
    'seed': fields.Rule('the seed of initialisation, data order and augmentation',
                        fields.integer(0), '0'),
    'batch_size': _positive('the global training batch size', '64'),
    'eval_batch_size': _positive('the global evaluation batch size', '512'),
    'num_train_steps': _positive('the number of training steps', '160000'),
    'optimizer.name': fields.Rule('the optimiser', fields.one_of(optim.OPTIMIZERS), 'sgd'),
    'optimizer.momentum': fields.Rule('the SGD momentum (0: none)',
                                      fields.number(0.0, 1.0, high_open=True), '0.9'),
    'optimizer.nesterov': fields.Rule('whether momentum is Nesterov\'s', fields.boolean,
                                      'True'),
    'optimizer.weight_decay': fields.Rule('the L2 weight decay (0: none)', fields.number(0.0),
                                          '1e-4'),
    'optimizer.decay_all_params': fields.Rule(
        'whether BatchNorm parameters and biases are decayed too', fields.boolean, 'True'),
    'schedule.name': fields.Rule('the learning-rate schedule', fields.one_of(optim.SCHEDULES),
                                 'piecewise'),
    'schedule.base_lr': fields.Rule('the peak learning rate',
                                    fields.number(0.0, low_open=True), '0.1'),
    'schedule.warmup_steps': fields.Rule('the number of linear warm-up steps (0: none)',
                                         fields.integer(0), '0'),
    'schedule.boundaries': fields.Rule(
        'the steps at which the piecewise schedule multiplies the rate by decay_factor',
        fields.integers(1, increasing=True), "'(64000, 96000)'"),
    'schedule.decay_factor': fields.Rule(
        'the factor applied at each boundary', fields.number(0.0, 1.0, low_open=True), '0.1'),
    'schedule.end_lr_fraction': fields.Rule(
        "the cosine schedule's final rate as a fraction of base_lr", fields.number(0.0, 1.0),
        '0.0'),
    'label_smoothing': fields.Rule('the label-smoothing mass',
                                   fields.number(0.0, 1.0, high_open=True), '0.1'),
    'mixup_alpha': fields.Rule("mixup's Beta(alpha, alpha) parameter (0: no mixup)",
                               fields.number(0.0), '0.2'),
    'log_every': _positive('the number of steps between training-metric logs', '100'),
    'eval_every': _positive('the number of steps between evaluations', '4000'),
    'checkpoint_every': _positive('the number of steps between checkpoints', '2000'),
    'keep_checkpoints': _positive('the number of latest checkpoints kept', '3'),
}

# The registered models' keyword arguments that have a type and range whatever the model.
# Others (attention names, stems, nested attention kwargs) are checked by the model itself.
MODEL_KWARGS = {
    'width': fields.Rule('the width multiplier of every layer',
                         fields.number(0.0, low_open=True), '1.0'),
    'widths': fields.Rule('the widths of the stages', fields.integers(1, empty=False),
                          "'(16, 32, 64)'"),
    'stage_widths': fields.Rule('the widths of the stages', fields.integers(1, empty=False),
                                "'(256, 512, 1024)'"),
    'final_width': _positive('the width of the last stage', '2048'),
    'stem_width': _positive("the stem's width", '64'),
    'depth': _positive('the network depth', '20'),
    'stage_sizes': fields.Rule('the blocks per stage', fields.integers(1, empty=False),
                               "'(3, 4, 6, 3)'"),
    'modules_per_stage': fields.Rule('the attention modules per stage',
                                     fields.integers(1, empty=False), "'(1, 1, 1)'"),
    'pool_levels': fields.Rule("the mask branches' pooling depths per stage",
                               fields.integers(0, empty=False), "'(3, 2, 1)'"),
    'final_strides': _positive('the stride into the last stage', '2'),
    'p': _positive('the residual units before and after each attention module', '1'),
    't': _positive("the residual units of each trunk branch", '2'),
    'r': _positive('the residual units between poolings in each mask branch', '1'),
    'remat': fields.Rule('whether activations are recomputed in the backward pass',
                         fields.boolean, 'False'),
    'scan': fields.Rule('whether repeated modules are scanned', fields.boolean, 'False'),
    'residual_learning': fields.Rule('whether attention residual learning is used',
                                     fields.boolean, 'True'),
    'zero_init_last_bn': fields.Rule("whether each block's last BatchNorm starts at zero",
                                     fields.boolean, 'False'),
    'bottleneck': fields.Rule('whether the blocks are bottlenecks', fields.boolean, 'False'),
}


def check_config(config: ml_collections.ConfigDict, *, with_data: bool = True) -> None:
  """Checks every field's type and range (``FIELDS``, the data section's ``DATA_FIELDS``,
  ``MODEL_KWARGS``), and the names that need no model, data or devices. ``with_data``
  False leaves the data section alone: a run whose shapes are given reads no data."""
  fields.check_fields(config, FIELDS, ConfigError)
  if with_data and 'data' in config:
    data.check_data_config(config.data)
  kwargs = config.model_kwargs
  fields.check_fields(kwargs, {k: r for k, r in MODEL_KWARGS.items() if k in kwargs},
                      ConfigError, prefix='config.model_kwargs.')
  model_entry(config)  # a registered model
  schedule = config.get('schedule', {})
  if schedule.get('boundaries') and schedule.get('warmup_steps', 0) > 0 and (
      schedule.boundaries[0] <= schedule.warmup_steps) and schedule.name == 'piecewise':
    raise ConfigError(
        f'config.schedule.boundaries={tuple(schedule.boundaries)} start within the warm-up '
        f'(config.schedule.warmup_steps={schedule.warmup_steps}): the ramp would hide the '
        'first decay. Put every boundary after the warm-up, or shorten the warm-up.')
  total = int(config.num_train_steps)
  beyond = [b for b in schedule.get('boundaries', ()) if b >= total]
  if schedule.get('name') == 'piecewise' and beyond:
    logging.warning('config.schedule.boundaries %s: %s at or beyond num_train_steps=%d, so the '
                    'learning rate never decays there in this run.',
                    tuple(schedule.boundaries), beyond, total)
  if schedule.get('warmup_steps', 0) > total:
    logging.warning('config.schedule.warmup_steps=%d is longer than num_train_steps=%d: the '
                    'whole run warms up.', schedule.warmup_steps, total)


def check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Global batches must split evenly over devices (and hence over processes)."""
  for field in ('batch_size', 'eval_batch_size'):
    try:
      data.split_batch(config[field], num_devices, 'device', name=f'config.{field}',
                       flag=f'--config.{field}=')
    except ValueError as e:
      raise ConfigError(str(e)) from None


def model_entry(config: ml_collections.ConfigDict) -> Entry:
  """The registry entry of ``config.model`` (ConfigError listing the valid names if unknown)."""
  try:
    return MODELS.entry(config.model)
  except ValueError as e:
    raise ConfigError(f'config.model: {e}') from None


# A model is refused (unless config.allow_input_size_mismatch) on images whose side is more
# than this factor away from its registered design size: e.g. an ImageNet net's stem and
# pooling shrink 32-px CIFAR to 1x1 by its third stage; a CIFAR net sees 224 px as texture.
INPUT_SIZE_FACTOR = 2.0


def _designed_near(name: str, size: int) -> bool:
  design = MODELS.info(name).get('image_size')
  return design is not None and design / INPUT_SIZE_FACTOR <= size <= design * INPUT_SIZE_FACTOR


def check_input_size(config: ml_collections.ConfigDict, size: int) -> None:
  """Refuses a model on square images of side ``size`` far from the size it was designed
  for, unless the config says that is meant (``config.allow_input_size_mismatch``)."""
  design = model_entry(config).info.get('image_size')
  if (design is None or _designed_near(config.model, size)
      or config.get('allow_input_size_mismatch', False)):
    return
  fitting = [n for n in MODELS.names() if _designed_near(n, size)]
  models = f' (registered for this size: {", ".join(fitting)})' if fitting else ''
  raise ConfigError(
      f'config.model={config.model!r} was designed for {design}x{design} images, but the data '
      f'gives {size}x{size} (config.data.dataset={config.data.dataset!r}), more than '
      f'{INPUT_SIZE_FACTOR:g}x away: its stem and pooling are sized for its own input, so it '
      f'would run, and learn badly, without a word. Pick a model made for this input{models}, '
      f'or resize the images with --config.data.image_size={design}, or, if this is meant, '
      'set --config.allow_input_size_mismatch=True.')


def _build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The registered ``config.model`` with ``config.model_kwargs`` and the compute dtype."""
  entry = model_entry(config)
  # Plain dicts all the way down: nested kwargs (e.g. attention_kwargs) reach the modules.
  kwargs = config.model_kwargs.to_dict()
  unknown = [k for k in kwargs if entry.fields and k not in entry.fields]
  if unknown:
    raise ConfigError(f'config.model_kwargs={kwargs} do not fit model {config.model!r}: '
                      f'unexpected keyword argument {unknown[0]!r}. It accepts: '
                      f'{", ".join(entry.fields)}.')
  try:
    return create_model(config.model, num_classes=num_classes, dtype=DTYPES[config.dtype],
                        **kwargs)
  except (ValueError, TypeError) as e:  # constructors only bind and check their arguments
    raise ConfigError(f'config.model_kwargs={kwargs} are not valid for model '
                      f'{config.model!r}: {e}') from e


def _initialises(model: nn.Module, image_shape: Tuple[int, ...]) -> bool:
  """Whether shape-only initialisation of ``model`` on one such image succeeds (a probe)."""
  try:
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)),
                                      train=False))
  except Exception:  # pylint: disable=broad-except  # any failure answers the question
    return False
  return True


def _config_fault(config: ml_collections.ConfigDict, model: nn.Module, num_classes: int,
                  image_shape: Tuple[int, int, int], error: Exception) -> Optional[ConfigError]:
  """A ConfigError if the config provably made initialisation fail, else None.

  Proof by elimination: the failure recurs in shape-only initialisation (it is
  not, e.g., device memory), and goes away without the config's
  ``model_kwargs`` (they are at fault) or at the model's registered input size
  (the data's image size is).
  """
  if _initialises(model, image_shape):
    return None
  kwargs = config.model_kwargs.to_dict()
  failure = (f'Model {config.model!r} with model_kwargs={kwargs} fails to initialise on '
             f'images of shape {tuple(image_shape)} (height, width, channels): '
             f'{type(error).__name__}: {error}')
  if kwargs and _initialises(
      create_model(config.model, num_classes=num_classes, dtype=DTYPES[config.dtype]),
      image_shape):
    return ConfigError(f'{failure} (Without model_kwargs it initialises: change them.)')
  size = MODELS.info(config.model).get('image_size')
  if (size and tuple(image_shape[:2]) != (size, size)
      and _initialises(model, (size, size, image_shape[2]))):
    return ConfigError(
        f'{failure} (It was designed for {size}x{size} images; the data gives '
        f'{image_shape[0]}x{image_shape[1]}: set --config.data.image_size={size} or pick a '
        'model made for this input.)')
  return None


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a run is made of, derived once from a checked config."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  image_shape: Tuple[int, int, int]
  num_classes: int
  keys: RunKeys
  data: Optional[data.DataPlan]  # None where the shapes were given (no data opened)

  def _initialise(self, init: Callable[[], Any]) -> TrainState:
    try:
      return init()
    except Exception as e:  # pylint: disable=broad-except  # re-raised unless the config's
      fault = _config_fault(self.config, self.model, self.num_classes, self.image_shape, e)
      if fault is None:
        raise
      raise fault from e

  def init_state(self) -> TrainState:
    """A fresh replicated train state (parameters from ``keys.params``)."""
    return self._initialise(lambda: create_train_state(
        self.model, self.tx, self.image_shape, self.mesh, self.keys.params))

  def abstract_state(self) -> TrainState:
    """The train state's shapes and shardings, computing nothing: a checkpoint's target."""
    return self._initialise(lambda: abstract_train_state(
        self.model, self.tx, self.image_shape, self.mesh))

  def train_step(self):
    return make_train_step(self.config, self.mesh, self.keys.mixup)

  def eval_step(self):
    return make_eval_step(self.mesh, self.config.data)


def make_plan(config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None, *,
              image_shape: Optional[Tuple[int, int, int]] = None,
              num_classes: Optional[int] = None, check_batches: bool = True) -> RunPlan:
  """Checks ``config`` once and derives the run's pieces; ``mesh`` defaults to all devices.

  The image shape and class count come from the config's data (a
  ``DataPlan``, which opens each split once), unless both are given: then no
  data is opened (a saved run's recorded shapes, a benchmark's synthetic input).
  Where the data gives the shape, a model far from its design input size is
  refused (``check_input_size``). ``check_batches`` False leaves the config's batch
  sizes unchecked against the mesh: a saved run evaluated with a batch of its own, on
  another number of devices than it trained on.
  """
  reads_data = image_shape is None or num_classes is None
  check_config(config, with_data=reads_data)  # DataPlan checks the data section again
  mesh = mesh if mesh is not None else make_mesh()
  if check_batches:
    check_batch_sizes(config, mesh.size)
  data_plan = None
  if reads_data:
    data_plan = data.DataPlan(config.data)
    check_input_size(config, data_plan.image_size)  # saved runs and benchmarks: as they are
    image_shape, num_classes = data_plan.info.image_shape, data_plan.info.num_classes
  schedule = optim.make_lr_schedule(config)
  return RunPlan(config=config, mesh=mesh, model=_build_model(config, num_classes),
                 tx=optim.make_optimizer(config, schedule), schedule=schedule,
                 image_shape=tuple(image_shape), num_classes=int(num_classes),
                 keys=RunKeys.from_seed(config.seed), data=data_plan)
