"""Test set-up: 8 simulated CPU devices and the offline tfds data dir.

The device count must be fixed before JAX initialises its backends, so it is
set here, at collection time, before any test imports a model.
"""

import os
import pathlib

import jax
import pytest

jax.config.update('jax_num_cpu_devices', 8)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / 'shared' / 'tfds'
if 'TFDS_DATA_DIR' not in os.environ and SHARED_TFDS.is_dir():
  os.environ['TFDS_DATA_DIR'] = str(SHARED_TFDS)
# tfds.testing.mock_data "prepares" datasets with a no-op, which works offline too.
os.environ.setdefault('RATTN_DATA_DOWNLOAD', 'true')


@pytest.fixture(scope='session')
def real_data_dir():
  """The prepared offline datasets (../shared/tfds); skips the test where absent."""
  path = os.environ.get('TFDS_DATA_DIR')
  if not path or not (pathlib.Path(path) / 'cifar10').is_dir():
    pytest.skip('prepared tfds data not found: set TFDS_DATA_DIR or place ../shared/tfds '
                'beside the repository')
  return path
