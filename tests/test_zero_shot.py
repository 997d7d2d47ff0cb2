"""experiments/cosine_probe.py (zero_shot --probe): the within-query cosine features (golden, by hand) and the probes run
end to end on the cue task (tests/cue_data.py), where the lexical features see the label."""

import numpy as np

from cue_data import write_cue_pairs
from rd_jax.experiments import cosine_probe


def test_within_query_features_golden():
  # query a: cos 0.2, 0.6 (mean 0.4, sd 0.2); query b: 0.5 alone. Train mean 0.5, sd 0.1.
  out = cosine_probe.within_query_features(np.array([0.2, 0.5, 0.6]), ["a", "b", "a"], mean=0.5, std=0.1)
  np.testing.assert_allclose(out, [[-3.0, -0.2, -1.0, 0.0],
                                   [0.0, 0.0, 0.0, 0.0],
                                   [1.0, 0.2, 1.0, 0.5]], atol=1e-6)


def test_probe_on_the_cue_task(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.data.path = write_cue_pairs(tmp_path / "cue.jsonl", queries=40, items_per_query=12)
  out = cosine_probe.cosine_probe(cfg)
  assert set(out) == {"init", "cosine_split_z", "cosine_within_query",
                      "lexical_plus_cosine_within_query", "embedding_product",
                      "embedding_product_absdiff", "lexical_plus_embedding_product",
                      "lexical_reference"}
  # the cue word is a lexical feature: the lexical reference and the probe that holds its
  # features find the label; the cosine of a random tiny BERT does not name it
  assert out["lexical_reference"]["valid_macro_f1"] > 0.9
  assert out["lexical_plus_cosine_within_query"]["valid_macro_f1"] > 0.9
  assert out["lexical_plus_cosine_within_query"]["test_macro_f1"] > 0.9
  assert out["lexical_plus_embedding_product"]["valid_macro_f1"] > 0.9
  assert out["cosine_split_z"]["valid_macro_f1"] < 0.6
