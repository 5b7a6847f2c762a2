"""A video predictor with sam2's API, holding one object of one category, as the evaluation protocols want it
(`protocols.InteractiveVideoPredictor`, plus the box and robot prompts of BB and AU).

RobotSeg's predictor takes the category on every call: `robots=c` when adding points or a box,
`robot=c` when propagating, and has `add_new_robot` for the automatic prompt. SAM 2.1's takes none of these. A
predictor counts as RobotSeg's when it has `add_new_robot`; the category is then always passed by keyword, since
`robots` is RobotSeg's 4th positional parameter and would swallow a positional SAM 2 call's points.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from robotseg_jax.evaluation.protocols import Clicks

OBJ_ID = 1  # one object per run (upstream runs each category separately)


def supports_robot_prompts(predictor: Any) -> bool:
    """Whether the predictor takes robot categories (RobotSeg) or not (SAM 2.1)."""
    return callable(getattr(predictor, "add_new_robot", None))


class PredictorSession:
    """One object of `category` on an initialised state; the state's earlier objects and prompts are removed.

    Every method returns boolean masks at video resolution: the object's logits > 0 (upstream's threshold), the
    frame's previous logits having been fed back as the mask prompt by the predictor itself (sam2's rule for
    repeated clicks).
    """

    def __init__(self, predictor: Any, state: Any, category: str):
        predictor.reset_state(state)
        self.predictor, self.state, self.category = predictor, state, category
        self.robot_prompts = supports_robot_prompts(predictor)
        self._robots = {"robots": category} if self.robot_prompts else {}

    def add_clicks(self, frame_idx: int, clicks: Clicks) -> np.ndarray:
        """`protocols.SegmentFn`: replaces the frame's clicks by `clicks`."""
        _, obj_ids, logits = self.predictor.add_new_points_or_box(
            self.state,
            frame_idx,
            OBJ_ID,
            points=clicks.points,
            labels=clicks.labels,
            clear_old_points=True,
            **self._robots,
        )
        return self._mask(obj_ids, logits)

    def add_box(self, frame_idx: int, box: np.ndarray) -> np.ndarray:
        """BB: a box [x0, y0, x1, y1] in video pixels."""
        _, obj_ids, logits = self.predictor.add_new_points_or_box(
            self.state, frame_idx, OBJ_ID, box=box, **self._robots
        )
        return self._mask(obj_ids, logits)

    def add_robot(self, frame_idx: int) -> np.ndarray:
        """AU: the category alone as the prompt (RobotSeg's `add_new_robot`)."""
        if not self.robot_prompts:
            raise TypeError(f"{type(self.predictor).__name__} has no robot prompts (no add_new_robot)")
        _, obj_ids, logits = self.predictor.add_new_robot(self.state, frame_idx, OBJ_ID, self.category)
        return self._mask(obj_ids, logits)

    def propagate(self) -> Iterator[tuple[int, np.ndarray]]:
        """Forward from the earliest prompted frame (the start frame), which comes first, with its prompt's mask."""
        robot = {"robot": self.category} if self.robot_prompts else {}
        for frame_idx, obj_ids, logits in self.predictor.propagate_in_video(self.state, **robot):
            yield frame_idx, self._mask(obj_ids, logits)

    def commit(self) -> None:
        """Encodes the outputs added since the last commit into memory (OI's kept corrections)."""
        self.predictor.propagate_in_video_preflight(self.state)

    @staticmethod
    def _mask(obj_ids: list, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits[list(obj_ids).index(OBJ_ID), 0]) > 0
