r"""Converts a PyTorch checkpoint into a rattn workdir (evaluate, visualise or fine-tune it).

  python -m experiments.convert --model se_resnet50 --from seresnet50.safetensors \
      --workdir /tmp/se_resnet50_imagenet
  python -m experiments.cifar --config experiments/configs/default.py --workdir /tmp/ft \
      --config.model=se_resnet50 --config.init_from=/tmp/se_resnet50_imagenet ...

Which checkpoint layouts map onto which model: ``rattn.convert.CHECKPOINT_LAYOUTS``.
The workdir gets a step-0 checkpoint (params, batch_stats, a fresh optimiser
state) and the run files of an ImageNet run (config.json, dataset_info.json);
dataset_info.json also records the source file and its sha256.
"""

import hashlib
import pathlib

import jax
from absl import app, flags

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
_FROM = flags.DEFINE_string('from', None, 'The PyTorch state dict: .safetensors, or .pth/.pt '
                            '(needs torch).', flag_values=FLAGS)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the checkpoint\'s '
                                    'classifier (ImageNet: 1000).', flag_values=FLAGS)
_DATASET = 'imagenet2012'  # what the released weights were trained on


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
  config.data.dataset = _DATASET
  config.data.image_size = 224
  config.data.eval_split = 'validation'
  return config


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
  # Writable, or one clear error before any reading.
  workdir_files.make_workdir(
      workdir, 'the converted weights are written there as a step-0 checkpoint with run files')
  state_dict = convert.read_state_dict(source)
  config = imagenet_config(_MODEL.value)
  size = MODELS.info(config.model).get('image_size', 224) if config.model in MODELS else 224
  image_shape, num_classes = (size, size, 3), int(_NUM_CLASSES.value)
  plan = make_plan(config, image_shape=image_shape, num_classes=num_classes)
  template = plan.abstract_state()
  variables = convert.convert_state_dict(
      config.model, state_dict, {'params': template.params, 'batch_stats': template.batch_stats})
  state = jax.device_put(TrainState.create(
      apply_fn=plan.model.apply, params=variables['params'], tx=plan.tx,
      batch_stats=variables.get('batch_stats', {})), replicated(plan.mesh))
  spec = datasets.SPECS[_DATASET]
  info = datasets.DatasetInfo(name=_DATASET, num_classes=num_classes, image_shape=image_shape,
                              num_train=1_281_167, num_eval=50_000, mean=spec.mean, std=spec.std)
  weights = {'file': str(source.absolute()), 'sha256': _sha256(source)}
  checkpoints = Checkpointer(checkpoints_dir)
  try:
    checkpoints.save(0, state)
  finally:
    checkpoints.close()
  workdir_files.write_run_files(workdir, config, info, None, weights=weights)
  print(f'Converted {source} (sha256 {weights["sha256"][:16]}...) onto {config.model}: '
        f'{count_params(variables=state.variables()):,} parameters, {num_classes} classes, '
        f'{size}x{size} input. Wrote {workdir} (checkpoint at step 0, config.json, '
        f'{workdir_files.DATASET_INFO_FILE}).')


if __name__ == '__main__':
  cli.run(main)
