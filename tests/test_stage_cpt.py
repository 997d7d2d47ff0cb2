"""`--stage=cpt` on the tiny config: packing, training, hand-off, held-out perplexity."""

import json
import math

import numpy as np

from rd_jax import checkpoint
from rd_jax.stages import cpt


class FakeTokenizer:
  eos_token_id = 0

  def __call__(self, docs, add_special_tokens=False):
    return {"input_ids": [[len(w) + 1 for w in d.split()] for d in docs]}


def test_pack_joins_documents_with_eos_and_counts_the_tail():
  rows, info = cpt.pack(["a bb ccc", "dddd"], FakeTokenizer(), seq_len=3)
  # stream: 2 3 4 0 5 0 -> two rows of 3, nothing dropped
  np.testing.assert_array_equal(rows, [[2, 3, 4], [0, 5, 0]])
  assert info == {"tokens": 6, "rows": 2, "dropped_tail_tokens": 0}


def test_cpt_stage_end_to_end(tmp_path, tiny_config):
  """Trains: a random tiny decoder learns the corpus's token statistics within a few steps."""
  cfg = tiny_config()
  cfg.cpt.num_steps, cfg.cpt.optim.learning_rate, cfg.cpt.optim.warmup_steps = 6, 2e-2, 1
  summary = cpt.run(cfg, str(tmp_path))
  assert checkpoint.read_meta(str(tmp_path / "cpt"))["model"] == "decoder"
  saved = json.load(open(tmp_path / "cpt" / "summary.json"))
  assert saved["corpus"]["source"] == "bundled training folds" and saved["packing"]["rows"] > 0
  assert math.isfinite(summary["heldout_loss_after"]) and summary["steps"] == cfg.cpt.num_steps
  assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 0.1
