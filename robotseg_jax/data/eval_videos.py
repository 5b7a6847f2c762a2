"""The videos an evaluation (or training's validation) runs on: a folder in the VRS layout
(`<split>/image/<video>/<frame:05d>.jpg`, `<split>/mask_gt/<video>/<000|001|002>/<frame:05d>.png`) or a built
`vrs` / `vrs_sim` TFDS split, read lazily, one video at a time.

Frames are addressed by position (0 = the first JPEG in frame-number order), as the predictor indexes them, and
named on disk by their frame id (the int JPEG stem). GT is keyed by the positions that have a GT PNG, so the start
frame (the first labelled frame with a GT pixel) and the scoring (every GT PNG of the category) see exactly the
labelled frames. (Upstream keys its `mask_gt_info` by the index of the PNG within the GT folder, which equals the
frame position only when every frame is labelled, as in VRS test.)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator

import numpy as np

from robotseg_jax.constants import GT_MASK_DIR
from robotseg_jax.data import vrs_layout
from robotseg_jax.errors import UserError

TFDS_PREFIX = "tfds:"


class DatasetError(UserError, ValueError):
    """The evaluation data cannot be found or read; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class EvalVideo:
    """One unit of evaluation: a video, or in image mode one frame of a video."""

    name: str  # the score key: the video name, or "<video>/<frame:05d>" in image mode
    folder: str  # where its PNGs go: out/<setting>/<category>/<folder>/<frame:05d>.png
    embodiment: str
    frame_ids: list[int]  # position -> frame id, ascending
    load: Callable[[], str | np.ndarray]  # what `VideoPredictor.init_state` reads: a JPEG folder or uint8 [T,H,W,3]
    read_frame: Callable[[int], np.ndarray]  # position -> uint8 RGB [H,W,3] at video resolution
    read_gt: Callable[[str], dict[int, np.ndarray]]  # category -> {position: bool [H,W]}, labelled positions only


class LayoutVideos:
    """The videos of `<root>/<split>` in the VRS folder layout, sorted by name (upstream sorts them too)."""

    def __init__(self, root: str, split: str):
        if not os.path.isdir(root):
            raise DatasetError(f"no dataset folder at {root}")
        try:
            self.names = vrs_layout.list_videos(root, split)
        except vrs_layout.VRSLayoutError as err:
            raise DatasetError(f"{err} (is {root} a VRS layout with a {split!r} split?)") from err
        self.root, self.split = root, split

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[EvalVideo]:
        from robotseg_jax.data.vrs_tfds import (
            embodiment,  # imports TFDS, so only once videos are read
        )

        root, split = self.root, self.split
        for name in self.names:
            frame_ids = vrs_layout.list_frames(root, split, name)

            def read_gt(category: str, name=name, frame_ids=frame_ids) -> dict[int, np.ndarray]:
                masks = (vrs_layout.read_mask(root, split, name, category, i) for i in frame_ids)
                return {position: m for position, m in enumerate(masks) if m is not None}

            yield EvalVideo(
                name=name,
                folder=name,
                embodiment=embodiment(name, vrs_layout.read_metadata(root, split, name)),
                frame_ids=frame_ids,
                load=lambda name=name: vrs_layout.video_image_dir(root, split, name),
                read_frame=lambda i, name=name, ids=frame_ids: vrs_layout.read_frame(root, split, name, ids[i]),
                read_gt=read_gt,
            )


class TfdsVideos:
    """The videos of a built `vrs` / `vrs_sim` TFDS split (`vrs_tfds.open_split`). A video's JPEGs are decoded
    when it is loaded (or one frame read); its GT PNGs when a category asks for them."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        from robotseg_jax.data import vrs_tfds

        try:
            self.source = vrs_tfds.open_split(name, split, data_dir)
        except Exception as err:  # TFDS reports a missing dataset or split with assorted exception types
            where = data_dir or "the default TFDS data dir"
            raise DatasetError(f"cannot open TFDS dataset {name!r} split {split!r} in {where}: {err}") from err

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[EvalVideo]:
        from robotseg_jax.data.vrs_tfds import decode_frame, decode_mask

        for index in range(len(self.source)):
            example = self.source[index]

            def read_gt(category: str, tracks=example[GT_MASK_DIR]) -> dict[int, np.ndarray]:
                track = tracks[category]
                labelled = np.flatnonzero(np.asarray(track["has_label"], bool))
                return {int(i): decode_mask(track["masks"][i]) for i in labelled}

            yield EvalVideo(
                name=_text(example["name"]),
                folder=_text(example["name"]),
                embodiment=_text(example["embodiment"]),
                frame_ids=[int(i) for i in example["frame_ids"]],
                load=lambda encoded=example["frames"]: np.stack([decode_frame(data) for data in encoded]),
                read_frame=lambda i, encoded=example["frames"]: decode_frame(encoded[i]),
                read_gt=read_gt,
            )


def open_videos(data: str, split: str, data_dir: str | None = None) -> LayoutVideos | TfdsVideos:
    """`data` is a VRS layout folder, or `tfds:<name>` / `tfds:<name>:<split>` (a split there wins over `split`)."""
    if not data.startswith(TFDS_PREFIX):
        return LayoutVideos(data, split)
    name, _, tfds_split = data[len(TFDS_PREFIX) :].partition(":")
    if not name:
        raise DatasetError(f"expected tfds:<name> or tfds:<name>:<split>, got {data!r}")
    return TfdsVideos(name, tfds_split or split, data_dir)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
