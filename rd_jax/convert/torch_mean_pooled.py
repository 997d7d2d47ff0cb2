"""PyTorch serving classes of the students HF's BertForSequenceClassification cannot hold.

  BertMeanPooledForSequenceClassification  `student.pooling=mean`: HF feeds its pooler token 0's
      last hidden state; this class feeds it the mean of the row's last hidden states over its
      real tokens (`rd_jax.models.bert.mean_pool`). Same weights, names and config.json.
  BertWideForSequenceClassification  `student.wide_features=overlap|overlap_accessory`: the BERT
      head's logits plus a linear map of 9 (12) query-item overlap features the model computes
      from its own input ids (rd_jax/models/overlap.py, config.json `rd_jax_wide_features`;
      `features` below is its line-for-line PyTorch twin), with the
      pooler reading token 0 or the mean (config.json `rd_jax_pooling`). Its tensors are in
      model.safetensors under `wide.*`. It needs token_type_ids (segment A = query, B = item),
      which every BERT tokenizer returns for a pair; a student trained with the match hint
      (`rd_jax_wide_after_hint`) reads the item after the hint line, which the serving stack
      writes as rd_jax.data.match_hint.hinted_item does.

This file imports only torch and transformers: the export copies it into the folder as
`modeling_rd_jax.py` and names the class in config.json's `auto_map`, so a serving stack without
rd_jax loads the folder with `AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` (or sentence-transformers' `CrossEncoder(folder, trust_remote_code=True)`).
rd_jax's own loaders import the classes from here and need no remote code (`load_torch_classifier`).
"""

from __future__ import annotations

import json
import os

import torch
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

ARCHITECTURE = "BertMeanPooledForSequenceClassification"
WIDE_ARCHITECTURE = "BertWideForSequenceClassification"
MODULE = "modeling_rd_jax"   # the file's name inside an export folder
CONTENT, DIGIT, NEGATION, HINT_END, ACCESSORY = 0, 1, 2, 3, 4
FEATURE_SETS = {"overlap": (9, 4), "overlap_accessory": (12, 5)}   # = models/overlap.FEATURE_SETS


class BertMeanPooledForSequenceClassification(BertForSequenceClassification):
  """BertForSequenceClassification whose pooler reads the masked mean of the last hidden states:
  pooled = tanh(W_p · Σ_t m_t h_t / Σ_t m_t + b_p); logits = W_c · dropout(pooled) + b_c."""
  pooling = "mean"

  def extra_logits(self, input_ids, token_type_ids, attention_mask):
    return 0.0   # the wide subclass adds its term here

  def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
              inputs_embeds=None, labels=None, **kwargs):
    return_dict = kwargs.pop("return_dict", None)   # callers (CrossEncoder) pass it; None = a dict
    outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True,
                        **kwargs)
    hidden = outputs.last_hidden_state                                   # [B, L, D]
    if attention_mask is None:
      attention_mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    if self.pooling == "mean":
      m = attention_mask.to(hidden.dtype).unsqueeze(-1)                  # [B, L, 1]
      mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)               # [B, D]
      pooled = self.bert.pooler.activation(self.bert.pooler.dense(mean))
    else:                                                                # token 0, as HF
      pooled = outputs.pooler_output
    logits = (self.classifier(self.dropout(pooled))
              + self.extra_logits(input_ids, token_type_ids, attention_mask))   # [B, C]
    loss = None
    if labels is not None:
      loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
    out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
    return out if return_dict is None or return_dict else out.to_tuple()


def hint_end(input_ids, token_type_ids, attention_mask, token_class):
  """[B] first position of segment B after its leading match hint (models/overlap.hint_end)."""
  b = attention_mask.to(torch.float32) * (token_type_ids == 1).to(torch.float32)
  dot = b * token_class[:, HINT_END][input_ids]                               # [B, L]
  position = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
  first = torch.argmax(dot, dim=-1)                                           # first max = first "."
  past_run = ((position >= first[:, None]) & (dot == 0)).to(torch.float32)
  return torch.where(dot.amax(-1) > 0, torch.argmax(past_run, dim=-1), torch.zeros_like(first))


