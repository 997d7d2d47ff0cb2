"""`<stage>/LOCK`: one run writes a stage folder at a time, on local disk or in a gs:// bucket.

Held by process 0 for the whole stage (stages.run, rd_jax.main: data, training, validation,
final/, summary; train/loop.run takes it too, re-entrantly). A second run of the same stage on the
same folder fails naming the holder (errors.StageLockHeld, exit code 5), instead of two writers
interleaving checkpoints and metrics. The LOCK holds {"host", "pid"} of the holder.

Local disk: created with O_CREAT | O_EXCL. A lock left by a killed run (its pid is gone on this
host) is taken over, so resume after SIGKILL needs no manual clean-up; one held from another
host cannot be checked for liveness: delete the file if that job is known dead.

gs://: a lease object. Object storage has no O_EXCL, but GCS has preconditions: an upload with
`ifGenerationMatch=0` succeeds only if the object does not exist, and one with
`ifGenerationMatch=<g>` only if nobody replaced generation g since it was read (HTTP 412
otherwise). So every change of the lease is one compare-and-swap request, and of two runs racing
for it exactly one wins. The lease also carries `expires` (wall-clock seconds): a thread renews it
every LEASE_SECONDS / 3 while the run lives, and a lease past its expiry (its run was killed on
any host), or one from this host whose pid is gone, is taken over. Hosts' clocks are assumed
synchronised to well within LEASE_SECONDS (NTP, as on TPU VMs).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import jax
from absl import logging

from rd_jax import errors, storage

# How long a lease outlives its last renewal; a killed run's stage is free again after this.
LEASE_SECONDS = float(os.environ.get("RD_JAX_LEASE_SECONDS", "60"))


class StageLock:
  """`with StageLock(stage_dir):` — see the module doc."""

  def __init__(self, stage_dir: str, reentrant: bool = False):
    self.path = os.path.join(stage_dir, "LOCK")
    self.held = False
    self.reentrant = reentrant  # True: a lock this process already holds is fine (not re-taken)
    self._lease = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    if storage.is_remote(self.path):
      if not self.path.startswith(("gs://", "gcs://")):
        raise errors.PathError(f"{self.path}: the stage lock on object storage needs GCS "
                               "preconditions; use a gs:// or a local workdir")
      self._lease = _Lease(self.path)
      self.held = self._lease.take(me, self.reentrant)
      return self
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        holder = self._holder()
        if self.reentrant and holder == me:  # rd_jax.main / stages.run hold the whole stage
          return self
        if holder and holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1)):
          os.remove(self.path)  # stale: its process is gone
          continue
        raise errors.StageLockHeld(_held_message(self.path, holder))
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      return self
    raise RuntimeError(f"could not take {self.path}")

  def _holder(self):
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def __exit__(self, *exc):
    if not self.held:
      return
    self.held = False
    if self._lease is not None:
      self._lease.release()
    else:
      os.remove(self.path)


class _Lease:
  """The gs:// lease: compare-and-swap uploads and deletes through gcsfs's JSON-API client."""

  def __init__(self, path: str):
    import gcsfs  # a dependency of etils.epath's gs:// backend
    self.path = path
    self.fs = gcsfs.GCSFileSystem()
    self.bucket, self.key, _ = self.fs.split_path(path)
    self.generation = None
    self._stop = threading.Event()
    self._thread = None

  def take(self, me: dict, reentrant: bool) -> bool:
    """True: taken (renewed from now on); False: this process already holds it (reentrant)."""
    for _ in range(3):
      holder, generation = self._read()
      if holder is None:
        if self._swap(me, "0"):
          self._start_renewing(me)
          return True
        continue            # another run created it first: look again
      if reentrant and {k: holder.get(k) for k in me} == me:
        return False
      if _is_stale(holder, me):
        logging.warning("%s: taking over the lease of %s (%s)", self.path, holder,
                        "expired" if holder.get("expires", 0) < time.time() else "pid gone")
        if self._swap(me, generation):
          self._start_renewing(me)
          return True
        continue            # another run took it over first: look again
      raise errors.StageLockHeld(_held_message(self.path, holder))
    raise RuntimeError(f"could not take {self.path}: it kept changing under us")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:   # only our own generation: a lease taken over meanwhile is not ours to delete
      self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=self.generation)
    except (FileExistsError, FileNotFoundError):
      logging.warning("%s: the lease was taken over or removed before this run released it",
                      self.path)

  def _read(self) -> tuple[dict | None, str]:
    try:
      info = self.fs.info(self.path)
      body = self.fs.cat_file(self.path)
    except FileNotFoundError:
      return None, "0"
    try:
      return json.loads(body), str(info["generation"])
    except ValueError:   # a torn or foreign object: treat as a lease that never renews
      return {"expires": 0}, str(info["generation"])

  def _swap(self, me: dict, expected_generation: str) -> bool:
    """Uploads our lease iff the object is still at `expected_generation` ("0": absent)."""
    body = json.dumps({**me, "expires": time.time() + LEASE_SECONDS}).encode()
    try:
      out = self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{self.bucket}/o",
                         uploadType="media", name=self.key, ifGenerationMatch=expected_generation,
                         headers={"Content-Type": "application/octet-stream"}, data=body, json_out=True)
    except FileExistsError:   # gcsfs's name for HTTP 412: the precondition failed
      return False
    self.generation = str(out["generation"])
    return True

  def _start_renewing(self, me: dict) -> None:
    def renew():
      while not self._stop.wait(LEASE_SECONDS / 3):
        try:
          renewed = self._swap(me, self.generation)
        except Exception as e:  # a network error: the lease holds until it expires; retry
          logging.warning("%s: lease renewal failed (%s); retrying", self.path, e)
          continue
        if not renewed:
          logging.error("%s: lost the stage lease (another run took it over after it expired: "
                        "was this run paused for over %.0f s?); two runs may now write this "
                        "stage", self.path, LEASE_SECONDS)
          return
    self._thread = threading.Thread(target=renew, name="stage-lease", daemon=True)
    self._thread.start()


def _is_stale(holder: dict, me: dict) -> bool:
  if holder.get("expires", 0) < time.time():
    return True
  return holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1))


def _held_message(path: str, holder) -> str:
  until = ""
  if holder and "expires" in holder:
    until = (f" until {time.strftime('%H:%M:%S', time.localtime(holder['expires']))} unless "
             f"renewed (a lease of {LEASE_SECONDS:.0f} s that its run renews while it lives)")
  return (f"{path} is held by {holder}{until} (another run of this stage is writing this "
          "folder); wait for it, or delete the file if it is dead")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True
