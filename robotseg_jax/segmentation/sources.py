"""The videos a segmentation job reads, from any of the sources robot datasets come in, each opened lazily.

    <folder>                   a VRS layout (`<folder>/<split>/image/<video>/<frame:05d>.jpg`), else a folder of
                               videos: `.mp4` files and folders of JPEG frames, one video each
    tfds:<name>[:<split>]      a built TFDS dataset under `data_dir`: RobotSeg's `vrs` / `vrs_sim` (videos by name)
                               or an RLDS dataset (Open X-Embodiment, DROID: episodes of `steps`, the frames at
                               `steps/observation/<image_key>`; videos named `episode_<index:06d>`)

A `SourceVideo` is a name (its output folder, unique in the source) and a way to open its frames; nothing is
decoded until a video is opened, and then only one frame at a time, so a source of any size costs its index only.
An unreadable video raises `VideoError` when opened or when a frame is read, and the job records it and goes on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from PIL import Image

from robotseg_jax.data import vrs_layout
from robotseg_jax.data.eval_videos import TFDS_PREFIX, DatasetError
from robotseg_jax.inference.video_io import (
    JPEG_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoError,
    VideoFrames,
    open_video,
)

RLDS_STEPS = "steps"
RLDS_OBSERVATION = "observation"


@dataclasses.dataclass(frozen=True)
class SourceVideo:
    """One video of a source: `name` (its output folder) and `open(image_size, cache_size)` -> `VideoFrames`."""

    name: str
    open: Callable[[int, int], VideoFrames]


def open_source(
    source: str, split: str = "test", data_dir: str | None = None, image_key: str = "image"
) -> list[SourceVideo]:
    """The videos of `source` (see the module docstring), in a stable order: by name for folders, in split order
    for TFDS. Raises DatasetError when the source cannot be found or holds no video."""
    if source.startswith(TFDS_PREFIX):
        name, _, tfds_split = source[len(TFDS_PREFIX) :].partition(":")
        if not name:
            raise DatasetError(f"expected tfds:<name> or tfds:<name>:<split>, got {source!r}")
        videos = _tfds_videos(name, tfds_split or split, data_dir, image_key)
    elif not os.path.isdir(source):
        raise DatasetError(f"no source folder at {source}")
    elif os.path.isdir(os.path.join(source, split, vrs_layout.IMAGE_DIR)):
        videos = _layout_videos(source, split)
    else:
        videos = _folder_videos(source)
    if not videos:
        raise DatasetError(f"no videos in {source}")
    return videos


def _path_video(name: str, path: str) -> SourceVideo:
    return SourceVideo(name, lambda image_size, cache_size: open_video(path, image_size, cache_size))


def _layout_videos(root: str, split: str) -> list[SourceVideo]:
    try:
        names = vrs_layout.list_videos(root, split)
    except vrs_layout.VRSLayoutError as err:
        raise DatasetError(str(err)) from err
    return [_path_video(name, vrs_layout.video_image_dir(root, split, name)) for name in names]


def _folder_videos(folder: str) -> list[SourceVideo]:
    """`.mp4` files (named by their stem) and sub-folders holding JPEG frames; anything else is not a video."""
    videos = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, extension = os.path.splitext(entry)
        if os.path.isfile(path) and extension in VIDEO_EXTENSIONS:
            name = stem
        elif os.path.isdir(path) and any(os.path.splitext(p)[1] in JPEG_EXTENSIONS for p in os.listdir(path)):
            name = entry
        else:
            continue
        if name in videos:
            raise DatasetError(f"two videos named {name!r} in {folder} (a folder and an .mp4 file?)")
        videos[name] = _path_video(name, path)
    return list(videos.values())


def _tfds_videos(name: str, split: str, data_dir: str | None, image_key: str) -> list[SourceVideo]:
    import tensorflow_datasets as tfds

    from robotseg_jax.data import vrs_tfds

    try:
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
        features = builder.info.features
        if RLDS_STEPS not in features:
            return _vrs_tfds_videos(vrs_tfds.open_split(name, split, data_dir))
        keys = [RLDS_STEPS, RLDS_OBSERVATION, *image_key.split("/")]
        decoders = _nested(keys[1:], vrs_tfds.KeepEncoded())
        source = builder.as_data_source(split=split, decoders={RLDS_STEPS: decoders})
    except Exception as err:  # TFDS reports a missing dataset or split with assorted exception types
        where = data_dir or "the default TFDS data dir"
        raise DatasetError(f"cannot open TFDS dataset {name!r} split {split!r} in {where}: {err}") from err
    if not _has_key(features, keys):
        raise DatasetError(f"TFDS dataset {name!r} has no {'/'.join(keys)} (set image_key to one of its cameras)")
    return [_rlds_episode(source, index, keys[1:]) for index in range(len(source))]


def _vrs_tfds_videos(source) -> list[SourceVideo]:
    from robotseg_jax.data.vrs_tfds import decode_frame

    def video(index: int) -> SourceVideo:
        def open_frames(image_size: int, cache_size: int) -> VideoFrames:
            encoded = source[index]["frames"]
            return _encoded_frames(encoded, image_size, cache_size, f"video {index} of the TFDS split", decode_frame)

        name = source[index]["name"]
        return SourceVideo(name.decode() if isinstance(name, bytes) else str(name), open_frames)

    return [video(index) for index in range(len(source))]


def _rlds_episode(source, index: int, step_keys: Sequence[str]) -> SourceVideo:
    from robotseg_jax.data.vrs_tfds import decode_frame

    def open_frames(image_size: int, cache_size: int) -> VideoFrames:
        steps = source[index][RLDS_STEPS]
        encoded = _LazySteps(steps, step_keys)
        return _encoded_frames(encoded, image_size, cache_size, f"episode {index}", decode_frame)

    return SourceVideo(f"episode_{index:06d}", open_frames)


class _LazySteps:
    """The encoded image of each step of an RLDS episode, read when indexed."""

    def __init__(self, steps, keys: Sequence[str]):
        self.steps, self.keys = steps, keys

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> bytes:
        value = self.steps[index]
        for key in self.keys:
            value = value[key]
        return value


def _encoded_frames(encoded, image_size: int, cache_size: int, description: str, decode) -> VideoFrames:
    """`VideoFrames` over a sequence of encoded images (JPEG or PNG bytes)."""
    if len(encoded) == 0:
        raise VideoError(f"{description} has no frames")

    def read(index: int) -> Image.Image:
        try:
            return Image.fromarray(decode(encoded[index]))  # RGB uint8
        except OSError as err:
            raise VideoError(f"cannot decode frame {index} of {description}: {err}") from err

    width, height = read(0).size
    return VideoFrames(len(encoded), height, width, read, image_size, cache_size, description)


def _nested(keys: Sequence[str], leaf):
    return leaf if not keys else {keys[0]: _nested(keys[1:], leaf)}


def _has_key(features, keys: Sequence[str]) -> bool:
    node = features
    for key in keys:
        node = getattr(node, "feature", node)  # a Dataset feature wraps its steps' FeaturesDict
        try:
            node = node[key]
        except (KeyError, TypeError):
            return False
    return True
