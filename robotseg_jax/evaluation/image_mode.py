"""Image mode of the evaluation: every labelled frame of a video as its own 1-frame video, which the video
predictor segments without memory, as RobotSeg evaluates images (RoboEngine).
"""

from __future__ import annotations

from collections.abc import Iterator

from robotseg_jax.data.eval_videos import EvalVideo


def as_images(video: EvalVideo, categories: list[str]) -> Iterator[EvalVideo]:
    """Image mode: each frame labelled for any of `categories` as its own 1-frame video."""
    gt = {category: video.read_gt(category) for category in categories}
    for position in sorted(set().union(*gt.values())):
        frame = video.read_frame(position)
        yield EvalVideo(
            name=f"{video.name}/{video.frame_ids[position]:05d}",
            folder=video.folder,
            embodiment=video.embodiment,
            frame_ids=[video.frame_ids[position]],
            load=lambda frame=frame: frame[None],
            read_frame=lambda i, frame=frame: frame,
            read_gt=lambda c, p=position: {0: gt[c][p]} if p in gt[c] else {},
        )
