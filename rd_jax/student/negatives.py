"""Cross-query negatives: train pairs that make a query's identity useless as a label.

`student.cross_query_negatives = k` (ours, #17; 0 = off). With a few dozen training queries a
student can lower its loss by learning each query's label mix (experiments/crossval.py measures
it: the demo student gives >= 90% of a test query's items one label for 40-69% of the queries,
gold for 0-4%). Here each train query also gets k items drawn from the OTHER train queries'
items, labelled `student.cross_query_negative_label` (default "Irrelevant": an item retrieved for
another query), so the same query now comes with items it does not match and only the item can
tell them apart. These are easy negatives (another query's product), the cheapest kind a search
team has; they change the train label counts, and so the class weights and the decision rule's
prior, exactly as real pairs would, unless `student.cross_query_negatives_counted` is False: then
the label counts (class weights, the decision rule's prior) are the real pairs' alone and each
negative weighs as a real pair of its label would, times `student.cross_query_negative_weight`
(stages/crsd.objective_of). Why that option: easy negatives are most of the Irrelevant rows at
k 8 (552 of ~900 on the demo's split), so counted they shrink the weight of a real, hard
Irrelevant pair and the prior the decision rule scales. Valid, test and the references never see
them.

Each negative is the donor pair with the query's text, id and fold, the negative label, no teacher
label, and (for the reasoning view) the rule-based rationale of that (query, item)
(data/rationale.py): the teacher never annotated it. Its label comes from its construction under
every `crsd.label_source` (with teacher labels the real pairs carry the teacher's, the drawn ones
the negative label; with teacher_soft as a one-hot target).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rd_jax import errors
from rd_jax.data import rationale


def is_drawn_negative(pair) -> bool:
  """Whether a train pair was drawn here rather than read from the data."""
  return (pair.raw or {}).get("synthetic") == "cross_query_negative"


def with_cross_query_negatives(train: list, cfg, report: dict, *, use_reasoning: bool) -> list:
  """train + k drawn negatives per train query (seeded by cfg.seed); report gets the counts."""
  k = int(cfg.student.get("cross_query_negatives", 0))
  if k <= 0:
    return train
  label = cfg.student.get("cross_query_negative_label", "Irrelevant")
  labels = list(cfg.labels)
  negatives = draw(train, k, label, labels, int(cfg.seed))
  if cfg.crsd.label_source == "teacher_soft":   # the constructed label as a one-hot soft target
    onehot = tuple(float(i == labels.index(label)) for i in range(len(labels)))
    negatives = [dataclasses.replace(p, soft_label=onehot) for p in negatives]
  if use_reasoning:
    negatives = rationale.with_rule_rationales(negatives)
  report["cross_query_negatives"] = {"per_query": k, "added": len(negatives), "label": label,
                                     "train_pairs_before": len(train),
                                     "label_from": "construction"}
  return list(train) + negatives


def draw(train: list, k: int, label: str, labels: list, seed: int,
         key: str = "student.cross_query_negatives") -> list:
  """k pairs per train query (seeded), each another query's item under this query, labelled
  `label`, no reasoning; queries whose every other item is their own get none.

  Shared by the student (`with_cross_query_negatives`) and the teacher's SFT rule chains
  (`sft.cross_query_negatives`, stages/sft.py); `key` names the config key in errors. `label` is
  `student.cross_query_negative_label` for both.
  """
  if label not in labels:
    raise errors.ConfigError(f"config key student.cross_query_negative_label = {label!r} is not one of "
                             f"the labels {labels}")
  label_id = labels.index(label)
  queries = list(dict.fromkeys(p.query_id for p in train))
  if len(queries) < 2:
    raise errors.DataError(f"{key} = {k} needs >= 2 train queries, the train split has "
                           f"{len(queries)}")
  first = {}
  for p in train:
    first.setdefault(p.query_id, p)
  # [N] arrays so each query's donor mask is a vector op, not a loop over every train pair
  query_of = np.asarray([str(p.query_id) for p in train])
  product_of = np.asarray([str(p.product_id) for p in train])
  rng = np.random.default_rng([seed, 17])
  negatives = []
  for q in queries:
    anchor = first[q]
    mine = query_of == str(q)                                                   # [N]
    donors = np.flatnonzero(~mine & ~np.isin(product_of, product_of[mine]))     # ascending
    if not len(donors):
      continue
    chosen = rng.choice(len(donors), size=min(k, len(donors)), replace=False)
    for j in sorted(chosen):
      donor = train[donors[j]]
      raw = dict(donor.raw, query=anchor.query, query_id=anchor.query_id, label=label,
                 synthetic="cross_query_negative")
      negatives.append(dataclasses.replace(
          donor, query=anchor.query, query_id=anchor.query_id, fold=anchor.fold, raw=raw,
          label_id=label_id, reasoning=None, teacher_label_id=None, teacher_label_probs=None,
          soft_label=None))
  return negatives
