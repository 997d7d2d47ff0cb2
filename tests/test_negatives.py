"""student.cross_query_negatives: k items of other train queries per train query, labelled as the
config says; train only, seeded, never the query's own item; refused where it cannot apply."""

import collections
import os

import pytest

from rd_jax import config_check
from rd_jax.student import data as data_lib, negatives

from cue_data import cue_config, write_cue_pairs


def _load(cfg, tmp_path, use_reasoning=False):
  stage_dir = tmp_path / ("crsd" if use_reasoning else "baseline")
  stage_dir.mkdir(exist_ok=True)
  return data_lib.load_student_data(cfg, str(stage_dir), use_reasoning=use_reasoning)


def test_each_train_query_gets_k_foreign_items_labelled_as_configured(tiny_config, tmp_path):
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl", queries=16))
  plain = _load(cfg, tmp_path)
  cfg.student.cross_query_negatives = 3
  data = _load(cfg, tmp_path)
  real = {(p.query_id, p.product_id) for p in plain.train}
  added = [p for p in data.train if (p.query_id, p.product_id) not in real]
  queries = {p.query_id for p in plain.train}
  assert len(data.train) == len(plain.train) + 3 * len(queries) == len(plain.train) + len(added)
  assert collections.Counter(p.query_id for p in added) == {q: 3 for q in queries}
  own = collections.defaultdict(set)
  text_of = {p.query_id: p.query for p in plain.train}
  item_query = {p.product_id: p.query_id for p in plain.train}
  for p in plain.train:
    own[p.query_id].add(p.product_id)
  irrelevant = list(cfg.labels).index("Irrelevant")
  for p in added:
    assert p.product_id not in own[p.query_id]               # never the query's own item
    assert item_query[p.product_id] != p.query_id            # an item of another train query
    assert p.query == text_of[p.query_id] and p.label_id == irrelevant
    assert p.raw["synthetic"] == "cross_query_negative"
  assert data.report["cross_query_negatives"] == {"per_query": 3, "added": len(added),
                                                  "label": "Irrelevant",
                                                  "train_pairs_before": len(plain.train),
                                                  "label_from": "construction"}
  # valid is untouched; the draw is the seed's
  assert [(p.query_id, p.product_id) for p in data.valid] == \
      [(p.query_id, p.product_id) for p in plain.valid]
  again = _load(cfg, tmp_path)
  assert [(p.query_id, p.product_id) for p in again.train] == \
      [(p.query_id, p.product_id) for p in data.train]
  cfg.seed = cfg.seed + 1
  other = _load(cfg, tmp_path)
  assert [(p.query_id, p.product_id) for p in other.train] != \
      [(p.query_id, p.product_id) for p in data.train]


def test_the_reasoning_view_gets_the_rule_rationale_of_the_new_pair(tiny_config, tmp_path):
  from rd_jax.data import rationale
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl", queries=8))
  cfg.student.cross_query_negatives = 2
  data = _load(cfg, tmp_path, use_reasoning=True)
  added = [p for p in data.train if p.raw.get("synthetic")]
  assert added and all(p.reasoning == rationale.rule_rationale(p.query, p.raw, p.item_text)
                       for p in added)


def test_refusals(tiny_config, tmp_path):
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl", queries=8))
  cfg.student.cross_query_negatives = 2
  cfg.student.cross_query_negative_label = "Unrelated"
  with pytest.raises(ValueError, match="cross_query_negative_label"):
    _load(cfg, tmp_path)
  cfg = tiny_config()
  cfg.student.cross_query_negatives = -1
  with pytest.raises(ValueError, match="student.cross_query_negatives"):
    config_check.validate(cfg)


@pytest.mark.parametrize("key", ["student.cross_query_negatives", "sft.cross_query_negatives"])
def test_a_negative_label_outside_the_label_set_is_a_config_error(tiny_config, key):
  """configs/demo.py's "Irrelevant" under a user's graded labels 1-4: refused before any data is
  read, naming the key, the labels and both fixes; with the negatives off the label is not read."""
  from rd_jax import errors
  cfg = tiny_config()
  cfg.labels = ("1", "2", "3", "4")
  section, name = key.split(".")
  cfg[section][name] = 2
  if section == "sft":
    cfg.sft.chains_from = "rules"
  with pytest.raises(errors.ConfigError, match=r"cross_query_negative_label = 'Irrelevant' is not one "
                     r"of the labels \['1', '2', '3', '4'\].*negative_label=1.*" + key + "=0"):
    config_check.validate(cfg)
  cfg.student.cross_query_negative_label = "1"
  config_check.validate(cfg)
  cfg.student.cross_query_negative_label = "Irrelevant"
  cfg[section][name] = 0
  config_check.validate(cfg)


