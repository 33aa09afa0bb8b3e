r"""The paper's CIFAR experiments: Attention-56/92/236/452 and the pre-act ResNet-164 baseline.

One file for the whole family; the config argument (after the colon) picks the
variant as comma-separated key=value pairs, all optional:

  model      ran56_cifar | ran92_cifar (default) | ran236_cifar | ran452_cifar
             | preact_resnet164 (the paper's baseline)
  dataset    cifar10 (default) | cifar100
  attention  mixed (default) | channel | spatial  (mask activation, paper Sec. 3.3)
  learning   arl (default, attention residual learning (1 + M) T) | nal (naive M T)
  noise      symmetric label-noise rate on the training labels, 0 (default) to 1
  seed       integer, default 0

  python -m experiments.cifar --workdir /tmp/ran92_c10 \
      --config experiments/configs/ran_cifar.py
  python -m experiments.cifar --workdir /tmp/ran92_c100 \
      --config experiments/configs/ran_cifar.py:dataset=cifar100
  python -m experiments.cifar --workdir /tmp/ran56_nal \
      --config experiments/configs/ran_cifar.py:model=ran56_cifar,learning=nal
  python -m experiments.cifar --workdir /tmp/ran56_spatial \
      --config experiments/configs/ran_cifar.py:model=ran56_cifar,attention=spatial
  python -m experiments.cifar --workdir /tmp/ran92_noise30 \
      --config experiments/configs/ran_cifar.py:noise=0.3
  python -m experiments.cifar --workdir /tmp/resnet164_noise30 \
      --config experiments/configs/ran_cifar.py:model=preact_resnet164,noise=0.3

Recipe (paper Sec. 4.1): batch 64, SGD Nesterov 0.9, weight decay 1e-4, lr 0.1
divided by 10 at 64k and 96k iterations, 160k iterations; pad 4 + random crop +
horizontal flip; per-channel normalisation. The full CIFAR-10/100 training sets
are needed (the offline ../shared/tfds holds only a CIFAR-10 subset). The paper
trained on all 50,000 training images; here 2,500 (5%, class-balanced) are held
out by default as the validation split that the evaluations every 4,000 steps
and the kept best checkpoint use, and the test set is evaluated once, at the
end. --config.data.validation=0 trains on all 50,000, as the paper did, and
reports the final checkpoint.

Runtime: to be measured on an accelerator by the lead engineer (160k steps of
batch 64; far too long for a 2-core CPU).

Expected test error, the paper's figures (not yet reproduced here):
  CIFAR-10:  Attention-92 4.99%, Attention-236 4.14%, Attention-452 3.90%;
             pre-act ResNet-164 5.46% (He et al. 2016).
  CIFAR-100: Attention-92 21.71%, Attention-452 20.45%; pre-act ResNet-164 24.33%.
  Ablations (CIFAR-10): ARL beats NAL at every depth, the gap widening with depth
  (Table 1); mixed attention has the lowest error of the three types (Table 3);
  Attention-92 stays ahead of ResNet-164 at every noise level from 10% to 70% (Table 5).
"""

from typing import Dict

import ml_collections

from experiments.configs import default

RAN_MODELS = ('ran56_cifar', 'ran92_cifar', 'ran236_cifar', 'ran452_cifar')
BASELINES = ('preact_resnet164',)
DATASETS = ('cifar10', 'cifar100')
ATTENTION_TYPES = ('mixed', 'channel', 'spatial')
LEARNING = {'arl': True, 'nal': False}
DEFAULTS = {'model': 'ran92_cifar', 'dataset': 'cifar10', 'attention': 'mixed',
            'learning': 'arl', 'noise': '0', 'seed': '0'}


def parse_arg(arg: str | None, defaults: Dict[str, str] = DEFAULTS,
              config_name: str = 'ran_cifar.py') -> Dict[str, str]:
  """'model=ran56_cifar,noise=0.3' -> every key of ``defaults``, given values filled in."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key, value = key.strip(), value.strip()
    if not sep or key not in defaults:
      raise ValueError(f'{config_name}: bad config argument {item!r}; use key=value pairs '
                       f'with keys {", ".join(defaults)}.')
    values[key] = value
  return values


def _choice(key: str, value: str, valid) -> str:
  if value not in valid:
    raise ValueError(f'ran_cifar.py: {key}={value!r} is not valid; use one of '
                     f'{", ".join(valid)}.')
  return value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  config = default.get_config()
  config.model = _choice('model', args['model'], RAN_MODELS + BASELINES)
  if config.model in RAN_MODELS:
    config.model_kwargs = dict(
        attention_type=_choice('attention', args['attention'], ATTENTION_TYPES),
        residual_learning=LEARNING[_choice('learning', args['learning'], tuple(LEARNING))],
        # True recomputes activations in the backward pass: less memory, more compute.
        remat=False,
    )
  elif (args['attention'], args['learning']) != (DEFAULTS['attention'], DEFAULTS['learning']):
    raise ValueError(f'ran_cifar.py: attention= and learning= apply to the Residual Attention '
                     f'Networks ({", ".join(RAN_MODELS)}), not to {config.model}.')
  config.data.dataset = _choice('dataset', args['dataset'], DATASETS)
  try:
    noise, seed = float(args['noise']), int(args['seed'])
  except ValueError as e:
    raise ValueError(f'ran_cifar.py: noise must be a number and seed an integer ({e}).') from e
  if not 0.0 <= noise <= 1.0:
    raise ValueError(f'ran_cifar.py: noise={noise} must be a rate in [0, 1].')
  config.data.label_noise = noise
  config.seed = seed
  # The paper's recipe is default.py's; nothing else changes between variants.
  return config
