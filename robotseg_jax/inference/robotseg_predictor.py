"""RobotSeg's video predictor (the original's `RobotSegVideoPredictor`): sam2's API plus a robot category.

The category (arm, gripper or robot) adds the class token and RPG's object tokens to the mask decoder's prompts:
- `add_new_robot` segments an object from its category alone (0-click, automatic mode);
- `add_new_points_or_box(..., robots=c)` adds the category to clicks or a box;
- `propagate_in_video(state, robot=c)` tracks every object with the category.
Everything else is `VideoPredictor`'s bookkeeping, with one more rule: `add_new_mask` outputs are frozen, i.e.
propagation keeps them rather than re-tracking their frames. An image is a 1-frame video (`init_state(image[None])`):
there is no memory then, so RPG gives its no-memory tokens and only the class token conditions the mask.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import numpy as np

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.inference.video_predictor import NO_CATEGORY, VideoPredictor
from robotseg_jax.inference.video_state import InferenceState
from robotseg_jax.modeling.config import RobotSegConfig
from robotseg_jax.modeling.mask_decoder import robot_category_index
from robotseg_jax.modeling.sam2 import Prompts


class RobotSegVideoPredictor(VideoPredictor):
    """`VideoPredictor` on a RobotSeg model with RobotSeg's category arguments. The signatures are the original's:
    `robots` is `add_new_points_or_box`'s 4th positional parameter and `robot` is `propagate_in_video`'s 2nd (a
    positional SAM 2 call of `add_new_points_or_box` is rejected rather than read as a category)."""

    freeze_mask_outputs = True  # the original re-uses add_new_mask outputs instead of re-tracking them

    def __init__(self, config: RobotSegConfig, params: dict, **kwargs):
        if not isinstance(config, RobotSegConfig):
            raise TypeError(f"RobotSegVideoPredictor needs a RobotSeg model, got {config.name}; use VideoPredictor")
        super().__init__(config, params, **kwargs)

    def add_new_points_or_box(
        self,
        state: InferenceState,
        frame_idx: int,
        obj_id: Hashable,
        robots: str | None = None,
        points=None,
        labels=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box=None,
    ) -> tuple[int, list, np.ndarray]:
        """`VideoPredictor.add_new_points_or_box` with the object's category `robots` (or None: no class token).
        With a category, the decoder also gets RPG's tokens: the no-memory ones on an untracked frame, tokens from
        the memory on a tracked one."""
        category = _category(robots, "robots")
        return self._add_points_or_box(
            state, frame_idx, obj_id, points, labels, clear_old_points, normalize_coords, box, category
        )

    def add_new_robot(
        self, state: InferenceState, frame_idx: int, obj_id: Hashable, robot: str
    ) -> tuple[int, list, np.ndarray]:
        """Segments an object on a frame from its category alone (the automatic, 0-click mode).

        The frame's points and mask of that object are removed, and the frame runs with no click (SAM's 2
        not-a-point tokens), no mask and not the previous logits: on an untracked frame without memory (the best of
        3 masks), on a tracked frame from the memory, RPG's tokens then coming from it. The output is stored like a
        click's (a conditioning output on an untracked frame; its memory is encoded when propagation starts).
        Returns (frame_idx, obj_ids, logits [O, 1, H, W]) for every object on that frame.
        """
        if robot is None:
            raise ValueError(f"add_new_robot needs a category, one of {ROBOT_CATEGORIES}")
        category = _category(robot, "robot")
        frame_idx = self._check_frame(state, frame_idx)
        obj = self._object(state, obj_id, create=True)
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)

        is_init_cond_frame = frame_idx not in obj.frames_tracked
        reverse = obj.frames_tracked.get(frame_idx, False)
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        out = self._run_prompted_frame(state, obj, frame_idx, is_init_cond_frame, reverse, Prompts(), None, category)
        obj.temp_outputs(is_cond)[frame_idx] = out
        return frame_idx, list(state.obj_ids), self._consolidated_output(state, frame_idx, is_cond)

    def propagate_in_video(
        self,
        state: InferenceState,
        robot: str | None,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list, np.ndarray]]:
        """`VideoPredictor.propagate_in_video` with every object tracked as category `robot` (required, as in the
        original; None tracks without class tokens). Frozen `add_new_mask` outputs are kept."""
        return self._propagate(state, start_frame_idx, max_frame_num_to_track, reverse, _category(robot, "robot"))


def _category(robot: str | None, argument: str) -> int:
    """The class-token row of a category name, or NO_CATEGORY for None."""
    if robot is None:
        return NO_CATEGORY
    if not isinstance(robot, str):
        raise TypeError(
            f"{argument} must be a category name {ROBOT_CATEGORIES} or None, got {type(robot).__name__} (RobotSeg's "
            "add_new_points_or_box takes robots as its 4th positional argument: pass points and labels by keyword)"
        )
    return robot_category_index(robot)
