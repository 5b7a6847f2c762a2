"""Reads and writes the VRS folder layout (real VRS and the synthetic VRS-Sim share it).

    <root>/<split>/image/<video>/<frame:05d>.jpg
    <root>/<split>/<mask_dir>/<video>/<000|001|002>/<frame:05d>.png    binary 0/255, 000 arm, 001 gripper, 002 robot
    <root>/<split>/meta/<video>.json                                    optional per-video metadata (our addition)

`mask_dir` is `mask_gt` (ground truth; in real VRS train only the first frame) or `mask_gt_dinov3` (train pseudo
masks for every frame). Frames are identified by `int(jpg stem)`; a mask PNG may be absent for any frame, and
absence is reported as such (None / has_label False), never turned into an all-ones mask as the original loader did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from robotseg_jax.constants import CATEGORY_FOLDERS, GT_MASK_DIR, ROBOT_CATEGORIES
from robotseg_jax.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_DIR = "image"
META_DIR = "meta"


class VRSLayoutError(UserError, ValueError):
    """A file or folder of the layout is missing, unreadable or inconsistent; the message names the path."""


def video_image_dir(root: str, split: str, video: str) -> str:
    return os.path.join(root, split, IMAGE_DIR, video)


def frame_path(root: str, split: str, video: str, frame_id: int) -> str:
    return os.path.join(video_image_dir(root, split, video), f"{frame_id:05d}.jpg")


def mask_path(root: str, split: str, video: str, category: str, frame_id: int, mask_dir: str = GT_MASK_DIR) -> str:
    return os.path.join(root, split, mask_dir, video, _category_folder(category), f"{frame_id:05d}.png")


def metadata_path(root: str, split: str, video: str) -> str:
    return os.path.join(root, split, META_DIR, f"{video}.json")


def write_video(
    root: str,
    split: str,
    video: str,
    frames: np.ndarray,
    masks: Mapping[str, np.ndarray],
    mask_dir: str = GT_MASK_DIR,
    label_frames: Sequence[int] | None = None,
    metadata: dict | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Writes frames [T,H,W,3] uint8 as JPEGs and, for each category in `masks` ([T,H,W] bool), one PNG per frame in
    `label_frames` (None = every frame). Frame i is written as `{i:05d}`. Metadata, if given, is written last."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VRSLayoutError(f"{video}: frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise VRSLayoutError(f"{video}: no frames to write")
    num_frames = len(frames)
    for category, mask in masks.items():
        _category_folder(category)
        if np.shape(mask) != frames.shape[:3]:
            raise VRSLayoutError(f"{video}/{category}: mask shape {np.shape(mask)} != frames {frames.shape[:3]}")
    label_frames = list(range(num_frames)) if label_frames is None else [int(i) for i in label_frames]
    if any(not 0 <= i < num_frames for i in label_frames):
        raise VRSLayoutError(f"{video}: label_frames {label_frames} outside [0, {num_frames})")

    os.makedirs(video_image_dir(root, split, video), exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(frame_path(root, split, video, i), quality=jpeg_quality)
    for category, mask in masks.items():
        os.makedirs(os.path.dirname(mask_path(root, split, video, category, 0, mask_dir)), exist_ok=True)
        for i in label_frames:
            png = Image.fromarray(np.where(np.asarray(mask[i], bool), 255, 0).astype(np.uint8), mode="L")
            png.save(mask_path(root, split, video, category, i, mask_dir))
    if metadata is not None:
        os.makedirs(os.path.dirname(metadata_path(root, split, video)), exist_ok=True)
        with open(metadata_path(root, split, video), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)


def list_videos(root: str, split: str) -> list[str]:
    """Names of the video folders under `<root>/<split>/image`, sorted."""
    image_root = os.path.join(root, split, IMAGE_DIR)
    if not os.path.isdir(image_root):
        raise VRSLayoutError(f"no image folder: {image_root}")
    return sorted(name for name in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, name)))


def list_frames(root: str, split: str, video: str) -> list[int]:
    """Frame ids (int of the JPEG stems) of a video, ascending; raises if the video has no frames."""
    folder = video_image_dir(root, split, video)
    if not os.path.isdir(folder):
        raise VRSLayoutError(f"no such video folder: {folder}")
    frame_ids = []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in (".jpg", ".jpeg"):
            continue
        if not stem.isdigit():
            raise VRSLayoutError(f"frame name is not a number: {os.path.join(folder, name)}")
        frame_ids.append(int(stem))
    if not frame_ids:
        raise VRSLayoutError(f"video has no frames: {folder}")
    return sorted(frame_ids)


def read_frame(root: str, split: str, video: str, frame_id: int) -> np.ndarray:
    """The frame as uint8 [H,W,3] RGB."""
    return np.asarray(_open_image(frame_path(root, split, video, frame_id)).convert("RGB"))


def read_mask(
    root: str, split: str, video: str, category: str, frame_id: int, mask_dir: str = GT_MASK_DIR
) -> np.ndarray | None:
    """The mask (pixels > 0) as bool [H,W], or None when the PNG does not exist. Raises if the mask's size differs
    from its frame's, so a misaligned label cannot slip into training or scoring."""
    path = mask_path(root, split, video, category, frame_id, mask_dir)
    if not os.path.exists(path):
        return None
    mask = np.asarray(_open_image(path))
    # Palette, grey and RGB PNGs all occur in the wild; only "> 0" carries meaning.
    mask = mask.any(axis=-1) if mask.ndim == 3 else mask > 0
    frame_size = _image_size(frame_path(root, split, video, frame_id))
    if mask.shape != frame_size:
        raise VRSLayoutError(f"mask {path} has size {mask.shape}, its frame has {frame_size}")
    return mask


