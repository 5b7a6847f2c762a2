"""Segment whole robot datasets automatically (0 clicks): arm, gripper and robot masks for every frame of every video.

    python -m robotseg_jax.segment --config configs/segment.py \\
        --config.checkpoint=robotseg.pt --config.source=/data/videos --config.out=/data/masks \\
        [--config.videos_per_step=8] [--config.categories=robot] [--config.guided_filter=true]

Many videos are tracked in one compiled step; with several processes (a TPU pod, Slurm, launch/local.sh) each
takes its share. Writes out/<video>/<000|001|002>/<frame:05d>.png, out/manifest/ (a rerun skips the videos done),
out/overlays/<video>.gif and out/summary.json. A video that cannot be read is recorded and skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from robotseg_jax import cli, distributed
from robotseg_jax.segmentation.job import load_predictor, plan_from_config, run_job

_CONFIG = config_flags.DEFINE_config_file("config", None, "a segmentation config, e.g. configs/segment.py")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/segment.py")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the progress bar readable
    config = _CONFIG.value
    distributed.initialize(config.distributed)
    plan = plan_from_config(config)  # fails on the config or the source before the model loads
    summary = run_job(plan, load_predictor(config))
    failed = f", {len(summary['failed'])} failed" if summary["failed"] else ""
    print(
        f"{summary['segmented']} videos segmented ({summary['skipped_already_done']} done before{failed}), "
        f"{summary['frames']} frames at {summary['frames_per_s']} frames/s; masks in {plan.out}"
    )


if __name__ == "__main__":
    cli.run(main, absl_flags=True)
