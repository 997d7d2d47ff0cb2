"""`--stage=export`: the CRSD student as a Hugging Face folder a PyTorch stack loads in one line.

Same as `python -m rd_jax.convert --checkpoint=<workdir>/crsd --output=<workdir>/export/hf`:
config.json + model.safetensors + tokenizer + model card + rd_jax.json, verified in PyTorch
(max |Δlogit| <= export.atol, no parameter left unwritten), optionally ONNX and int8 (onnx/).
Verification pairs: the valid folds of data.path (real pairs, not synthetic).
"""

from __future__ import annotations

import os
import tempfile

import jax

from rd_jax import metrics as metrics_lib
from rd_jax import storage
from rd_jax.convert import export
from rd_jax.data import readers


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "export")
  storage.makedirs(stage_dir)
  checkpoint = cfg.export.checkpoint or os.path.join(workdir, "crsd")
  pairs_path = os.path.join(stage_dir, "verify_pairs.jsonl")
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  valid = readers.train_valid_test(pairs, cfg)["valid"] or pairs
  if jax.process_index() == 0:
    import json
    text = "".join(json.dumps(dict(p.raw), ensure_ascii=False) + "\n" for p in valid[:256])
    storage.write_text_atomic(pairs_path, text)
    # the PyTorch-side check (rd_jax/score.py) reads local files: a remote workdir's pairs are
    # copied to a temporary folder, removed on any exit
    with tempfile.TemporaryDirectory(prefix="rd_jax_pairs_") as scratch:
      local_pairs = pairs_path
      if storage.is_remote(pairs_path):
        local_pairs = os.path.join(scratch, "verify_pairs.jsonl")
        with open(local_pairs, "w", encoding="utf-8") as f:
          f.write(text)
      report = export.export_student(checkpoint, os.path.join(stage_dir, "hf"),
                                     atol=cfg.export.atol, onnx=cfg.export.onnx,
                                     int8=cfg.export.int8, pairs=local_pairs, max_pairs=256)
    summary = {"stage": "export", "output": os.path.join(stage_dir, "hf"), "checks": report}
    metrics_lib.write_json_atomic(summary, os.path.join(stage_dir, "summary.json"))
    return summary
  return {"stage": "export", "output": os.path.join(stage_dir, "hf")}
