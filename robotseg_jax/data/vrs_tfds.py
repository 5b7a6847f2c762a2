"""The TFDS form of a VRS-layout video, shared by the `vrs` and `vrs_sim` builders: features, encoding from the
folder layout, and reading back without TensorFlow.

One example per video:
    name, embodiment                   text
    frame_ids                          int32 [T]   (int of the JPEG stems, ascending; position 0 = first frame)
    frames                             [T] JPEG bytes, as stored on disk
    <mask_dir>/<category>/masks        [T] PNG bytes, 0/255 grey (all zeros where unlabelled)
    <mask_dir>/<category>/has_label    bool [T]    (True where the layout has that frame's PNG)
for mask_dir in MASK_DIRS and category in ROBOT_CATEGORIES. A split without a mask dir (e.g. no pseudo
masks in test) has has_label all False there.

TFDS stores the JPEG/PNG bytes as they are, so building needs no TensorFlow. Reading uses `tfds.data_source`
with the frames and masks left encoded (`open_split`); the pipeline decodes only the frames it samples.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from robotseg_jax.constants import GT_MASK_DIR, PSEUDO_MASK_DIR, ROBOT_CATEGORIES
from robotseg_jax.data import vrs_layout

MASK_DIRS = (GT_MASK_DIR, PSEUDO_MASK_DIR)  # the mask folders every example holds

# Real VRS names carry the embodiment: "train_video_0000___01_franka___training_..._clip_00130_00697".
_EMBODIMENT_IN_NAME = re.compile(r"___\d+_(.+?)___")


def video_features() -> tfds.features.FeaturesDict:
    def mask_track() -> dict:
        return {
            "masks": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png")),
            "has_label": tfds.features.Sequence(np.bool_),
        }

    return tfds.features.FeaturesDict(
        {
            "name": tfds.features.Text(),
            "embodiment": tfds.features.Text(),
            "frame_ids": tfds.features.Sequence(np.int32),
            "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
            **{d: {c: mask_track() for c in ROBOT_CATEGORIES} for d in MASK_DIRS},
        }
    )


def available_splits(root: str) -> list[str]:
    """The splits of vrs_layout.SPLITS that have an image folder under `root`; raises if there is none."""
    splits = [s for s in vrs_layout.SPLITS if os.path.isdir(os.path.join(root, s, vrs_layout.IMAGE_DIR))]
    if not splits:
        raise vrs_layout.VRSLayoutError(
            f"no split under {root}: expected <root>/<train|val|test>/image/<video>/<frame:05d>.jpg"
        )
    return splits


def generate_examples(root: str, split: str, require_metadata: bool = False) -> Iterator[tuple[str, dict]]:
    """(key, example) for every video of a split, keyed by video name. With `require_metadata`, a video without
    its metadata JSON is an error (the VRS-Sim generator writes it last, to mark the video complete)."""
    for video in vrs_layout.list_videos(root, split):
        if require_metadata and not os.path.exists(vrs_layout.metadata_path(root, split, video)):
            raise vrs_layout.VRSLayoutError(
                f"{vrs_layout.metadata_path(root, split, video)} is missing: video {video} is incomplete; "
                "rerun the generator on this folder to finish it"
            )
        yield video, encode_video(root, split, video)


def encode_video(root: str, split: str, video: str) -> dict:
    """One video as an example of `video_features()`. Raises VRSLayoutError (naming the file) for unreadable
    frames, frames or masks of differing sizes, and holes in the pseudo masks."""
    frame_ids = vrs_layout.list_frames(root, split, video)
    frames, frame_shape = [], None
    for frame_id in frame_ids:
        data, shape = _frame_jpeg(root, split, video, frame_id)
        if frame_shape is not None and shape != frame_shape:
            raise vrs_layout.VRSLayoutError(
                f"frame {vrs_layout.frame_path(root, split, video, frame_id)} has shape {shape}, "
                f"frame {frame_ids[0]} has {frame_shape}"
            )
        frames.append(data)
        frame_shape = shape
    example = {
        "name": video,
        "embodiment": embodiment(video, vrs_layout.read_metadata(root, split, video)),
        "frame_ids": frame_ids,
        "frames": frames,
    }
    for mask_dir in MASK_DIRS:
        example[mask_dir] = {}
        for category in ROBOT_CATEGORIES:
            masks = [vrs_layout.read_mask(root, split, video, category, i, mask_dir) for i in frame_ids]
            has_label = [m is not None for m in masks]
            if mask_dir == PSEUDO_MASK_DIR:
                _check_pseudo_masks_dense(root, split, video, category, frame_ids, has_label)
            example[mask_dir][category] = {
                "masks": [_blank_png(frame_shape[:2]) if m is None else _encode_mask(m) for m in masks],
                "has_label": has_label,
            }
    return example


def embodiment(video: str, metadata: Mapping) -> str:
    """The metadata's "embodiment" (VRS-Sim), else the one in a real VRS name, else "unknown"."""
    if "embodiment" in metadata:
        return str(metadata["embodiment"])
    match = _EMBODIMENT_IN_NAME.search(video)
    return match.group(1) if match else "unknown"


class LayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over a VRS-layout folder given as manual dir, one split per split folder found there.
    Subclasses set VERSION, MANUAL_DOWNLOAD_INSTRUCTIONS, a class docstring (the description), HOMEPAGE and
    REQUIRE_METADATA (see `generate_examples`)."""

    HOMEPAGE: str | None = None
    REQUIRE_METADATA: bool = False

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=video_features(), homepage=self.HOMEPAGE
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = str(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in available_splits(root)}

    def _generate_examples(self, root: str, split: str):
        return generate_examples(root, split, self.REQUIRE_METADATA)


class KeepEncoded(tfds.decode.SkipDecoding):
    """SkipDecoding that also works on sequences with the NumPy backend (tfds 4.9 lacks that method)."""

    def decode_batch_example_np(self, serialized_example):
        return serialized_example


def open_split(name: str, split: str, data_dir: str | None = None):
    """The data source (random access, picklable, no TensorFlow) of a built `vrs` / `vrs_sim` split, with frames and
    masks left as encoded bytes. It is opened from the files alone, never from the builder code, so that grain's
    worker processes can unpickle it without importing the builders."""
    keep = KeepEncoded()
    decoders = {"frames": keep, **{d: {c: {"masks": keep} for c in ROBOT_CATEGORIES} for d in MASK_DIRS}}
    builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    return builder.as_data_source(split=split, decoders=decoders)


def decode_frame(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 [H,W,3]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes -> bool [H,W]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image) > 0


def _frame_jpeg(root: str, split: str, video: str, frame_id: int) -> tuple[bytes, tuple[int, ...]]:
    """The frame's JPEG bytes, decoded once to prove they are readable. Non-RGB JPEGs (grey, CMYK) are
    re-encoded as RGB so that every reader gets 3 channels."""
    path = vrs_layout.frame_path(root, split, video, frame_id)
    frame = vrs_layout.read_frame(root, split, video, frame_id)
    with Image.open(path) as image:
        is_rgb = image.mode == "RGB"
    if is_rgb:
        with open(path, "rb") as f:
            return f.read(), frame.shape
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), frame.shape


def _check_pseudo_masks_dense(
    root: str, split: str, video: str, category: str, frame_ids: list[int], has_label: list[bool]
) -> None:
    """DINOv3 propagation writes a mask for every frame from the first labelled one on; a hole means a broken
    pseudo-label run (the original loader silently turned it into an all-ones mask)."""
    if not any(has_label):
        return
    first = has_label.index(True)
    missing = [frame_ids[i] for i in range(first, len(frame_ids)) if not has_label[i]]
    if missing:
        path = vrs_layout.mask_path(root, split, video, category, missing[0], PSEUDO_MASK_DIR)
        raise vrs_layout.VRSLayoutError(
            f"missing pseudo mask {path} ({len(missing)} missing in this folder): {PSEUDO_MASK_DIR} must have a PNG "
            f"for every frame from its first one on; re-run the DINOv3 propagation for {video}"
        )


def _encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _blank_png(shape: tuple[int, int]) -> bytes:
    return _encode_mask(np.zeros(shape, bool))
