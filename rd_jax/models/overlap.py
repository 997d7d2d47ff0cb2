"""Query-item overlap features computed inside the student from its own input ids (the wide term).

Why (issue #17): on this data what carries a relevance model to unseen queries is how much of the
query the item covers (RESULTS.md, session 13: 9 word-overlap features alone in a logistic
regression match the whole lexical reference on the test fold), while a cross-encoder fine-tuned
on 69 train queries learns the queries. A linear term on those features, added to the encoder's
logits ("wide and deep", Cheng et al. 2016), gives the overlap a direct path to the decision. It is
computed from input_ids / token_type_ids / attention_mask alone, so an exported folder scores raw
(query, item) pairs with nothing but its tokenizer (rd_jax/convert/torch_mean_pooled.py holds the
PyTorch twin, line for line). It reads segment A (token type 0) as the query and segment B (type 1) as
the item; with a match hint (student.match_hint) the item is what follows the hint in segment B
(`hint_end`), since the hint lists the query's missing words.

The 9 features of one row (wordpiece ids; "content" pieces have a letter or digit and
are not special tokens; q = content pieces of segment A, i = those of segment B):
  0 share of q positions whose id occurs in i                     (0 when q is empty)
  1 Jaccard of the id sets of q and i
  2 share of q's adjacent content pairs (positions t, t+1 both content) found adjacent in i
                                                                   (0 when q has no such pair)
  3 share of q's digit pieces whose id occurs in i                (1 when q has none)
  4 q has a digit piece                                            (0/1)
  5 q has a negation word (without / no / not / non / free, a whole-word piece)   (0/1)
  6 i has a negation word                                          (0/1)
  7 log(1 + |q|),  8 log(1 + |i|)
They mirror references.overlap_features (word level) on wordpieces: the word-level features need
the raw text, which a model does not receive. Feature set "overlap" = these 9.

Feature set "overlap_accessory" appends 3 (FEATURE_SETS): an accessory is sold "for" its main
product ("Case for iPhone 12", "Bands Compatible with Fitbit Charge 3"), so a Complement item tends
to hold the query's words after such a marker (train folds: 77% of Complement items hold one of
ACCESSORY_MARKERS, 31-34% of the other labels; WORKSPACE.md, session 33):
  9 i has a marker piece (a whole-word piece in ACCESSORY_MARKERS)                 (0/1)
 10 share of q positions whose id occurs in i after i's first marker            (0 without one)
 11 share of q positions whose id occurs in i before i's first marker (= feature 0 without one)

Parameters (the "wide" subtree of a student's params; fitted after training by
student/wide_head.py, never by the optimiser):
  token_class [V, K]  per vocabulary id: content, digit, negation, "." (+ accessory marker for
                      "overlap_accessory": K = 5) (0/1 floats; from the tokenizer)
  mean [F], scale [F] standardisation;   kernel [F, C], bias [C]   the linear term
logits_wide = ((f - mean) / scale) @ kernel + bias   [B, C]
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

NEGATIONS = frozenset({"without", "no", "not", "non", "free"})   # = references._NEGATIONS
ACCESSORY_MARKERS = frozenset({"for", "compatible", "compatibility", "fit", "fits", "replacement",
                               "replacing"})
CONTENT, DIGIT, NEGATION, HINT_END, ACCESSORY = 0, 1, 2, 3, 4
_ALNUM = re.compile(r"[a-z0-9]")
# feature set -> (features per row, token classes per vocabulary id)
FEATURE_SETS = {"overlap": (9, 4), "overlap_accessory": (12, 5)}


def feature_shape(feature_set: str) -> tuple[int, int]:
  """(features F, token classes K) of a feature set, or a ValueError naming the known ones."""
  if feature_set not in FEATURE_SETS:
    raise ValueError(f"unknown wide feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
  return FEATURE_SETS[feature_set]


def token_classes(vocab: dict[str, int], feature_set: str = "overlap",
                  markers=ACCESSORY_MARKERS) -> np.ndarray:
  """[V, K] float32: content / digit / negation / "." (/ accessory marker: a whole-word piece in
  `markers`) flags of each wordpiece id (V = max id + 1; K of the feature set)."""
  markers = frozenset(m.lower() for m in markers)
  table = np.zeros((max(vocab.values()) + 1, feature_shape(feature_set)[1]), np.float32)
  for piece, i in vocab.items():
    special = piece.startswith("[") and piece.endswith("]")
    body = piece[2:] if piece.startswith("##") else piece
    table[i, CONTENT] = float(bool(_ALNUM.search(body.lower())) and not special)
    table[i, DIGIT] = float(body.isdigit() and not special)
    table[i, NEGATION] = float(not piece.startswith("##") and body.lower() in NEGATIONS)
    table[i, HINT_END] = float(piece == ".")
    if table.shape[1] > ACCESSORY:
      table[i, ACCESSORY] = float(not piece.startswith("##") and body.lower() in markers)
  return table


def hint_end(input_ids, token_type_ids, attention_mask, token_class) -> jnp.ndarray:
  """[B] int: the first position of segment B after its leading match hint (data/match_hint.py:
  "match: ... words." or "match: ...; missing: a, b." — it ends with the first run of "."
  pieces in segment B, since no listed word holds a "."); 0 for a row without a "." in B."""
  b = attention_mask.astype(jnp.float32) * (token_type_ids == 1)             # [B, L]
  dot = b * jnp.take(token_class[:, HINT_END], input_ids, axis=0)            # [B, L]
  position = jnp.arange(input_ids.shape[1])[None, :]                        # [1, L]
  first = jnp.argmax(dot, axis=-1)                                           # [B] first "."
  past_run = (position >= first[:, None]) & (dot == 0)                       # [B, L]
  return jnp.where(dot.max(-1) > 0, jnp.argmax(past_run, axis=-1), 0)


def features(input_ids, token_type_ids, attention_mask, token_class,
             after_hint: bool = False) -> jnp.ndarray:
  """[B, L] ids, type ids, mask (+ token_class [V, K]) -> [B, F] float32: the 9 "overlap"
  features, and the 3 accessory ones when token_class has the marker column (K = 5, F = 12).
  after_hint: the item is segment B after its match hint (hint_end), as the student reads it
  with student.match_hint set; the hint's own words (the query's missing ones) are not item."""
  cls = jnp.take(token_class, input_ids, axis=0)                             # [B, L, K]
  real = attention_mask.astype(jnp.float32) * cls[..., CONTENT]              # [B, L]
  q = real * (token_type_ids == 0)                                           # [B, L]
  i = real * (token_type_ids == 1)
  if after_hint:
    end = hint_end(input_ids, token_type_ids, attention_mask, token_class)   # [B]
    i = i * (jnp.arange(input_ids.shape[1])[None, :] >= end[:, None])
  eq = (input_ids[:, :, None] == input_ids[:, None, :]).astype(jnp.float32)  # [B, L, L]
  in_item = jnp.max(eq * i[:, None, :], axis=-1)                             # [B, L] id occurs in i
  nq, ni = q.sum(-1), i.sum(-1)                                              # [B]
  share = jnp.sum(q * in_item, -1) / jnp.maximum(nq, 1.0)
  # distinct ids: each position counts 1 / (occurrences of its id in its own segment)
  uq = q / jnp.maximum(jnp.sum(eq * q[:, None, :], -1), 1.0)                 # [B, L]
  ui = i / jnp.maximum(jnp.sum(eq * i[:, None, :], -1), 1.0)
  inter = jnp.sum(uq * in_item, -1)
  union = uq.sum(-1) + ui.sum(-1) - inter
  jaccard = inter / jnp.maximum(union, 1.0)
  # adjacent pairs (t, t+1) of content pieces in one segment
  qb = q[:, :-1] * q[:, 1:]                                                  # [B, L-1]
  ib = i[:, :-1] * i[:, 1:]
  pair_eq = eq[:, :-1, :-1] * eq[:, 1:, 1:]                                  # [B, L-1, L-1]
  pair_in_item = jnp.max(pair_eq * ib[:, None, :], axis=-1)
  nqb = qb.sum(-1)
  bigram = jnp.where(nqb > 0, jnp.sum(qb * pair_in_item, -1) / jnp.maximum(nqb, 1.0), 0.0)
  qd = q * cls[..., DIGIT]
  nqd = qd.sum(-1)
  digits = jnp.where(nqd > 0, jnp.sum(qd * in_item, -1) / jnp.maximum(nqd, 1.0), 1.0)
  neg = cls[..., NEGATION]
  out = [share, jaccard, bigram, digits, (nqd > 0).astype(jnp.float32),
         jnp.max(q * neg, -1), jnp.max(i * neg, -1), jnp.log1p(nq), jnp.log1p(ni)]
  if token_class.shape[1] > ACCESSORY:
    out += accessory_features(q, i, eq, cls[..., ACCESSORY] * (i > 0))
  return jnp.stack(out, axis=-1).astype(jnp.float32)


def accessory_features(q, i, eq, marker) -> list:
  """Features 9-11 (module docstring). q, i [B, L]: content masks of query and item; eq
  [B, L, L]: same id at positions s, t; marker [B, L]: the marker pieces of i."""
  length = q.shape[1]
  position = jnp.arange(length)[None, :]                                     # [1, L]
  has = jnp.max(marker, -1)                                                  # [B]
  first = jnp.where(has > 0, jnp.argmax(marker, -1), length)                 # [B] L = none
  after = i * (position > first[:, None])                                    # [B, L]
  before = i * (position < first[:, None])
  nq = jnp.maximum(q.sum(-1), 1.0)
  share_after = jnp.sum(q * jnp.max(eq * after[:, None, :], -1), -1) / nq
  share_before = jnp.sum(q * jnp.max(eq * before[:, None, :], -1), -1) / nq
  return [has, share_after, share_before]


def wide_logits(wide: dict, input_ids, token_type_ids, attention_mask,
                after_hint: bool = False) -> jnp.ndarray:
  """The wide term [B, C] of a student's params["wide"] (module docstring)."""
  f = features(input_ids, token_type_ids, attention_mask, jnp.asarray(wide["token_class"]),
               after_hint)
  z = (f - jnp.asarray(wide["mean"])) / jnp.asarray(wide["scale"])
  return z @ jnp.asarray(wide["kernel"], jnp.float32) + jnp.asarray(wide["bias"], jnp.float32)
