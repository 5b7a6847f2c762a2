"""Video frames for the predictor, decoded and resized on demand.

sam2's `load_video_frames` decodes every frame up front (onto the GPU unless offloaded), so memory grows with the
video. Here a `VideoFrames` decodes one frame when it is asked for and keeps only a few recent ones, so a video
of any length never has to fit in host or device memory. The preprocessing is sam2's own, step for step: PIL
resize of the RGB frame to `image_size` x `image_size` (aspect not kept, PIL's default filter), /255 in float64,
cast to float32, ImageNet mean/std.

Sources: a folder of JPEG frames named by frame number (sam2's layout and ordering), an `.mp4` file (decoded
with PyAV, seeking by presentation timestamp) or a uint8 array `[T, H, W, 3]` (an `np.memmap` stays lazy).
Every frame must have the first frame's size (a frame of another size is a `VideoError`).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from robotseg_jax.errors import UserError
from robotseg_jax.modeling.common import IMAGENET_MEAN, IMAGENET_STD



class VideoError(UserError, ValueError):
    """A video that cannot be read: not a JPEG folder or .mp4 file, no frames, an undecodable frame; the message
    names the path."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """No file or folder at the video's path."""


JPEG_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")
VIDEO_EXTENSIONS = (".mp4", ".MP4")


def preprocess_frame(image: Image.Image, image_size: int) -> np.ndarray:
    """sam2's `_load_img_as_tensor` + normalisation, channels-last: `[image_size, image_size, 3]` float32."""
    pixels = np.array(image.convert("RGB").resize((image_size, image_size)))
    scaled = (pixels / 255.0).astype(np.float32)  # sam2 divides in float64, then stores into a float32 tensor
    return (scaled - IMAGENET_MEAN) / IMAGENET_STD


class VideoFrames:
    """Lazily decoded, preprocessed frames: `frames[i]` is `[image_size, image_size, 3]` float32.

    `read_frame(i)` returns the original frame as a PIL image; only the `cache_size` most recent preprocessed
    frames are kept. `frame_ids[i]` is frame i's number in its source (a JPEG folder's file stems; else i).
    """

    def __init__(
        self,
        num_frames: int,
        height: int,
        width: int,
        read_frame: Callable[[int], Image.Image],
        image_size: int,
        cache_size: int = 2,
        description: str = "video",
        frame_ids: list[int] | None = None,
    ):
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.image_size = image_size
        self.description = description
        self.read_frame = read_frame  # the original frame as a PIL image (overlays need it)
        self.frame_ids = list(range(num_frames)) if frame_ids is None else list(frame_ids)
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_size = max(1, cache_size)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame index {index} is out of range for {self.description} with {self.num_frames} frames")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        frame = self._load(index)
        self._cache[index] = frame
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frame

    def _load(self, index: int) -> np.ndarray:
        """Frame `index` decoded and prepared."""
        return self.prepare(self.read_frame(index), index)

    def prepare(self, image: Image.Image, index: int) -> np.ndarray:
        """The model input of frame `index` decoded as `image`, which must have the video's size."""
        if image.size != (self.width, self.height):
            raise VideoError(
                f"frame {index} of {self.description} is {image.size[0]}x{image.size[1]}, the video is "
                f"{self.width}x{self.height}"
            )
        return preprocess_frame(image, self.image_size)


