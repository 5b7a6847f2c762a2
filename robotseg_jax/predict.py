"""Segment one object through a video from a prompt on one frame.

    python -m robotseg_jax.predict --model sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt \\
        --video frames/ --points 210,350 250,220,0 --frame 0 --out out/
    python -m robotseg_jax.predict --model robotseg_hiera_t --checkpoint robotseg.pt --video frames/ \\
        --robot gripper --out out/

The prompt (clicks `x,y[,label]` with label 1 foreground / 0 background, a box `x0,y0,x1,y1`, or a mask PNG of
the frame's size) is in pixels of the original frames. With a RobotSeg model, `--robot arm|gripper|robot` is the
prompt instead: the object is found from its category alone, with no click, and every frame is tracked as that
category. Frames after --frame are tracked forward, frames before it backward. Writes OUT/masks/<frame:05d>.png
(0/255) and OUT/overlay.gif.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from robotseg_jax import cli
from robotseg_jax.checkpoints.convert import CheckpointError
from robotseg_jax.errors import OutputDirError, make_output_dir
from robotseg_jax.inference import RobotSegVideoPredictor, build_video_predictor
from robotseg_jax.inference.video_io import VideoFrames, open_video
from robotseg_jax.inference.visualize import overlay, write_gif
from robotseg_jax.modeling.config import MODEL_CONFIGS, RobotSegConfig, get_model_config
from robotseg_jax.constants import ROBOT_CATEGORIES

OBJ_ID = 1
GIF_FRAME_MS = 100


def _floats(text: str, counts: Sequence[int], expected: str) -> list[float]:
    """Comma-separated numbers, as many as one of `counts`; argparse turns the error into a usage message."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return values


def _point(text: str) -> tuple[float, float, int]:
    values = _floats(text, (2, 3), "a point x,y or x,y,label")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"a point's label must be 1 (foreground) or 0 (background), got {text!r}")
    return values[0], values[1], int(label)


def _box(text: str) -> list[float]:
    x0, y0, x1, y1 = _floats(text, (4,), "a box x0,y0,x1,y1")
    if not (x0 < x1 and y0 < y1):
        raise argparse.ArgumentTypeError(f"a box must have x0 < x1 and y0 < y1, got {text!r}")
    return [x0, y0, x1, y1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m robotseg_jax.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sam2.1_hiera_t", choices=sorted(MODEL_CONFIGS), help="model name")
    parser.add_argument("--checkpoint", required=True, help="official .pt checkpoint or converted orbax directory")
    parser.add_argument("--video", required=True, help="folder of JPEG frames (00000.jpg, ...) or an .mp4 file")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--points", nargs="+", type=_point, metavar="X,Y[,LABEL]", help="clicks (label 1 or 0)")
    prompt.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="box around the object")
    prompt.add_argument("--mask", metavar="PNG", help="mask of the object on --frame (nonzero = object)")
    prompt.add_argument(
        "--robot", choices=ROBOT_CATEGORIES, help="segment the object from its category alone (RobotSeg models only)"
    )
    parser.add_argument("--frame", type=int, default=0, help="index of the prompted frame (default 0)")
    parser.add_argument("--image-size", type=int, help="model input size (default: the model's, 1024)")
    parser.add_argument(
        "--seed", type=int, help="seed of RobotSeg's random draws (RPG); default: fresh ones, as the original"
    )
    parser.add_argument("--out", required=True, help="output directory")
    return parser


