"""RobotSeg's video predictor (SAM 2.1's per-object predictor plus categories): 0-click segmentation from a
category, `add_new_robot`'s bookkeeping, categories with clicks, frozen mask outputs, images as 1-frame videos, and
its errors.

There is no PyTorch RobotSeg to compare with (its code is not available), so these check the original predictor's
behaviour on a RobotSeg model started from random SAM 2.1 weights (convert.init_from_sam2), at 128 px. The weights
come from sam2's model, hence the `reference` marker.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.checkpoints import convert
from robotseg_jax.inference import (
    RobotSegVideoPredictor,
    VideoPredictor,
    build_video_predictor,
)
from robotseg_jax.inference.postprocess import to_video_resolution
from robotseg_jax.modeling.config import get_model_config
from tests.reference import build_reference

pytestmark = pytest.mark.reference

IMAGE_SIZE = 128
NUM_FRAMES = 4
HEIGHT, WIDTH = 96, 128
CLICK = {"points": [[60.0, 50.0]], "labels": [1]}


def _robot_video() -> np.ndarray:
    """A grey arm (a thick bar) sweeping over a textured table, with a dark gripper at its tip: uint8 [T,H,W,3]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    table = np.stack([120 + 0.5 * xx, 90 + 0.4 * yy, 60 + 0.2 * (xx + yy)], -1) + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
    frames = []
    for t in range(NUM_FRAMES):
        frame = table.copy()
        tip_x, tip_y = 70 + 6 * t, 55 - 3 * t
        arm = (np.abs(yy - (HEIGHT - 10) - (tip_y - HEIGHT + 10) * xx / tip_x) < 6) & (xx < tip_x)
        frame[arm] = [200, 200, 210]
        frame[(xx - tip_x) ** 2 + (yy - tip_y) ** 2 < 8**2] = [30, 30, 40]
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def params() -> dict:
    state_dict = {k: v.numpy() for k, v in build_reference("sam2.1_hiera_t", IMAGE_SIZE, seed=2).state_dict().items()}
    return convert.init_from_sam2(state_dict, get_model_config("robotseg_hiera_t", image_size=IMAGE_SIZE), jax.random.key(0))


@pytest.fixture(scope="module")
def predictor(params) -> RobotSegVideoPredictor:
    # seed: reproducible FPS starts (the original draws them with an unseeded torch.randint on the CUDA RNG)
    return build_video_predictor("robotseg_hiera_t", params=params, image_size=IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return _robot_video()


def _propagate(predictor, state, robot):
    return [(frame_idx, obj_ids, logits) for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, robot)]


