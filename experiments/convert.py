r"""Converts a PyTorch checkpoint into a rattn workdir (evaluate, visualise or fine-tune it).

  python -m experiments.convert --model se_resnet50 --from seresnet50.safetensors \
      --workdir /tmp/se_resnet50_imagenet
  python -m experiments.cifar --config experiments/configs/default.py --workdir /tmp/ft \
      --config.model=se_resnet50 --config.init_from=/tmp/se_resnet50_imagenet ...

Which checkpoint layouts map onto which model: ``rattn.convert.CHECKPOINT_LAYOUTS``.
The workdir gets a step-0 checkpoint (params, batch_stats, a fresh optimiser
state) and the run files of the dataset such weights are trained on
(config.json, dataset_info.json): ImageNet at 224 px for an ImageNet model,
CIFAR-10 (or CIFAR-100, with --num_classes=100) at 32 px for a CIFAR-layout
one, each with its dataset's statistics; dataset_info.json also records the
source file, its sha256 and the checkpoint entry read.
"""

import hashlib
import pathlib
from typing import Optional

import jax
from absl import app, flags
from etils import epath

from experiments.configs import default
from rattn import convert
from rattn.data import datasets
from rattn.models import MODELS
from rattn.models.summary import count_params
from rattn.train import cli
from rattn.train import workdir as workdir_files
from rattn.train.checkpoint import Checkpointer, CheckpointError
from rattn.train.plan import make_plan
from rattn.train.state import TrainState, replicated

FLAGS = cli.command_flags()  # this command's own flags (see rattn.train.cli)
flags.adopt_module_key_flags(cli)  # --workdir
_MODEL = flags.DEFINE_string('model', None, 'rattn model the checkpoint is for, one of '
                             f'{", ".join(sorted(convert.CHECKPOINT_LAYOUTS))}.', flag_values=FLAGS)
_FROM = flags.DEFINE_string('from', None, 'The PyTorch weights: .safetensors, or (with torch) '
                            '.pth/.pt/.bin/.pth.tar, a state dict or a training checkpoint '
                            "holding one ('state_dict', 'model', ...).", flag_values=FLAGS)
_EMA = flags.DEFINE_bool('ema', False, "Convert a training checkpoint's EMA weights "
                         "('state_dict_ema', 'model_ema', ...) instead of its plain ones.",
                         flag_values=FLAGS)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, "Classes of the checkpoint's classifier "
                                    '(default: 1000 for an ImageNet model, 10 for a CIFAR one; '
                                    'a CIFAR model with 100 is a CIFAR-100 one).',
                                    flag_values=FLAGS)
flags.register_validator('num_classes', lambda n: n is None or n >= 1,
                         '--num_classes must be a positive number of classes.', flag_values=FLAGS)
# The datasets the released weights of each input size were trained on, by class count.
_DATASETS = {224: {1000: 'imagenet2012'}, 32: {10: 'cifar10', 100: 'cifar100'}}


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def imagenet_config(model: str):
  """The default config with ``model`` and ImageNet's data section (224 px, validation)."""
  config = default.get_config()
  config.model = model
  config.data.dataset = 'imagenet2012'
  config.data.image_size = 224
  config.data.eval_split = 'validation'
  return config


def run_config(model: str, num_classes: Optional[int]):
  """The config and ``DatasetInfo`` of the run files for ``model``'s converted weights: an
  ImageNet model at 224 px on ImageNet, a CIFAR-layout one at 32 px on CIFAR-10 (or -100),
  each with that dataset's statistics."""
  size = MODELS.info(model).get('image_size', 224) if model in MODELS else 224
  size = 32 if size <= 64 else 224
  num_classes = num_classes or (1000 if size == 224 else 10)
  dataset = _DATASETS[size].get(num_classes)
  if dataset is None:
    raise app.UsageError(
        f'--num_classes={num_classes}: {model} takes {size}x{size} images, and the datasets '
        f'of that size have {" or ".join(map(str, _DATASETS[size]))} classes '
        f'({", ".join(_DATASETS[size].values())}). Give the classifier size of the '
        'checkpoint, one of those.')
  if size == 224:
    config = imagenet_config(model)
  else:
    config = default.get_config()
    config.model = model
    config.data.dataset = dataset
  spec = datasets.SPECS[dataset]
  num_train, num_eval = _SPLIT_SIZES[dataset]
  info = datasets.DatasetInfo(name=dataset, num_classes=num_classes,
                              image_shape=(size, size, spec.channels), num_train=num_train,
                              num_eval=num_eval, mean=spec.mean, std=spec.std)
  return config, info


_SPLIT_SIZES = {'imagenet2012': (1_281_167, 50_000), 'cifar10': (50_000, 10_000),
                'cifar100': (50_000, 10_000)}


@cli.command(FLAGS)
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.require('model', 'from', 'workdir')
  source, workdir = pathlib.Path(_FROM.value), workdir_files.resolve(cli.WORKDIR.value)
  checkpoints_dir = workdir_files.checkpoint_dir(workdir)
  if checkpoints_dir.is_dir() and any(checkpoints_dir.iterdir()):
    raise CheckpointError(f'{checkpoints_dir} already holds checkpoints; converting into it '
                          'would mix them with the converted weights. Nothing was written: '
                          'pass a new --workdir (or remove that one yourself).')
  convert.check_source(source)  # before the workdir is created
  config, info = run_config(_MODEL.value, _NUM_CLASSES.value)
  created = not workdir.exists()
  # Writable, or one clear error before any reading.
  workdir_files.make_workdir(
      workdir, 'the converted weights are written there as a step-0 checkpoint with run files')
  try:
    _convert(source, workdir, config, info)
  except BaseException:
    if created:  # a failed conversion leaves no half-made workdir behind
      workdir.rmtree(missing_ok=True)
    raise


def _convert(source: pathlib.Path, workdir: epath.Path, config, info) -> None:
  notes = []
  state_dict = convert.read_state_dict(source, ema=_EMA.value, notes=notes)
  image_shape, num_classes = info.image_shape, info.num_classes
  plan = make_plan(config, image_shape=image_shape, num_classes=num_classes)
  template = plan.abstract_state()
  variables = convert.convert_state_dict(
      config.model, state_dict, {'params': template.params, 'batch_stats': template.batch_stats})
  state = jax.device_put(TrainState.create(
      apply_fn=plan.model.apply, params=variables['params'], tx=plan.tx,
      batch_stats=variables.get('batch_stats', {})), replicated(plan.mesh))
  weights = {'file': str(source.absolute()), 'sha256': _sha256(source)}
  if notes:
    weights['read'] = ' in '.join(reversed(notes))
  checkpoints = Checkpointer(workdir_files.checkpoint_dir(workdir))
  try:
    checkpoints.save(0, state)
  finally:
    checkpoints.close()
  workdir_files.write_run_files(workdir, config, info, None, weights=weights)
  read = f', {weights["read"]}' if notes else ''
  print(f'Converted {source} (sha256 {weights["sha256"][:16]}...{read}) onto {config.model}: '
        f'{count_params(variables=state.variables()):,} parameters, {num_classes} classes, '
        f'{image_shape[0]}x{image_shape[1]} input, run files of {info.name}. Wrote {workdir} '
        f'(checkpoint at step 0, config.json, {workdir_files.DATASET_INFO_FILE}).')

if __name__ == '__main__':
  cli.run(main)
