"""Training step time with one global batch on 1, 2, 4 and 8 simulated CPU devices in one process and on 2
processes x 2 devices, and the cost of fetching every step's metrics to the host (`metrics_lag_steps` 0 against
the default 1), side by side in one run of this script.

    python -m benchmarks.scaling [--steps 12] [--log-every 4] [--batch 8] [--repeats 1]

Each variant is a real `python -m robotseg_jax.train --config configs/quickstart.py:tiny` run (VRS-Sim rendered
once into a temporary folder, a shared compilation cache, no checkpoints but the last). A step's time is the
median over the log intervals after the first (the first holds the compile) of the wall time between the
TensorBoard events that process 0 writes, divided by the steps in between; logging fetches the metrics, so the
lag only acts within an interval. Ratios are against 1 process on 1 device (above 1: faster).

On a 2-core machine the simulated devices share the same two cores: the table shows what the multi-process
runtime and the collectives cost, not a speed-up; on a pod every device is a chip of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from ml_collections import config_dict

from benchmarks.common import machine_line, markdown_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart.py") + ":tiny"
# (label, processes, devices per process, metrics_lag_steps)
VARIANTS = [
    ("1 process x 1 device", 1, 1, 1),
    ("1 process x 2 devices", 1, 2, 1),
    ("1 process x 4 devices", 1, 4, 1),
    ("1 process x 8 devices", 1, 8, 1),
    ("2 processes x 2 devices", 2, 2, 1),
    ("1 process x 1 device, metrics fetched every step", 1, 1, 0),
    ("2 processes x 2 devices, metrics fetched every step", 2, 2, 0),
]


def render_data(root: str) -> config_dict.ConfigDict:
    from robotseg_jax.training import inputs

    data = config_dict.ConfigDict(
        {"name": "vrs_sim", "data_dir": os.path.join(root, "tfds"),
         "sim": {"out": os.path.join(root, "layout"), "videos": 12, "frames": 4, "size": 64, "seed": 0,
                 "holdout_embodiment": None, "workers": 2}}
    )
    inputs.ensure_dataset(data, log=lambda _: None)
    return data


def event_times(workdir: str, tag: str = "train/core_loss") -> dict[int, float]:
    import tensorflow as tf

    times = {}
    for name in sorted(os.listdir(workdir)):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
                if any(value.tag == tag for value in event.summary.value):
                    times[event.step] = event.wall_time
    return times


def run_variant(root: str, data, label: str, processes: int, devices: int, lag: int, args) -> float:
    """Seconds per step of one training run."""
    workdir = os.path.join(root, label.replace(" ", "_").replace(",", ""))
    overrides = [
        f"--config.total_steps={args.steps}",
        f"--config.log_every_steps={args.log_every}",
        f"--config.checkpoint_every_steps={args.steps}",
        f"--config.metrics_lag_steps={lag}",
        f"--config.data.batch_size={args.batch}",
        f"--config.data.data_dir={data.data_dir}",
        f"--config.data.sim.out={data.sim.out}",
        f"--config.compilation_cache_dir={os.path.join(root, 'jax_cache')}",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "NUM_PROCESSES": str(processes),
           "CPU_DEVICES": str(devices), "PYTHON": sys.executable}
    run = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), CONFIG, workdir, *overrides], cwd=REPO,
                         env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{label}: exit {run.returncode}\n{run.stderr[-3000:]}")
    times = event_times(workdir)
    steps = sorted(times)
    intervals = [(times[b] - times[a]) / (b - a) for a, b in zip(steps[1:], steps[2:])]
    if not intervals:
        raise RuntimeError(f"{label}: need at least 3 logged steps, got {steps} (raise --steps)")
    return statistics.median(intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="global batch (clips of 2 frames at 64 px)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every variant; the median is reported")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as root:
        data = render_data(root)
        seconds = {label: [] for label, *_ in VARIANTS}
        for repeat in range(args.repeats):
            for label, processes, devices, lag in VARIANTS:
                seconds[label].append(run_variant(root, data, f"{label} {repeat}", processes, devices, lag, args))
                print(f"  {label}: {seconds[label][-1]:.2f} s/step", flush=True)
    base = statistics.median(seconds[VARIANTS[0][0]])
    rows = []
    for label, *_ in VARIANTS:
        step = statistics.median(seconds[label])
        rows.append([label, f"{step:.2f}", f"{args.batch / step:.2f}", f"{base / step:.2f}x"])
    print(f"\nglobal batch {args.batch} clips (2 frames, 64 px), configs/quickstart.py:tiny, median of {args.repeats}")
    print(markdown_table(["variant", "s/step", "clips/s", "vs 1 x 1"], rows))


if __name__ == "__main__":
    main()