def features(input_ids, token_type_ids, attention_mask, token_class, after_hint: bool = False):
  """[B, L] ids, type ids, mask (+ token_class [V, K]) -> [B, F] float32 (models/overlap.py):
  the 9 overlap features, + 3 accessory ones when token_class has the marker column (K = 5)."""
  cls = token_class[input_ids]                                                # [B, L, K]
  real = attention_mask.to(torch.float32) * cls[..., CONTENT]                 # [B, L]
  q = real * (token_type_ids == 0).to(torch.float32)
  i = real * (token_type_ids == 1).to(torch.float32)
  if after_hint:
    end = hint_end(input_ids, token_type_ids, attention_mask, token_class)
    position = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    i = i * (position >= end[:, None]).to(torch.float32)
  eq = (input_ids[:, :, None] == input_ids[:, None, :]).to(torch.float32)     # [B, L, L]
  in_item = torch.amax(eq * i[:, None, :], dim=-1)                            # [B, L]
  nq, ni = q.sum(-1), i.sum(-1)
  share = (q * in_item).sum(-1) / nq.clamp(min=1.0)
  uq = q / (eq * q[:, None, :]).sum(-1).clamp(min=1.0)
  ui = i / (eq * i[:, None, :]).sum(-1).clamp(min=1.0)
  inter = (uq * in_item).sum(-1)
  union = uq.sum(-1) + ui.sum(-1) - inter
  jaccard = inter / union.clamp(min=1.0)
  qb = q[:, :-1] * q[:, 1:]
  ib = i[:, :-1] * i[:, 1:]
  pair_eq = eq[:, :-1, :-1] * eq[:, 1:, 1:]
  pair_in_item = torch.amax(pair_eq * ib[:, None, :], dim=-1)
  nqb = qb.sum(-1)
  bigram = torch.where(nqb > 0, (qb * pair_in_item).sum(-1) / nqb.clamp(min=1.0),
                       torch.zeros_like(nqb))
  qd = q * cls[..., DIGIT]
  nqd = qd.sum(-1)
  digits = torch.where(nqd > 0, (qd * in_item).sum(-1) / nqd.clamp(min=1.0), torch.ones_like(nqd))
  neg = cls[..., NEGATION]
  out = [share, jaccard, bigram, digits, (nqd > 0).to(torch.float32),
         torch.amax(q * neg, -1), torch.amax(i * neg, -1), torch.log(1.0 + nq), torch.log(1.0 + ni)]
  if token_class.shape[1] > ACCESSORY:
    out += accessory_features(q, i, eq, cls[..., ACCESSORY] * (i > 0).to(torch.float32))
  return torch.stack(out, dim=-1)


def accessory_features(q, i, eq, marker):
  """Features 9-11 (models/overlap.accessory_features): has a marker, share of q found in i
  after / before i's first marker."""
  length = q.shape[1]
  position = torch.arange(length, device=q.device)[None, :]
  has = marker.amax(-1)
  first = torch.where(has > 0, torch.argmax(marker, dim=-1), torch.full_like(has, length, dtype=torch.long))
  after = i * (position > first[:, None]).to(torch.float32)
  before = i * (position < first[:, None]).to(torch.float32)
  nq = q.sum(-1).clamp(min=1.0)
  share_after = (q * torch.amax(eq * after[:, None, :], dim=-1)).sum(-1) / nq
  share_before = (q * torch.amax(eq * before[:, None, :], dim=-1)).sum(-1) / nq
  return [has, share_after, share_before]


class WideTerm(torch.nn.Module):
  """((f - mean) / scale) @ kernel + bias; its tensors are fitted values, not trained here."""

  def __init__(self, config):
    super().__init__()
    self.after_hint = bool(getattr(config, "rd_jax_wide_after_hint", False))
    feature_set = getattr(config, "rd_jax_wide_features", "overlap")
    if feature_set not in FEATURE_SETS:
      raise ValueError(f"config.json rd_jax_wide_features = {feature_set!r}; known: "
                       f"{', '.join(FEATURE_SETS)}")
    num_features, token_classes = FEATURE_SETS[feature_set]
    self.register_buffer("token_class", torch.zeros(config.vocab_size, token_classes))
    self.register_buffer("mean", torch.zeros(num_features))
    self.register_buffer("scale", torch.ones(num_features))
    self.register_buffer("kernel", torch.zeros(num_features, config.num_labels))
    self.register_buffer("bias", torch.zeros(config.num_labels))

  def forward(self, input_ids, token_type_ids, attention_mask):
    f = features(input_ids, token_type_ids, attention_mask, self.token_class, self.after_hint)
    return ((f - self.mean) / self.scale) @ self.kernel + self.bias


class BertWideForSequenceClassification(BertMeanPooledForSequenceClassification):
  """The BERT head (token 0 or mean pooling, config.json `rd_jax_pooling`) + the wide term:
  logits = W_c · dropout(pooled) + b_c + wide(input_ids, token_type_ids, attention_mask)."""

  def __init__(self, config):
    super().__init__(config)
    self.pooling = getattr(config, "rd_jax_pooling", "cls")
    self.wide = WideTerm(config)

  def extra_logits(self, input_ids, token_type_ids, attention_mask):
    if input_ids is None or token_type_ids is None:
      raise ValueError("the wide term reads input_ids and token_type_ids (segment A = query, "
                       "B = item): pass both")
    return self.wide(input_ids, token_type_ids, attention_mask)


def load_torch_classifier(folder: str, **kwargs):
  """The folder's classifier in PyTorch: one of these classes when config.json names it, else
  AutoModelForSequenceClassification; never runs code from the folder. kwargs go to
  from_pretrained (e.g. output_loading_info=True)."""
  from transformers import AutoModelForSequenceClassification
  with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
    architectures = json.load(f).get("architectures") or []
  ours = {ARCHITECTURE: BertMeanPooledForSequenceClassification,
          WIDE_ARCHITECTURE: BertWideForSequenceClassification}
  cls = next((ours[a] for a in architectures if a in ours), AutoModelForSequenceClassification)
  return cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, **kwargs)
