"""Real-size config for accelerator pods: a 7B-class Llama teacher sharded fsdp x tensor, and the
6-layer student data-parallel. Launch every stage on all hosts (launch/tpu_pod.sh, launch/slurm.sbatch):

  python -m rd_jax.main --stage=sft --config=configs/pod.py --workdir=gs://bucket/rd_jax/run1 \
      --config.teacher.init=/path/to/Llama-2-7b-hf-folder

teacher.init: a local HF folder (config.json + safetensors, one file or many with
model.safetensors.index.json) of a Llama (2, 3, 3.x with llama3 RoPE scaling) or Qwen2/2.5
model; its own config.json sets the shape (the teacher.* sizes below are used only by
init=random). The weights are read slice by slice straight onto the mesh
(convert/hf_sharded.py): no host holds the whole model, each reads only its devices' slices.
teacher.remat = per_layer: each decoder block's activations are recomputed in the backward pass
(models/remat.py; `python -m rd_jax.bench remat` shows what it saves).
Not measured: no run of this config (or any step on an accelerator) has been made yet; the
figures below are arithmetic. launch/gpu_check.sh is the first measurement to make.

Mesh (teacher stages): fsdp=8 x tensor=4 on 32 chips (e.g. TPU v5e-32 or 4 nodes x 8 H100).
Estimated (arithmetic, not measured) memory per device, 7B teacher (hidden 4096, 32 layers, vocab 32000), fp32 master weights + Adam:
  params 6.7e9 x 4 B = 27 GB, Adam moments 54 GB, grads 27 GB  -> 108 GB / 32 devices = 3.4 GB,
  plus bf16 activations for batch 64 x 1024 tokens: 6-8 GB per device estimated with
  teacher.remat = per_layer (set below: each block keeps only its input for the backward pass;
  without it every layer keeps all its activations, several times that). Not measured on a chip:
  `python -m rd_jax.bench remat` measures on CPU what the forward keeps for the backward (14x
  less at the SmolLM2 shape; XLA's CPU temp bytes do not shrink, README "Pods and clusters").
  An H100 has room; on a v5e (16 GB HBM) lower cpt.batch_size / sft.batch_size until it fits.
Student stages use mesh data=-1 (all chips), batch 1024: 22.7M params are replicated (<0.4 GB
with Adam); 6 layers x 1024 x 192 tokens of bf16 activations ~ 2 GB per device.
"""

from rd_jax.config import default_config


def get_config():
  c = default_config()
  c.mesh.fsdp = 8
  c.mesh.tensor = 4
  c.mesh.data = -1
  c.mesh.multihost = "auto"

  c.teacher.init = ""            # set to a local HF Llama-family folder (config + safetensors)
  c.teacher.vocab_size = 32000
  c.teacher.hidden_size = 4096
  c.teacher.num_layers = 32
  c.teacher.num_heads = 32
  c.teacher.num_kv_heads = 32
  c.teacher.intermediate_size = 11008
  c.teacher.rope_theta = 10000.0
  c.teacher.tie_embeddings = False
  c.teacher.max_position = 4096
  c.teacher.dtype = "bfloat16"
  c.teacher.remat = "per_layer"  # the activation estimate above assumes it
  c.teacher.max_prompt_len = 768
  c.teacher.max_response_len = 256
  c.cpt.seq_len = 1024
  c.cpt.batch_size = 64
  c.cpt.num_steps = 20000
  c.cpt.optim.warmup_steps = 2000   # each teacher stage: ~10% of its steps (reward, dpo:
                                    #   the defaults, 10 of 100)
  c.sft.batch_size = 64
  c.sft.num_steps = 5000
  c.sft.optim.warmup_steps = 500
  c.reward.batch_size = 64
  c.dpo.batch_size = 64
  c.annotate.batch_size = 256
  c.annotate.num_samples = 5

  c.student.dtype = "bfloat16"
  c.train.batch_size = 1024
  c.train.num_steps = 20000
  c.train.checkpoint_every = 1000
  c.train.log_every = 50
  c.student.optim.learning_rate = 1e-4
  c.student.optim.warmup_steps = 1000
  return c