def read_metadata(root: str, split: str, video: str) -> dict:
    """The video's metadata JSON, or {} when there is none (real VRS has none)."""
    path = metadata_path(root, split, video)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise VRSLayoutError(f"corrupt metadata {path}: {e}") from e


@dataclasses.dataclass
class VideoRecord:
    """A whole video in memory. `masks[mask_dir][category]` is bool [T,H,W] (False where unlabelled) and
    `has_label[mask_dir][category]` is bool [T], True where that frame's PNG exists."""

    split: str
    video: str
    frames: np.ndarray
    frame_ids: list[int]
    masks: dict[str, dict[str, np.ndarray]]
    has_label: dict[str, dict[str, np.ndarray]]
    metadata: dict


def read_video(root: str, split: str, video: str, mask_dirs: Sequence[str] = (GT_MASK_DIR,)) -> VideoRecord:
    """Reads every frame and every mask PNG of `mask_dirs` for all categories."""
    frame_ids = list_frames(root, split, video)
    frame_list = [read_frame(root, split, video, i) for i in frame_ids]
    for frame_id, frame in zip(frame_ids, frame_list):
        if frame.shape != frame_list[0].shape:
            raise VRSLayoutError(
                f"frame {frame_path(root, split, video, frame_id)} has shape {frame.shape}, "
                f"frame {frame_ids[0]} has {frame_list[0].shape}"
            )
    frames = np.stack(frame_list)
    masks: dict[str, dict[str, np.ndarray]] = {}
    has_label: dict[str, dict[str, np.ndarray]] = {}
    for mask_dir in mask_dirs:
        masks[mask_dir], has_label[mask_dir] = {}, {}
        for category in ROBOT_CATEGORIES:
            per_frame = [read_mask(root, split, video, category, i, mask_dir) for i in frame_ids]
            has_label[mask_dir][category] = np.array([m is not None for m in per_frame])
            masks[mask_dir][category] = np.stack(
                [np.zeros(frames.shape[1:3], bool) if m is None else m for m in per_frame]
            )
    return VideoRecord(split, video, frames, frame_ids, masks, has_label, read_metadata(root, split, video))


def _category_folder(category: str) -> str:
    if category not in CATEGORY_FOLDERS:
        raise VRSLayoutError(f"unknown category {category!r}; expected one of {ROBOT_CATEGORIES}")
    return CATEGORY_FOLDERS[category]


def _open_image(path: str) -> Image.Image:
    """Opens and fully decodes an image, so that a truncated or corrupt file fails here with its path."""
    if not os.path.exists(path):
        raise VRSLayoutError(f"missing image: {path}")
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
        raise VRSLayoutError(f"unreadable image {path}: {e}") from e
    return image


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header alone, without decoding the pixels."""
    if not os.path.exists(path):
        raise VRSLayoutError(f"missing image: {path}")
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as e:
        raise VRSLayoutError(f"unreadable image {path}: {e}") from e
