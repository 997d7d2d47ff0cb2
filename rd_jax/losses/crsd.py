"""Contrastive Reasoning Self-Distillation (CRSD) loss, Figure 3 of arXiv 2510.11056.

One shared encoder + classifier produce, for the standard view (query, item) and the
reasoning-augmented view (query, item, reasoning):  logits_s, logits_t [B, C] and [CLS] vectors
cls_s, cls_t [B, D] (or their projections). The objective is

    L = CE(logits_s, y) + w_aug * CE(logits_t, y) + lambda * InfoNCE(cls_s, cls_t)
        [+ kl_weight * KL(p_t || p_s)   -- optional, not in Figure 3]

Both CEs take the same class weights and logit adjustment (losses/classification.py), so the two
views are trained toward the same decision rule. `lambda_multiplier` (a traced scalar) scales
lambda per step: the stage's warm-up of lambda and its gradient-ratio calibration (stages/crsd.py).

The baseline (`aug_outputs=None`) is CE on the standard view alone. Inference uses the standard
view only, so nothing at serving time needs reasoning.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rd_jax.losses import classification, infonce


@dataclasses.dataclass(frozen=True)
class CrsdLossConfig:
  """What the CRSD objective reads (config section `crsd`, documented in rd_jax/config.py)."""
  lambda_infonce: float = 0.5      # lambda
  lambda_scale: str = "gradient_ratio"  # absolute | gradient_ratio (stages/crsd.py: per step)
  lambda_warmup_steps: int = 0     # lambda ramps linearly from 0 over this many steps
  weight_aug_ce: float = 1.0       # w_aug
  temperature: float = 0.05        # InfoNCE tau
  symmetric: bool = True           # InfoNCE std->aug and aug->std, averaged
  stop_grad_aug: bool = False      # the augmented vector is a fixed target in InfoNCE
  mask_duplicates: bool = True     # negatives sharing the item or the reasoning are masked
  gather_negatives: bool = True    # negatives from the global batch, else the local block
  kl_weight: float = 0.0           # optional KL(p_t || p_s)

  @classmethod
  def from_config(cls, section) -> "CrsdLossConfig":
    """From the `crsd` config section (its other keys — data and model choices — are ignored)."""
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


def crsd_loss(std_out: dict, aug_out: dict | None, batch: dict, cfg: CrsdLossConfig, *,
              local_block: int = 0, class_weights=None, logit_adjustment=None,
              row_weights=None, lambda_multiplier=1.0):
  """std_out/aug_out: model outputs ({"logits", "cls", optional "proj"}); cfg: the loss settings;
  class_weights, logit_adjustment: [C] or None, row_weights [B] or None
  (classification.weighted_cross_entropy).

  Returns (loss, metrics) with metrics as (sum, count)-normalised scalars.
  """
  labels, w = batch["labels"], batch["weights"].astype(jnp.float32)
  ce = lambda logits: classification.weighted_cross_entropy(
      logits, labels, w, class_weights, logit_adjustment, batch.get("soft_labels"), row_weights)
  ce_s, n = ce(std_out["logits"])
  acc_s, _ = classification.weighted_accuracy(std_out["logits"], labels, w)
  n = jnp.maximum(n, 1.0)
  loss = ce_s / n
  metrics = {"ce_std": ce_s / n, "acc_std": acc_s / n}
  if aug_out is None:
    metrics["loss"] = loss
    return loss, metrics

  ce_t, _ = ce(aug_out["logits"])
  acc_t, _ = classification.weighted_accuracy(aug_out["logits"], labels, w)
  key = "proj" if "proj" in std_out else "cls"
  nce, _, nce_m = infonce.info_nce(
      std_out[key], aug_out[key], w, temperature=cfg.temperature, symmetric=cfg.symmetric,
      stop_grad_aug=cfg.stop_grad_aug,
      item_key=batch.get("item_key") if cfg.mask_duplicates else None,
      reasoning_key=batch.get("reasoning_key") if cfg.mask_duplicates else None,
      local_block=0 if cfg.gather_negatives else local_block)
  lam = cfg.lambda_infonce * lambda_multiplier
  loss = loss + cfg.weight_aug_ce * ce_t / n + lam * nce / n
  metrics.update(lambda_infonce=jnp.asarray(lam, jnp.float32), ce_aug=ce_t / n, acc_aug=acc_t / n, infonce=nce / n,
                 infonce_top1=nce_m["infonce_top1_sum"] / n,
                 positive_cos=nce_m["positive_cos_sum"] / n)
  if cfg.kl_weight:
    kl, _ = classification.kl_divergence(aug_out["logits"], std_out["logits"], w)
    loss = loss + cfg.kl_weight * kl / n
    metrics["kl"] = kl / n
  metrics["loss"] = loss
  return loss, metrics