def open_video(video, image_size: int, cache_size: int = 2) -> VideoFrames:
    """A `VideoFrames` over a JPEG folder, an .mp4 file or a uint8 array `[T, H, W, 3]`; a `VideoFrames` (of
    `image_size`) is returned as it is."""
    if isinstance(video, VideoFrames):
        if video.image_size != image_size:
            raise ValueError(f"the video's frames are prepared at {video.image_size} px, the model needs {image_size}")
        return video
    if isinstance(video, np.ndarray):
        return _array_frames(video, image_size, cache_size)
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(
            f"video must be a folder of JPEG frames, an .mp4 path or a uint8 array [T, H, W, 3], got {type(video).__name__}"
        )
    path = os.fspath(video)
    if not os.path.exists(path):
        raise VideoNotFoundError(f"No video at {path}")
    if os.path.isdir(path):
        return _jpeg_folder_frames(path, image_size, cache_size)
    if os.path.splitext(path)[1] in VIDEO_EXTENSIONS:
        return _mp4_frames(path, image_size, cache_size)
    raise VideoError(f"{path} is neither a folder of JPEG frames nor an .mp4 file")


def _array_frames(video: np.ndarray, image_size: int, cache_size: int) -> VideoFrames:
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"a video array must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    if video.shape[0] == 0:
        raise ValueError("the video array has no frames")
    num_frames, height, width, _ = video.shape
    read = lambda i: Image.fromarray(np.ascontiguousarray(video[i]))
    return VideoFrames(num_frames, height, width, read, image_size, cache_size, "the video array")


def _jpeg_folder_frames(folder: str, image_size: int, cache_size: int) -> VideoFrames:
    names = [p for p in os.listdir(folder) if os.path.splitext(p)[1] in JPEG_EXTENSIONS]
    if not names:
        raise VideoError(f"No JPEG frames ({', '.join(JPEG_EXTENSIONS)}) in {folder}")
    bad = [p for p in names if not os.path.splitext(p)[0].isdigit()]
    if bad:
        raise VideoError(f"JPEG frames must be named by frame number (e.g. 00000.jpg); {folder} has {sorted(bad)[:3]}")
    names.sort(key=lambda p: int(os.path.splitext(p)[0]))  # sam2's ordering
    paths = [os.path.join(folder, p) for p in names]

    def read(index: int) -> Image.Image:
        try:
            with Image.open(paths[index]) as image:
                return image.convert("RGB")  # a decoded copy that outlives the file handle
        except OSError as err:
            raise VideoError(f"Cannot read frame {index} ({paths[index]}): {err}") from err

    width, height = read(0).size
    frame_ids = [int(os.path.splitext(p)[0]) for p in names]
    return VideoFrames(len(paths), height, width, read, image_size, cache_size, folder, frame_ids)


class _Mp4Reader:
    """Random access into a video file: frame i is the i-th presentation timestamp; sequential reads continue
    the open decoder, other reads seek to the keyframe before the frame and decode forward."""

    def __init__(self, path: str):
        import av  # only needed for video files

        self.path = path
        try:
            self._container = av.open(path)
        except (av.error.FFmpegError, OSError) as err:
            raise VideoError(f"Cannot open video {path}: {err}") from err
        if not self._container.streams.video:
            raise VideoError(f"{path} has no video stream")
        self._stream = self._container.streams.video[0]
        # Demuxing reads packet headers only (no decoding): the sorted timestamps index the frames.
        pts = [p.pts for p in self._container.demux(self._stream) if p.size > 0]
        if not pts or any(t is None for t in pts):
            raise VideoError(f"Cannot index the frames of {path} (no presentation timestamps)")
        self.frame_pts = sorted(pts)
        self.height = self._stream.codec_context.height
        self.width = self._stream.codec_context.width
        self._frames = None
        self._next_index = None

    def __call__(self, index: int) -> Image.Image:
        target = self.frame_pts[index]
        if index != self._next_index:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._frames = self._container.decode(self._stream)
        for frame in self._frames:
            if frame.pts is not None and frame.pts >= target:
                self._next_index = index + 1
                return frame.to_image()
        raise VideoError(f"Cannot decode frame {index} of {self.path}")


def _mp4_frames(path: str, image_size: int, cache_size: int) -> VideoFrames:
    reader = _Mp4Reader(path)
    return VideoFrames(len(reader.frame_pts), reader.height, reader.width, reader, image_size, cache_size, path)
