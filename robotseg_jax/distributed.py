"""JAX's multi-process runtime for the CLIs: found in the environment and started before anything touches a device,
plus the host-side helpers a multi-process program needs (host copies of global arrays, a barrier).

On a TPU pod slice or a multi-node GPU job every host runs the same command; `initialize(config.distributed)`
starts `jax.distributed` when it finds one of

    explicit   `coordinator_address` / `num_processes` / `process_id` in the config, or the environment variables
               JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (launch/local.sh sets these)
    Slurm      a job step with more than one task (SLURM_NTASKS > 1); JAX reads the rest from Slurm's variables
    TPU pod    a Cloud TPU VM whose slice has more than one worker (TPU_WORKER_HOSTNAMES on GKE, the
               `worker-network-endpoints` metadata on Cloud TPU VMs); JAX reads the rest from the TPU metadata

and leaves a single process alone. On the CPU backend the processes' collectives run over gloo.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import urllib.request
from collections.abc import Callable, Mapping

import jax
import numpy as np
from ml_collections import config_dict

from robotseg_jax.errors import ConfigValueError

MODES = ("auto", "on", "off")
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
GOOGLE_PCI_VENDOR = "0x1ae0"  # the PCI vendor of Cloud TPU chips
BARRIER_TIMEOUT_S = 3600  # how long a process waits for the others at a barrier
TPU_METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"


def config_section() -> config_dict.ConfigDict:
    """The `distributed` section of a CLI's config. mode "auto": the runtime starts when the environment is a
    multi-process launch (the explicit values or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
    Slurm with several tasks, a multi-host TPU slice); "on": always; "off": never."""
    section = config_dict.ConfigDict()
    section.mode = "auto"
    section.coordinator_address = config_dict.placeholder(str)  # host:port of process 0
    section.num_processes = config_dict.placeholder(int)
    section.process_id = config_dict.placeholder(int)
    return section


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a multi-process run: where it was found and the explicit arguments of
    `jax.distributed.initialize` (None: JAX finds the value in the cluster's environment)."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def find_launch(
    settings: config_dict.ConfigDict,
    environ: Mapping[str, str] | None = None,
    tpu_workers: Callable[[], int] | None = None,
) -> Launch | None:
    """The multi-process launch this process is part of, per `settings.mode` ("auto": the first of explicit,
    Slurm, TPU pod that is present; "on": always, leaving JAX to find what is not explicit; "off": never), or
    None for a single process. `tpu_workers` counts the workers of this TPU slice (default: `tpu_worker_count`)."""
    environ = os.environ if environ is None else environ
    mode = settings.get("mode", "auto")
    if mode not in MODES:
        raise ConfigValueError(f"distributed.mode={mode!r} must be one of {', '.join(MODES)}")
    if mode == "off":
        return None
    explicit = Launch(
        "explicit",
        settings.get("coordinator_address") or environ.get(COORDINATOR_ENV),
        _int_setting(settings.get("num_processes"), environ.get(NUM_PROCESSES_ENV), "num_processes"),
        _int_setting(settings.get("process_id"), environ.get(PROCESS_ID_ENV), "process_id"),
    )
    given = [v is not None for v in (explicit.coordinator_address, explicit.num_processes, explicit.process_id)]
    if any(given) and not all(given):
        raise ConfigValueError(
            "an explicit multi-process launch needs all of distributed.coordinator_address, num_processes and "
            f"process_id (or {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}); got "
            f"{explicit.coordinator_address!r}, {explicit.num_processes!r}, {explicit.process_id!r}"
        )
    if all(given):
        if not 0 <= explicit.process_id < explicit.num_processes:
            raise ConfigValueError(
                f"distributed.process_id={explicit.process_id} must lie in [0, num_processes={explicit.num_processes})"
            )
        return explicit if explicit.num_processes > 1 or mode == "on" else None
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in environ:
        return Launch("slurm")
    if (tpu_workers or tpu_worker_count)() > 1:
        return Launch("tpu pod")
    return Launch("jax auto-detection") if mode == "on" else None


def initialize(settings: config_dict.ConfigDict) -> Launch | None:
    """Starts JAX's multi-process runtime when `find_launch` finds a launch; returns it (None: single process).
    Must run before the first use of a device."""
    launch = find_launch(settings)
    if launch is None:
        return None
    # Needed by multi-process CPU runs (tests, the local launcher); accelerators' collectives ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=launch.coordinator_address,
        num_processes=launch.num_processes,
        process_id=launch.process_id,
    )
    return launch


def tpu_worker_count() -> int:
    """Workers (hosts) of this Cloud TPU slice; 0 off a TPU VM. Reads GKE's TPU_WORKER_HOSTNAMES, else the VM's
    metadata server (only on a machine with a Google PCI device, so that nothing is queried elsewhere)."""
    hostnames = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES")
    if hostnames:
        return len(hostnames.split(","))
    if not _has_tpu_chip():
        return 0
    request = urllib.request.Request(TPU_METADATA_URL, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return len(response.read().decode().strip().split(","))
    except OSError:  # a TPU VM without slice metadata (a single-host VM): one worker
        return 1


def _has_tpu_chip() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _int_setting(value, env_value: str | None, name: str) -> int | None:
    if value is not None:
        return int(value)
    if env_value is None or env_value == "":
        return None
    try:
        return int(env_value)
    except ValueError:
        raise ConfigValueError(f"{name} from the environment must be an integer, got {env_value!r}") from None


def host_copy(tree):
    """numpy copies of a pytree of arrays, on every process: arrays split over processes (FSDP params on a pod)
    are gathered first; arrays this process holds whole are copied directly."""

    def copy(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(copy, tree)


def allgather_json(value):
    """The JSON-serialisable `value` of every process, in process order (sent as bytes over the devices'
    collectives, so no shared file system is needed)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:length]).decode()) for row, length in zip(rows, lengths)]


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reaches the barrier `name` (a no-op in a single process), through the
    coordination service rather than a device collective: processes that arrive minutes apart (one compiling, one
    with a cached program, or validating different videos) are fine, while CPU collectives (gloo) give up when a
    peer is 30 s late. Each call is a new barrier, so the same name may be used again."""
    if jax.process_count() == 1:
        return
    import orbax.checkpoint as ocp

    _barrier_calls[name] = _barrier_calls.get(name, 0) + 1
    ocp.multihost.get_barrier_sync_fn()(key=f"robotseg_jax/{name}/{_barrier_calls[name]}", timeout_ms=timeout_s * 1000)


_barrier_calls: dict[str, int] = {}
