r"""The base config: every field a training run reads, with the paper's CIFAR recipe.

Other configs start from ``default.get_config()`` and override a few fields.
The returned config is locked: assigning a field that does not exist (a typo,
in a config file or as ``--config.x.y=...`` on the command line) fails and
names the closest real field. ``model_kwargs`` is declared whole by each
config (``config.model_kwargs = dict(...)``), so the command line can override
exactly the keyword arguments that config's model takes.

This file is a template, not an experiment (ran92_cifar for 160k steps, the
paper's CIFAR-10 setting; see ran_cifar.py for the runnable family):

  python -m experiments.cifar --config experiments/configs/default.py --workdir /tmp/run

Training recipe (Wang et al. 2017, Sec. 4.1): SGD, Nesterov momentum 0.9,
weight decay 1e-4, batch 64, lr 0.1 divided by 10 at 64k and 96k iterations,
stop at 160k; 4-pixel pad + random crop + horizontal flip; per-channel
normalisation. Runtime: to be measured on an accelerator (far too long for a
CPU). Expected test error: 4.99% on CIFAR-10 (the paper's figure for
Attention-92; needs the full CIFAR-10 in the data dir).
"""

import ml_collections

from rattn.data.config import data_config


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()

  # Model: a name from rattn.models.list_models() and that model's keyword arguments.
  config.model = 'ran92_cifar'
  config.model_kwargs = ml_collections.ConfigDict()
  # A model is refused on images more than 2x larger or smaller than the size it was
  # designed for (its registry entry's image_size, e.g. 224 for ran56, 32 for ran56_cifar);
  # True runs it anyway.
  config.allow_input_size_mismatch = False
  # Compute dtype: 'float32' or 'bfloat16' (parameters and the loss stay float32).
  config.dtype = 'float32'
  # A converted (experiments.convert) or trained workdir whose weights start the run
  # (fine-tuning); ignored once the run has its own checkpoints. '' starts from scratch.
  config.init_from = ''
  # Which of init_from's checkpoints: 'final' (its latest), 'best' (the best on its
  # validation split) or a step number.
  config.init_from_checkpoint = 'final'

  config.data = data_config()

  config.seed = 0  # initialisation, data order, augmentation and mixup
  config.batch_size = 64  # global: split over all devices of all processes
  config.eval_batch_size = 512  # padded and masked, so it need not divide the split
  config.num_train_steps = 160_000

  # SGD with coupled L2 weight decay, as in Caffe/PyTorch (see rattn/train/optim.py).
  config.optimizer = ml_collections.ConfigDict(dict(
      name='sgd',
      momentum=0.9,
      nesterov=True,
      weight_decay=1e-4,
      # Caffe's default: decay every parameter, BatchNorm scale/shift and biases too.
      decay_all_params=True,
  ))
  # 'piecewise': base_lr * decay_factor^(boundaries passed); 'cosine': to
  # base_lr * end_lr_fraction at num_train_steps. Both after warmup_steps of linear ramp.
  config.schedule = ml_collections.ConfigDict(dict(
      name='piecewise',
      base_lr=0.1,
      warmup_steps=0,
      boundaries=(64_000, 96_000),
      decay_factor=0.1,
      end_lr_fraction=0.0,
  ))
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0  # 0 disables mixup

  config.log_every = 100
  # Evaluations of the validation split (data.validation); the test split (data.eval_split)
  # is evaluated once, at the last step.
  config.eval_every = 4_000
  config.checkpoint_every = 2_000
  # The latest ones; the best by validation accuracy (data.validation) is kept as well.
  config.keep_checkpoints = 3

  config.lock()
  return config