# ---------------------------------------------------------------------------------------------- automatic mode
def test_zero_click_segmentation_tracks_every_frame(predictor, video):
    state = predictor.init_state(video)
    frame_idx, obj_ids, first = predictor.add_new_robot(state, 0, "arm", "robot")
    assert (frame_idx, obj_ids, first.shape) == (0, ["arm"], (1, 1, HEIGHT, WIDTH))
    tracked = _propagate(predictor, state, "robot")
    assert [t for t, _, _ in tracked] == list(range(NUM_FRAMES))
    for _, ids, logits in tracked:
        assert ids == ["arm"] and logits.shape == (1, 1, HEIGHT, WIDTH) and np.isfinite(logits).all()
    np.testing.assert_array_equal(tracked[0][2], first)  # the conditioning output is re-used
    # every tracked frame ran one compiled step; RPG's memory foreground is stored with each output
    assert predictor.steps.cache_sizes()["track_objects"] == 1
    obj = state.objects[0]
    for t in range(NUM_FRAMES):
        out = obj.memory_output(t)
        assert out.memory_foreground.shape == (1, IMAGE_SIZE // 16, IMAGE_SIZE // 16)
        assert out.memory_foreground.dtype == bool and out.maskmem_features is not None

    # with a seed the FPS starts, hence the whole run, are reproducible
    again = predictor.init_state(video)
    predictor.add_new_robot(again, 0, "arm", "robot")
    for (_, _, a), (_, _, b) in zip(tracked, _propagate(predictor, again, "robot")):
        np.testing.assert_array_equal(a, b)


def test_add_new_robot_on_an_untracked_frame(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 1, "r", robots="robot", **CLICK)
    _, _, logits = predictor.add_new_robot(state, 1, "r", "robot")
    obj = state.objects[0]
    # the frame's clicks are removed; the output is a conditioning one, its memory deferred to propagation
    assert obj.point_inputs == {} and obj.mask_inputs == {}
    assert list(obj.temp_cond_outputs) == [1] and obj.temp_non_cond_outputs == {}
    stored = obj.temp_cond_outputs[1]
    assert stored.maskmem_features is None
    expected = to_video_resolution(jnp.asarray(stored.pred_masks), (HEIGHT, WIDTH), False)
    np.testing.assert_allclose(logits, expected, atol=1e-6)
    # no clicks and not the previous logits: the same category gives the same output again, another one not
    np.testing.assert_array_equal(predictor.add_new_robot(state, 1, "r", "robot")[2], logits)
    assert np.abs(predictor.add_new_robot(state, 1, "r", "gripper")[2] - logits).max() > 1e-3

    predictor.propagate_in_video_preflight(state)
    assert list(obj.cond_outputs) == [1] and obj.cond_outputs[1].maskmem_features is not None


def test_add_new_robot_on_a_tracked_frame(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_robot(state, 0, 1, "gripper")
    _propagate(predictor, state, "gripper")
    _, _, logits = predictor.add_new_robot(state, 2, 1, "gripper")
    obj = state.objects[0]
    # a tracked frame stays a non-conditioning one, decoded from the memory (frames 0 and 1, whose RPG tokens
    # join the class token), its own memory deferred to propagation
    assert list(obj.temp_non_cond_outputs) == [2] and obj.temp_cond_outputs == {}
    assert obj.temp_non_cond_outputs[2].maskmem_features is None
    assert logits.shape == (1, 1, HEIGHT, WIDTH) and np.isfinite(logits).all()
    predictor.propagate_in_video_preflight(state)
    assert list(obj.cond_outputs) == [0] and obj.non_cond_outputs[2].maskmem_features is not None


# ---------------------------------------------------------------------------------------------- with clicks, masks
def test_category_joins_clicks(predictor, video):
    def clicked(**robots):
        state = predictor.init_state(video)
        return predictor.add_new_points_or_box(state, 0, 1, **robots, **CLICK)[2]

    plain, robot, arm = clicked(), clicked(robots="robot"), clicked(robots="arm")
    assert np.abs(plain - robot).max() > 1e-3 and np.abs(robot - arm).max() > 1e-3
    # `robots` is the 4th positional parameter, as in the original
    state = predictor.init_state(video)
    np.testing.assert_array_equal(predictor.add_new_points_or_box(state, 0, 1, "robot", **CLICK)[2], robot)
    with pytest.raises(TypeError, match="4th positional"):
        predictor.add_new_points_or_box(state, 0, 1, CLICK["points"], CLICK["labels"])


def test_mask_outputs_are_frozen_through_propagation(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_robot(state, 0, 1, "robot")
    _propagate(predictor, state, "robot")
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[40:70, 30:90] = True
    _, _, from_mask = predictor.add_new_mask(state, 2, 1, mask)
    assert state.objects[0].temp_non_cond_outputs[2].frozen
    tracked = {t: logits for t, _, logits in _propagate(predictor, state, "robot")}
    np.testing.assert_array_equal(tracked[2], from_mask)  # kept, not re-tracked, as the original's frozen outputs


def test_an_image_is_a_one_frame_video(predictor, video):
    state = predictor.init_state(video[:1])
    _, _, logits = predictor.add_new_robot(state, 0, 1, "arm")
    (frame_idx, _, tracked), = _propagate(predictor, state, "arm")
    assert frame_idx == 0
    np.testing.assert_array_equal(tracked, logits)
    # the same frame in a longer video: no memory on the first frame, so the same mask
    np.testing.assert_array_equal(predictor.add_new_robot(predictor.init_state(video), 0, 1, "arm")[2], logits)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_categories_and_models_raise_readable_errors(predictor, params, video):
    state = predictor.init_state(video[:2])
    with pytest.raises(ValueError, match="unknown robot category 'hand'"):
        predictor.add_new_robot(state, 0, 1, "hand")
    with pytest.raises(ValueError, match="needs a category"):
        predictor.add_new_robot(state, 0, 1, None)
    with pytest.raises(ValueError, match="unknown robot category 'arms'"):
        predictor.add_new_points_or_box(state, 0, 1, robots="arms", **CLICK)
    assert state.obj_ids == []  # rejected prompts create no object
    with pytest.raises(ValueError, match="unknown robot category"):
        predictor.propagate_in_video(state, "wheel")
    with pytest.raises(IndexError, match="out of range"):
        predictor.add_new_robot(state, 2, 1, "arm")
    with pytest.raises(TypeError, match="needs a RobotSeg model"):
        RobotSegVideoPredictor(get_model_config("sam2.1_hiera_t", image_size=IMAGE_SIZE), params)
    assert type(predictor) is RobotSegVideoPredictor and not hasattr(VideoPredictor, "add_new_robot")
