"""Pair schema, readers (JSONL / CSV / Parquet, error and skip modes), bundled data, rationales."""

import collections
import gzip
import json
import subprocess
import sys

import pytest

from rd_jax.config import default_config
from rd_jax.data import readers, schema
from rd_jax.data.rationale import rule_rationale, with_rule_rationales
from rd_jax.data.schema import DataError, Limits

TEMPLATE = default_config().data.item_template
LABELS = default_config().labels


def _row(**kw):
  row = {"query": "red shoes", "product_title": "Red Running Shoe", "product_brand": "Acme",
         "label": "Exact", "query_id": "q1", "product_id": "p1"}
  row.update(kw)
  return row


def _validate(row, labels=LABELS, limits=Limits(), **kw):
  return schema.validate_row(row, labels=labels, template=TEMPLATE, path="f.jsonl", lineno=7,
                             limits=limits, **kw)


def _write_jsonl(path, rows, gz=False):
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


# ------------------------------------------------------------------ schema
def test_render_item_drops_lines_of_absent_fields():
  text = schema.render_item({"product_title": "Mug", "product_brand": "", "product_color": None,
                             "category": "Home > Kitchen"}, TEMPLATE)
  assert text == "Mug\nCategory: Home > Kitchen"
  assert schema.render_item({"a": "x\n\ny", "b": None}, "{a}\nB: {b}\nC:{b}") == "x\ny\nC:"


def test_labels_exact_case_insensitive_and_esci_letters():
  assert _validate(_row(label="Substitute")).label_id == 1
  assert _validate(_row(label="complement")).label_id == 2
  assert _validate(_row(label="I")).label_id == 3
  with pytest.raises(DataError, match=r"f\.jsonl:7: unknown label 'E'; allowed: good, bad"):
    _validate(_row(label="E"), labels=["good", "bad"])  # letters only for the ESCI label set
  with pytest.raises(DataError, match="unknown label 'Great'; allowed: Exact, Substitute"):
    _validate(_row(label="Great"))


@pytest.mark.parametrize("row, key", [
    (_row(query=""), "missing_query"), (_row(query=None), "missing_query"),
    (_row(product_title="", product_brand=None), "empty_item"),
    (_row(query=["a"]), "non_string_field"), (_row(product_id={"x": 1}), "non_string_field"),
    (_row(label=None), "missing_label"), (_row(query_fold=9), "bad_fold"),
    ([1, 2], "not_an_object"),
])
def test_bad_rows_raise_with_file_line_and_reason(row, key):
  with pytest.raises(DataError, match=r"^f\.jsonl:7: ") as err:
    _validate(row)
  assert err.value.reason_key == key


def test_optional_label_ids_and_folds():
  pair = _validate(_row(label=None, query_id=111, query_fold="3"), require_label=False)
  assert (pair.label_id, pair.query_id, pair.fold) == (None, "111", 3)
  hashed = _validate(_row(query_id="", query="blue mug"))
  assert hashed.fold == schema.query_fold("", "blue mug", 5)
  assert _validate(_row(query_id="7")).fold == schema.query_fold("7", "ignored", 5)


def test_truncation_at_whitespace_is_recorded():
  limits = Limits(max_query_chars=12, max_item_chars=30, max_reasoning_chars=10)
  pair = _validate(_row(query="aaaa bbbb cccc dddd", reasoning="x" * 25), limits=limits)
  assert pair.query == "aaaa bbbb" and len(pair.reasoning) == 10
  assert set(pair.truncated) == {"query", "reasoning"}


def test_schema_does_not_import_jax():
  code = "import sys, rd_jax.data.schema; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ readers
