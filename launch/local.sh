#!/usr/bin/env bash
# One machine, one or several JAX processes: a pod's multi-process program on one host, for testing.
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.x=y ...]          one process, all devices
#   NUM_PROCESSES=2 CPU_DEVICES=2 launch/local.sh configs/quickstart.py runs/mp       2 processes x 2 CPU devices
# With NUM_PROCESSES > 1 every process runs the same train command with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
# and JAX_PROCESS_ID set (robotseg_jax/distributed.py starts JAX's runtime from them; the CPU backend uses gloo).
# Process i logs to WORKDIR/logs/process_<i>.log; process 0's log is also streamed here. SIGTERM or Ctrl-C is
# passed to every process (they save the same step and exit); if one process fails, the others are stopped.
# CPU_DEVICES simulates that many CPU devices per process (XLA_FLAGS); unset, each process uses what it finds.
set -euo pipefail
config=${1:?usage: [NUM_PROCESSES=n] [CPU_DEVICES=d] [PORT=p] launch/local.sh CONFIG WORKDIR [--config.overrides ...]}
workdir=${2:?usage: [NUM_PROCESSES=n] [CPU_DEVICES=d] [PORT=p] launch/local.sh CONFIG WORKDIR [--config.overrides ...]}
shift 2
num_processes=${NUM_PROCESSES:-1}
python=${PYTHON:-python}
cd "$(dirname "$0")/.."
if [ -n "${CPU_DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES"
fi
if [ "$num_processes" -eq 1 ]; then
  exec "$python" -m robotseg_jax.train --config "$config" --workdir "$workdir" "$@"
fi

mkdir -p "$workdir/logs"
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID="$i" \
    "$python" -m robotseg_jax.train --config "$config" --workdir "$workdir" "$@" >"$workdir/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
forward() {  # signal every process still running
  for pid in "${pids[@]}"; do [ -n "$pid" ] && kill -"$1" "$pid" 2>/dev/null; done; return 0
}
trap 'forward TERM' TERM INT
tail -n +1 -f "$workdir/logs/process_0.log" --pid "${pids[0]}" &
status=0
while :; do
  running=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [ -z "$pid" ] && continue
    if kill -0 "$pid" 2>/dev/null; then running=1; continue; fi
    wait "$pid" && code=0 || code=$?
    pids[$i]=""
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
      # The others cannot finish a step without it; the last complete checkpoint is what a rerun resumes from.
      status=$code
      echo "launch/local.sh: process $i exited with status $code; stopping the others (logs in $workdir/logs)" >&2
      forward KILL
    fi
  done
  [ "$running" -eq 0 ] && break
  sleep 1
done
exit "$status"
