"""Inference speed of this project against PyTorch sam2 1.1.0 on the same machine and the same random weights
(converted by the project's converter), through both libraries' public APIs, in one run:

(a) the image encoder; (b) a propagated frame (encoder + tracking + memory encoding) at memory fill 1 (frame 1)
and at the steady state (7 memories, frames 8+); (c) the whole propagation for 1 and for 8 objects (sam2 loops
over objects, this project batches them); (d) RobotSeg's propagated frame against SAM 2.1's, both here;
(f) the compile time of the predictor's programs; and (agreement) the bfloat16 mode's masks against float32's.
Prints Markdown tables.

    python -m benchmarks.inference_vs_sam2 [--image-size 1024] [--frames 12] [--objects 1,8] [--repeats 3]
                                           [--sections encoder,propagation,robotseg,compile,agreement]
                                           [--dtype float32]

A synthetic 480x640 JPEG video; one click per object on frame 0. Hole filling is off on both sides (sam2 skips
it without its CUDA extension). `--dtype bfloat16` runs this project's bfloat16 compute mode against sam2 under
`torch.autocast("cpu", dtype=torch.bfloat16)`. Times are medians over `--repeats` runs after a warm-up run.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # sam2's per-frame progress bars (read when tqdm is imported)

import argparse
import contextlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import (
    converted_params,
    machine_line,
    markdown_table,
    matmul_gflops,
    median_seconds,
    ratio,
    reference_video_predictor,
    write_jpeg_video,
)
from robotseg_jax.checkpoints.convert import init_from_sam2
from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.inference import VideoPredictor, build_video_predictor
from robotseg_jax.modeling.config import VIDEO_PREDICTOR_OVERRIDES, get_model_config

VIDEO_SIZE = (480, 640)
STEADY_FROM = 8  # frame 8 on: 7 mask memories (the conditioning frame and the 6 previous frames)


def clicks(num_objects: int) -> list[list[float]]:
    height, width = VIDEO_SIZE
    return [[width * (0.2 + 0.6 * i / max(1, num_objects - 1 or 1)), height / 2] for i in range(num_objects)]


def frame_times(predictor, video: str, num_objects: int, autocast, robots: bool = False) -> list[float]:
    """Seconds of every propagated frame (frame 0, the prompted one, is left out) of one session: a click per
    object, or with `robots` RobotSeg's automatic mode (objects arm, gripper, robot from their category alone)."""
    state = predictor.init_state(video)
    with autocast():
        if robots:
            for category in ROBOT_CATEGORIES[:num_objects]:
                predictor.add_new_robot(state, 0, category, category)
            frames = predictor.propagate_in_video(state, "robot")  # the original tracks all as one category
        else:
            for obj_id, point in enumerate(clicks(num_objects)):
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, points=[point], labels=[1])
            frames = predictor.propagate_in_video(state)
        times, last = [], None
        for _ in frames:
            now = time.perf_counter()
            if last is not None:
                times.append(now - last)
            last = now
    return times


def propagation_rows(jax_predictor, torch_predictor, video, objects, repeats, autocast):
    rows = []
    for num_objects in objects:
        runs = {"jax": [], "torch": []}
        frame_times(jax_predictor, video, num_objects, contextlib.nullcontext)  # compiles every program
        for _ in range(repeats):
            runs["jax"].append(frame_times(jax_predictor, video, num_objects, contextlib.nullcontext))
            runs["torch"].append(frame_times(torch_predictor, video, num_objects, autocast))
        summary = {}
        for side, times in runs.items():
            times = np.asarray(times)  # [repeats, frames - 1]; column 0 is frame 1
            summary[side] = (
                float(np.median(times[:, 0])),
                float(np.median(times[:, STEADY_FROM - 1 :])),
                float(np.median(times.sum(1))),
            )
        frames = len(runs["jax"][0])
        for label, index in (("frame 1 (1 memory)", 0), (f"frames {STEADY_FROM}+ (7 memories)", 1)):
            j, t = summary["jax"][index], summary["torch"][index]
            rows.append([f"{num_objects} object(s): propagated {label}", t, j, ratio(t, j)])
        j, t = summary["jax"][2], summary["torch"][2]
        rows.append([f"{num_objects} object(s): propagation of {frames} frames, frames/s", frames / t, frames / j,
                     ratio(t, j)])
    return rows


def encoder_row(jax_predictor, torch_predictor, image_size, repeats, autocast):
    image = np.random.default_rng(0).normal(size=(image_size, image_size, 3)).astype(np.float32)
    device_image = jnp.asarray(image)
    t_jax = median_seconds(lambda: jax.block_until_ready(jax_predictor.steps.encode_frame(device_image)), repeats)
    torch_image = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()

    def torch_encoder():
        with autocast():
            torch_predictor.forward_image(torch_image)

    t_torch = median_seconds(torch_encoder, repeats)
    return ["image encoder forward", t_torch, t_jax, ratio(t_torch, t_jax)]


