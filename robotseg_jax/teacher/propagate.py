"""DINOv3 pseudo-label propagation over a dataset in the VRS layout: for every category, from its first labelled
frame in `mask_gt` to the end of the video, masks written to `<split>/mask_gt_dinov3/<video>/<cat>/<frame:05d>.png`
(0/255, mode L), as the original RobotSeg's `generate_pseudo_masks.py` produces them for LET training.

    python -m robotseg_jax.teacher.propagate --data DIR --checkpoint dinov3.pth [--model vith16plus]
        [--split train] [--overwrite] [--short-side 960] [--batch-size 4]

The propagation rule itself (context, neighbourhood, top-k, softmax, min-max, argmax) is `teacher.label_propagation`;
this module plans the videos, reads frames and first labels, runs the ViT (`teacher.features`) and writes PNGs.
A video is processed in chunks of `batch_size` frames: a ViT batch, then one `propagate_chunk` call for all
categories. The last chunk is padded with PADDING_FRAME ids.

Choices where the original is silent or is about its in-place layout (it overwrites `mask_gt` itself):
- The output goes to `mask_gt_dinov3`; the first labelled frame's PNG there is a copy of the `mask_gt` label
  (the original's VRS training loader reads every clip frame, the first one included, from `mask_gt_dinov3`).
  Labels in `mask_gt` after the first one are not used.
- Videos whose every category already has a PNG in `mask_gt_dinov3` for each frame from its first label on are
  skipped (the original re-processed only incomplete folders); `--overwrite` recomputes them. VRS-Sim's train
  split ships exact masks there as stand-ins, so replacing them needs `--overwrite`.
- A video without any label in `mask_gt` is an error (all of them are listed before any work starts); a category
  without a label in an otherwise labelled video is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from robotseg_jax import cli
from robotseg_jax.checkpoints.torch_keys import CheckpointNotFoundError
from robotseg_jax.constants import GT_MASK_DIR, PSEUDO_MASK_DIR, ROBOT_CATEGORIES
from robotseg_jax.data.vrs_layout import (
    VRSLayoutError,
    frame_path,
    list_frames,
    list_videos,
    mask_path,
    read_frame,
    read_mask,
)
from robotseg_jax.teacher.dinov3 import VARIANTS
from robotseg_jax.errors import UserError
from robotseg_jax.teacher.dinov3_checkpoint import load_params
from robotseg_jax.teacher.features import (
    SHORT_SIDE,
    FeatureFn,
    resize_frame,
    vit_feature_fn,
)
from robotseg_jax.teacher.label_propagation import (
    SKIP,
    START,
    empty_context,
    first_frame_probs,
    frame_kind,
    propagate_chunk,
)

LABEL_DIR = GT_MASK_DIR  # read: the first label of each category
OUTPUT_DIR = PSEUDO_MASK_DIR  # written: that label's copy and the propagated masks
PADDING_FRAME = -1  # frame id of the padding that fills a video's last chunk


class PropagationError(UserError, ValueError):
    """The data cannot be propagated as asked; the message names the videos or paths."""


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """What to do for one video: the frames from the earliest first label on, and each category's first label."""

    video: str
    frame_ids: list[int]
    starts: dict[str, int]  # category -> frame id of its first label in mask_gt, for the categories to write


def first_labels(root: str, split: str, video: str, frame_ids: Sequence[int]) -> dict[str, int]:
    """Category -> the first frame id (of those with a JPEG) that has a mask PNG in `mask_gt`."""
    starts = {}
    for category in ROBOT_CATEGORIES:
        labelled = [i for i in frame_ids if os.path.exists(mask_path(root, split, video, category, i, LABEL_DIR))]
        if labelled:
            starts[category] = labelled[0]
    return starts


def plan_video(root: str, split: str, video: str, overwrite: bool) -> VideoPlan:
    """Raises PropagationError when the video has no label at all."""
    frame_ids = list_frames(root, split, video)
    starts = first_labels(root, split, video, frame_ids)
    if not starts:
        raise PropagationError(f"no first-frame label: no mask PNG under {os.path.join(root, split, LABEL_DIR, video)}")
    if not overwrite:
        starts = {c: s for c, s in starts.items() if not _written(root, split, video, c, frame_ids, s)}
    first = min(starts.values(), default=None)
    return VideoPlan(video, [i for i in frame_ids if first is not None and i >= first], starts)


def _written(root: str, split: str, video: str, category: str, frame_ids: Sequence[int], start: int) -> bool:
    return all(os.path.exists(mask_path(root, split, video, category, i, OUTPUT_DIR)) for i in frame_ids if i >= start)


def _write_mask(path: str, mask: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)  # 2-D uint8: mode L


