"""Training input pipeline throughput on generated VRS-Sim videos: clips/s for the LET setting (bidirectional
7-frame clips from mask_gt_dinov3, batch 1) and for 1-frame image batches, with augmentation, per model size.

    python -m benchmarks.data_pipeline [--sizes 1024,256] [--source-size 512] [--workers 0] [--work-dir DIR]

The videos are rendered by `python -m robotseg_jax.data.sim` and built into the `vrs_sim` TFDS dataset under the
work dir (kept there and reused when --work-dir is given).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from robotseg_jax.constants import PSEUDO_MASK_DIR
from robotseg_jax.data import pipeline, tfds_builders, vrs_tfds
from robotseg_jax.data.samplers import BidirectionalSampler, UniformSampler


def prepare(work_dir: str, videos: int, frames: int, source_size: int) -> str:
    """Renders the videos (all into train) and builds vrs_sim; returns the TFDS data dir."""
    layout, data_dir = os.path.join(work_dir, "layout"), os.path.join(work_dir, "tfds")
    command = [sys.executable, "-m", "robotseg_jax.data.sim", "--out", layout, "--videos", str(videos)]
    command += ["--frames", str(frames), "--size", str(source_size), "--holdout-embodiment", "none"]
    command += ["--splits", "train=1.0"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    tfds_builders.build("vrs_sim", manual_dir=layout, data_dir=data_dir)
    return data_dir


def clips_per_second(source: pipeline.ClipSource, image_size: int, workers: int, batches: int) -> float:
    it = pipeline.make_train_iterator(source, image_size=image_size, seed=0, shard_index=0, shard_count=1,
                                      num_workers=workers)
    try:
        next(it)  # warm-up: worker start, first reads
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * source.batch_size / (time.perf_counter() - start)
    finally:
        if workers:
            it.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__)
    parser.add_argument("--sizes", default="1024,256", help="model input sizes S, comma separated")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8, help="frames per generated video")
    parser.add_argument("--source-size", type=int, default=512, help="side of the generated frames")
    parser.add_argument("--workers", type=int, default=0, help="grain mp_prefetch worker processes")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    parser.add_argument("--work-dir", default=None, help="keep the generated data here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        start = time.perf_counter()
        data_dir = prepare(work_dir, args.videos, args.frames, args.source_size)
        print(f"generated + built {args.videos} videos of {args.frames} x {args.source_size}^2 frames "
              f"in {time.perf_counter() - start:.1f}s")
        videos = vrs_tfds.open_split("vrs_sim", "train", data_dir)
        start = time.perf_counter()
        num_samples = len(pipeline.video_category_pairs(videos, PSEUDO_MASK_DIR))
        print(f"sample index ({num_samples} video-category pairs): {time.perf_counter() - start:.2f}s")
        settings = {
            "LET clips (7 frames, batch 1)": pipeline.ClipSource(videos, BidirectionalSampler(7), 1, PSEUDO_MASK_DIR),
            "images (1 frame, batch 4)": pipeline.ClipSource(videos, UniformSampler(1), 4, PSEUDO_MASK_DIR),
        }
        print(f"{os.cpu_count()} CPUs, {args.workers} grain workers, augmentation on")
        for size in (int(s) for s in args.sizes.split(",")):
            for name, source in settings.items():
                rate = clips_per_second(source, size, args.workers, args.batches)
                frames = rate * source.sampler.num_frames
                print(f"  S={size:5d}  {name:32s} {rate:7.2f} clips/s  {frames:7.1f} frames/s")


if __name__ == "__main__":
    main()
