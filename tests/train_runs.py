"""Running `python -m robotseg_jax.train` from tests: the command, one or several JAX processes on this machine, and
what a run leaves behind (logged scalars, checkpointed params)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
TINY = QUICKSTART + ":tiny"


def train_command(workdir, overrides, config: str = QUICKSTART) -> list[str]:
    return [sys.executable, "-m", "robotseg_jax.train", f"--config={config}", f"--workdir={workdir}", *overrides]


def environment(cpu_devices: int | None = None, **extra: str) -> dict[str, str]:
    """This environment with the repo importable, the CPU backend and `cpu_devices` simulated CPU devices."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **extra}
    if cpu_devices is not None:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={cpu_devices}"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(workdir, overrides, num_processes: int, cpu_devices: int, config: str = TINY):
    """`num_processes` training processes of one run, as launch/local.sh starts them (a coordinator on a free local
    port); process i logs to <workdir>/logs/process_<i>.log. Returns the Popen objects."""
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    port, processes = free_port(), []
    for i in range(num_processes):
        env = environment(cpu_devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                          JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
        log = open(os.path.join(workdir, "logs", f"process_{i}.log"), "w")
        processes.append(subprocess.Popen(train_command(workdir, overrides, config), cwd=REPO, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        log.close()
    return processes


def process_log(workdir, index: int) -> str:
    with open(os.path.join(workdir, "logs", f"process_{index}.log")) as f:
        return f.read()


def logged(workdir, tag: str = "train/core_loss") -> dict[int, float]:
    """The last logged value of `tag` at every step in the run's TensorBoard events."""
    import tensorflow as tf

    values = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")), key=os.path.getmtime):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def checkpointed_params(workdir, step: int) -> dict:
    """The params of training checkpoint `step`, as numpy arrays (whatever devices wrote them)."""
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))["params"]