def test_off_is_the_identity(tiny_config):
  cfg = tiny_config()
  train = [object(), object()]
  assert negatives.with_cross_query_negatives(train, cfg, {}, use_reasoning=False) is train


def test_uncounted_negatives_leave_the_counts_to_the_real_pairs(tiny_config, tmp_path):
  """cross_query_negatives_counted=False: the label counts (class weights, the decision prior)
  are the real pairs'; each pair weighs its label's balanced weight from those counts, a drawn
  negative times cross_query_negative_weight. The default counts them as real pairs."""
  import numpy as np
  from rd_jax.stages import crsd
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl", queries=8))
  cfg.student.cross_query_negatives = 3
  cfg.student.class_weighting = "balanced"
  data = _load(cfg, tmp_path)
  labels = np.array([p.label_id for p in data.train])
  drawn = np.array([negatives.is_drawn_negative(p) for p in data.train])
  train_queries = {p.query_id for p in data.train}
  assert drawn.sum() == 3 * len(train_queries) > 0
  counted = crsd.objective_of(cfg, data.train)       # the default: negatives count
  assert counted["train_label_counts"] == np.bincount(labels, minlength=4).tolist()
  assert counted["pair_weights"] is None and counted["class_weights"] is not None
  cfg.student.cross_query_negatives_counted = False
  cfg.student.cross_query_negative_weight = 0.25
  objective = crsd.objective_of(cfg, data.train)
  real = np.bincount(labels[~drawn], minlength=4)
  assert objective["train_label_counts"] == real.tolist()
  by_hand = real.sum() / (4 * real)                  # balanced over the real pairs: n / (C n_c)
  expected = by_hand[labels] * np.where(drawn, 0.25, 1.0)
  np.testing.assert_allclose(objective["pair_weights"], expected, rtol=1e-6)
  assert objective["class_weights"] is None
  assert objective["drawn_negatives"] == {"pairs": int(drawn.sum()), "weight": 0.25,
                                          "counted": False}
  cfg.student.cross_query_negative_weight = -1.0
  with pytest.raises(ValueError, match="student.cross_query_negative_weight"):
    config_check.validate(cfg)


@pytest.mark.parametrize("source", ["teacher", "teacher_soft"])
def test_with_teacher_labels_the_real_pairs_keep_the_teachers_and_drawn_ones_their_own(
    tiny_config, tmp_path, source):
  """The teacher labels the real pairs; a drawn negative's label comes from its construction
  (teacher_soft: a one-hot target), since the teacher never saw it."""
  import json
  from rd_jax.data import readers
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl", queries=8))
  pairs = readers.train_valid_test(readers.load_pairs(cfg.data.path, cfg)[0], cfg)["train"]
  probs = [0.1, 0.6, 0.2, 0.1]   # the teacher always says Substitute
  with open(tmp_path / "ann.jsonl", "w") as f:
    for p in pairs:
      f.write(json.dumps({"query_id": p.query_id, "product_id": p.product_id, "query": p.query,
                          "teacher_label": "Substitute", "label_probs": probs,
                          "reasoning": "because."}) + "\n")
  cfg.data.reasoning_source, cfg.data.reasoning_path = "annotations", str(tmp_path / "ann.jsonl")
  cfg.crsd.label_source = source
  cfg.student.cross_query_negatives = 2
  data = _load(cfg, tmp_path, use_reasoning=True)
  real = [p for p in data.train if not negatives.is_drawn_negative(p)]
  drawn = [p for p in data.train if negatives.is_drawn_negative(p)]
  substitute, irrelevant = list(cfg.labels).index("Substitute"), list(cfg.labels).index("Irrelevant")
  assert len(real) == len(pairs) and len(drawn) == 2 * len({p.query_id for p in pairs})
  assert all(p.label_id == substitute for p in real) and all(p.label_id == irrelevant for p in drawn)
  if source == "teacher_soft":
    assert all(list(p.soft_label) == probs for p in real)
    assert all(list(p.soft_label) == [float(i == irrelevant) for i in range(4)] for p in drawn)
  else:
    assert all(p.soft_label is None for p in data.train)
