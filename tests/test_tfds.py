"""The tfds builder writes ArrayRecord splits per fold; `tfds.data_source` reads them (no TF)."""

import gzip
import json

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
from rd_jax.data import readers, tfds_esci  # noqa: E402  (registers the builder)


def test_round_trip_of_a_tiny_slice(tmp_path):
  with readers.open_text(readers.bundled_pairs_path()) as f:
    rows = [json.loads(line) for line, _ in zip(f, range(400))]
  tiny = []
  for fold in tfds_esci.FOLDS:  # 3 rows of every fold (all four occur in the first 400 lines)
    tiny += [r for r in rows if r["query_fold"] == fold][:3]
  path = tmp_path / "tiny.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in tiny)

  builder = tfds_esci.EsciUsSrw150(data_dir=str(tmp_path / "tfds"), pairs_path=str(path))
  builder.download_and_prepare()
  source = tfds.data_source("esci_us_srw150", data_dir=str(tmp_path / "tfds"))
  expected = {(r["query_id"], r["product_id"]): r for r in tiny}
  seen = 0
  for name, split in source.items():
    fold = int(name.removeprefix("fold"))
    assert len(split) == sum(r["query_fold"] == fold for r in tiny)
    for i in range(len(split)):
      ex = split[i]
      row = expected[ex["query_id"].decode(), ex["product_id"].decode()]
      assert ex["fold"] == fold == row["query_fold"]
      assert tfds_esci.LABELS[ex["label"]] == row["label"]
      assert ex["query"].decode() == row["query"]
      assert ex["product_bullet_point"].decode() == row["product_bullet_point"]
      seen += 1
  assert seen == len(tiny)
