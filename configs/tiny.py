"""Tiny pipeline config for tests: a 2-layer, 32-wide random BERT; seconds per stage on a CPU.

  python -m rd_jax.main --stage=crsd --config=configs/tiny.py --workdir=/tmp/rd_tiny
  python -m rd_jax.main --stage=eval --config=configs/tiny.py --workdir=/tmp/rd_tiny

Expect a valid macro-F1 near chance (~0.2-0.3): the model is tiny and trains for 6 steps; the
config exists to exercise every code path fast, not to learn.
"""

from rd_jax.config import default_config


def get_config():
  c = default_config()
  c.data.reasoning_source = "rules"
  c.student.init = "random"
  c.student.hidden_size = 32
  c.student.num_layers = 2
  c.student.num_heads = 2
  c.student.intermediate_size = 64
  c.student.max_position = 128
  c.student.max_len_std = 32
  c.student.max_len_aug = 64
  c.student.length_buckets = (16, 32, 64)
  c.crsd.projection_dim = 0
  c.student.optim.learning_rate = 3e-3  # the tiny random BERT learns the cue task at 3e-3, not 1e-3
  c.student.optim.warmup_steps = 1
  c.train.batch_size = 8
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.eval.batch_size = 32
  c.eval.references = False     # the lexical fit (seconds idle) would repeat in every eval of the
                                # tests; tests of the references turn them on

  c.teacher.init = "random"
  c.teacher.vocab_size = 49152
  c.teacher.hidden_size = 32
  c.teacher.num_layers = 2
  c.teacher.num_heads = 4
  c.teacher.num_kv_heads = 2
  c.teacher.intermediate_size = 64
  c.teacher.max_position = 512
  c.teacher.max_prompt_len = 256
  c.teacher.max_response_len = 16
  for section in (c.cpt, c.sft, c.reward, c.dpo):
    section.num_steps = 2
    section.batch_size = 2
    section.optim.warmup_steps = 0
  c.cpt.seq_len = 64
  c.reward.prompts = 4
  c.reward.valid_prompts = 2
  c.reward.samples_per_prompt = 3
  c.reward.generate_batch_size = 4
  c.dpo.prompts = 4
  c.dpo.eval_prompts = 2
  c.dpo.samples_per_prompt = 2
  c.dpo.generate_batch_size = 4
  c.dpo.min_margin = 0.0         # a random reward model's margins are tiny
  c.sft.bootstrap_pairs = 8
  c.sft.gen_batch_size = 4
  c.sft.eval_pairs = 4
  c.annotate.batch_size = 4
  c.annotate.shard_size = 8
  c.annotate.offset_pairs = 8
  c.export.onnx = False
  c.export.int8 = False
  return c
