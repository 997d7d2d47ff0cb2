"""student.wide_features = "overlap" | "overlap_accessory": the in-model overlap features, the wide term's fit, and the
student that carries it (models/overlap.py, student/wide_head.py)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax import config_check, decision
from rd_jax.models import bert, overlap
from rd_jax.student import wide_head

# a toy vocabulary: specials, words, a negation, digits, punctuation, a continuation piece
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "red": 4, "shoe": 5, "##s": 6,
         "not": 7, "64": 8, "gb": 9, ",": 10, "phone": 11, "case": 12, "no": 13, "##no": 14,
         ".": 15, "match": 16, ":": 17, "of": 18, "1": 19, "2": 20, "words": 21, ";": 22,
         "missing": 23, "for": 24, "compatible": 25}


def reference_features(ids, types, mask, vocab=VOCAB, after_hint=False, accessory=False):
  """An independent per-row Python version of the module docstring's 9 features (lists, sets);
  after_hint: segment B's tokens up to the end of its first run of "." are not item;
  accessory: + the 3 accessory features ("overlap_accessory")."""
  piece = {i: w for w, i in vocab.items()}
  body = lambda w: w[2:] if w.startswith("##") else w
  content = lambda i: (any(ch.isalnum() for ch in body(piece[i]))
                       and not (piece[i].startswith("[") and piece[i].endswith("]")))
  out = []
  for row_ids, row_types, row_mask in zip(ids, types, mask):
    q_pos = [t for t in range(len(row_ids)) if row_mask[t] and row_types[t] == 0 and content(row_ids[t])]
    b_pos = [t for t in range(len(row_ids)) if row_mask[t] and row_types[t] == 1]
    start = 0
    if after_hint and any(piece[row_ids[t]] == "." for t in b_pos):
      t = next(t for t in b_pos if piece[row_ids[t]] == ".")
      while t < len(row_ids) and row_mask[t] and row_types[t] == 1 and piece[row_ids[t]] == ".":
        t += 1
      start = t
    i_pos = [t for t in b_pos if t >= start and content(row_ids[t])]
    q = [row_ids[t] for t in q_pos]
    items = [row_ids[t] for t in i_pos]
    share = sum(x in items for x in q) / len(q) if q else 0.0
    union = set(q) | set(items)
    jaccard = len(set(q) & set(items)) / len(union) if union else 0.0
    q_pairs = [(row_ids[t], row_ids[t + 1]) for t in q_pos if t + 1 in q_pos]
    i_pairs = {(row_ids[t], row_ids[t + 1]) for t in i_pos if t + 1 in i_pos}
    bigram = sum(p in i_pairs for p in q_pairs) / len(q_pairs) if q_pairs else 0.0
    digits = [x for x in q if body(piece[x]).isdigit()]
    digit_share = sum(x in items for x in digits) / len(digits) if digits else 1.0
    negation = lambda xs: float(any(not piece[x].startswith("##") and piece[x] in overlap.NEGATIONS
                                    for x in xs))
    row = [share, jaccard, bigram, digit_share, float(bool(digits)), negation(q),
           negation(items), math.log1p(len(q)), math.log1p(len(items))]
    if accessory:
      markers = [t for t in i_pos if piece[row_ids[t]] in overlap.ACCESSORY_MARKERS]
      after = [row_ids[t] for t in i_pos if markers and t > markers[0]]
      before = [row_ids[t] for t in i_pos if not markers or t < markers[0]]
      row += [float(bool(markers)), sum(x in after for x in q) / len(q) if q else 0.0,
              sum(x in before for x in q) / len(q) if q else 0.0]
    out.append(row)
  return np.asarray(out)


def _features(ids, types, mask, after_hint=False, feature_set="overlap"):
  table = overlap.token_classes(VOCAB, feature_set)
  return np.asarray(overlap.features(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask), table,
                                     after_hint))


def test_token_classes():
  table = overlap.token_classes(VOCAB)
  assert table.shape == (len(VOCAB), 4)
  content = {w for w, i in VOCAB.items() if table[i, overlap.CONTENT]}
  assert content == {"red", "shoe", "##s", "not", "64", "gb", "phone", "case", "no", "##no",
                     "match", "of", "1", "2", "words", "missing", "for", "compatible"}
  assert {w for w, i in VOCAB.items() if table[i, overlap.DIGIT]} == {"64", "1", "2"}
  assert {w for w, i in VOCAB.items() if table[i, overlap.HINT_END]} == {"."}
  # a continuation piece is not the word "no"
  assert {w for w, i in VOCAB.items() if table[i, overlap.NEGATION]} == {"not", "no"}
  accessory = overlap.token_classes(VOCAB, "overlap_accessory")
  assert accessory.shape == (len(VOCAB), 5)
  np.testing.assert_array_equal(accessory[:, :4], table)
  assert {w for w, i in VOCAB.items() if accessory[i, overlap.ACCESSORY]} == {"for", "compatible"}
  with pytest.raises(ValueError, match="unknown wide feature set 'words'"):
    overlap.token_classes(VOCAB, "words")


def test_accessory_features_golden_by_hand():
  # [CLS] phone case [SEP] | red case for phone [SEP]: the query's "case" before the marker,
  # "phone" after it
  ids = [[2, 11, 12, 3, 4, 12, 24, 11, 3]]
  types = [[0] * 4 + [1] * 5]
  mask = [[1] * 9]
  got = _features(ids, types, mask, feature_set="overlap_accessory")[0]
  assert got.shape == (12,)
  np.testing.assert_allclose(got[:9], _features(ids, types, mask)[0], rtol=1e-6)
  np.testing.assert_allclose(got[9:], [1.0, 0.5, 0.5], rtol=1e-6)
  # no marker: has 0, after 0, before = the whole item's share (feature 0)
  plain = [[2, 11, 12, 3, 4, 12, 11, 11, 3]]
  np.testing.assert_allclose(_features(plain, types, mask, feature_set="overlap_accessory")[0][9:],
                             [0.0, 0.0, 1.0], rtol=1e-6)
  # a marker inside the match hint is not the item's: "match: ...; missing: for. case for phone"
  hinted = [[2, 11, 12, 3, 16, 17, 23, 17, 24, 15, 12, 25, 11, 3]]
  got = _features(hinted, [[0] * 4 + [1] * 10], [[1] * 14], after_hint=True,
                  feature_set="overlap_accessory")[0]
  np.testing.assert_allclose(got[9:], [1.0, 0.5, 0.5], rtol=1e-6)


def test_features_golden_by_hand():
  # [CLS] red shoe ##s not [SEP] | red shoe , 64 gb [SEP] [PAD]
  ids = [[2, 4, 5, 6, 7, 3, 4, 5, 10, 8, 9, 3, 0]]
  types = [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]]
  mask = [[1] * 12 + [0]]
  got = _features(ids, types, mask)[0]
  # query content: red shoe ##s not (4); item content: red shoe 64 gb (4)
  # share 2/4; Jaccard |{red, shoe}| / |{red, shoe, ##s, not, 64, gb}| = 2/6;
  # query pairs (red shoe) (shoe ##s) (##s not): (red shoe) is adjacent in the item -> 1/3;
  # no digit in the query -> 1, has digit 0; negation in query 1, in item 0; log1p(4), log1p(4)
  expected = [0.5, 2 / 6, 1 / 3, 1.0, 0.0, 1.0, 0.0, math.log(5), math.log(5)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_features_after_the_match_hint():
  # [CLS] red shoe [SEP] | match : 1 of 2 words ; missing : shoe . red case [SEP]
  ids = [[2, 4, 5, 3, 16, 17, 19, 18, 20, 21, 22, 23, 17, 5, 15, 4, 12, 3]]
  types = [[0] * 4 + [1] * 14]
  mask = [[1] * 18]
  end = overlap.hint_end(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask),
                         overlap.token_classes(VOCAB))
  assert int(end[0]) == 15                       # the item starts at "red", after "."
  got = _features(ids, types, mask, after_hint=True)[0]
  # item = red case: share 1/2, Jaccard 1/3, pair (red shoe) not adjacent in the item -> 0
  expected = [0.5, 1 / 3, 0.0, 1.0, 0.0, 0.0, 0.0, math.log(3), math.log(3)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # read without skipping the hint, the hint's "shoe" makes the whole query look covered
  assert _features(ids, types, mask)[0][0] == 1.0
  # "missing: a, ...." (a longer list): the run of dots ends the hint
  ids2 = [[2, 4, 3, 16, 17, 23, 17, 5, 10, 15, 15, 15, 15, 4, 3]]
  end2 = overlap.hint_end(jnp.asarray(ids2), jnp.asarray([[0] * 3 + [1] * 12]),
                          jnp.asarray([[1] * 15]), overlap.token_classes(VOCAB))
  assert int(end2[0]) == 13


@pytest.mark.parametrize("feature_set", ["overlap", "overlap_accessory"])
@pytest.mark.parametrize("after_hint", [False, True])
def test_features_match_an_independent_reference_on_random_rows(after_hint, feature_set):
  rng = np.random.default_rng(0)
  b, length = 64, 14
  ids = rng.integers(0, len(VOCAB), size=(b, length))
  split = rng.integers(2, length - 2, size=b)
  types = (np.arange(length)[None, :] >= split[:, None]).astype(int)
  lengths = rng.integers(split + 1, length + 1)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(int)
  got = _features(ids, types, mask, after_hint, feature_set)
  assert got.shape == (b, overlap.feature_shape(feature_set)[0])
  np.testing.assert_allclose(got, reference_features(ids, types, mask, after_hint=after_hint,
                                                     accessory=feature_set != "overlap"),
                             rtol=1e-5, atol=1e-6)


def test_features_ignore_padding_and_special_tokens():
  ids = np.array([[2, 11, 12, 3, 12, 11, 3]])
  types = np.array([[0, 0, 0, 0, 1, 1, 1]])
  mask = np.ones_like(ids)
  padded = _features(np.pad(ids, ((0, 0), (0, 4))), np.pad(types, ((0, 0), (0, 4))),
                     np.pad(mask, ((0, 0), (0, 4))))
  np.testing.assert_allclose(padded, _features(ids, types, mask), rtol=1e-6)
  # a padded position with a matching id changes nothing either
  junk = np.pad(ids, ((0, 0), (0, 1)), constant_values=11)
  np.testing.assert_allclose(_features(junk, np.pad(types, ((0, 0), (0, 1)), constant_values=1),
                                       np.pad(mask, ((0, 0), (0, 1)))),
                             _features(ids, types, mask), rtol=1e-6)


TINY = dict(vocab_size=26, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
            max_position=16, num_labels=3)


# True: a meta.json written before session 33, when "overlap" was the one feature set
@pytest.mark.parametrize("wide_features", [True, "overlap_accessory"])
def test_the_wide_term_adds_a_linear_map_of_the_features_to_the_logits(wide_features):
  deep_cfg = bert.BertConfig(**TINY, pooling="mean")
  wide_cfg = bert.BertConfig(**TINY, pooling="mean", wide_features=wide_features)
  feature_set = "overlap" if wide_features is True else wide_features
  assert wide_cfg.wide_features == feature_set
  assert bert.BertConfig.from_dict(wide_cfg.to_dict()) == wide_cfg
  n = overlap.feature_shape(feature_set)[0]
  params = bert.init_params(deep_cfg, jax.random.key(0))
  rng = np.random.default_rng(1)
  wide = {"token_class": overlap.token_classes(VOCAB, feature_set), "mean": rng.normal(size=n),
          "scale": rng.uniform(0.5, 2, size=n), "kernel": rng.normal(size=(n, 3)),
          "bias": rng.normal(size=3)}
  wide = {k: np.asarray(v, np.float32) for k, v in wide.items()}
  ids = np.array([[2, 4, 5, 3, 4, 8, 9, 3], [2, 11, 3, 12, 11, 3, 0, 0]])
  types = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]])
  mask = (ids > 0).astype(int)
  deep = bert.BertClassifier(deep_cfg).apply({"params": params}, ids, mask, types)["logits"]
  both = bert.BertClassifier(wide_cfg).apply({"params": dict(params, wide=wide)}, ids, mask, types)
  f = reference_features(ids, types, mask, accessory=feature_set != "overlap")
  expected = np.asarray(deep) + ((f - wide["mean"]) / wide["scale"]) @ wide["kernel"] + wide["bias"]
  np.testing.assert_allclose(np.asarray(both["logits"]), expected, rtol=1e-5, atol=1e-5)
  # freshly initialised, the wide term is a no-op, and its tree is what init_params declares
  fresh = bert.init_params(wide_cfg, jax.random.key(0))
  assert set(fresh["wide"]) == {"token_class", "mean", "scale", "kernel", "bias"}
  np.testing.assert_allclose(
      np.asarray(bert.BertClassifier(wide_cfg).apply({"params": fresh}, ids, mask, types)["logits"]),
      np.asarray(deep), atol=1e-6)
  with pytest.raises(ValueError, match="packed rows"):
    bert.BertClassifier(wide_cfg).apply({"params": fresh}, ids, jnp.ones((2, 8, 8)), types)


def test_fit_linear_is_the_balanced_lr_and_handles_an_absent_class():
  from sklearn.linear_model import LogisticRegression
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 9))
  y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)     # classes 0, 1, 2; 3 absent
  params, info = wide_head.fit_linear(x[:200], y[:200], x[200:], y[200:], num_classes=4,
                                      c_grid=(0.1, 1.0))
  z = (x - x[:200].mean(0)) / x[:200].std(0)
  model = LogisticRegression(C=info["C"], class_weight="balanced", max_iter=3000).fit(z[:200], y[:200])
  logits = z @ params["kernel"] + params["bias"]
  np.testing.assert_allclose(logits[:, :3], z @ model.coef_.T + model.intercept_, rtol=1e-6, atol=1e-6)
  assert (np.argmax(logits, -1) == model.predict(z)).all()
  assert params["bias"][3] == -20.0 and not params["kernel"][:, 3].any()
  assert set(info["valid_macro_f1_by_C"]) == {"0.1", "1.0"}
  # two labels: sklearn's one-row binary form becomes two logit columns with the same argmax
  binary = (x[:, 0] > 0).astype(int)
  params, info = wide_head.fit_linear(x[:200], binary[:200], x[200:], binary[200:], num_classes=2,
                                      c_grid=(1.0,))
  model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000).fit(z[:200], binary[:200])
  logits = z @ params["kernel"] + params["bias"]
  np.testing.assert_allclose(logits[:, 1] - logits[:, 0], model.decision_function(z), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="at least 2 labels"):
    wide_head.fit_linear(x[:10], np.zeros(10, int), x[10:20], y[10:20], num_classes=4)


def test_beta_is_chosen_on_valid_and_zero_wins_when_the_wide_term_is_noise():
  rng = np.random.default_rng(0)
  n, c = 400, 3
  gold = rng.integers(0, c, n)
  informative = np.eye(c)[gold] * 2.0 + rng.normal(size=(n, c))   # carries the label
  noise = rng.normal(size=(n, c))
  groups = np.arange(n) % 20
  # the deep logits are noise, the wide term knows the label: a positive beta wins
  beta, offsets, by_beta = wide_head.choose_beta(noise, informative, gold, (0.0, 0.5, 1.0), None)
  assert beta > 0 and by_beta[str(beta)] > by_beta["0.0"] + 0.2
  assert offsets.shape == (c,) and not offsets.any()
  # a wide term that says nothing (all zeros): every beta ties and the first, 0, is kept
  beta, offsets, by_beta = wide_head.choose_beta(informative, np.zeros((n, c)), gold,
                                                 (0.0, 0.5, 1.0), decision.fit_offsets)
  assert beta == 0.0 and len(set(by_beta.values())) == 1
  np.testing.assert_array_equal(offsets, decision.fit_offsets(informative, gold))
  cross = wide_head.crossfit_macro_f1(noise, informative, gold, groups, 3, (0.0, 0.5, 1.0), None)
  assert cross > decision.macro_f1(gold, noise.argmax(-1), c) + 0.2
  assert wide_head.crossfit_macro_f1(noise, informative, gold, groups, 0, (0.0,), None) is None


def test_config_refuses_bad_betas_and_modes(tiny_config):
  cfg = tiny_config()
  cfg.student.wide_features = "overlap"
  config_check.validate(cfg)
  cfg.student.match_hint = "missing"   # the wide term reads the item after the hint
  config_check.validate(cfg)
  cfg.student.wide_betas = (0.0, -1.0)
  with pytest.raises(config_check.ConfigError, match="student.wide_betas"):
    config_check.validate(cfg)
  cfg.student.wide_betas = (0.0, 1.0)
  cfg.student.wide_features = "overlap_accessory"
  config_check.validate(cfg)
  cfg.student.wide_features = "words"
  with pytest.raises(config_check.ConfigError, match="student.wide_features"):
    config_check.validate(cfg)


def write_overlap_pairs(path, *, queries: int = 48, items_per_query: int = 10, seed: int = 0) -> str:
  """Synthetic pairs whose label is how much of the query the item covers: Exact = every query
  word, Substitute = one of three, Irrelevant = none (Complement: 'accessory' + none) — what
  the wide term's features see and a 6-step tiny encoder does not learn."""
  import json
  words = ("red blue green small large steel cotton pack set classic home office garden kitchen "
           "travel light heavy soft round square lamp chair desk mug bottle").split()
  rng = np.random.default_rng(seed)
  rows = []
  for q in range(queries):
    query = list(rng.choice(words, 3, replace=False))
    others = [w for w in words if w not in query]
    for i in range(items_per_query):
      label = ["Exact", "Substitute", "Complement", "Irrelevant"][rng.choice(4, p=[0.4, 0.3, 0.1, 0.2])]
      keep = {"Exact": query, "Substitute": query[:1]}.get(label, [])
      title = keep + list(rng.choice(others, 4 - len(keep) if label != "Exact" else 2, replace=False))
      if label == "Complement":
        title.append("accessory")
      rng.shuffle(title)
      rows.append({"query_id": f"q{q}", "query": " ".join(query), "product_id": f"p{q}_{i}",
                   "product_title": " ".join(title), "label": label, "query_fold": 1 + q % 4})
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


