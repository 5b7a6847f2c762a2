#!/usr/bin/env bash
# Multi-node GPUs under Slurm: one process per node, all GPUs of a node in that process. JAX's runtime starts from
# Slurm's variables (robotseg_jax/distributed.py: a job step with more than one task). The repo, its environment
# (`make env ACCELERATOR=cuda12`), the workdir and the TFDS data dir must be on a file system shared by the nodes.
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm_gpu.sh configs/robotseg_hiera_t.py /shared/runs/robotseg \
#       --config.init_checkpoint=/shared/sam2.1_hiera_tiny.pt --config.data.data_dir=/shared/tfds
# Slurm sends SIGTERM 120 s before the time limit (or on preemption): every process saves the same step and exits 0,
# and the job requeues itself until the run has reached its last step (<workdir>/train_finished.json).
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
config=${1:?usage: sbatch [options] launch/slurm_gpu.sh CONFIG WORKDIR [--config.overrides ...]}
workdir=${2:?usage: sbatch [options] launch/slurm_gpu.sh CONFIG WORKDIR [--config.overrides ...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
python=${PYTHON:-.venv/bin/python}
srun --kill-on-bad-exit=1 "$python" -m robotseg_jax.train --config "$config" --workdir "$workdir" "$@"
if [ ! -e "$workdir/train_finished.json" ]; then
  echo "launch/slurm_gpu.sh: stopped before the last step; requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
