"""Prompt selection (1C, center rule, BB, best prefix, start frame), the 3C / OI loops against a fake predictor, and
the guided-filter post-processing of RobotSeg's VRS test scripts, on small cases whose answer is known by
construction, and against OpenCV ports of the upstream code where OpenCV is installed."""

from __future__ import annotations

import numpy as np
import pytest

from robotseg_jax.evaluation import guided_filter, protocols
from robotseg_jax.evaluation.protocols import Clicks


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ------------------------------------------------------------------------------------------------ start frame, 1C, BB
def test_first_visible_frame_follows_insertion_order():
    empty, visible = np.zeros((4, 4), bool), _rect((4, 4), 1, 2, 1, 2)
    assert protocols.first_visible_frame({5: empty, 3: visible, 1: visible}) == 3
    assert protocols.first_visible_frame([empty, empty, visible]) == 2
    assert protocols.first_visible_frame({0: empty, 1: empty}) == 0


def test_centroid_click_on_a_ring_whose_centroid_is_outside_it():
    ring = _disk((41, 61), 20, 30, 8) & ~_disk((41, 61), 20, 30, 5)
    # The centroid (20, 30) is in the hole. The nearest ring pixels lie at distance √26 (offsets (±5, ±1) and
    # (±1, ±5)); the first in row-major order is row 15, col 29.
    np.testing.assert_array_equal(protocols.centroid_click(ring), [29, 15])


def test_centroid_click_breaks_ties_in_row_major_order():
    square = _rect((30, 40), 10, 14, 20, 24)  # centroid (11.5, 21.5): four pixels at the same distance
    np.testing.assert_array_equal(protocols.centroid_click(square), [21, 11])