def robotseg_rows(sam2_params, args, video, dtype):
    """RobotSeg's propagated frame (automatic mode) against SAM 2.1's (a click), both in this project; RobotSeg
    has the same SAM 2.1 weights plus freshly initialised SEMA and RPG: the cost of SEMA, RPG and the edge maps."""
    from robotseg_jax.checkpoints.torch_keys import flax_to_torch

    config = get_model_config("robotseg_hiera_t", image_size=args.image_size)
    robotseg_params = init_from_sam2(flax_to_torch(sam2_params), config, jax.random.key(0))
    robotseg = build_video_predictor("robotseg_hiera_t", params=robotseg_params, image_size=args.image_size,
                                     fill_hole_area=0, seed=0, compute_dtype=dtype)
    sam2 = build_video_predictor(args.model, params=sam2_params, image_size=args.image_size, fill_hole_area=0,
                                 compute_dtype=dtype)
    rows = []
    for num_objects in [n for n in args.objects if n <= 3] or [1]:
        steady = {}
        for name, predictor in (("sam2", sam2), ("robotseg", robotseg)):
            run = lambda: frame_times(predictor, video, num_objects, contextlib.nullcontext, name == "robotseg")
            run()
            runs = [run() for _ in range(args.repeats)]
            steady[name] = statistics.median(t for run in runs for t in run[STEADY_FROM - 1 :])
        rows.append([f"{num_objects} object(s): propagated frame, 7 memories", steady["sam2"], steady["robotseg"],
                     f"{steady['robotseg'] / steady['sam2']:.2f}x"])
    return rows


def video_logits(predictor, video: str, num_objects: int) -> np.ndarray:
    """`[frames, objects, H, W]` video-resolution logits of a click-per-object session."""
    state = predictor.init_state(video)
    for obj_id, point in enumerate(clicks(num_objects)):
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, points=[point], labels=[1])
    return np.stack([logits[:, 0] for _, _, logits in predictor.propagate_in_video(state)])


def agreement_rows(config, params, video, num_objects):
    """The bfloat16 mode's masks against float32's on the same session: IoU of logits > 0 and logit differences
    (random weights: the masks mean nothing, but both modes must draw the same ones)."""
    reference = video_logits(VideoPredictor(config, params, fill_hole_area=0), video, num_objects)
    bf16 = video_logits(VideoPredictor(config, params, fill_hole_area=0, compute_dtype="bfloat16"), video,
                        num_objects)
    a, b = reference > 0, bf16 > 0
    union = (a | b).sum(axis=(2, 3))
    iou = np.where(union > 0, (a & b).sum(axis=(2, 3)) / np.maximum(union, 1), 1.0)
    diff = np.abs(reference - bf16)
    return [
        ["mask IoU, min over frames and objects", float(iou.min())],
        ["mask IoU, mean", float(iou.mean())],
        ["foreground fraction (float32)", float(a.mean())],
        ["max abs logit difference", float(diff.max())],
        ["mean abs logit difference", float(diff.mean())],
        ["mean abs float32 logit", float(np.abs(reference).mean())],
    ]


def compile_rows(config, params, video, dtype):
    """First-call minus warm-call time of each program a fresh predictor compiles for a 1-object session."""
    predictor = VideoPredictor(config, params, fill_hole_area=0, compute_dtype=dtype)
    image = jnp.zeros((config.image_size, config.image_size, 3))
    encode = lambda: jax.block_until_ready(predictor.steps.encode_frame(image))
    cold_encoder, warm_encoder = median_seconds(encode, 1, warmup=0), median_seconds(encode, 1, warmup=0)
    cold, warm = (frame_times(predictor, video, 1, contextlib.nullcontext) for _ in range(2))
    rows = [["image encoder", cold_encoder - warm_encoder]]
    for fill in range(1, min(STEADY_FROM, len(cold)) + 1):
        if cold[fill - 1] - warm[fill - 1] > 0.5 * warm[fill - 1]:  # this frame compiled a new memory size
            rows.append([f"tracked frame, {fill} memories", cold[fill - 1] - warm[fill - 1]])
    return rows, predictor.steps.cache_sizes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_vs_sam2", description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=12, help="video length (steady state from frame 8)")
    parser.add_argument("--objects", default="1,8", help="object counts, comma separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="encoder,propagation,robotseg,compile")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    args.objects = [int(n) for n in args.objects.split(",")]
    sections = set(args.sections.split(","))

    if args.dtype == "bfloat16":
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    torch_predictor = reference_video_predictor(args.model, args.image_size)
    config = get_model_config(args.model, image_size=args.image_size, **VIDEO_PREDICTOR_OVERRIDES)
    params = converted_params(torch_predictor, config)
    jax_predictor = VideoPredictor(config, params, fill_hole_area=0, compute_dtype=args.dtype)

    print(f"## {args.model} at {args.image_size}, {args.dtype}\n\n{machine_line()}\n")
    jax_gflops, torch_gflops = matmul_gflops(args.dtype)
    print(f"{args.dtype} matmul 4096x1024x1024: JAX {jax_gflops:.0f} GFLOP/s, PyTorch {torch_gflops:.0f} GFLOP/s\n")
    rows = []
    with tempfile.TemporaryDirectory() as video:
        write_jpeg_video(video, args.frames, *VIDEO_SIZE)
        if "encoder" in sections:
            rows.append(encoder_row(jax_predictor, torch_predictor, args.image_size, args.repeats, autocast))
        if "propagation" in sections:
            rows += propagation_rows(jax_predictor, torch_predictor, video, args.objects, args.repeats, autocast)
        if rows:
            print(markdown_table(["seconds (frames/s where named)", "PyTorch sam2", "robotseg_jax", "speed-up"], rows))
        if "robotseg" in sections:
            print("\n" + markdown_table(["this project", "SAM 2.1 s", "RobotSeg s", "RobotSeg / SAM 2.1"],
                                        robotseg_rows(params, args, video, args.dtype)))
        if "compile" in sections:
            compiled, sizes = compile_rows(config, params, video, args.dtype)
            print("\n" + markdown_table(["program (first call minus warm call)", "compile s"], compiled))
            print(f"\nprograms compiled for one 1-object session: {sizes}")
        if "agreement" in sections:
            print("\n" + markdown_table(["bfloat16 against float32, this project", "value"],
                                        agreement_rows(config, params, video, max(args.objects))))


if __name__ == "__main__":
    main()