@pytest.mark.parametrize("hint, feature_set", [("", "overlap"), ("missing", "overlap"),
                                               ("missing", "overlap_accessory")])
def test_the_stage_fits_the_wide_term_and_eval_serves_it(tiny_config, tmp_path, hint, feature_set):
  """crsd with wide_features=overlap on pairs labelled by overlap: the wide term lifts valid
  macro-F1 far above the 6-step tiny encoder alone (beta > 0 chosen), final/ carries it, and
  eval scores valid exactly as the stage did."""
  from rd_jax.checkpoint import read_meta
  from rd_jax.stages import crsd, eval as eval_stage
  cfg = tiny_config()
  cfg.data.path = write_overlap_pairs(tmp_path / "overlap.jsonl")
  cfg.student.wide_features = feature_set
  cfg.student.match_hint = hint
  summary = crsd.run(cfg, str(tmp_path / "work"), stage="crsd")
  wide = summary["wide"]
  assert wide["beta"] > 0, wide
  alone = wide["valid_macro_f1_by_beta"]["0.0"]
  assert summary["valid_macro_f1"] >= alone + 0.2 and summary["valid_macro_f1"] >= 0.6, wide
  assert summary["valid_macro_f1_crossfit"] == wide["valid_macro_f1_crossfit"] >= 0.5
  final = str(tmp_path / "work" / "crsd")
  meta = read_meta(final)
  assert meta["model_config"]["wide_features"] == feature_set
  assert meta["model_config"]["wide_after_hint"] is bool(hint)
  _, model, params, _ = eval_stage.restore_student(cfg, final)
  assert float(np.abs(np.asarray(params["wide"]["kernel"])).max()) > 0
  assert params["wide"]["kernel"].shape[0] == overlap.feature_shape(feature_set)[0]
  valid = json.load(open(tmp_path / "work" / "crsd" / "valid_metrics.json"))
  assert valid["macro_f1"] == pytest.approx(summary["valid_macro_f1"])
  # --stage=eval restores the wide student and reports the same valid figure (same offsets)
  result = eval_stage.run(cfg, str(tmp_path / "work"))
  metrics = json.load(open(tmp_path / "work" / "eval" / "metrics.json"))
  assert metrics["valid"]["macro_f1"] == pytest.approx(summary["valid_macro_f1"], abs=1e-9), result


