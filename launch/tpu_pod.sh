#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it (or reuse it), install this checkout's committed code and the
# pinned requirements on every worker, run the same train command on all workers with their logs streamed here,
# and after a preemption recreate the slice and rerun, which resumes from the latest checkpoint.
#
#   ACCELERATOR_TYPE=v5litepod-16 launch/tpu_pod.sh TPU_NAME ZONE configs/robotseg_hiera_t.py /mnt/bucket/runs/robotseg \
#       --config.init_checkpoint=/mnt/bucket/sam2.1_hiera_tiny.pt --config.data.data_dir=/mnt/bucket/tfds
#
# The workdir and the TFDS data dir must be one file system that all workers share at the same path (a bucket
# mounted with gcsfuse, see launch/README.md). JAX's runtime finds the slice itself (robotseg_jax/distributed.py).
# Environment: ACCELERATOR_TYPE and RUNTIME_VERSION (default v2-alpha-tpuv5-lite) are used when the slice has to
# be created; SPOT=1 creates it as a Spot VM; MAX_RESTARTS (default 20) bounds the preemption reruns; SETUP (a
# shell command) runs on every worker before training, e.g. the gcsfuse mount.
set -euo pipefail
usage="usage: [ACCELERATOR_TYPE=...] launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.overrides ...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
overrides=$(printf ' %q' "$@")
runtime=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}
max_restarts=${MAX_RESTARTS:-20}
cd "$(dirname "$0")/.."
remote_dir=robotseg_jax  # in the home directory of every worker

state() { gcloud compute tpus tpu-vm describe "$tpu" --zone "$zone" --format='value(state)' 2>/dev/null || true; }
on_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }

ensure_slice() {
  local current
  current=$(state)
  if [ "$current" = PREEMPTED ] || [ "$current" = TERMINATED ]; then
    echo "launch/tpu_pod.sh: $tpu is $current; deleting it to create it again" >&2
    gcloud compute tpus tpu-vm delete "$tpu" --zone "$zone" --quiet
    current=""
  fi
  if [ -z "$current" ]; then
    : "${ACCELERATOR_TYPE:?the slice $tpu does not exist: set ACCELERATOR_TYPE (e.g. v5litepod-16) to create it}"
    gcloud compute tpus tpu-vm create "$tpu" --zone "$zone" --accelerator-type "$ACCELERATOR_TYPE" \
      --version "$runtime" ${SPOT:+--spot}
  fi
  until [ "$(state)" = READY ]; do sleep 10; done
}

install() {  # the committed code of this checkout and its pinned environment, on every worker
  local archive
  archive=$(mktemp --suffix=.tar.gz)
  git archive --format=tar.gz -o "$archive" HEAD
  gcloud compute tpus tpu-vm scp "$archive" "$tpu:robotseg_jax.tar.gz" --zone "$zone" --worker=all
  rm -f "$archive"
  on_all "set -e; ${SETUP:-true}; mkdir -p $remote_dir && tar -xzf robotseg_jax.tar.gz -C $remote_dir && \
    cd $remote_dir && make env ACCELERATOR=tpu PYTHON=python3"
}

for ((attempt = 0; attempt <= max_restarts; attempt++)); do
  ensure_slice
  install
  status=0
  on_all "cd $remote_dir && .venv/bin/python -m robotseg_jax.train --config $config --workdir $workdir$overrides" \
    || status=$?
  if [ "$(state)" != READY ]; then  # preempted while running: the checkpoint it saved (or the one before) resumes
    echo "launch/tpu_pod.sh: the slice was preempted (attempt $attempt); recreating it and resuming" >&2
    continue
  fi
  if [ "$status" -ne 0 ]; then
    echo "launch/tpu_pod.sh: training failed with status $status on a healthy slice; not restarting" >&2
    exit "$status"
  fi
  if on_all "test -e $workdir/train_finished.json" >/dev/null 2>&1; then  # written at the last step
    exit 0
  fi
  echo "launch/tpu_pod.sh: the run stopped on a preemption notice (attempt $attempt); resuming" >&2
done
echo "launch/tpu_pod.sh: gave up after $max_restarts restarts" >&2
exit 1
