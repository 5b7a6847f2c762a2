"""Automatic (0-click) segmentation of many videos at once: a streaming queue of videos through a fixed number of
slots, every slot's next frame tracked in one compiled step.

Each video is one `RobotSegVideoPredictor` session with one object per category (arm, gripper, robot: object id =
the category's index), prompted by its category alone on frame 0 (`add_new_robot`, RobotSeg's AU mode) and then
tracked forward. A step advances every occupied slot by one frame with `VideoPredictor.track_frames`, batched over
videos x objects; when a video ends, the next one takes its slot, so videos of any lengths keep the batch full
(only the last videos of the queue run in a partly empty batch, padded to keep the compiled program). Prompting a
new video (its frame 0) runs per video, as it costs a fraction of a tracked frame.

Frames are decoded and preprocessed ahead by a thread per slot (`ReadAheadFrames`) and the next videos are opened
ahead by a small pool, so decoding overlaps the model. A video that cannot be read (no frames, an undecodable
frame, a frame of another size) ends as a `VideoFailed` event and its slot is refilled.

Masks equal per-video, per-category `RobotSegVideoPredictor` runs with the same seed: each object draws from its
own key (the session key folded with its id), whatever else is batched with it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.inference import RobotSegVideoPredictor, SessionFrame
from robotseg_jax.inference.video_io import VideoError, VideoFrames
from robotseg_jax.inference.video_state import InferenceState
from robotseg_jax.segmentation.sources import SourceVideo

START_FRAME = 0  # the frame each video is prompted on (its category alone), then tracked forward from


@dataclasses.dataclass(frozen=True)
class FrameMasks:
    """One frame's result: `logits` float32 [K, H, W] at video resolution in the job's category order (a mask is
    logits > 0); `rgb` the original frame (uint8 [H, W, 3]) when the job keeps it (post-processing, overlays)."""

    video: str
    frame_idx: int
    frame_id: int
    logits: np.ndarray
    rgb: np.ndarray | None

    @property
    def masks(self) -> np.ndarray:
        """bool [K, H, W]: the logits thresholded at 0, as upstream saves them."""
        return self.logits > 0


@dataclasses.dataclass(frozen=True)
class VideoFinished:
    video: str
    num_frames: int


@dataclasses.dataclass(frozen=True)
class VideoFailed:
    video: str
    error: str


Event = FrameMasks | VideoFinished | VideoFailed


class ReadAheadFrames(VideoFrames):
    """A video's frames decoded and preprocessed in order by a background thread, up to `depth` frames ahead of
    the one last read (the predictor reads a session's frames in order). With `keep_rgb`, each frame's original
    pixels are kept until `take_rgb` collects them."""

    def __init__(self, frames: VideoFrames, depth: int, keep_rgb: bool):
        super().__init__(
            frames.num_frames, frames.height, frames.width, frames.read_frame, frames.image_size,
            description=frames.description, frame_ids=frames.frame_ids,
        )
        self._keep_rgb = keep_rgb
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._rgb: dict[int, np.ndarray] = {}
        self._next = 0
        self._stop = threading.Event()
        threading.Thread(target=self._decode_all, daemon=True, name=f"decode {frames.description}").start()

    def _decode_all(self) -> None:
        for index in range(self.num_frames):
            try:
                image = self.read_frame(index)
                rgb = np.asarray(image.convert("RGB")) if self._keep_rgb else None
                item = (index, self.prepare(image, index), rgb)
            except Exception as err:  # noqa: BLE001 -- any reading error fails this video only
                item = (index, _as_video_error(err, f"cannot read frame {index} of {self.description}"), None)
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item[1], Exception):
                return

    def _load(self, index: int) -> np.ndarray:
        if index != self._next:
            raise RuntimeError(f"{self.description}: frame {index} read out of order (next is {self._next})")
        got, frame, rgb = self._ready.get()
        self._next = got + 1
        if isinstance(frame, Exception):
            raise frame
        if rgb is not None:
            self._rgb[got] = rgb
        return frame

    def take_rgb(self, index: int) -> np.ndarray | None:
        return self._rgb.pop(index, None)

    def close(self) -> None:
        self._stop.set()


@dataclasses.dataclass
class _Slot:
    video: SourceVideo
    frames: ReadAheadFrames
    state: InferenceState
    next_frame: int


class Segmenter:
    """Segments videos with a RobotSeg predictor, `videos_per_step` at a time (see the module docstring).

    categories: the categories segmented as the objects of every video, in output order.
    read_ahead: frames decoded ahead per video; open_ahead: videos opened ahead of the free slots.
    keep_rgb(name) -> bool: whether a video's events carry its original frames (post-processing, overlays).
    """

    def __init__(
        self,
        predictor: RobotSegVideoPredictor,
        categories: Sequence[str] = ROBOT_CATEGORIES,
        videos_per_step: int = 4,
        read_ahead: int = 4,
        open_ahead: int = 2,
        keep_rgb: Callable[[str], bool] = lambda name: False,
    ):
        if not isinstance(predictor, RobotSegVideoPredictor):
            raise TypeError(f"automatic segmentation needs a RobotSeg predictor, got {type(predictor).__name__}")
        if videos_per_step < 1:
            raise ValueError(f"videos_per_step must be at least 1, got {videos_per_step}")
        unknown = [c for c in categories if c not in ROBOT_CATEGORIES]
        if unknown or not categories:
            raise ValueError(f"categories must be some of {ROBOT_CATEGORIES}, got {list(categories)}")
        self.predictor, self.categories = predictor, list(categories)
        self.videos_per_step, self.read_ahead, self.open_ahead = videos_per_step, read_ahead, open_ahead
        self.keep_rgb = keep_rgb
        self._category_rows = [ROBOT_CATEGORIES.index(c) for c in self.categories]

    def run(self, videos: Iterable[SourceVideo]) -> Iterator[Event]:
        """Events in the order they happen: each video's frames in order, then its `VideoFinished`, or a
        `VideoFailed` (frames already yielded for it are then void)."""
        image_size = self.predictor.image_size
        pending = iter(videos)
        opening: list[tuple[SourceVideo, concurrent.futures.Future]] = []
        slots: list[_Slot] = []
        with concurrent.futures.ThreadPoolExecutor(max(1, self.open_ahead), "open video") as pool:

            def open_more() -> None:
                while len(opening) < self.videos_per_step - len(slots) + self.open_ahead:
                    video = next(pending, None)
                    if video is None:
                        return
                    opening.append((video, pool.submit(_open, video, image_size)))

            try:
                while True:
                    open_more()
                    while len(slots) < self.videos_per_step and opening:
                        video, future = opening.pop(0)
                        yield from self._start(video, future, slots)
                        open_more()
                    if not slots:
                        return
                    yield from self._step(slots)
            finally:
                for slot in slots:
                    slot.frames.close()
                for _, future in opening:
                    future.cancel()

    def _start(self, video: SourceVideo, future: concurrent.futures.Future, slots: list[_Slot]) -> Iterator[Event]:
        """Opens a video, prompts every category on its first frame and gives it a slot (a 1-frame video is
        finished at once)."""
        frames = None
        try:
            frames = ReadAheadFrames(future.result(), self.read_ahead, self.keep_rgb(video.name))
            state = self.predictor.init_state(frames)
            for row, category in zip(self._category_rows, self.categories):
                self.predictor.add_new_robot(state, START_FRAME, row, category)
            self.predictor.propagate_in_video_preflight(state)
            logits = self._stored_logits(state, START_FRAME)
        except VideoError as err:
            if frames is not None:
                frames.close()
            yield VideoFailed(video.name, str(err))
            return
        yield self._frame_masks(video, frames, START_FRAME, logits)
        if frames.num_frames == START_FRAME + 1:
            frames.close()
            yield VideoFinished(video.name, frames.num_frames)
            return
        slots.append(_Slot(video, frames, state, START_FRAME + 1))

    def _stored_logits(self, state: InferenceState, frame_idx: int) -> np.ndarray:
        """The prompted frame's logits at video resolution, objects in category order, as propagation yields
        them (the conditioning outputs, after the preflight)."""
        (logits,) = self.predictor.track_frames([self._session_frame(state, frame_idx)])
        return logits

    def _session_frame(self, state: InferenceState, frame_idx: int) -> SessionFrame:
        return SessionFrame(state, frame_idx, self._category_rows)

    def _step(self, slots: list[_Slot]) -> Iterator[Event]:
        """Advances every slot by one frame in one batched call; finished and failed videos leave their slots."""
        for slot in list(slots):
            try:
                slot.frames[slot.next_frame]  # decoded ahead; a bad frame fails its video before the batch runs
            except VideoError as err:
                slots.remove(slot)
                slot.frames.close()
                yield VideoFailed(slot.video.name, str(err))
        if not slots:
            return
        results = self.predictor.track_frames(
            [self._session_frame(slot.state, slot.next_frame) for slot in slots], pad_sessions_to=self.videos_per_step
        )
        for slot, logits in zip(list(slots), results):
            yield self._frame_masks(slot.video, slot.frames, slot.next_frame, logits)
            slot.next_frame += 1
            self.predictor.forget_old_outputs(slot.state, slot.next_frame)
            if slot.next_frame == slot.frames.num_frames:
                slots.remove(slot)
                slot.frames.close()
                yield VideoFinished(slot.video.name, slot.frames.num_frames)

    def _frame_masks(self, video: SourceVideo, frames: ReadAheadFrames, frame_idx: int, logits) -> FrameMasks:
        logits = np.asarray(logits[:, 0])  # objects were added in category order
        return FrameMasks(video.name, frame_idx, frames.frame_ids[frame_idx], logits, frames.take_rgb(frame_idx))


def _open(video: SourceVideo, image_size: int) -> VideoFrames:
    try:
        return video.open(image_size, 1)  # ReadAheadFrames keeps the decoded frames, not this
    except Exception as err:  # noqa: BLE001 -- any reading error fails this video only
        raise _as_video_error(err, f"cannot open video {video.name}") from err


def _as_video_error(err: Exception, context: str) -> VideoError:
    """`err` as the VideoError that fails one video: itself when it is one, else wrapped with `context`."""
    if isinstance(err, VideoError):
        return err
    error = VideoError(f"{context}: {type(err).__name__}: {err}")
    error.__cause__ = err
    return error
