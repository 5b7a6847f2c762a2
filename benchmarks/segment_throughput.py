"""Dataset segmentation throughput: frames/s of `robotseg_jax.segment`'s engine with 1, 4 and 8 videos tracked per
compiled step, against one video at a time and against the original's loop (one predictor run per video and
category, as upstream's VRS scripts run each category separately), side by side in one run of this script.

    python -m benchmarks.segment_throughput [--image-size 512] [--videos 8] [--frames 8] [--repeats 3]

Every variant segments the same synthetic videos (JPEG folders) for the 3 categories (arm, gripper, robot) with
the same random RobotSeg weights; compiling is excluded (each variant first runs on a short copy of the videos,
which compiles every program it needs). A frame is one video frame with all 3 categories. Reported: the median
frames/s over the repeats, and ratios (above 1: faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks.common import machine_line, markdown_table, write_jpeg_video
from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.inference import build_video_predictor
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.segmentation.engine import FrameMasks, Segmenter
from robotseg_jax.segmentation.sources import open_source

HEIGHT, WIDTH = 240, 320


def per_category_loop(predictor, videos) -> int:
    """The original's way: a session per video and category, prompted on frame 0 and propagated."""
    frames = 0
    for video in videos:
        for row, category in enumerate(ROBOT_CATEGORIES):
            state = predictor.init_state(video.open(predictor.image_size, 2))
            predictor.add_new_robot(state, 0, row, category)
            for _ in predictor.propagate_in_video(state, robot=category):
                pass
        frames += state.num_frames
    return frames


def segmenter_run(predictor, videos, videos_per_step: int) -> int:
    segmenter = Segmenter(predictor, ROBOT_CATEGORIES, videos_per_step=videos_per_step)
    return sum(isinstance(event, FrameMasks) for event in segmenter.run(videos))


def frames_per_second(run, videos, warmup_videos, repeats: int) -> float:
    run(warmup_videos)  # compiles every program the variant uses
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        frames = run(videos)
        rates.append(frames / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--steps", default="1,4,8", help="videos per step to compare")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = get_model_config("robotseg_hiera_t", image_size=args.image_size)
    images = jnp.zeros((1, args.image_size, args.image_size, 3))
    params = build_model(config).init(jax.random.key(0), images)["params"]
    predictor = build_video_predictor("robotseg_hiera_t", params=params, image_size=args.image_size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in (("videos", args.frames), ("warmup", 2)):
            for i in range(args.videos):
                folder = os.path.join(tmp, name, f"video_{i:03d}")
                os.makedirs(folder)
                write_jpeg_video(folder, frames, HEIGHT, WIDTH)
        videos, warmup = open_source(os.path.join(tmp, "videos")), open_source(os.path.join(tmp, "warmup"))
        loop = frames_per_second(lambda v: per_category_loop(predictor, v), videos, warmup[:1], args.repeats)
        batched = {}
        for steps in [int(s) for s in args.steps.split(",")]:
            run = lambda v, steps=steps: segmenter_run(predictor, v, steps)
            batched[steps] = frames_per_second(run, videos, warmup[:steps], args.repeats)

    one = batched.get(1)
    rows = [["per-video, per-category predictor runs (the original's loop)", loop, "-", "1.00x"]]
    for steps, rate in batched.items():
        vs_one = f"{rate / one:.2f}x" if one else "-"
        rows.append([f"segment, {steps} video{'s' if steps > 1 else ''} per step", rate, vs_one, f"{rate / loop:.2f}x"])
    print(machine_line())
    print(f"RobotSeg Hiera-T at {args.image_size} px, {args.videos} videos of {args.frames} frames "
          f"({WIDTH}x{HEIGHT}), 3 categories per video, median of {args.repeats}")
    print(markdown_table(["variant", "frames/s", "vs 1 video per step", "vs the original's loop"], rows))


if __name__ == "__main__":
    main()
