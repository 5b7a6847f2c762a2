#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the pod by itself.
# The workdir and TFDS data dir must be one file system shared by all workers (e.g. a bucket mounted with gcsfuse
# at the same path on every worker). Preemption sends SIGTERM: the run saves and exits, and rerunning this script
# resumes from the latest checkpoint.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/robotseg_hiera_t.py /mnt/bucket/runs/robotseg \
#       --config.init_checkpoint=/mnt/bucket/sam2.1_hiera_tiny.pt --config.data.data_dir=/mnt/bucket/tfds
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.overrides ...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
repo=${REPO_DIR:-robotseg_jax}  # the checkout on the workers (same path on each)
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && python -m robotseg_jax.train --config $config --workdir $workdir --config.distributed=True $*"