def _check_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> VideoFrames:
    """Fails fast, before the model loads, on anything the user can fix; returns the opened video."""
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    try:
        config = get_model_config(args.model, **overrides)
    except ValueError as err:
        parser.error(str(err))
    if args.robot and not isinstance(config, RobotSegConfig):
        parser.error(f"--robot needs a RobotSeg model (robotseg_hiera_t): {args.model} has no class tokens")
    if not os.path.exists(args.checkpoint):
        parser.error(f"no checkpoint at {args.checkpoint}")
    try:
        video = open_video(args.video, config.image_size)
    except (OSError, ValueError) as err:
        parser.error(f"cannot read the video: {err}")
    if not 0 <= args.frame < video.num_frames:
        parser.error(f"--frame {args.frame} is outside the video's {video.num_frames} frames")
    width, height = video.width, video.height
    corners = [(x, y) for x, y, _ in args.points] if args.points else []
    if args.box:
        corners = [tuple(args.box[:2]), tuple(args.box[2:])]
    for x, y in corners:
        if not (0 <= x <= width and 0 <= y <= height):
            parser.error(f"prompt point ({x:g}, {y:g}) is outside the {width}x{height} frame")
    try:
        make_output_dir(os.path.join(args.out, "masks"), "--out folder")
    except OutputDirError as err:
        parser.error(str(err))
    return video


def _read_mask(path: str, video: VideoFrames, parser: argparse.ArgumentParser) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.array(image)
    except OSError as err:
        parser.error(f"cannot read the mask: {err}")
    mask = pixels.any(axis=-1) if pixels.ndim == 3 else pixels > 0
    if mask.shape != (video.height, video.width):
        parser.error(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the video frames are {video.width}x{video.height}")
    if not mask.any():
        parser.error(f"the mask {path} is empty")
    return mask


def _load_predictor(args: argparse.Namespace, parser: argparse.ArgumentParser):
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    try:
        return build_video_predictor(args.model, args.checkpoint, seed=args.seed, **overrides)
    except CheckpointError as err:  # names the file and the problem
        parser.error(f"cannot load the checkpoint: {err}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    video = _check_inputs(args, parser)
    mask = _read_mask(args.mask, video, parser) if args.mask else None

    predictor = _load_predictor(args, parser)
    state = predictor.init_state(args.video)
    if args.robot:
        predictor.add_new_robot(state, args.frame, OBJ_ID, args.robot)
    elif mask is not None:
        predictor.add_new_mask(state, args.frame, OBJ_ID, mask)
    elif args.box:
        predictor.add_new_points_or_box(state, args.frame, OBJ_ID, box=np.array(args.box, np.float32))
    else:
        points = np.array([(x, y) for x, y, _ in args.points], np.float32)
        labels = np.array([label for _, _, label in args.points], np.int32)
        predictor.add_new_points_or_box(state, args.frame, OBJ_ID, points=points, labels=labels)

    mask_dir = os.path.join(args.out, "masks")
    os.makedirs(mask_dir, exist_ok=True)
    overlays = {}
    directions = [False] + ([True] if args.frame > 0 else [])
    # RobotSeg's propagate_in_video requires a category: --robot's, or None (no class token) after a prompt.
    category = {"robot": args.robot} if isinstance(predictor, RobotSegVideoPredictor) else {}
    with tqdm(total=video.num_frames, desc="segmenting", unit="frame") as progress:
        for reverse in directions:
            for frame_idx, obj_ids, logits in predictor.propagate_in_video(
                state, start_frame_idx=args.frame, reverse=reverse, **category
            ):
                if frame_idx in overlays:  # the prompted frame comes again at the start of the backward pass
                    continue
                obj_mask = np.asarray(logits[list(obj_ids).index(OBJ_ID), 0]) > 0
                Image.fromarray(obj_mask.astype(np.uint8) * 255).save(os.path.join(mask_dir, f"{frame_idx:05d}.png"))
                frame = np.asarray(video.read_frame(frame_idx).convert("RGB"))
                overlays[frame_idx] = overlay(frame, {OBJ_ID: obj_mask})
                progress.update()

    gif_path = os.path.join(args.out, "overlay.gif")
    write_gif([overlays[i] for i in sorted(overlays)], gif_path, GIF_FRAME_MS)
    print(f"{len(overlays)} masks in {mask_dir}, overlay in {gif_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
