"""The reward model: the teacher's backbone + K scalar heads (one per reward dimension).

- `reward_scores` / `score_responses`: scores [N, K] of (prompt, response) rows or strings.
- `init_heads`: fresh heads for a backbone; `encode` / `round_up`: the rows they read.
- `load_reward_model`: the `<workdir>/reward/final` the reward stage writes (model "reward").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rd_jax import checkpoint
from rd_jax.models import decoder
from rd_jax.models.reward_heads import RewardHeads
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.teacher import model as teacher_model, rows as rows_lib


def encode(tokenizer, prompt: str, text: str, finished: bool) -> tuple[list[int], int]:
  """prompt + response token ids (EOS appended to a finished response), number of prompt ids."""
  p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
  r = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
  return p + r + ([tokenizer.eos_token_id] if finished else []), len(p)


def round_up(n: int, m: int = 32) -> int:
  return -(-max(n, 1) // m) * m


def reward_scores(params, config: decoder.DecoderConfig, tokens, mask):
  """{"backbone", "heads"} params, right-padded rows [B, L] -> scores [B, K] fp32."""
  h, _ = decoder.Decoder(config).apply({"params": params["backbone"]}, tokens,
                                       decoder.positions_from_mask(mask), attention_mask=mask,
                                       method=decoder.Decoder.hidden_states)        # [B, L, D]
  k = params["heads"]["heads"]["kernel"].shape[-1]
  return RewardHeads(k).apply({"params": params["heads"]}, h, mask)                # [B, K]


_scores_jit = jax.jit(reward_scores, static_argnames="config")


def init_heads(config: decoder.DecoderConfig, num_dimensions: int, seed: int) -> dict:
  return RewardHeads(num_dimensions).init(jax.random.PRNGKey(seed),
                                          jnp.zeros((1, 1, config.hidden_size)),
                                          jnp.ones((1, 1), jnp.int32))["params"]


def score_responses(reward_params, config, tokenizer, prompts, responses, *, finished=None,
                    batch_size: int = 8) -> np.ndarray:
  """Reward-model scores [N, K] of N (prompt, response) strings (finished: [N] bools, default
  all True: EOS appended). Batches are padded to `batch_size` rows and a multiple of 64 tokens."""
  finished = [True] * len(prompts) if finished is None else list(finished)
  ids = [encode(tokenizer, p, r, f)[0] for p, r, f in zip(prompts, responses, finished)]
  out = []
  for start in range(0, len(ids), batch_size):
    chunk = ids[start:start + batch_size]
    rows = rows_lib.right_pad(chunk + [chunk[0]] * (batch_size - len(chunk)), [[0]] * batch_size,
                        round_up(max(map(len, chunk)), 64), tokenizer.pad_token_id or 0)
    out.append(np.asarray(_scores_jit(reward_params, config, rows["tokens"],
                                      rows["attention_mask"]))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclasses.dataclass
class RewardModel:
  params: dict             # {"backbone", "heads"}
  config: decoder.DecoderConfig
  tokenizer: object
  dimensions: list
  meta: dict


def load_reward_model(path: str, mesh, known_tokenizers: dict | None = None) -> RewardModel:
  """A `final/` folder written by the reward stage (CheckpointError names the path if absent).

  known_tokenizers: {spec: tokenizer} already loaded (the policy's), to skip a second load."""
  from rd_jax.convert import hf_decoder
  meta = checkpoint.read_meta(path)
  config = decoder.DecoderConfig.from_dict(meta["model_config"])
  heads = jax.eval_shape(lambda: init_heads(config, len(meta["dimensions"]), 0))
  heads = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=mesh_lib.replicated(mesh)), heads)
  params, meta = checkpoint.load_final(path, {"backbone": teacher_model.abstract_params(config, mesh),
                                              "heads": heads}, expect_model="reward")
  tokenizer = (known_tokenizers or {}).get(meta["tokenizer"])
  if tokenizer is None:
    tokenizer = hf_decoder.resolve_teacher_tokenizer(meta["tokenizer"])
  return RewardModel(params, config, tokenizer, list(meta["dimensions"]), meta)
