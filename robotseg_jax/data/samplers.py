"""Which frames of a video make a training clip: RobotSeg's `BidirectionalSampler` (7-frame out-and-back clips
that start and end on the labelled first frame) and sam2's `RandomUniformSampler`.

Frames are addressed by their position in the video's sorted frame list, so position 0 is always the first frame.
Every draw comes from a numpy Generator, so a clip is a pure function of the generator's state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

# sam2 (RandomUniformSampler, VOSDataset) and RobotSeg (BidirectionalSampler) both give up after 100 tries.
MAX_RETRIES = 100


class ClipSampler(Protocol):
    num_frames: int

    def draw(self, num_video_frames: int, rng: np.random.Generator) -> list[int] | None:
        """One candidate clip as frame positions, or None when the video cannot give one (too short)."""


@dataclasses.dataclass(frozen=True)
class UniformSampler:
    """sam2's RandomUniformSampler with reverse_time_prob 0: `num_frames` consecutive frames from a uniform start.
    With num_frames=1 it is the image sampler (one random frame)."""

    num_frames: int = 8

    def draw(self, num_video_frames: int, rng: np.random.Generator) -> list[int] | None:
        return uniform_clip(num_video_frames, self.num_frames, rng)


@dataclasses.dataclass(frozen=True)
class BidirectionalSampler:
    """RobotSeg's LET sampler: out from the first frame with a random stride and back to it."""

    num_frames: int = 7

    def draw(self, num_video_frames: int, rng: np.random.Generator) -> list[int]:
        return bidirectional_clip(num_video_frames, rng, self.num_frames)


def uniform_clip(num_video_frames: int, num_frames: int, rng: np.random.Generator) -> list[int] | None:
    """[start, start+1, ..., start+num_frames-1] with start uniform in [0, T-num_frames]; None if T < num_frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_video_frames < num_frames:
        return None
    start = int(rng.integers(0, num_video_frames - num_frames + 1))
    return list(range(start, start + num_frames))


def bidirectional_max_step(num_video_frames: int, num_frames: int = 7) -> int:
    """The largest stride the bidirectional sampler may draw for a video of `num_video_frames` frames."""
    n = min(num_frames, num_video_frames)
    half = (n + 1) // 2
    return max(1, (num_video_frames - 1) // max(1, half - 1))


def bidirectional_clip(
    num_video_frames: int, rng: np.random.Generator, num_frames: int = 7, step: int | None = None
) -> list[int]:
    """RobotSeg's BidirectionalSampler: n = min(num_frames, T), half = ceil(n/2), step ~ U{1..max_step} (unless given),
    inc = [0, step, ..., (half-1)*step], then back down (the turning frame appears once when n is odd, twice when
    even), clamped to T-1. n=7 gives [0, s, 2s, 3s, 2s, s, 0]."""
    if num_video_frames < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame, got T={num_video_frames}, num_frames={num_frames}")
    n = min(num_frames, num_video_frames)
    half = (n + 1) // 2
    if step is None:
        step = int(rng.integers(1, bidirectional_max_step(num_video_frames, num_frames) + 1))
    inc = [i * step for i in range(half)]
    dec = inc[:-1][::-1] if n % 2 else inc[::-1]
    return [min(i, num_video_frames - 1) for i in inc + dec]


def sample_clip(
    sampler: ClipSampler,
    num_video_frames: int,
    first_frame_visible: Callable[[int], bool],
    rng: np.random.Generator,
    max_retries: int = MAX_RETRIES,
) -> list[int] | None:
    """Draws clips until the clip's first frame shows the object (a non-empty mask), as sam2's samplers do;
    None after `max_retries` failures. The bidirectional sampler always starts at frame 0, so for it the retries
    only re-draw the stride and an object that is absent from frame 0 always fails."""
    for _ in range(max_retries):
        frames = sampler.draw(num_video_frames, rng)
        if frames is None:
            return None
        if first_frame_visible(frames[0]):
            return frames
    return None