def _bad_file(tmp_path, gz=False):
  rows = [_row(), "{not json", _row(query=""), _row(label="Great"),
          _row(product_title="", product_brand=""), _row(query="q " * 200), "", _row(query_id="q2")]
  return _write_jsonl(tmp_path / ("bad.jsonl.gz" if gz else "bad.jsonl"), rows, gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_error_mode_names_file_and_line(tmp_path, gz):
  path = _bad_file(tmp_path, gz)
  with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
    readers.load_pairs(path, default_config())


def test_skip_mode_counts_reasons_and_writes_rejects(tmp_path):
  cfg = default_config()
  cfg.data.on_bad_row = "skip"
  path, rejects = _bad_file(tmp_path), tmp_path / "rejects.jsonl"
  pairs, report = readers.load_pairs(path, cfg, rejects_path=str(rejects))
  assert [p.query_id for p in pairs] == ["q1", "q1", "q2"]
  assert report["rows_read"] == 7 and report["rows_kept"] == 3  # the blank line is not a row
  assert report["skipped_by_reason"] == {"invalid_json": 1, "missing_query": 1,
                                         "unknown_label": 1, "empty_item": 1}
  assert report["truncated"] == {"query": 1, "item": 0, "reasoning": 0}
  assert len(pairs[1].query) <= cfg.data.max_query_chars
  lines = [json.loads(l) for l in rejects.read_text().splitlines()]
  assert [(l["line"], l["raw"]) for l in lines][0] == (2, "{not json")
  assert [l["line"] for l in lines] == [2, 3, 4, 5] and "Great" in lines[2]["reason"]


def test_csv_error_lines_count_multiline_records(tmp_path):
  path = tmp_path / "pairs.csv"
  path.write_text('query,product_title,label,query_id,query_fold\n'
                  'red shoes,"Shoe\nwith laces",Exact,0012,2\n'
                  'blue mug,Mug,Bogus,5,\n', encoding="utf-8")
  with pytest.raises(DataError, match=rf"^{path}:4: unknown label 'Bogus'"):
    readers.load_pairs(str(path), default_config())
  cfg = default_config()
  cfg.data.on_bad_row = "skip"
  pairs, report = readers.load_pairs(str(path), cfg)
  assert report["skipped_by_reason"] == {"unknown_label": 1}
  assert (pairs[0].item_text, pairs[0].query_id, pairs[0].fold) == ("Shoe\nwith laces", "0012", 2)


def test_csv_and_parquet_round_trip(tmp_path):
  pd = pytest.importorskip("pandas")
  rows = [_row(query_id="0012", query_fold=2), _row(query="blue mug", product_id="p2", label="S")]
  frame = pd.DataFrame(rows)
  frame.to_csv(tmp_path / "p.csv", index=False)
  frame.to_parquet(tmp_path / "p.parquet")
  for name in ("p.csv", "p.parquet"):
    pairs, report = readers.load_pairs(str(tmp_path / name), default_config())
    assert [p.label_id for p in pairs] == [0, 1] and report["rows_kept"] == 2
    assert pairs[0].query_id == "0012" and pairs[0].fold == 2  # CSV: ids stay strings
  frame.loc[1, "query"] = None
  frame.to_parquet(tmp_path / "bad.parquet")
  with pytest.raises(DataError, match=r"bad\.parquet:2: missing or empty 'query'"):
    readers.load_pairs(str(tmp_path / "bad.parquet"), default_config())


def test_bundled_data_matches_its_stats():
  pairs, report = readers.load_pairs("", default_config())
  assert report["rows_read"] == report["rows_kept"] == 5176 and report["format"] == "jsonl"
  assert len({p.query_id for p in pairs}) == 116
  labels = collections.Counter(LABELS[p.label_id] for p in pairs)
  assert labels == {"Exact": 2623, "Substitute": 1451, "Irrelevant": 862, "Complement": 240}
  assert collections.Counter(p.fold for p in pairs) == {1: 1255, 2: 928, 3: 1856, 4: 1137}



@pytest.mark.parametrize("name", sorted(readers.BUNDLED_ANNOTATIONS))
def test_bundled_teacher_annotations_cover_the_train_folds_with_provenance(name):
  """The demo's reasoning: our DPO teacher's annotations of folds 1 and 3, every train pair either
  annotated (label in the label set, non-empty reasoning) or counted as a teacher failure."""
  cfg = default_config()
  path = readers.bundled_annotations_path(name)
  with open(readers.annotations_provenance_path(path)) as f:
    provenance = json.load(f)
  assert provenance["commit"] and provenance["command"]
  # the teacher that wrote them: its annotate stage and at least the SFT it annotated with
  assert {"sft", "annotate"} <= set(provenance["stages"])
  annotate = provenance["stages"]["annotate"]
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == provenance["annotations"] == annotate["annotated"]
  assert all(r["reasoning"].strip() and r["teacher_label"] in LABELS for r in rows)
  pairs, _ = readers.load_pairs("", cfg)
  train = readers.train_valid_test(pairs, cfg)["train"]
  assert annotate["pairs"] == len(train) == annotate["annotated"] + annotate["failures"]
  train_keys = {(p.query_id, p.product_id) for p in train}
  assert {(r["query_id"], r["product_id"]) for r in rows} <= train_keys
  attached, report = readers.attach_reasoning(train, path, cfg)
  assert report["attached"] == len(rows) and report["missing"] == annotate["failures"]


def test_fold_split_is_query_disjoint_and_complete():
  cfg = default_config()
  pairs, _ = readers.load_pairs("", cfg)
  splits = readers.train_valid_test(pairs, cfg)
  queries = {name: {p.query for p in part} for name, part in splits.items()}
  assert not queries["train"] & queries["valid"] and not queries["train"] & queries["test"]
  assert not queries["valid"] & queries["test"]
  assert sum(len(part) for part in splits.values()) == len(pairs)
  cfg.data.valid_folds = [1]
  with pytest.raises(ValueError, match="fold 1 is in both"):
    readers.train_valid_test(pairs, cfg)


def test_attach_reasoning_by_id_then_query(tmp_path):
  cfg = default_config()
  pairs = [_validate(_row()), _validate(_row(query_id="", query="mug", product_id="p9")),
           _validate(_row(product_id="p3"))]
  ann = _write_jsonl(tmp_path / "ann.jsonl", [
      {"query_id": "q1", "product_id": "p1", "reasoning": "Title matches.", "teacher_label": "e"},
      {"query": "mug", "product_id": "p9", "reasoning": "A mug.", "teacher_label": "Nope"}])
  out, report = readers.attach_reasoning(pairs, ann, cfg)
  assert [p.reasoning for p in out] == ["Title matches.", "A mug.", None]
  assert [p.teacher_label_id for p in out] == [0, None, None]
  assert report["attached"] == 2 and report["missing"] == 1 and report["unknown_teacher_label"] == 1
  assert report["missing_examples"][0]["product_id"] == "p3"



@pytest.mark.parametrize("mode", ["error", "skip"])
def test_pairs_the_teacher_failed_on_error_or_are_dropped_and_counted(tmp_path, mode):
  from rd_jax.student import data as data_lib
  cfg = default_config()
  cfg.data.on_missing_reasoning = mode
  pairs = [_validate(_row()), _validate(_row(product_id="p3"))]
  ann = _write_jsonl(tmp_path / "ann.jsonl", [
      {"query_id": "q1", "product_id": "p1", "reasoning": "Title matches.", "teacher_label": "e"}])
  cfg.data.reasoning_path = ann
  report = {}
  if mode == "error":
    with pytest.raises(ValueError, match="1 train pairs have no reasoning.*product_id=p3"):
      data_lib._with_reasoning(pairs, cfg, report, "train", str(tmp_path))
    return
  out = data_lib._with_reasoning(pairs, cfg, report, "train", str(tmp_path))
  assert [p.product_id for p in out] == ["p1"]
  assert report["train_dropped_without_reasoning"] == 1
  assert report["train_reasoning"]["missing"] == 1


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_teacher_label_student_follows_the_missing_policy(tmp_path, mode):
  """The "teacher labels only" student (baseline, crsd.label_source=teacher) drops or names the
  pairs the teacher failed on, as CRSD does for their reasoning."""
  from rd_jax.student import data as data_lib
  cfg = default_config()
  cfg.data.on_missing_reasoning = mode
  cfg.crsd.label_source = "teacher"
  pairs = [_validate(_row()), _validate(_row(product_id="p3"))]
  cfg.data.reasoning_path = _write_jsonl(tmp_path / "ann.jsonl", [
      {"query_id": "q1", "product_id": "p1", "reasoning": "Title matches.",
       "teacher_label": "Irrelevant"}])
  pairs, _ = readers.attach_reasoning(pairs, cfg.data.reasoning_path, cfg)
  report = {}
  if mode == "error":
    with pytest.raises(ValueError, match="1 train pairs have no teacher label.*product_id=p3"):
      data_lib._label_source(pairs, cfg, report, str(tmp_path))
    return
  out = data_lib._label_source(pairs, cfg, report, str(tmp_path))
  assert [(p.product_id, p.label_id) for p in out] == [("p1", 3)]
  assert report["train_dropped_without_teacher_label"] == 1 and report["labels"] == "teacher"


def test_crsd_on_teacher_labels_trains_on_the_teachers_labels_and_reasoning(tmp_path):
  """The paper's student (the table's crsd_teacher_labels): CRSD on the teacher's labels and
  reasoning, read from the bundled annotations; valid keeps gold labels."""
  from rd_jax.student import data as data_lib
  cfg = default_config()
  cfg.data.reasoning_path = "bundled"
  cfg.data.on_missing_reasoning = "skip"
  cfg.data.max_train_pairs = 200
  cfg.crsd.label_source = "teacher"
  stage_dir = tmp_path / "crsd"
  stage_dir.mkdir()
  data = data_lib.load_student_data(cfg, str(stage_dir), use_reasoning=True)
  assert data.report["labels"] == "teacher" and 0 < len(data.train) <= 200
  assert all(p.reasoning and p.label_id == p.teacher_label_id for p in data.train)
  gold = {(p.query_id, p.product_id): p.label_id
          for p in readers.train_valid_test(readers.load_pairs(cfg.data.path, cfg)[0], cfg)["train"]}
  changed = sum(gold[(p.query_id, p.product_id)] != p.label_id for p in data.train)
  assert changed > 0                            # the teacher disagrees with gold on some pairs
  assert all(p.teacher_label_id is None for p in data.valid)   # scored on gold


# ------------------------------------------------------------------ rationale
def test_rule_rationale_is_lexical_deterministic_and_label_blind():
  row = _row(query="silicone sealant not clear 10.1 oz", product_title="GE Silicone 10.1oz, Clear",
             product_color="Clear", category="Tools > Caulk")
  text = rule_rationale(row["query"], row)
  assert text == rule_rationale(row["query"], row)
  for key, value in (("label", "Irrelevant"), ("esci_label", "I"), ("gain", 0.0)):
    assert rule_rationale(row["query"], {**row, key: value}) == text
  assert '"silicone"' in text and '"sealant"' in text  # found / missing terms
  assert 'excludes "clear", but the item\'s title mentions it' in text
  assert "states the query's \"10.1 oz\"" in text
  assert 1 <= text.count(". ") + 1 <= 4


def test_with_rule_rationales_keeps_given_reasoning():
  pairs = [_validate(_row()), _validate(_row(reasoning="given"))]
  assert [p.reasoning for p in with_rule_rationales(pairs)][1] == "given"
  assert with_rule_rationales(pairs)[0].reasoning.startswith("The item matches")
