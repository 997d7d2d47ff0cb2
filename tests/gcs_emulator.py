"""A local Google Cloud Storage for the tests: `gcp-storage-emulator`, in memory, one bucket.

    python tests/gcs_emulator.py --port=9023 --bucket=rd-test

It prints "ready" once it answers. The clients are pointed at it by `environment(port)`:
gcsfs (and so `etils.epath`) by STORAGE_EMULATOR_HOST, tensorstore (Orbax's GCS driver) by
TENSORSTORE_GCS_HTTP_URL, with GOOGLE_AUTH_TOKEN_FOR_TESTING as its bearer token (tensorstore's
own tests do the same) so that it never looks for real credentials.

Two additions to the emulator (gcp-storage-emulator 2026.7.19), both things real GCS does:
- it ignores the `ifGenerationMatch` precondition (no handler reads it), which our stage lease
  (`rd_jax/stage_lock.py`) and tensorstore's conditional writes rely on. `_with_preconditions`
  enforces it on uploads (checked when the upload starts) and deletes: 412 when the object's
  generation differs, `0` meaning "must not exist";
- its media downloads (`GET .../o/<name>?alt=media`) carry no `x-goog-generation` header, which
  tensorstore's GCS driver reads: once a precondition fails (two of Orbax's writes to one OCDBT
  manifest), tensorstore re-reads the object and the save fails with "Malformed
  StorageGeneration". `_with_generation_header` adds the header.
Everything else is the emulator's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from http import HTTPStatus

# gcsfs asks the storage-control API whether a bucket is hierarchical; the emulator has no such
# API, and the failed lookup only logs a warning per request.
HNS_OFF = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def environment(port: int) -> dict:
  url = f"http://127.0.0.1:{port}"
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", **HNS_OFF}


def _with_preconditions(handler, storage_errors, check_lock):
  def checked(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    if not wanted:
      return handler(request, response, storage, *args, **kwargs)
    bucket = request.params["bucket_name"]
    name = request.params.get("object_id") or _upload_name(request)
    with check_lock:   # the check and the write as one step, as on GCS
      try:
        current = str(storage.get_file_obj(bucket, name)["generation"])
      except storage_errors:
        current = "0"
      if current != wanted[0]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "conditionNotMet"}})
        return None
      return handler(request, response, storage, *args, **kwargs)
  return checked


def _with_generation_header(handler, storage_errors):
  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except storage_errors:
      pass   # the handler answers 404
    return handler(request, response, storage, *args, **kwargs)
  return download


def _upload_name(request) -> str | None:
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  if isinstance(data, dict):
    return (data.get("meta") or data).get("name")
  return None


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  lock = threading.Lock()
  wrap = {f: _with_preconditions(f, NotFound, lock)
          for f in (objects.insert, objects.delete)}
  wrap[objects.download] = _with_generation_header(objects.download, NotFound)
  objects.download = wrap[objects.download]   # objects.get (alt=media) calls it by this name
  server.HANDLERS = tuple((regex, {m: wrap.get(f, f) for m, f in methods.items()})
                          for regex, methods in server.HANDLERS)
  emulator = server.create_server("127.0.0.1", args.port, in_memory=True,
                                  default_bucket=args.bucket)
  emulator.start()
  print("ready", flush=True)
  threading.Event().wait()   # until the test session kills this process


if __name__ == "__main__":
  os.environ.update(HNS_OFF)
  main()