def test_centroid_click_matches_upstream_expression_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((37, 53)) < 0.2
        rows, cols = np.where(mask)  # upstream select_interact_point_center2
        i = np.argmin(np.sqrt((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        np.testing.assert_array_equal(protocols.centroid_click(mask), [cols[i], rows[i]])


def test_box_prompt_is_tight_with_exclusive_far_edges():
    shape = (20, 30)
    l_shape = _rect(shape, 3, 10, 4, 6) | _rect(shape, 8, 10, 4, 12)
    np.testing.assert_array_equal(protocols.box_prompt(l_shape), [4, 3, 12, 10])
    np.testing.assert_array_equal(protocols.box_prompt(_rect(shape, 0, 20, 29, 30)), [29, 0, 30, 20])


def test_box_prompt_matches_cv2_contours_on_random_masks():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((25, 35)) < 0.05  # scattered pixels, some on the image border
        contours, _ = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        x, y, w, h = cv2.boundingRect(np.concatenate(contours))
        np.testing.assert_array_equal(protocols.box_prompt(mask), [x, y, x + w, y + h])


def test_prompts_need_a_visible_object():
    with pytest.raises(ValueError):
        protocols.centroid_click(np.zeros((5, 5), bool))
    with pytest.raises(ValueError):
        protocols.box_prompt(np.zeros((5, 5), bool))


# ------------------------------------------------------------------------------------------------ center rule
def test_center_click_picks_the_larger_error_region():
    shape = (40, 80)
    gt = _disk(shape, 20, 15, 6) | _disk(shape, 20, 60, 9)
    pred_missing_small = _disk(shape, 20, 60, 9)  # FN = disk r=6 at (20, 15)
    assert_click(protocols.center_click(gt, pred_missing_small), (15, 20), 1)
    pred_with_big_fp = gt | _disk(shape, 20, 38, 9)  # FP = disk r=9 at (20, 38), larger than any FN
    assert_click(protocols.center_click(gt & ~_disk(shape, 20, 15, 6), pred_with_big_fp), (38, 20), 0)


def test_center_click_is_negative_on_equal_depth_and_at_origin_when_perfect():
    shape = (30, 60)
    fn, fp = _disk(shape, 15, 12, 5), _disk(shape, 15, 45, 5)
    assert_click(protocols.center_click(fn, fp), (45, 15), 0)  # max D_FN == max D_FP: not strictly greater
    gt = _disk(shape, 15, 30, 7)
    assert_click(protocols.center_click(gt, gt), (0, 0), 0)


def test_center_click_treats_the_image_edge_as_outside():
    fn = _rect((20, 30), 0, 10, 0, 10)  # in the corner: without the 1-px padding the corner pixel would win
    assert_click(protocols.center_click(fn, np.zeros_like(fn)), (4, 4), 1)  # depth 5, first in row-major order


def test_center_click_matches_upstream_cv2_version_on_random_masks():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    for i in range(8):
        gt = _disk((48, 64), rng.integers(10, 38), rng.integers(10, 54), rng.integers(4, 14))
        pred = (rng.random((48, 64)) < 0.5) if i % 2 else np.roll(gt, rng.integers(-6, 7), axis=1)
        fn, fp = np.pad(gt & ~pred, 1), np.pad(~gt & pred, 1)  # upstream sample_one_point_from_error_center
        fn_dt = cv2.distanceTransform(fn.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1].reshape(-1)
        fp_dt = cv2.distanceTransform(fp.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1].reshape(-1)
        fn_argmax, fp_argmax = np.argmax(fn_dt), np.argmax(fp_dt)
        positive = fn_dt[fn_argmax] > fp_dt[fp_argmax]
        index = fn_argmax if positive else fp_argmax
        assert_click(protocols.center_click(gt, pred), (index % 64, index // 64), int(positive))


def assert_click(click, xy, label):
    point, got_label = click
    assert point.dtype == np.float32
    np.testing.assert_array_equal(point, xy)
    assert got_label == label


# ------------------------------------------------------------------------------------------------ IoU, best prefix
def test_mask_iou_and_best_prefix():
    a, b = _rect((10, 10), 0, 4, 0, 4), _rect((10, 10), 0, 4, 2, 6)
    assert protocols.mask_iou(a, b) == 8 / (24 + 1e-6)
    assert protocols.mask_iou(a & False, b & False) == 0.0
    assert protocols.best_prefix_length([0.5, 0.7, 0.7]) == 2  # first on ties
    assert protocols.best_prefix_length([0.9, 0.3, 0.2]) == 1


# ------------------------------------------------------------------------------------------------ 3C and OI
SHAPE = (40, 120)
START = 2


def _scene(t):
    """The labelled scene of frame t: an "arm" (label 1, 20x30) and a "gripper" (label 2, 6x6) moving right 1 px per
    frame, visible from frame START on."""
    labels = np.zeros(SHAPE, np.int32)
    if t >= START:
        x = 10 + t
        labels[10:30, x : x + 30] = 1
        labels[14:20, x + 36 : x + 42] = 2
    return labels


class FakeVideoPredictor:
    """A deterministic stand-in for the video predictor, and a real function of its prompts.

    - add_clicks: the union of the scene parts under positive clicks, minus those under negative clicks.
    - propagate: from the earliest prompted frame, every later frame gets the mask of the last frame in memory
      (a tracker that never moves), so its IoU falls as the object moves on.
    - commit: puts the last prompted frame's output in memory.
    """

    def __init__(self, num_frames: int, broken_corrections: bool = False):
        self.num_frames = num_frames
        self.broken_corrections = broken_corrections  # corrections return empty masks (always rejected)
        self.outputs: dict[int, np.ndarray] = {}
        self.calls: list[tuple[int, Clicks]] = []
        self.memory = None
        self.commits = 0

    def add_clicks(self, frame_idx, clicks):
        self.calls.append((frame_idx, clicks))
        labels = _scene(frame_idx)
        mask = np.zeros(SHAPE, bool)
        for (x, y), label in zip(clicks.points.astype(int), clicks.labels):
            if labels[y, x]:
                part = labels == labels[y, x]
                mask = mask | part if label == 1 else mask & ~part
        if self.broken_corrections and self.memory is not None:
            mask = np.zeros(SHAPE, bool)
        self.outputs[frame_idx] = mask
        return mask

    def propagate(self):
        start = min(self.outputs)
        self.memory = self.outputs[start]
        for t in range(start, self.num_frames):
            yield t, self.outputs[start] if t == start else self.memory

    def commit(self):
        self.memory = self.outputs[self.calls[-1][0]]
        self.commits += 1


def _gt(num_frames):
    return {t: _scene(t) > 0 for t in range(num_frames)}


def test_three_click_session_keeps_the_best_prefix():
    predictor = FakeVideoPredictor(8)
    gt = _gt(8)[START]
    session = protocols.three_click_session(predictor.add_clicks, START, gt)
    # Click 1 (1C) lands in the arm; click 2 is the gripper's centre (the only error: rows 14-19, cols 48-53, first
    # deepest pixel (16, 50)); click 3 has no error left,
    # so it is the negative click at (0, 0). IoUs: arm only, then perfect twice -> keep 2 clicks.
    np.testing.assert_array_equal(session.clicks.points, [protocols.centroid_click(gt), [50, 16], [0, 0]])
    np.testing.assert_array_equal(session.clicks.labels, [1, 1, 0])
    assert session.ious == pytest.approx([600 / 636, 1.0, 1.0], abs=1e-8)
    assert session.kept == 2
    last_frame, last_clicks = predictor.calls[-1]
    assert last_frame == START and len(predictor.calls) == 4 and len(last_clicks) == 2
    np.testing.assert_array_equal(session.mask, gt)


def test_click_session_needs_exactly_one_starting_point():
    predictor = FakeVideoPredictor(4)
    with pytest.raises(ValueError):
        protocols.click_session(predictor.add_clicks, START, _gt(4)[START])


def test_online_interactive_corrects_up_to_three_frames_and_conditions_later_ones():
    num_frames = 16
    predictor, gt = FakeVideoPredictor(num_frames), _gt(num_frames)
    # A stale mask 1 px behind has IoU 610/662 ≥ 0.9; 2 px behind, 584/688 < 0.9. Each kept correction is perfect
    # and resets memory, so corrections fall every second frame until three are kept.
    assert protocols.mask_iou(gt[START], gt[START + 1]) >= 0.9 > protocols.mask_iou(gt[START], gt[START + 2])
    result = protocols.online_interactive(predictor, gt, START)

    assert result.corrected_frames == [START + 2, START + 4, START + 6]
    assert predictor.commits == 3
    assert sorted(result.masks) == list(range(START, num_frames))  # frames before the start are never predicted
    np.testing.assert_array_equal(result.masks[START], gt[START])
    for t in range(START + 1, num_frames):
        memory_frame = max(f for f in [START, *result.corrected_frames] if f <= t)
        np.testing.assert_array_equal(result.masks[t], gt[memory_frame], err_msg=f"frame {t}")
    # The first correction: equal 1-px-deep FN and FP strips give a negative click (on background now), then the
    # arm, then the gripper; the best prefix is all three clicks.
    session_calls = [clicks for frame, clicks in predictor.calls if frame == START + 2]
    assert [len(c) for c in session_calls] == [1, 2, 3, 3]
    np.testing.assert_array_equal(session_calls[-1].labels, [0, 1, 1])


@pytest.mark.parametrize("hidden", ["missing", "empty"])
def test_online_interactive_never_corrects_frames_without_gt(hidden):
    num_frames = 16
    gt = _gt(num_frames)
    if hidden == "missing":
        del gt[START + 2]
    else:
        gt[START + 2] = np.zeros(SHAPE, bool)
    result = protocols.online_interactive(FakeVideoPredictor(num_frames), gt, START)
    assert result.corrected_frames == [START + 3, START + 5, START + 7]
    assert START + 2 in result.masks


def test_online_interactive_keeps_the_tracked_mask_when_a_correction_is_worse():
    num_frames = 10
    predictor, gt = FakeVideoPredictor(num_frames, broken_corrections=True), _gt(num_frames)
    result = protocols.online_interactive(predictor, gt, START)
    assert result.corrected_frames == [] and predictor.commits == 0
    for t in range(START, num_frames):
        np.testing.assert_array_equal(result.masks[t], gt[START])
    # Rejected attempts do not count towards the limit: every frame 2+ px behind gets a full session.
    sessions = num_frames - (START + 2)
    assert len(predictor.calls) == 4 + 4 * sessions


# ------------------------------------------------------------------------------------------------ guided filter
def _port_guided_refine_mask(cv2, mask_uint8, image_bgr):
    """Upstream `test/utils.guided_refine_mask` with its defaults, line by line; also returns the soft map."""
    guide = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    src = mask_uint8.astype(np.float32) / 255.0
    refined_small = cv2.ximgproc.guidedFilter(guide=guide, src=src, radius=3, eps=1e-3)
    refined_large = cv2.ximgproc.guidedFilter(guide=guide, src=src, radius=7, eps=1e-3)
    kernel = np.ones((7, 7), np.uint8)
    boundary_band = cv2.subtract(cv2.dilate(mask_uint8, kernel), cv2.erode(mask_uint8, kernel)) > 0
    dist_map = cv2.distanceTransform((mask_uint8 > 0).astype(np.uint8), cv2.DIST_L2, 5)
    local_thickness = cv2.dilate(dist_map, np.ones((15, 15), np.uint8), iterations=1)
    alpha = np.clip((local_thickness - 2.0) / max(6.0 - 2.0, 1e-6), 0.0, 1.0)
    refined_soft = (1.0 - alpha) * refined_small + alpha * refined_large
    refined_bin = (refined_soft > 0.5).astype(np.uint8) * 255
    final_mask = mask_uint8.copy()
    final_mask[boundary_band] = refined_bin[boundary_band]
    orig_area, new_area = np.count_nonzero(mask_uint8), np.count_nonzero(final_mask)
    if abs(new_area - orig_area) / float(orig_area) > 0.03:
        return mask_uint8, refined_soft
    return final_mask, refined_soft


def _two_tone_frame(shape, edge_col, seed=0):
    """A dark left part and a bright right part (vertical edge at `edge_col`), with mild noise, RGB uint8."""
    rng = np.random.default_rng(seed)
    grey = np.where(np.arange(shape[1]) < edge_col, 40, 200)[None, :] + rng.integers(-6, 7, shape)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def test_refine_mask_snaps_the_band_to_the_image_edge():
    shape, edge = (48, 160), 80
    frame = _two_tone_frame(shape, edge)
    too_wide = _rect(shape, 0, 48, edge - 2, 160)  # 2 px into the dark part: area change 2/82 < 3%
    np.testing.assert_array_equal(guided_filter.refine_mask(too_wide, frame), _rect(shape, 0, 48, edge, 160))


def test_refine_mask_keeps_the_mask_when_the_area_would_change_too_much():
    shape, edge = (48, 96), 48
    too_wide = _rect(shape, 0, 48, edge - 4, 96)  # snapping would remove 4/52 of the area
    np.testing.assert_array_equal(guided_filter.refine_mask(too_wide, _two_tone_frame(shape, edge)), too_wide)


def test_refine_mask_leaves_empty_masks_and_the_first_saved_frame_alone():
    shape, edge = (48, 160), 80
    frame = _two_tone_frame(shape, edge)
    empty = np.zeros(shape, bool)
    assert not guided_filter.refine_mask(empty, frame).any()
    masks = np.stack([_rect(shape, 0, 48, edge - 2, 160)] * 2)
    out = guided_filter.postprocess_saved_masks(masks, np.stack([frame, frame]))
    np.testing.assert_array_equal(out[0], masks[0])
    np.testing.assert_array_equal(out[1], _rect(shape, 0, 48, edge, 160))


def _refine_cases():
    """Masks 1 px off a bright disk and a thin bright bar: the band is re-decided with blend weights from 0 (the
    bar) to 1 (the disk), and the area changes by < 3%, so the refinement is kept. Plus a textured frame, where it
    changes the area too much and is dropped, a full-frame mask and the two-tone frame."""
    rng = np.random.default_rng(3)
    shape = (96, 128)
    yy, xx = np.mgrid[:96, :128]
    disk, bar = _disk(shape, 48, 50, 30), (np.abs(yy - (0.4 * xx + 10)) < 1.0) & (xx > 85)
    grey = (np.where(disk | bar, 190, 60) + rng.integers(-10, 11, shape)).astype(np.uint8)
    scene = np.repeat(grey[..., None], 3, axis=2)
    textured = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    return [
        pytest.param(_disk(shape, 48, 51, 30), scene, id="shifted_disk"),
        pytest.param(_disk(shape, 49, 50, 30) | np.roll(bar, -1, axis=0), scene, id="shifted_disk_and_thin_bar"),
        pytest.param(disk | np.roll(bar, 1, axis=0), textured, id="textured_fallback"),
        pytest.param(_rect(shape, 0, 96, 0, 128), textured, id="full_frame"),
        pytest.param(_rect((48, 160), 0, 48, 78, 160), _two_tone_frame((48, 160), 80), id="two_tone"),
    ]


@pytest.mark.parametrize("mask,frame", _refine_cases())
def test_refine_mask_matches_upstream_cv2_version(mask, frame):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("needs opencv-contrib-python-headless")
    expected, soft = _port_guided_refine_mask(cv2, mask.astype(np.uint8) * 255, np.ascontiguousarray(frame[..., ::-1]))
    differ = guided_filter.refine_mask(mask, frame) != (expected > 0)
    # Only pixels whose soft value sits within float32 noise of the 0.5 threshold may differ.
    assert np.all(np.abs(soft[differ] - 0.5) < 1e-4), np.abs(soft[differ] - 0.5)


def test_guided_filter_parts_match_direct_formulations():
    rng = np.random.default_rng(4)
    guide = rng.random((23, 31)).astype(np.float32)
    src = (rng.random((23, 31)) < 0.5).astype(np.float32)
    r = 3
    padded = np.pad(guide.astype(np.float64), r, mode="symmetric")  # BORDER_REFLECT: fedcba|abcdef|fedcba
    direct_box = sum(padded[dy : dy + 23, dx : dx + 31] for dy in range(2 * r + 1) for dx in range(2 * r + 1)) / 49
    np.testing.assert_allclose(guided_filter.box_mean(guide, r), direct_box, rtol=0, atol=1e-6)

    def mean(x):
        return guided_filter.box_mean(x.astype(np.float32), r).astype(np.float64)

    g, p = guide.astype(np.float64), src.astype(np.float64)
    a = (mean(g * p) - mean(g) * mean(p)) / (mean(g * g) - mean(g) ** 2 + 1e-3)  # He et al., in float64
    b = mean(p) - a * mean(g)
    np.testing.assert_allclose(guided_filter.guided_filter(guide, src, r, 1e-3), mean(a) * g + mean(b), atol=1e-4)


def test_guided_filter_gray_and_distance_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 80, 3)).astype(np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(guided_filter.rgb_to_gray(rgb), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    channel = rgb[..., 0] / np.float32(255)
    reference = cv2.boxFilter(channel, -1, (15, 15), borderType=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(guided_filter.box_mean(channel, 7), reference)
    for mask in (_disk((64, 80), 30, 40, 25) | _rect((64, 80), 0, 64, 0, 3), rng.random((64, 80)) < 0.85):
        reference = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        np.testing.assert_array_equal(guided_filter.chamfer_distance(mask, 6.0), np.minimum(reference, np.float32(6)))
    if hasattr(cv2, "ximgproc"):
        guide = guided_filter.rgb_to_gray(rgb).astype(np.float32) / 255.0
        src = _disk((64, 80), 30, 40, 20).astype(np.float32)
        for radius in (3, 7):
            reference = cv2.ximgproc.guidedFilter(guide, src, radius, 1e-3)
            np.testing.assert_allclose(guided_filter.guided_filter(guide, src, radius, 1e-3), reference, atol=5e-5)
