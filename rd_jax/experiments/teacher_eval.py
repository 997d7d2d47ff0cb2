"""A teacher's labels, measured so they can be trusted: valid sample, then test, beside the lexical
reference on the same pairs.

  python -m rd_jax.experiments.teacher_eval --config=configs/demo.py --out=runs/teacher_eval.json \
      [--teacher=runs/teacher/dpo/final] [--valid_pairs=256] [--test_pairs=0] \
      [--reasoning=generated|rules]

--teacher: a final/ folder; "" = the base model `teacher.init` (zero-shot). The teacher is scored
on a seeded sample of `--valid_pairs` valid-fold pairs (seed 0), the per-class label offsets are
fitted there (`rd_jax/decision.py`; the valid figure with them is optimistic and labelled so),
then on the test fold (all pairs, or a seeded `--test_pairs` sample, seed 0 — the output says
which) with those offsets; on valid also with the offsets cross-fitted over 3 query-disjoint
folds (fitted on two, scored on the third: the in-sample figure is optimistic). Reported per
split: macro-F1 (argmax of the scored labels, and with the offsets on test), accuracy, parse
rate (of the reasoning), the label distribution against gold's, and the lexical and majority
references (`rd_jax/references.py`, fitted on the train split) scored on exactly the same pairs. --reasoning=rules gives the teacher each pair's rule
rationale (`rd_jax/data/rationale.py`, what `sft.chains_from=rules` chains say) instead of letting
it write its own, and scores the label after it (`teacher/eval.evaluate_teacher`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import metrics as metrics_lib
from rd_jax import errors

_FLAGS = {}


def _define_flags() -> None:
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Pipeline config.", lock_config=True)
  _FLAGS["teacher"] = flags.DEFINE_string("teacher", "", "final/ folder; '' = the base teacher.init")
  _FLAGS["valid_pairs"] = flags.DEFINE_integer("valid_pairs", 256, "valid-fold sample (offsets)")
  _FLAGS["test_pairs"] = flags.DEFINE_integer("test_pairs", 0, "test-fold sample (0 = all, -1 = skip)")
  _FLAGS["out"] = flags.DEFINE_string("out", "teacher_eval.json", "JSON result (atomic)")
  _FLAGS["reasoning"] = flags.DEFINE_enum(
      "reasoning", "generated", ["generated", "rules"],
      "generated: the teacher writes its reasoning, then its label is scored; rules: each pair's "
      "rule rationale is given after the prompt and the label is scored after it (for teachers "
      "trained with sft.chains_from=rules)")


def sample(pairs, n: int):
  """All pairs (n = 0 or n >= len) or a seeded (0) sample of n, in fold order."""
  if not n or n >= len(pairs):
    return list(pairs)
  return [pairs[i] for i in np.sort(np.random.default_rng(0).permutation(len(pairs))[:n])]


def evaluate(cfg, teacher_dir: str, valid_pairs: int, test_pairs: int, out_path: str = "",
             reasoning: str = "generated") -> dict:
  """{teacher, prompt_version, label_source, valid, test}; test_pairs < 0 skips the test fold.
  With `out_path` the JSON is rewritten after each split (a long run keeps its valid figures)."""
  from rd_jax import ranking, references
  from rd_jax.teacher import eval as te, model as teacher_model
  from rd_jax.train.fit import make_mesh
  refs, splits = references.fit_for_config(cfg)
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  teacher = teacher_model.load_teacher(cfg, "", make_mesh(cfg), upstream=(), explicit=teacher_dir)
  out = {"teacher": teacher.source, "prompt_version": int(cfg.teacher.prompt_version),
         "label_source": "scored" if cfg.teacher.score_labels else "parsed", "reasoning": reasoning}
  offsets = None
  for split, n in (("valid", valid_pairs), ("test", test_pairs)):
    if n < 0:
      continue
    pairs = sample(splits[split], n)
    r = te.evaluate_teacher(teacher.config, teacher.params, teacher.tokenizer, pairs, cfg,
                            batch_size=cfg.annotate.batch_size, offsets=offsets,
                            fit_offsets=split == "valid", log=logging.info, reasoning=reasoning)
    if split == "valid":
      offsets = r.get("offsets")
    r.pop("label_logprobs", None)
    out[split] = {"pairs": len(pairs), "of": len(splits[split]),
                  "sample": "all" if len(pairs) == len(splits[split]) else "seeded (seed 0)",
                  "teacher": r, "references": {name: references.score(ref, pairs, cfg.labels, gains)
                                               for name, ref in refs.items()}}
    if out_path:
      metrics_lib.write_json_atomic(out, out_path)
  return out


def main(argv):
  del argv
  cfg = _FLAGS["config"].value
  result = evaluate(cfg, _FLAGS["teacher"].value, _FLAGS["valid_pairs"].value,
                    _FLAGS["test_pairs"].value, _FLAGS["out"].value, _FLAGS["reasoning"].value)
  brief = {"teacher": result["teacher"], "reasoning": result["reasoning"]}
  for split in [s for s in ("valid", "test") if s in result]:
    s = result[split]
    t = s["teacher"]
    brief[split] = {"pairs": f"{s['pairs']} of {s['of']} ({s['sample']})",
                    "teacher_macro_f1_argmax": round(t["macro_f1"], 4),
                    "teacher_macro_f1_offsets": round(t["adjusted"]["macro_f1"], 4) if "adjusted" in t else None,
                    "offsets_fitted_here": bool(t.get("offsets_fitted_on_these_pairs")),
                    "teacher_macro_f1_offsets_crossfit": (None if t.get("macro_f1_offsets_crossfit") is None
                                                          else round(t["macro_f1_offsets_crossfit"], 4)),
                    "lexical_macro_f1": round(s["references"]["lexical"]["macro_f1"], 4),
                    "majority_macro_f1": round(s["references"]["majority"]["macro_f1"], 4),
                    "parse_rate": round(t["parse_rate"], 3),
                    "labels": {k: round(v, 3) for k, v in (t.get("adjusted") or t)["label_distribution"].items()},
                    "labels_argmax": {k: round(v, 3) for k, v in t["label_distribution"].items()},
                    "gold": {k: round(v, 3) for k, v in t["gold_distribution"].items()},
                    "seconds": t["seconds"]}
    if "forced_reasoning" in t:
      brief[split]["forced_reasoning"] = t["forced_reasoning"]
  print(json.dumps({**brief, "out": os.path.abspath(_FLAGS["out"].value)}, indent=1))


if __name__ == "__main__":
  from rd_jax import cli_setup
  cli_setup.quiet_library_logs()
  cli_setup.compilation_cache()
  _define_flags()
  flags.mark_flags_as_required(["config"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.teacher_eval")
