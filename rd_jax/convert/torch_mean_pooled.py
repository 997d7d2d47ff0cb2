"""PyTorch serving class of a mean-pooled student (`student.pooling=mean`).

HF `BertForSequenceClassification` feeds its pooler token 0's last hidden state. A student trained
with `student.pooling=mean` feeds it the mean of the row's last hidden states over its real tokens
(`rd_jax.models.bert.mean_pool`), so it is exported as this subclass: the same weights, names and
config.json, one different line in the forward pass.

This file imports only torch and transformers: the export copies it into the folder as
`modeling_rd_jax.py` and names it in config.json's `auto_map`, so a serving stack without rd_jax
loads the folder with `AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` (or sentence-transformers' `CrossEncoder(folder, trust_remote_code=True)`).
rd_jax's own loaders import the class from here and need no remote code (`load_torch_classifier`).
"""

from __future__ import annotations

import json
import os

import torch
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

ARCHITECTURE = "BertMeanPooledForSequenceClassification"
MODULE = "modeling_rd_jax"   # the file's name inside an export folder


class BertMeanPooledForSequenceClassification(BertForSequenceClassification):
  """BertForSequenceClassification whose pooler reads the masked mean of the last hidden states:
  pooled = tanh(W_p · Σ_t m_t h_t / Σ_t m_t + b_p); logits = W_c · dropout(pooled) + b_c."""

  def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
              inputs_embeds=None, labels=None, **kwargs):
    return_dict = kwargs.pop("return_dict", None)   # callers (CrossEncoder) pass it; None = a dict
    outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True,
                        **kwargs)
    hidden = outputs.last_hidden_state                                   # [B, L, D]
    if attention_mask is None:
      attention_mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)                    # [B, L, 1]
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)                 # [B, D]
    pooled = self.bert.pooler.activation(self.bert.pooler.dense(mean))
    logits = self.classifier(self.dropout(pooled))                       # [B, C]
    loss = None
    if labels is not None:
      loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
    out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
    return out if return_dict is None or return_dict else out.to_tuple()


def load_torch_classifier(folder: str, **kwargs):
  """The folder's classifier in PyTorch: this class when config.json names it, else
  AutoModelForSequenceClassification; never runs code from the folder. kwargs go to
  from_pretrained (e.g. output_loading_info=True)."""
  from transformers import AutoModelForSequenceClassification
  with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
    architectures = json.load(f).get("architectures") or []
  if ARCHITECTURE in architectures:
    cls = BertMeanPooledForSequenceClassification
  elif "BertWideForSequenceClassification" in architectures:   # a student with a wide term
    from rd_jax.convert.torch_wide import BertWideForSequenceClassification as cls
  else:
    cls = AutoModelForSequenceClassification
  return cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, **kwargs)
