"""Workdir I/O on local disk or object storage (`gs://`, `s3://`), through `etils.epath`.

Every file a stage reads or writes in its workdir goes through here, so `--workdir=gs://bucket/run`
puts all of it in the bucket (Orbax already writes checkpoints through epath and tensorstore).
Paths stay plain strings: `os.path.join`, `dirname` and `basename` are pure string operations and
keep `gs://` intact; `os.path.abspath`, `normpath` and the `os.path.exists` family do not (they
read `gs://b/x` as a relative local path), so their uses on workdir paths call `abspath`,
`exists`, ... below instead.

What differs on object storage, and why:
- No rename: an object's PUT is already atomic (a reader sees the old object or the new one,
  never part of it), so `write_*_atomic` writes the final name directly there, while on local disk
  it keeps tmp + fsync + rename. A folder cannot be renamed atomically either:
  `checkpoint.save_final` relies on its COMPLETE marker, written last, instead.
- No append: an object is rewritten whole (metrics.jsonl: `train/loop.MetricsWriter`).
- No folders: `makedirs` is a no-op there; a "folder" exists once an object lies under it.
- No listing cache: gcsfs caches listings per process, and another process (a second host, or
  the next run) may have written since; every check here asks the server.
"""

from __future__ import annotations

import builtins
import os
import shutil

import fsspec
from etils import epath

# Listings are cached per filesystem instance; a stale one would hide another process's files
# (e.g. annotate's shard markers written by other hosts).
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


def is_remote(path) -> bool:
  """True for object-storage URIs (gs://, s3://, ...), False for local paths."""
  return "://" in str(path)


def path(p) -> epath.Path:
  return epath.Path(p)


def abspath(p: str) -> str:
  """Local: os.path.abspath; a URI is already absolute (os.path.abspath would mangle it)."""
  return str(p).rstrip("/") if is_remote(p) else os.path.abspath(p)


def realpath(p: str) -> str:
  """Local: os.path.realpath (symlinks resolved); a URI as it is."""
  return str(p).rstrip("/") if is_remote(p) else os.path.realpath(p)


def exists(p) -> bool:
  return epath.Path(p).exists()


def isdir(p) -> bool:
  return epath.Path(p).is_dir()


def isfile(p) -> bool:
  return epath.Path(p).is_file()


def makedirs(p) -> None:
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def listdir(p) -> list[str]:
  """Names under folder `p` (empty when there is none)."""
  folder = epath.Path(p)
  return sorted(child.name for child in folder.iterdir()) if folder.exists() else []


def open(p, mode: str = "r", **kwargs):  # noqa: A001 - the one open() of workdir files
  return epath.Path(p).open(mode, **kwargs)


def read_text(p) -> str:
  return epath.Path(p).read_text(encoding="utf-8")


def read_bytes(p) -> bytes:
  return epath.Path(p).read_bytes()


def write_bytes_atomic(p, data: bytes) -> None:
  """A reader sees the old content or the new, never part (see the module doc)."""
  if is_remote(p):
    epath.Path(p).write_bytes(data)
    return
  tmp = f"{p}.tmp"
  with builtins.open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, p)


def write_text_atomic(p, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def remove(p) -> None:
  """Deletes file `p`; absent is fine."""
  target = epath.Path(p)
  if target.exists():
    target.unlink()


def rmtree(p) -> None:
  """Deletes folder `p` and everything under it; absent is fine."""
  if not is_remote(p):
    if os.path.exists(p):
      shutil.rmtree(p)
    return
  target = epath.Path(p)
  if target.exists():
    target.rmtree()


def upload_tree(local_dir: str, dest: str) -> None:
  """Copies local folder `local_dir` to `dest` (any epath), file by file."""
  for root, _, files in os.walk(local_dir):
    for name in files:
      src = os.path.join(root, name)
      target = epath.Path(dest) / os.path.relpath(src, local_dir)
      makedirs(str(target.parent))
      target.write_bytes(read_bytes(src))



def mtime_ns(p) -> int:
  """Modification time in ns (a bucket: the object's update time)."""
  if not is_remote(p):
    return os.stat(p).st_mtime_ns
  return int(epath.Path(p).stat().mtime * 1e9)
