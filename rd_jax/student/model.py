"""The student a run starts from (`student.init`) and the meta.json of its final/ hand-off."""

from __future__ import annotations

import dataclasses

import numpy as np

from rd_jax.models import bert


def student_meta(cfg, model_cfg, tokenizer_dir: str, *, stage: str, step: int, valid: dict) -> dict:
  return {"model": "bert", "model_config": model_cfg.to_dict(), "labels": list(cfg.labels),
          "tokenizer": tokenizer_dir, "item_template": cfg.data.item_template,
          "max_len_std": int(cfg.student.max_len_std),
          # characters of query / item text kept before tokenising (schema.truncate_text): the
          # export's rd_jax.json carries them so rd_jax.score cuts served text the same way
          "max_query_chars": int(cfg.data.max_query_chars),
          "max_item_chars": int(cfg.data.max_item_chars),
          "match_hint": cfg.student.get("match_hint", ""), "stage": stage, "step": step,
          "init": cfg.student.init, "data": cfg.data.path or "bundled esci_us_srw150",
          "train_folds": list(cfg.data.train_folds),
          "metrics": {"valid_macro_f1": valid["macro_f1"], "valid_accuracy": valid["accuracy"]}}


def initial_student(cfg, rng) -> tuple[bert.BertConfig, dict, dict]:
  """(model config, params, info) from cfg.student.init: "minilm", "random" or a HF folder."""
  num_labels = len(cfg.labels)
  projection_dim = int(cfg.crsd.projection_dim)
  if cfg.student.init == "random":
    model_cfg = bert.BertConfig(
        vocab_size=cfg.student.vocab_size, hidden_size=cfg.student.hidden_size,
        num_layers=cfg.student.num_layers, num_heads=cfg.student.num_heads,
        intermediate_size=cfg.student.intermediate_size, max_position=cfg.student.max_position,
        dropout=cfg.student.dropout, attention_dropout=cfg.student.attention_dropout,
        num_labels=num_labels, dtype=cfg.student.dtype, projection_dim=projection_dim,
        pooling=cfg.student.get("pooling", "cls"))
    params = bert.init_params(model_cfg, rng)
    fresh = ["classifier/kernel"]   # everything is fresh; the head is what head_init concerns
    return model_cfg, _head_init(cfg, params, fresh), {"init": "random", "initialised": fresh}
  from rd_jax.convert import hf_bert
  # The classifier (and the projection head, ours) are not in the HF weights: freshly
  # initialised and listed in info["initialised"]; everything else is imported.
  model_cfg, params, info = hf_bert.load_hf_bert(cfg.student.init, num_labels, rng,
                                                 dropout=cfg.student.dropout,
                                                 attention_dropout=cfg.student.attention_dropout,
                                                 dtype=cfg.student.dtype,
                                                 projection_dim=projection_dim)
  # The pooling is not in an HF config.json: it comes from ours (the weights do not depend on it).
  model_cfg = dataclasses.replace(model_cfg, pooling=cfg.student.get("pooling", "cls"))
  return model_cfg, _head_init(cfg, params, info["initialised"]), dict(info, init=cfg.student.init)


def _head_init(cfg, params: dict, fresh_paths: list[str]) -> dict:
  """student.head_init="zeros": a freshly initialised classifier kernel [D, C] set to 0 (its
  bias is 0 already). A classifier imported from the init folder is kept whatever the key says."""
  if cfg.student.get("head_init", "normal") != "zeros" or "classifier/kernel" not in fresh_paths:
    return params   # "probe" is fitted later, on data (student/probe_head.py)
  classifier = dict(params["classifier"], kernel=np.zeros_like(np.asarray(params["classifier"]["kernel"])))
  return dict(params, classifier=classifier)
