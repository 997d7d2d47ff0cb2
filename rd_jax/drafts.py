"""N-gram draft tokens for greedy speculative decoding (prompt lookup; `rd_jax/refill.py`).

Why (issue #19): on 2 CPU cores a decode step of B slots runs its matmuls at M = B rows, about
half the rate of M >= 128 (README "Performance"), and the teacher's reasoning copies much of its
text from its prompt (the query, the item) and repeats itself across rows ("The product meets all
specifications of the query, including ..."). So each step feeds, per slot, its last token plus
up to D guessed next tokens; one forward checks them all (greedy: a guess is kept while it equals
the model's own argmax), so a step emits 1 + (accepted guesses) tokens and the output is the
plain greedy output. Guesses cost compute, never correctness.

Where the guesses come from, for a slot whose text ends with the n-gram g (n = max_n .. 1, the
first that is found wins):
  1. the slot's own context (its prompt and what it generated so far): the tokens that followed
     the latest earlier occurrence of g (Saxena, 2023, "prompt lookup decoding");
  2. if that gives fewer than D tokens: the tokens that followed g in rows that already ended
     (a table shared by all slots of one `refill.run`), when that continuation is longer.
Lookups are dict reads: each context keeps an index n-gram -> start of its latest occurrence
that has a continuation, updated as tokens are appended.
"""

from __future__ import annotations

from typing import Sequence


class Context:
  """One slot's tokens with an n-gram index; `draft` guesses what follows them."""

  def __init__(self, tokens: Sequence[int], max_n: int):
    self.max_n = max_n
    self.tokens: list[int] = []
    self.index: dict[tuple, int] = {}     # n-gram -> start of its latest continued occurrence
    for t in tokens:
      self.append(int(t))

  def append(self, token: int) -> None:
    """Adds `token`; the n-grams ending just before it now have a continuation (it)."""
    toks, i = self.tokens, len(self.tokens)
    for n in range(1, self.max_n + 1):
      if i - n >= 0:
        self.index[tuple(toks[i - n:i])] = i - n
    toks.append(token)

  def draft(self, d: int, shared: "Table | None" = None) -> list[int]:
    """Up to d guessed next tokens ([] when no n-gram of the context's end was seen)."""
    toks = self.tokens
    for n in range(min(self.max_n, len(toks)), 0, -1):
      key = tuple(toks[-n:])
      j = self.index.get(key)
      own = toks[j + n:j + n + d] if j is not None else []
      other = shared.get(key, d) if shared is not None and len(own) < d else []
      best = other if len(other) > len(own) else own
      if best:
        return best
    return []


class Table:
  """n-gram -> the tokens that followed it (latest seen), from the rows that ended."""

  def __init__(self, max_n: int, keep: int):
    self.max_n, self.keep = max_n, keep
    self.next: dict[tuple, list[int]] = {}

  def add(self, tokens: Sequence[int]) -> None:
    toks = [int(t) for t in tokens]
    for i in range(len(toks) - 1):
      for n in range(1, self.max_n + 1):
        if i + 1 - n >= 0:
          self.next[tuple(toks[i + 1 - n:i + 1])] = toks[i + 1:i + 1 + self.keep]

  def get(self, key: tuple, d: int) -> list[int]:
    return self.next.get(key, [])[:d]


def accept(draft: Sequence[int], predicted: Sequence[int]) -> list[int]:
  """Greedy verification: fed [last, draft...], the model's argmax after each fed token is
  `predicted` [1 + len(draft)...]; returns the tokens to emit: predicted[0], then predicted[j]
  for as long as draft[j - 1] == predicted[j - 1] (each kept guess buys one more token)."""
  out = [int(predicted[0])]
  for j, guess in enumerate(draft, start=1):
    if j >= len(predicted) or int(guess) != int(predicted[j - 1]):
      break
    out.append(int(predicted[j]))
  return out
