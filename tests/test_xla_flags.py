"""rattn's XLA:CPU option (rattn/_xla_flags.py): how it joins XLA_FLAGS, and that it keeps
initial parameters bit-identical while no threefry loop is outlined into its own kernel."""

import json
import os
import subprocess
import sys

import pytest

from rattn import _xla_flags

ENTRY = f'{_xla_flags.OPTION}={_xla_flags.VALUE}'


@pytest.mark.parametrize('before, after', [
    ('', f'--xla_backend_extra_options={ENTRY}'),
    ('--xla_dump_to=/tmp/d', f'--xla_dump_to=/tmp/d --xla_backend_extra_options={ENTRY}'),
    ('--xla_backend_extra_options=a=1 --xla_dump_to=/tmp/d',
     f'--xla_backend_extra_options=a=1,{ENTRY} --xla_dump_to=/tmp/d'),
    ('--xla_backend_extra_options=', f'--xla_backend_extra_options={ENTRY}'),
    # The user's own value is kept.
    (f'--xla_backend_extra_options={_xla_flags.OPTION}=4096',
     f'--xla_backend_extra_options={_xla_flags.OPTION}=4096'),
])
def test_option_joins_xla_flags(before, after):
  assert _xla_flags.with_small_loop_threshold(before) == after
  environ = {'XLA_FLAGS': before} if before else {}
  _xla_flags.configure(environ)
  assert environ['XLA_FLAGS'] == after


_INIT = r'''
import hashlib, json, sys
import jax
if sys.argv[1] == 'xla_defaults':
  jax.devices()  # the backend starts before rattn sets XLA_FLAGS: XLA's own defaults
import rattn, numpy as np
from rattn.attention import create_attention
model = create_attention('cbam')
x = np.zeros((1, 8, 8, 32), np.float32)
compiled = jax.jit(lambda key: model.init(key, x)).lower(jax.random.key(3)).compile()
variables = compiled(jax.random.key(3))
digest = hashlib.sha256()
for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
  digest.update(jax.tree_util.keystr(path).encode() + np.asarray(leaf).tobytes())
print(json.dumps({'small_calls': compiled.as_text().count('xla_cpu_small_call'),
                  'sha256': digest.hexdigest()}))
'''


def _init_in_subprocess(mode):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', _INIT, mode], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_parameters_identical_without_outlined_loops():
  ours, default = _init_in_subprocess('rattn'), _init_in_subprocess('xla_defaults')
  assert ours['small_calls'] == 0  # jaxlib 0.12 with XLA's defaults: one per threefry loop
  assert ours['sha256'] == default['sha256']
