"""Export a trained student to a verified Hugging Face folder (+ ONNX fp32/int8).

  python -m rd_jax.convert --checkpoint=<workdir>/crsd --output=<dir> \
      [--atol=1e-4] [--noonnx] [--noint8] [--pairs=valid.jsonl] [--overwrite]

Without --pairs the check runs on --max_pairs real pairs spread over the bundled ESCI data (64 by
default). An existing non-empty --output folder is refused unless --overwrite.

Exits non-zero, naming what differs (max |Δlogit|, an unwritten tensor, a bad checkpoint), when
the export does not reproduce the student. See rd_jax/convert/export.py for the folder layout.
"""

import json
import os
import sys

from absl import app, flags, logging

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "student final/ folder, or the stage folder holding it")
_OUTPUT = flags.DEFINE_string("output", None, "export folder (written as <output>.tmp, then renamed)")
_ATOL = flags.DEFINE_float("atol", 1e-4, "max |Δlogit| allowed between Flax, PyTorch and ONNX fp32")
_ONNX = flags.DEFINE_bool("onnx", True, "also write onnx/model.onnx (checked against PyTorch)")
_INT8 = flags.DEFINE_bool("int8", True, "also write onnx/model_int8.onnx (dynamic int8 weights)")
_PAIRS = flags.DEFINE_string("pairs", None, "pairs to verify on (JSONL, CSV or Parquet, optionally "
                             ".gz; its first --max_pairs rows); default: pairs spread over the "
                             "bundled ESCI data; 'synthetic': 8 built-in pairs")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 64, "verify on at most this many pairs from --pairs")
_MIN_AGREEMENT = flags.DEFINE_float("min_int8_agreement", 0.9, "fail if int8 argmax agreement is lower")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing non-empty --output folder")
flags.DEFINE_bool("debug", False, "show the Python traceback of user errors too")
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and the quantizer log every file and tensor
  from rd_jax.checkpoint import CheckpointError
  from rd_jax.convert.export import ExportError, export_student
  from rd_jax.convert.onnx import OnnxCheckError
  from rd_jax.score import BadRowError
  from rd_jax import errors
  output = _OUTPUT.value
  if os.path.isfile(output):
    raise errors.PathError(f"--output={output} is a file; give a folder")
  if os.path.isdir(output) and os.listdir(output) and not _OVERWRITE.value:
    raise errors.PathError(f"--output={output} exists and is not empty; pass --overwrite to "
                           "replace it, or choose another folder")
  pairs = _PAIRS.value   # None: --max_pairs rows spread over the bundled data (export.bundled_rows)
  run = lambda pairs: export_student(_CHECKPOINT.value, output, atol=_ATOL.value,
                                     onnx=_ONNX.value, int8=_INT8.value, pairs=pairs,
                                     max_pairs=_MAX_PAIRS.value,
                                     min_int8_agreement=_MIN_AGREEMENT.value)
  try:
    try:
      report = run(pairs)
    except BadRowError as e:
      if _PAIRS.value:
        raise
      # a student whose item template reads other fields: the bundled rows render no item text
      logging.warning("the bundled pairs do not fit this student's item template (%s); "
                      "verifying on synthetic pairs instead: pass --pairs=<your jsonl>", e)
      report = run("synthetic")
  except (CheckpointError, ExportError, OnnxCheckError, BadRowError, ValueError) as e:
    print(f"export failed: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  from rd_jax import cli_help, errors
  cli_help.maybe_print_help(__doc__, "rd_jax.convert", common=False)
  errors.run_cli(lambda: app.run(main), "rd_jax.convert")
