"""`--stage=baseline`: the same student and data, cross-entropy on the standard view only.

The ablation the paper reports (no reasoning, no InfoNCE). Writes <workdir>/baseline/.
"""

from rd_jax.stages import crsd


def run(cfg, workdir: str) -> dict:
  return crsd.run(cfg, workdir, stage="baseline")
