#!/usr/bin/env bash
# Run one rd_jax stage on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh <tpu-name> <zone> <stage> [extra flags...]
# e.g. launch/tpu_pod.sh my-v5e-32 us-west4-a sft --config.teacher.init=/data/llama-7b
# Each worker runs the same command; JAX discovers the pod (mesh.multihost=auto), every host
# reads its own slice of each batch, process 0 writes summaries, all hosts write checkpoints.
# The workdir must be shared storage (a gs:// bucket or an NFS path mounted on every worker).
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; STAGE=${3:?stage}; shift 3
WORKDIR=${WORKDIR:-gs://YOUR_BUCKET/rd_jax/run1}
CONFIG=${CONFIG:-configs/pod.py}
REPO_DIR=${REPO_DIR:-~/rd_jax}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO_DIR
  pip install -q -U 'jax[tpu]' && pip install -q -e '.[all]'
  python -m rd_jax.main --stage=$STAGE --config=$CONFIG --workdir=$WORKDIR $*
"
