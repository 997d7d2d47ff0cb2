"""Export a trained student to a verified Hugging Face folder (+ ONNX fp32/int8).

  python -m rd_jax.convert --checkpoint=<workdir>/crsd --output=<dir> \
      [--atol=1e-4] [--noonnx] [--noint8] [--pairs=valid.jsonl]

Exits non-zero, naming what differs (max |Δlogit|, an unwritten tensor, a bad checkpoint), when
the export does not reproduce the student. See rd_jax/convert/export.py for the folder layout.
"""

import json
import sys

from absl import app, flags, logging

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "student final/ folder, or the stage folder holding it")
_OUTPUT = flags.DEFINE_string("output", None, "export folder (written as <output>.tmp, then renamed)")
_ATOL = flags.DEFINE_float("atol", 1e-4, "max |Δlogit| allowed between Flax, PyTorch and ONNX fp32")
_ONNX = flags.DEFINE_bool("onnx", True, "also write onnx/model.onnx (checked against PyTorch)")
_INT8 = flags.DEFINE_bool("int8", True, "also write onnx/model_int8.onnx (dynamic int8 weights)")
_PAIRS = flags.DEFINE_string("pairs", None, "JSONL of pairs to verify on; default: pairs spread over "
                             "the bundled ESCI data; 'synthetic': 8 built-in pairs")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 64, "verify on at most this many pairs from --pairs")
_MIN_AGREEMENT = flags.DEFINE_float("min_int8_agreement", 0.9, "fail if int8 argmax agreement is lower")
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and the quantizer log every file and tensor
  from rd_jax.checkpoint import CheckpointError
  from rd_jax.convert.export import ExportError, export_student
  from rd_jax.convert.onnx import OnnxCheckError
  from rd_jax.score import BadRowError
  try:
    report = export_student(_CHECKPOINT.value, _OUTPUT.value, atol=_ATOL.value, onnx=_ONNX.value,
                            int8=_INT8.value, pairs=_PAIRS.value, max_pairs=_MAX_PAIRS.value,
                            min_int8_agreement=_MIN_AGREEMENT.value)
  except (CheckpointError, ExportError, OnnxCheckError, BadRowError, ValueError) as e:
    print(f"export failed: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  print(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  app.run(main)
