r"""The paper's ImageNet experiments: Attention-56/92 (and deeper) and ResNet baselines.

The config argument picks the variant as comma-separated key=value pairs:

  model      ran56 (default) | ran92 | ran128 | ran164 | resnet50 | resnet101 | resnet152
  attention  mixed (default) | channel | spatial   (RAN models only)
  learning   arl (default) | nal                   (RAN models only)
  seed       integer, default 0

  python -m experiments.imagenet --workdir /tmp/ran56_in \
      --config experiments/configs/ran_imagenet.py
  python -m experiments.imagenet --workdir /tmp/ran92_in \
      --config experiments/configs/ran_imagenet.py:model=ran92 --config.dtype=bfloat16

Recipe (paper Sec. 4.2): batch 256, SGD Nesterov 0.9, weight decay 1e-4, lr 0.1
divided by 10 at 200k, 400k and 500k iterations, stop at 530k; scale and
aspect-ratio augmentation (random-resized crop 224 + flip), single centre
crop for eval. Needs ImageNet prepared in the tfds data dir (see
experiments/imagenet.py).

Runtime: to be measured on accelerators (530k steps of batch 256; 8+ GPUs or a
TPU slice); remat (--config.model_kwargs.remat=True) halves activation memory.

Expected single-crop validation error, the paper's figure (not reproduced
here): Attention-92 top-5 4.8% (abstract); the rest in the paper's Table 7.
"""

import ml_collections

from experiments.configs import default
from experiments.configs.ran_cifar import ATTENTION_TYPES, LEARNING, parse_arg

RAN_MODELS = ('ran56', 'ran92', 'ran128', 'ran164')
BASELINES = ('resnet50', 'resnet101', 'resnet152')
DEFAULTS = {'model': 'ran56', 'attention': 'mixed', 'learning': 'arl', 'seed': '0'}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, DEFAULTS, 'ran_imagenet.py')
  config = default.get_config()
  if args['model'] not in RAN_MODELS + BASELINES:
    raise ValueError(f'ran_imagenet.py: model={args["model"]!r} is not valid; use one of '
                     f'{", ".join(RAN_MODELS + BASELINES)}.')
  config.model = args['model']
  if config.model in RAN_MODELS:
    if args['attention'] not in ATTENTION_TYPES or args['learning'] not in LEARNING:
      raise ValueError(f'ran_imagenet.py: attention must be one of {ATTENTION_TYPES} and '
                       f'learning one of {tuple(LEARNING)}.')
    config.model_kwargs = dict(attention_type=args['attention'],
                               residual_learning=LEARNING[args['learning']], remat=False)
  elif (args['attention'], args['learning']) != ('mixed', 'arl'):
    raise ValueError('ran_imagenet.py: attention= and learning= apply to the Residual '
                     f'Attention Networks ({", ".join(RAN_MODELS)}), not to {config.model}.')
  config.seed = int(args['seed'])

  config.data.dataset = 'imagenet2012'
  config.data.eval_split = 'validation'
  config.data.num_workers = 8  # decoding JPEGs needs processes, not threads
  config.data.normalise_on_device = True  # uint8 to the device; the step standardises
  config.batch_size = 256
  config.eval_batch_size = 1024
  config.num_train_steps = 530_000
  config.schedule.boundaries = (200_000, 400_000, 500_000)
  config.log_every = 500
  config.eval_every = 10_000
  config.checkpoint_every = 5_000
  return config