def test_the_wide_term_is_fitted_on_real_pairs_only(tiny_config, tmp_path):
  from rd_jax.student import data as data_lib, negatives
  cfg = tiny_config()
  cfg.data.path = write_overlap_pairs(tmp_path / "overlap.jsonl")
  cfg.student.cross_query_negatives = 2
  data = data_lib.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  drawn = [p for p in data.train if negatives.is_drawn_negative(p)]
  assert drawn and len(wide_head.real_pairs(data.train)) == len(data.train) - len(drawn)
  assert not any(negatives.is_drawn_negative(p) for p in wide_head.real_pairs(data.train))


def test_weight_interpolation_keeps_the_fitted_wide_term():
  """experiments.interpolate (WiSE-FT) mixes the encoder with its init; the wide term, fitted
  after training and absent from the init, is kept as it is, like the classifier."""
  from rd_jax.experiments import interpolate
  finetuned = {"encoder": np.ones(3), "classifier": np.full(2, 5.0), "wide": {"kernel": np.full(2, 7.0)}}
  init = {"encoder": np.zeros(3), "classifier": np.zeros(2)}
  mixed = interpolate.interpolate(finetuned, init, 0.25)
  np.testing.assert_allclose(mixed["encoder"], 0.25)
  np.testing.assert_allclose(mixed["wide"]["kernel"], 7.0)
  np.testing.assert_allclose(mixed["classifier"], 5.0)


