"""The install keeps what a host already has: its jax (with an accelerator plugin) and Colab's
TensorFlow. Checked with pip's real resolver (``pip install --dry-run --report``) in a venv
that sees this environment's packages (the newest jax, which CI installs) plus the
distributions a CUDA host or Colab adds, recorded as installed.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
from importlib import metadata

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'visualize_masks.ipynb'
# What an accelerator host's JAX consists of: none of it may change.
JAX_FAMILY = re.compile(r'^(jax|jaxlib|jax[-_]cuda\d+[-_](plugin|pjrt)|libtpu.*)$')


def _fake_installed(site: pathlib.Path, name: str, version: str) -> None:
  """Records ``name==version`` as installed (metadata only), as pip sees a real install."""
  info = site / f'{name.replace("-", "_")}-{version}.dist-info'
  info.mkdir(parents=True)
  (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
  (info / 'INSTALLER').write_text('pip\n')
  (info / 'RECORD').write_text('')


@pytest.fixture(scope='module')
def host_venv(tmp_path_factory):
  """A venv over this environment's packages, plus a jax CUDA plugin and Colab's tensorflow."""
  root = tmp_path_factory.mktemp('host')
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(root / 'venv')],
                 check=True)
  python = root / 'venv' / 'bin' / 'python'
  site = pathlib.Path(subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      check=True, capture_output=True, text=True).stdout.strip())
  jaxlib = metadata.version('jaxlib')
  _fake_installed(site, 'jax-cuda12-plugin', jaxlib)
  _fake_installed(site, 'jax-cuda12-pjrt', jaxlib)
  _fake_installed(site, 'tensorflow', '2.20.0')
  return python


def _would_install(python: pathlib.Path, *requirement: str) -> dict:
  """{name: version} that ``pip install REQUIREMENT`` would install or change, per pip."""
  out = subprocess.run(
      [python, '-m', 'pip', 'install', '--dry-run', '--quiet', '--report', '-',
       '--disable-pip-version-check', '--no-build-isolation', *requirement],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  report = json.loads(out.stdout)
  return {item['metadata']['name'].lower().replace('_', '-'): item['metadata']['version']
          for item in report['install']}


def _newest_on_index(name: str) -> str:
  out = subprocess.run([sys.executable, '-m', 'pip', 'index', 'versions', name,
                        '--disable-pip-version-check'], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return re.search(rf'^{name} \(([^)]+)\)', out.stdout, re.M).group(1)


@pytest.mark.slow
def test_install_on_a_host_with_the_newest_jax_changes_no_jax_and_adds_no_tensorflow(host_venv):
  if os.environ.get('CI'):  # CI claims to test current JAX: its environment must have it
    installed = {n: metadata.version(n) for n in ('jax', 'jaxlib')}
    assert installed == {n: _newest_on_index(n) for n in installed}, (
        f'this environment has {installed}, not the newest release; reinstall with '
        '`pip install -U -e ".[dev]"` to test the install against current JAX')
  changes = _would_install(host_venv, '-e', str(REPO))
  assert 'rattn' in changes  # the resolver really ran on the project
  assert not [n for n in changes if JAX_FAMILY.match(n)], changes
  assert not [n for n in changes if n.startswith('tensorflow') and n != 'tensorflow-datasets'
              ], changes


@pytest.mark.slow
def test_prepare_extra_keeps_an_installed_tensorflow(host_venv):
  changes = _would_install(host_venv, '-e', f'{REPO}[prepare]')
  assert not [n for n in changes if n in ('tensorflow', 'tensorflow-cpu')], changes
  assert not [n for n in changes if JAX_FAMILY.match(n)], changes


@pytest.mark.slow
def test_the_colab_cell_installs_without_replacing_jax_or_tensorflow(host_venv):
  """The notebook's install step, as its first code cell runs it in Colab."""
  cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == 'code')
  match = re.search(r"subprocess\.run\(\[sys\.executable, '-m', 'pip', 'install', "
                    r"((?:'[^']+', )*)REPO_DIR\]", cell.source)
  assert match, 'the install cell no longer calls pip install ... REPO_DIR'
  args = re.findall(r"'([^']+)'", match.group(1))
  changes = _would_install(host_venv, *[a for a in args if a != '-q'], str(REPO))
  assert 'rattn' in changes
  assert not [n for n in changes if JAX_FAMILY.match(n) or n.startswith('tensorflow-cpu')
              or n == 'tensorflow'], changes
