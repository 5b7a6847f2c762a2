#!/usr/bin/env bash
# Multi-node GPUs under Slurm: one process per node, all GPUs of a node in that process; JAX reads the Slurm
# environment in jax.distributed.initialize(). The workdir and data dir must be on a shared file system.
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm_gpu.sh configs/robotseg_hiera_t.py /shared/runs/robotseg \
#       --config.init_checkpoint=/shared/sam2.1_hiera_tiny.pt --config.data.data_dir=/shared/tfds
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
set -euo pipefail
config=${1:?usage: launch/slurm_gpu.sh CONFIG WORKDIR [--config.overrides ...]}
workdir=${2:?workdir}
shift 2
srun python -m robotseg_jax.train --config "$config" --workdir "$workdir" --config.distributed=True "$@"