def propagate_video(
    root: str,
    split: str,
    plan: VideoPlan,
    feature_fn: FeatureFn,
    short_side: int = SHORT_SIDE,
    batch_size: int = 4,
    on_frames: Callable[[int], object] = lambda n: None,
) -> None:
    """Writes `mask_gt_dinov3` PNGs for `plan`: the first label's copy, then one propagated mask per frame.
    `feature_fn` gets each chunk of resized frames padded to `batch_size` (padding ids are PADDING_FRAME)."""
    categories = sorted(plan.starts)
    first_masks = {c: read_mask(root, split, plan.video, c, plan.starts[c], LABEL_DIR) for c in categories}
    mask_size = first_masks[categories[0]].shape
    contexts = first_probs = None
    for offset in range(0, len(plan.frame_ids), batch_size):
        frame_ids = plan.frame_ids[offset : offset + batch_size]
        frames = [read_frame(root, split, plan.video, i) for i in frame_ids]
        for i, frame in zip(frame_ids, frames):
            if frame.shape[:2] != mask_size:
                raise PropagationError(f"frame {frame_path(root, split, plan.video, i)} has size {frame.shape[:2]}, "
                                       f"the video's first label has {mask_size}")
        resized = np.stack([resize_frame(f, short_side) for f in frames])
        padding = batch_size - len(frame_ids)
        resized = np.concatenate([resized, np.zeros((padding, *resized.shape[1:]), np.uint8)])
        padded_ids = list(frame_ids) + [PADDING_FRAME] * padding
        feats = feature_fn(resized, padded_ids)
        if contexts is None:
            _, h, w, channels = feats.shape
            first_probs = jnp.stack([first_frame_probs(first_masks[c], (h, w)) for c in categories])
            contexts = jax.tree.map(lambda x: jnp.stack([x] * len(categories)), empty_context(h * w, channels))
        kinds = np.array([[frame_kind(i, plan.starts[c]) for i in padded_ids] for c in categories], np.int32)
        contexts, _, masks = propagate_chunk(contexts, feats, kinds, first_probs, mask_size=tuple(mask_size))
        masks = np.asarray(masks)
        for k, category in enumerate(categories):
            for b, frame_id in enumerate(frame_ids):
                kind = kinds[k, b]
                if kind != SKIP:
                    mask = first_masks[category] if kind == START else masks[k, b]
                    _write_mask(mask_path(root, split, plan.video, category, frame_id, OUTPUT_DIR), mask)
        on_frames(len(frame_ids))


def propagate_split(
    root: str,
    split: str,
    feature_fn: FeatureFn,
    short_side: int = SHORT_SIDE,
    batch_size: int = 4,
    overwrite: bool = False,
    plans: Sequence[VideoPlan] | None = None,
    progress: bool = True,
) -> list[VideoPlan]:
    """Propagates every video of the split that needs it; returns the plans that were carried out."""
    plans = plan_split(root, split, overwrite) if plans is None else plans
    todo = [p for p in plans if p.starts]
    with tqdm(total=sum(len(p.frame_ids) for p in todo), unit="frame", desc="propagating", disable=not progress) as bar:
        for plan in todo:
            bar.set_postfix_str(plan.video)
            propagate_video(root, split, plan, feature_fn, short_side, batch_size, on_frames=bar.update)
    return todo


def plan_split(root: str, split: str, overwrite: bool) -> list[VideoPlan]:
    """Plans every video of the split; raises one PropagationError listing all videos without any label."""
    plans, unlabelled = [], []
    for video in list_videos(root, split):
        try:
            plans.append(plan_video(root, split, video, overwrite))
        except PropagationError as e:
            unlabelled.append(str(e))
    if unlabelled:
        raise PropagationError("\n  ".join([f"{len(unlabelled)} video(s) cannot be propagated:", *unlabelled]))
    return plans


def main(argv: list[str] | None = None) -> None:
    """The command line; it always ends in SystemExit: status 0, or 2 with a message on stderr for a user error
    (no checkpoint or data, a video without labels, a checkpoint of another ViT), as argparse's own errors."""
    cli.run(_propagate, argv)


def _propagate(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robotseg_jax.teacher.propagate",
        description="DINOv3 pseudo-label propagation: writes <data>/<split>/mask_gt_dinov3 from the first "
        "labelled frame of each category in mask_gt.",
    )
    parser.add_argument("--data", required=True, help="dataset root in the VRS layout")
    parser.add_argument("--checkpoint", required=True, help="DINOv3 weights: official .pth or HF .safetensors")
    parser.add_argument("--model", default="vith16plus", choices=sorted(VARIANTS), help="ViT of the checkpoint")
    parser.add_argument("--split", default="train")
    parser.add_argument("--overwrite", action="store_true", help="recompute videos whose pseudo masks all exist")
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE, help="resize target of the short side")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per ViT batch and propagation chunk")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.checkpoint):  # before planning, which reads every mask folder
        raise CheckpointNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if not os.path.isdir(args.data):
        raise VRSLayoutError(f"no dataset folder at {args.data}")
    plans = plan_split(args.data, args.split, args.overwrite)
    # The original runs the ViT in float32; "highest" keeps TPUs and GPUs off bf16/TF32 matmuls.
    with jax.default_matmul_precision("highest"):
        feature_fn = vit_feature_fn(load_params(args.checkpoint, VARIANTS[args.model]), VARIANTS[args.model])
        done = propagate_split(args.data, args.split, feature_fn, args.short_side, args.batch_size, plans=plans)
    skipped = len(plans) - len(done)
    print(f"wrote {os.path.join(args.data, args.split, OUTPUT_DIR)}: {len(done)} video(s) propagated, "
          f"{sum(len(p.frame_ids) for p in done)} frames; {skipped} video(s) already complete")


if __name__ == "__main__":
    main()
