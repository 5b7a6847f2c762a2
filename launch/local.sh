#!/usr/bin/env bash
# One machine (CPU, or every GPU of this host as one mesh):
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.x=y ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.overrides ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.overrides ...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m robotseg_jax.train --config "$config" --workdir "$workdir" "$@"