def test_the_pytorch_twin_declares_the_same_feature_sets():
  """convert/torch_mean_pooled.py cannot import rd_jax (it is copied into export folders): its
  copies of the feature sets and token-class columns must equal models/overlap.py's."""
  from rd_jax.convert import torch_mean_pooled as twin
  assert twin.FEATURE_SETS == overlap.FEATURE_SETS
  assert (twin.CONTENT, twin.DIGIT, twin.NEGATION, twin.HINT_END, twin.ACCESSORY) == (
      overlap.CONTENT, overlap.DIGIT, overlap.NEGATION, overlap.HINT_END, overlap.ACCESSORY)


def test_accessory_markers_are_a_config_value_checked_against_the_vocabulary(tiny_config):
  """student.wide_accessory_markers feeds the marker column (a user's own words, e.g. another
  language); a marker the tokenizer would split is an error naming it; bad values are refused."""
  from rd_jax.config import default_config
  assert set(default_config().student.wide_accessory_markers) == overlap.ACCESSORY_MARKERS
  own = overlap.token_classes(VOCAB, "overlap_accessory", markers=("case",))
  assert {w for w, i in VOCAB.items() if own[i, overlap.ACCESSORY]} == {"case"}
  cfg = tiny_config()
  cfg.student.wide_features = "overlap_accessory"
  cfg.student.wide_accessory_markers = ("for", "case")
  assert wide_head.accessory_markers(cfg, VOCAB) == ("for", "case")
  cfg.student.wide_accessory_markers = ("for", "kompatibel")
  with pytest.raises(ValueError, match=r"\['kompatibel'\] are not whole-word pieces"):
    wide_head.accessory_markers(cfg, VOCAB)
  cfg.student.wide_accessory_markers = ()
  with pytest.raises(config_check.ConfigError, match="student.wide_accessory_markers"):
    config_check.validate(cfg)
  cfg.student.wide_accessory_markers = ("for", "made for")
  with pytest.raises(config_check.ConfigError, match="student.wide_accessory_markers"):
    config_check.validate(cfg)
  cfg.student.wide_features = "overlap"   # read only by overlap_accessory
  config_check.validate(cfg)
