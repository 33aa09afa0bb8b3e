"""Every config field's type and range, checked before anything runs: a table of bad values
per field of experiments/configs/default.py (data section included), so that a field added
without a check (or without a row here) fails; and hints that search the whole config."""

import pytest

from experiments.configs import default
from rattn import data, train
from rattn.data.config import DATA_FIELDS
from rattn.train import cli
from rattn.train.plan import FIELDS, MODEL_KWARGS

# field -> values it must refuse (each with its own one-paragraph error naming the field).
BAD_VALUES = {
    'model': ['', 3],
    'model_kwargs': [3],
    'allow_input_size_mismatch': ['yes', 1],
    'dtype': ['float16', 32],
    'init_from': [None, 3],
    'init_from_checkpoint': ['latest', 3, ''],
    'seed': [-1, 1.5, True],
    'batch_size': [0, -64, 64.0],
    'eval_batch_size': [0, '512'],
    'num_train_steps': [0, 1e5],
    'optimizer.name': ['adam'],
    'optimizer.momentum': [-0.1, 1.0, 'high'],
    'optimizer.nesterov': ['true'],
    'optimizer.weight_decay': [-1e-4, float('nan')],
    'optimizer.decay_all_params': [0],
    'schedule.name': ['linear'],
    'schedule.base_lr': [0.0, -0.1, float('inf')],
    'schedule.warmup_steps': [-1, 2.5],
    'schedule.boundaries': [(96_000, 64_000), (64_000, 64_000), (0, 10), (1.5,), 64_000],
    'schedule.decay_factor': [0.0, 1.5],
    'schedule.end_lr_fraction': [-0.1, 1.1],
    'label_smoothing': [1.0, -0.1],
    'mixup_alpha': [-0.2],
    'log_every': [0],
    'eval_every': [0],
    'checkpoint_every': [-1],
    'keep_checkpoints': [0],
    'data.dataset': ['', None],
    'data.data_dir': [3],
    'data.train_split': [''],
    'data.eval_split': [None],
    'data.augment': [''],
    'data.image_size': [0, 32.5],
    'data.label_noise': [1.5, -0.1],
    'data.noise_seed': [-1],
    'data.validation': [-0.1, 'five'],
    'data.validation_seed': [-1, 0.5],
    'data.label_source': [''],
    'data.num_workers': [-1, 2.0],
    'data.prefetch': [0],
    'data.shuffle': ['no'],
    'data.cache_in_memory': ['sometimes'],
    'data.download': ['maybe'],
    'data.normalise_on_device': [1],
}


def _leaf_paths(config, prefix=''):
  paths = []
  for key, value in config.items():
    if hasattr(value, 'items') and key != 'model_kwargs':
      paths += _leaf_paths(value, f'{prefix}{key}.')
    else:
      paths.append(prefix + key)
  return paths


def test_every_field_has_a_rule_and_rows_here():
  fields = set(_leaf_paths(default.get_config()))
  ruled = set(FIELDS) | {f'data.{f}' for f in DATA_FIELDS}
  assert fields - ruled == set(), 'fields without a rule in FIELDS / DATA_FIELDS'
  assert ruled - fields == set(), 'rules for fields default.py lacks'
  assert fields == set(BAD_VALUES), 'a field without bad values in this table (or vice versa)'


def _set(config, path, value):
  *parents, leaf = path.split('.')
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize('path, value', [(p, v) for p, vs in BAD_VALUES.items() for v in vs],
                         ids=lambda x: repr(x)[:30])
def test_a_bad_value_is_refused_in_one_paragraph_naming_the_field(path, value):
  config = default.get_config()
  _set(config, path, value)
  error = data.DataConfigError if path.startswith('data.') else train.ConfigError
  with pytest.raises(error) as raised:
    train.check_config(config)
  message = str(raised.value)
  assert message.startswith(f'config.{path}={value!r} is not valid: it is '), message
  assert f'. Give such a value, e.g. --config.{path}=' in message and '\n' not in message


def test_every_shipped_value_passes():
  train.check_config(default.get_config())  # and each config file, in test_configs.py


@pytest.mark.parametrize('kwarg, value', [('width', 0.0), ('width', -1.0), ('widths', (4, 0, 16)),
                                          ('widths', ()), ('p', 0), ('remat', 'no'),
                                          ('stage_widths', 256), ('pool_levels', (-1, 2, 1))])
def test_model_kwargs_types_and_ranges(kwarg, value):
  config = default.get_config()
  config.model_kwargs = {kwarg: value}
  with pytest.raises(train.ConfigError, match=rf'config\.model_kwargs\.{kwarg}=.* is not valid'):
    train.check_config(config)
  assert kwarg in MODEL_KWARGS


def test_width_zero_is_refused_in_words():
  config = default.get_config()
  config.model = 'ran56'
  config.model_kwargs = {'width': 0.0}
  with pytest.raises(train.ConfigError) as raised:
    train.check_config(config)
  assert str(raised.value) == (
      'config.model_kwargs.width=0.0 is not valid: it is the width multiplier of every layer, '
      'and must be a finite number > 0. Give such a value, e.g. --config.model_kwargs.width=1.0.')


def test_boundaries_inside_the_warm_up_are_refused():
  config = default.get_config()
  config.schedule.warmup_steps = 70_000
  with pytest.raises(train.ConfigError, match=r'boundaries=\(64000, 96000\) start within the '
                     r'warm-up'):
    train.check_config(config)


PATHS = _leaf_paths(default.get_config())


@pytest.mark.parametrize('flag, meant', [
    ('--config.optimizer.learning_rate=0.05', '--config.schedule.base_lr=0.05'),
    ('--config.optimizer.base_lr=0.05', '--config.schedule.base_lr=0.05'),
    ('--config.weight_decay=0', '--config.optimizer.weight_decay=0'),
    ('--config.data.batch_size=32', '--config.batch_size=32'),
    ('--config.schedule.milestones=(5,)', '--config.schedule.boundaries=(5,)'),
    ('--config.optimiser.momentum=0.5', '--config.optimizer.momentum=0.5'),
    ('--config.data.imagesize=32', '--config.data.image_size=32'),
    ('--config.epochs=90', '--config.num_train_steps (counted in steps, not epochs)'),
])
def test_closest_name_hints_search_the_whole_config(flag, meant):
  field = flag.split('=')[0].split('.')
  missing = next(p for i, p in enumerate(field[1:], 1)
                 if '.'.join(field[1:i + 1]) not in PATHS and not any(
                     q.startswith('.'.join(field[1:i + 1]) + '.') for q in PATHS))
  suggestion = {'optimiser': 'optimizer', 'imagesize': 'image_size'}.get(missing)
  error = KeyError(f"'{missing}'" + (f'\nDid you mean "{suggestion}" instead of "{missing}"?'
                                     if suggestion else ''))
  message = cli.config_override_message(error, ['--config=tiny.py', flag], paths=PATHS)
  assert f'Did you mean {meant}?' in message, message


def test_no_hint_without_a_candidate():
  message = cli.config_override_message(KeyError("'zzqx'"), ['--config.zzqx=1'], paths=PATHS)
  assert 'Did you mean' not in message and 'Check the spelling' in message
