"""VRS score tables: J and F per video, then unweighted means over videos, one category at a time.

The upstream evaluator (`tools/benchmark.py`, run with `--do_not_skip_first_and_last_frame`) is reproduced with its
quirks: frames before the object first appears in the GT or the prediction get no entry, a video whose GT is always
empty is an error, and the three categories are never averaged together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from robotseg_jax.evaluation.metrics import f_measure, jaccard


@dataclasses.dataclass(frozen=True)
class Score:
    """J and F in percent; J&F is their mean."""

    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def video_score(pred: np.ndarray, gt: np.ndarray) -> Score:
    """One video and category from boolean masks [T,H,W] of the frames that have a GT PNG, in sorted order.

    Scoring starts at the first frame where the GT or the prediction has a pixel (upstream accumulates the object
    ids it has seen, so earlier frames produce no entry rather than J = F = 1).
    """
    j, f = jaccard(pred, gt), f_measure(pred, gt)  # these validate the masks
    visible = gt.reshape(len(gt), -1).any(axis=1)
    if not visible.any():
        # Upstream asserts one object per video in its consolidation step; we fail with a message instead.
        raise ValueError("the GT of this video and category is empty in every frame; upstream cannot score it")
    first = int(np.argmax(visible | pred.reshape(len(pred), -1).any(axis=1)))
    return Score(j=float(np.mean(j[first:]) * 100), f=float(np.mean(f[first:]) * 100))


def mean_over_videos(scores: Iterable[Score]) -> Score:
    """The dataset score of one category: the unweighted mean of the per-video J and F."""
    scores = list(scores)
    if not scores:
        raise ValueError("no videos to average")
    return Score(j=float(np.mean([s.j for s in scores])), f=float(np.mean([s.f for s in scores])))


def mean_per_group(scores: Mapping[str, Score], group_of: Callable[[str], str]) -> dict[str, Score]:
    """Unweighted per-video means within each group (e.g. the embodiment, from the video name), sorted by group."""
    groups: dict[str, list[Score]] = {}
    for video, score in scores.items():
        groups.setdefault(group_of(video), []).append(score)
    return {group: mean_over_videos(groups[group]) for group in sorted(groups)}


def results_csv(scores: Mapping[str, Score], object_dir: str) -> str:
    """`results_{category}.csv` as upstream writes it: a global line, then one line per video in sorted order."""
    total = mean_over_videos(scores.values())
    width = max(len("Global score"), *(len(video) for video in scores))
    lines = [
        f"{'sequence':<{width}},{'obj':>3}, {'J&F':>4}, {'J':>4}, {'F':>4}",
        f"{'Global score':<{width}},{'':>3}, {total.jf:.1f}, {total.j:.1f}, {total.f:.1f}",
    ]
    for video in sorted(scores):
        s = scores[video]
        lines.append(f"{video:<{width}},{object_dir:>3}, {s.jf:>4.1f}, {s.j:>4.1f}, {s.f:>4.1f}")
    return "\n".join(lines) + "\n"
