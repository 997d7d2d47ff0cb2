"""Every malformed file of tests/malformed_corpus.py is named or counted, never accepted silently.

Readers level (no JAX): in `on_bad_row=error` every row case stops with a DataError naming the file
and line, in `skip` it is counted under its reason; every file case stops naming the file in both
modes; degenerate files are flagged; a file whose folds leave a split empty is named with the fix.
The command-line side (no traceback, exit code) is in test_errors.py.
"""

import pytest

from configs import tiny
from rd_jax import errors
from rd_jax.data import degenerate, readers, split as split_lib

import malformed_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return malformed_corpus.build(str(tmp_path_factory.mktemp("corpus")))


def _cfg(mode):
  cfg = tiny.get_config()
  cfg.data.on_bad_row = mode
  return cfg


def test_corpus_has_every_kind(corpus):
  assert len(corpus) >= 20
  assert {c.kind for c in corpus.values()} == {"row", "file", "degenerate", "split"}


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_each_file_is_named_or_counted(corpus, mode, tmp_path):
  for name, case in corpus.items():
    cfg = _cfg(mode)
    if case.kind == "row" and mode == "error":
      with pytest.raises(errors.DataError, match=rf"^{case.path}:\d+: ") as err:
        readers.load_pairs(case.path, cfg)
      assert err.value.reason_key == case.reason, name
    elif case.kind == "row":
      pairs, report = readers.load_pairs(case.path, cfg, rejects_path=str(tmp_path / "r.jsonl"))
      assert report["skipped_by_reason"] == {case.reason: 1}, name
      assert report["rows_kept"] == len(malformed_corpus.good_rows()), name
    elif case.kind == "file":
      with pytest.raises(errors.DataError, match=case.reason) as err:
        readers.load_pairs(case.path, cfg)
      assert str(err.value).startswith(case.path), name
    elif case.kind == "split":
      pairs, report = readers.load_pairs(case.path, cfg)
      with pytest.raises(errors.DataError, match=f"{case.reason} is empty.*data.valid_folds"):
        split_lib.check_trainable(report["split"], cfg, case.path)
    else:
      pairs, report = readers.load_pairs(case.path, cfg)
      splits = readers.train_valid_test(pairs, cfg)
      kinds = {f["kind"] for f in degenerate.check(splits, cfg, stage="crsd")}
      if report["split"]["unused_pairs"]:
        kinds.add("unused_folds")
      assert case.reason in kinds, (name, kinds)


def test_decoding_error_names_line_and_byte_offset(corpus):
  case = corpus["latin1.jsonl"]
  with pytest.raises(errors.DataError, match=r"latin1\.jsonl:13: not UTF-8: byte 0xe9 at byte "
                                              r"offset \d+ of the file"):
    readers.load_pairs(case.path, _cfg("error"))


def test_ragged_csv_names_the_line(corpus):
  with pytest.raises(errors.DataError, match=r"ragged\.csv:14: CSV record has 7 fields, the "
                                              "header has 4"):
    readers.load_pairs(corpus["ragged.csv"].path, _cfg("error"))


def test_all_duplicates_masks_every_infonce_negative(corpus):
  cfg = _cfg("error")
  pairs, _ = readers.load_pairs(corpus["all_duplicates.jsonl"].path, cfg)
  flags = degenerate.check(readers.train_valid_test(pairs, cfg), cfg, stage="crsd")
  assert {"one_class", "duplicates", "infonce_masked"} <= {f["kind"] for f in flags}


def test_file_without_folds_gets_a_query_disjoint_split(tmp_path):
  rows = [{"query": f"q{i % 20}", "product_title": f"item {i}", "label": "Exact"}
          for i in range(100)]
  path = tmp_path / "nofold.jsonl"
  path.write_bytes(malformed_corpus._jsonl(rows))
  cfg = _cfg("error")
  pairs, report = readers.load_pairs(str(path), cfg)
  splits = readers.train_valid_test(pairs, cfg)
  assert report["split"]["pairs"] == {k: len(v) for k, v in splits.items()}
  assert report["split"]["pairs"] == {"train": 80, "valid": 10, "test": 10}
  queries = [{p.query for p in splits[k]} for k in ("train", "valid", "test")]
  assert not (queries[0] & queries[1] or queries[0] & queries[2] or queries[1] & queries[2])
  again, _ = readers.load_pairs(str(path), cfg)  # deterministic
  assert [p.fold for p in again] == [p.fold for p in pairs]
  cfg.data.split = (0.5, 0.5, 0.0)
  _, report = readers.load_pairs(str(path), cfg)
  assert report["split"]["pairs"] == {"train": 50, "valid": 50, "test": 0}


def test_small_file_without_folds_still_has_train_and_valid(tmp_path):
  rows = [{"query": f"q{i}", "product_title": f"item {i}", "label": "Exact"} for i in range(10)]
  path = tmp_path / "ten.csv"
  path.write_bytes(malformed_corpus._csv(rows, header=("query", "product_title", "label")))
  cfg = _cfg("error")
  pairs, report = readers.load_pairs(str(path), cfg)
  assert all(report["split"]["pairs"][k] >= 1 for k in ("train", "valid", "test"))
  split_lib.check_trainable(report["split"], cfg, str(path))  # does not raise
