"""One live run per workdir: a lock file that works on local disks and object stores alike.

    with hold(workdir):            # WorkdirError if another live run holds it
      ...                          # train

``WORKDIR/lock.json`` names its owner (host, pid, start time, a random token)
and a heartbeat, the time the owner last rewrote it; a daemon thread rewrites
it every ``HEARTBEAT_S`` seconds. A lock whose owner is gone never blocks: on
the owner's own host when its pid no longer exists (a run killed with
``kill -9``), anywhere when its heartbeat is older than ``STALE_AFTER_S`` (a
machine that died); such a lock is taken over with a warning.

Object stores (gs://) offer neither ``O_EXCL`` nor an atomic rename, so taking
the lock is write, wait ``SETTLE_S`` (longer for object stores than for local
disks), read back: of two runs that start together the last writer keeps the
lock and the other, reading a token not its own, is refused. The file is read
and written with ``etils.epath``. Only process 0 of a multi-process run takes
it (the trainer passes ``enabled``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import threading
import time
from typing import Any, Dict, Iterator, Optional

from absl import logging
from etils import epath

from rattn.train.workdir import WorkdirError, is_remote

LOCK_FILE = 'lock.json'
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# How long a written lock settles before it is read back: an object store's write-to-read
# round trip is far longer than a local file's.
SETTLE_S = {'local': 0.2, 'remote': 1.0}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def _read(path: epath.Path) -> Optional[Dict[str, Any]]:
  """The lock's fields; None without a lock; {} for a file that is not (yet) a lock."""
  try:
    owner = json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError):
    return {}
  return owner if isinstance(owner, dict) else {}


@dataclasses.dataclass
class WorkdirLock:
  """The lock of ``workdir``; ``host``/``pid`` name this process (tests give others)."""
  workdir: Any
  host: str = dataclasses.field(default_factory=socket.gethostname)
  pid: int = dataclasses.field(default_factory=os.getpid)
  heartbeat_s: float = HEARTBEAT_S
  stale_after_s: float = STALE_AFTER_S
  settle_s: Optional[float] = None

  def __post_init__(self):
    self.path = epath.Path(self.workdir) / LOCK_FILE
    if self.settle_s is None:
      self.settle_s = SETTLE_S['remote' if is_remote(self.workdir) else 'local']
    self.token = secrets.token_hex(8)
    self.started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # ---------------------------------------------------------------- reading the owner

  def _why_stale(self, owner: Dict[str, Any]) -> Optional[str]:
    """Why the lock of ``owner`` no longer counts; None while its run is alive."""
    if not owner:
      return 'it is not a readable lock file'
    age = time.time() - float(owner.get('heartbeat', 0))
    if owner.get('host') == self.host and not _pid_alive(int(owner.get('pid', -1))):
      return f'its process {owner.get("pid")} no longer runs on this host'
    if age > self.stale_after_s:
      return f'its heartbeat stopped {age:.0f} s ago'
    return None

  def _busy(self, owner: Dict[str, Any]) -> WorkdirError:
    age = time.time() - float(owner.get('heartbeat', 0))
    return WorkdirError(
        f'--workdir {self.workdir} is in use by another run: process {owner.get("pid")} on '
        f'host {owner.get("host")}, started {owner.get("started")} (its lock {self.path} was '
        f'refreshed {max(age, 0):.0f} s ago). Two runs on one workdir overwrite each other\'s '
        'checkpoints and metrics, so this one did not start and changed nothing. Wait for '
        f'that run to end or stop it (kill {owner.get("pid")} on {owner.get("host")}), or use '
        'another --workdir. A lock whose process is gone does not block: on its host at once, '
        f'elsewhere {self.stale_after_s / 60:g} minutes after its last refresh.')

  # ---------------------------------------------------------------- taking and keeping it

  def _write(self) -> None:
    self.path.write_text(json.dumps({
        'host': self.host, 'pid': self.pid, 'started': self.started, 'token': self.token,
        'heartbeat': time.time()}))

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirError naming the live run that holds it."""
    owner = _read(self.path)
    if owner == {}:  # maybe being written right now: look again once it has settled
      time.sleep(self.settle_s)
      owner = _read(self.path)
    if owner is not None:
      why = self._why_stale(owner)
      if why is None:
        raise self._busy(owner)
      logging.warning('Taking over the lock %s of process %s on host %s (started %s): %s.',
                      self.path, owner.get('pid'), owner.get('host'), owner.get('started'), why)
    self._write()
    time.sleep(self.settle_s)
    owner = _read(self.path)
    if not owner or owner.get('token') != self.token:  # another run wrote after us
      raise self._busy(owner or {'pid': '?', 'host': '?', 'started': '?'})
    self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        owner = _read(self.path)
        if owner and owner.get('token') != self.token:
          logging.error('The lock %s was taken over by process %s on host %s: another run '
                        'now writes to this workdir too.', self.path, owner.get('pid'),
                        owner.get('host'))
          return
        self._write()
      except OSError as e:  # a full disk or a network hiccup: try again next beat
        logging.warning('Could not refresh the lock %s (%s).', self.path, e)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      owner = _read(self.path)
      if owner and owner.get('token') == self.token:
        self.path.unlink()
    except OSError as e:
      logging.warning('Could not remove the lock %s (%s); the next run takes it over.',
                      self.path, e)


@contextlib.contextmanager
def hold(workdir: Any, enabled: bool = True) -> Iterator[None]:
  """Holds ``workdir``'s lock while the block runs (nothing when not ``enabled``)."""
  if not enabled:
    yield
    return
  lock = WorkdirLock(workdir)
  lock.acquire()
  try:
    yield
  finally:
    lock.release()
