"""A tensorflow-datasets builder for the bundled ESCI subset, one split per query fold.

    from rd_jax.data import tfds_esci  # registers "esci_us_srw150"
    tfds_esci.EsciUsSrw150(data_dir=d).download_and_prepare()
    source = tfds.data_source("esci_us_srw150", data_dir=d)   # {"fold1": ..., "fold4": ...}
    source["fold2"][0]  # {"query": b"...", "label": 0, "fold": 2, ...}; text features are bytes

Written as ArrayRecord, read by random access (`tfds.data_source`, grain-compatible); TensorFlow is
not needed (never call `as_dataset`). Nothing is downloaded: the examples come from the bundled
`pairs.jsonl.gz` (or `pairs_path`, a JSONL with the same columns). Within a split, tfds orders
examples by a hash of their key (query_id:product_id), not by file order.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from rd_jax.data.readers import bundled_pairs_path, open_text

LABELS = ("Exact", "Substitute", "Complement", "Irrelevant")  # = rd_jax.config.ESCI_LABELS
TEXT_COLUMNS = ("query_id", "query", "product_id", "product_title", "product_description",
                "product_bullet_point", "product_brand", "product_color", "category")
FOLDS = (1, 2, 3, 4)  # fold 0 is withheld and not bundled

_CITATION = """@article{reddy2022shopping,
  title={Shopping Queries Dataset: A Large-Scale {ESCI} Benchmark for Improving Product Search},
  author={Reddy, Chandan K. and M{\\`a}rquez, Llu{\\'i}s and Valero, Fran and Rao, Nikhil and
          Zaragoza, Hugo and Bandyopadhyay, Sambaran and Biswas, Arnab and Xing, Anlu and
          Subbian, Karthik},
  journal={arXiv preprint arXiv:2206.06588},
  year={2022}
}"""


class EsciUsSrw150(tfds.core.GeneratorBasedBuilder):
  """Amazon ESCI (US) subset: 116 queries, 5,176 human-labelled pairs, splits fold1..fold4."""

  name = "esci_us_srw150"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Folds 1-4 of the OpenSearch 150-query ESCI subset, with product text."}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9's default touches `importlib_resources` (a Python<3.9-only dependency of tfds, often
    # absent) for builders that live in a package; this file is the answer it would compute.
    return epath.Path(__file__)

  def __init__(self, *, pairs_path: str | None = None, **kwargs):
    self._pairs_path = pairs_path or bundled_pairs_path()
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {name: tfds.features.Text() for name in TEXT_COLUMNS}
    features["label"] = tfds.features.ClassLabel(names=list(LABELS))
    features["fold"] = tfds.features.Scalar(dtype=np.int32)
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features),
        description="Amazon Shopping Queries (ESCI) relevance judgements with product text "
                    "(see rd_jax/data/assets/esci_us_srw150/README.md; Apache-2.0).",
        homepage="https://github.com/amazon-science/esci-data", citation=_CITATION,
        supervised_keys=None)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {f"fold{fold}": self._generate_examples(fold) for fold in FOLDS}

  def _generate_examples(self, fold: int):
    """(key, example) for the rows of `fold`; a row without a known label or fold is an error."""
    with open_text(self._pairs_path) as f:
      for lineno, line in enumerate(f, start=1):
        if not line.strip():
          continue
        row = json.loads(line)
        if row.get("label") not in LABELS or row.get("query_fold") not in (0, *FOLDS):
          raise ValueError(f"{self._pairs_path}:{lineno}: label {row.get('label')!r} or "
                           f"query_fold {row.get('query_fold')!r} is not valid")
        if row["query_fold"] != fold:
          continue
        example = {name: row.get(name) or "" for name in TEXT_COLUMNS}
        example.update(label=row["label"], fold=fold)
        yield f"{row['query_id']}:{row['product_id']}", example
