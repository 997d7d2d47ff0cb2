"""The lexical reference's 9 query-item overlap features of each training pair, as regression
targets for a training-only head on the student's [CLS] (`student.overlap_weight`, ours, #17).

Why: on the demo split these 9 features alone (how much of the query the item covers, bigram and
number matches, negations, lengths; references.overlap_features) carry all of the lexical
reference's skill on the unseen test queries (class-balanced LR: test macro-F1 0.327 vs the whole
reference's 0.326), while the fine-tuned cross-encoders, which can read the same tokens, stay at
0.25-0.28. Asking the [CLS] vector to predict them, as the similarity head asks it to predict the
bi-encoder cosine (student/similarity.py), is a label-free multi-task signal about exactly what
transfers:

    L_ovl = sum_i w_i (1/K) ||V^T cls_i + b - f_i||^2 / sum_i w_i,  f_i = (x_i - mu) / sigma  [K = 9]

with mu, sigma over the train split (a constant feature gets sigma 1, so its target is 0). The
head (similarity.OVERLAP_HEAD: V [D, 9], b [9]) is dropped from final/ and the export.
"""

from __future__ import annotations

import numpy as np

from rd_jax import references


def overlap_targets(pairs) -> tuple[np.ndarray, dict]:
  """(targets [N, 9] float32 in the order of `pairs`, stats): each pair's overlap features of its
  query and the student's item text, z-scored over `pairs`."""
  x = references.overlap_matrix(pairs, lambda p: p.item_text)                  # [N, 9], N > 0
  mean, std = x.mean(axis=0), x.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  return ((x - mean) / std).astype(np.float32), {
      "pairs": len(pairs), "features": x.shape[1],
      "mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std]}
