"""J and F against davisinteractive 1.0.4 and against a line-by-line port of the davis / vos-benchmark code, and the
VRS score tables (upstream's evaluator: per-video means, then unweighted means over videos)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from robotseg_jax.evaluation import bitrows, metrics, scores


# ------------------------------------------------------------------------------------------------ references
def _port_seg2bmap(seg):
    """davis2017-evaluation `_seg2bmap`, line by line (same size output)."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _port_f_measure(gt, pred):
    """vos-benchmark `Evaluator.feed_frame` boundary part, line by line, with scipy's binary dilation (zero
    border, like cv2.dilate's default) standing in for cv2.dilate."""
    bound_pix = np.ceil(0.008 * np.linalg.norm(pred.shape))
    r = int(bound_pix)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= bound_pix**2  # skimage.morphology.disk
    mask_boundary, gt_boundary = _port_seg2bmap(pred), _port_seg2bmap(gt)
    mask_dilated = ndimage.binary_dilation(mask_boundary, disk).astype(np.uint8)
    gt_dilated = ndimage.binary_dilation(gt_boundary, disk).astype(np.uint8)
    gt_match, fg_match = gt_boundary * mask_dilated, mask_boundary * gt_dilated
    n_fg, n_gt = np.sum(mask_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _port_get_iou(intersection, pixel_sum):
    if intersection == pixel_sum:
        assert intersection == 0
        return 1
    return intersection / (pixel_sum - intersection)


@pytest.fixture(scope="module")
def davis():
    """davisinteractive's metrics; the package predates NumPy 2 and uses np.int / np.float."""
    pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "int", int, raising=False)
        patch.setattr(np, "float", float, raising=False)
        yield pytest.importorskip("davisinteractive.metrics")


# ------------------------------------------------------------------------------------------------ cases
def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _cases():
    rng = np.random.default_rng(0)
    shape = (41, 67)
    empty = np.zeros(shape, bool)
    line_h = _rect(shape, 20, 21, 3, 60)
    diagonal = np.eye(*shape, k=5, dtype=bool)
    pixel = _rect(shape, 10, 11, 10, 11)
    corner = _rect(shape, 40, 41, 66, 67)  # the bottom-right pixel, which seg2bmap never marks
    three = pixel | _rect(shape, 10, 11, 11, 12) | _rect(shape, 11, 12, 10, 11)
    pairs = {
        "random_dense": (rng.random((3, *shape)) < 0.5, rng.random((3, *shape)) < 0.5),
        "random_sparse": (rng.random((3, *shape)) < 0.05, rng.random((3, *shape)) < 0.05),
        "disks": (np.stack([_disk(shape, 20, 30, 12)]), np.stack([_disk(shape, 22, 33, 10)])),
        "rects_on_border": (np.stack([_rect(shape, 0, 15, 0, 30)]), np.stack([_rect(shape, 2, 41, 20, 67)])),
        "thin_lines": (np.stack([line_h, diagonal]), np.stack([np.roll(line_h, 2, 0), np.roll(diagonal, 1, 1)])),
        "empty_pred": (np.stack([empty, empty]), np.stack([_disk(shape, 20, 30, 9), pixel])),
        "empty_gt": (np.stack([_disk(shape, 20, 30, 9), pixel]), np.stack([empty, empty])),
        "both_empty": (np.stack([empty]), np.stack([empty])),
        "tiny": (np.stack([pixel, three, corner, pixel]), np.stack([three, pixel, corner, corner])),
        "tall": (rng.random((2, 90, 13)) < 0.3, rng.random((2, 90, 13)) < 0.3),
        "one_row": (rng.random((2, 1, 30)) < 0.5, rng.random((2, 1, 30)) < 0.5),
        "vrs_size": (np.stack([_disk((480, 854), 240, 400, 150)]), np.stack([_disk((480, 854), 236, 409, 147)])),
    }
    return [pytest.param(pred, gt, id=name) for name, (pred, gt) in pairs.items()]


# ------------------------------------------------------------------------------------------------ J and F
@pytest.mark.parametrize("pred,gt", _cases())
def test_matches_port_of_davis_code(pred, gt):
    j, f = metrics.jaccard(pred, gt), metrics.f_measure(pred, gt)
    j_ref = [_port_get_iou((p & g).sum(), p.sum() + g.sum()) for p, g in zip(pred, gt)]
    f_ref = [_port_f_measure(g, p) for p, g in zip(pred, gt)]
    np.testing.assert_array_equal(j, j_ref)
    np.testing.assert_array_equal(f, f_ref)


@pytest.mark.parametrize("pred,gt", _cases())
def test_matches_davisinteractive(davis, pred, gt):
    # nb_objects=1: object id 1 = True, also for an empty GT (which davisinteractive otherwise rejects).
    j_ref = davis.batched_jaccard(gt.astype(int), pred.astype(int), nb_objects=1)
    f_ref = davis.batched_f_measure(gt.astype(int), pred.astype(int), nb_objects=1)
    np.testing.assert_allclose(metrics.jaccard(pred, gt), j_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(metrics.f_measure(pred, gt), f_ref, rtol=0, atol=1e-6)


def test_degenerate_cases_follow_davis_rules():
    empty, blob = np.zeros((1, 20, 30), bool), np.zeros((1, 20, 30), bool)
    blob[0, 5:10, 5:10] = True
    assert metrics.jaccard(empty, empty)[0] == 1.0 and metrics.f_measure(empty, empty)[0] == 1.0
    assert metrics.jaccard(empty, blob)[0] == 0.0 and metrics.f_measure(empty, blob)[0] == 0.0  # P=1, R=0
    assert metrics.f_measure(blob, empty)[0] == 0.0  # P=0, R=1
    assert metrics.f_measure(blob, blob)[0] == 1.0


def test_seg2bmap_and_disk_dilation_match_references():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 23, 150)) < 0.1  # 150 px: three 64-bit words per row, so carries cross words
    bmap = metrics.seg2bmap(bitrows.pack(masks), 150)
    np.testing.assert_array_equal(bitrows.unpack(bmap, 150), [_port_seg2bmap(m) for m in masks])
    for radius in (1, 3, 8):
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        footprint = xx**2 + yy**2 <= radius**2
        dilated = bitrows.unpack(metrics.dilate_disk(bitrows.pack(masks), radius), 150)
        np.testing.assert_array_equal(dilated, [ndimage.binary_dilation(m, footprint) for m in masks])


def test_boundary_radius():
    assert metrics.boundary_radius(480, 854) == 8  # ceil(0.008 · 979.6)
    assert metrics.boundary_radius(1080, 1920) == 18


def test_long_videos_are_chunked_without_changing_results(monkeypatch):
    rng = np.random.default_rng(2)
    pred, gt = rng.random((7, 30, 40)) < 0.3, rng.random((7, 30, 40)) < 0.3
    whole = metrics.f_measure(pred, gt)
    monkeypatch.setattr(metrics, "_CHUNK_PIXELS", 2 * 30 * 40)
    np.testing.assert_array_equal(metrics.f_measure(pred, gt), whole)


def test_rejects_non_boolean_or_mismatched_masks():
    with pytest.raises(TypeError):
        metrics.jaccard(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError):
        metrics.f_measure(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))


# ------------------------------------------------------------------------------------------------ score tables
def _port_evaluator(pred, gt):
    """vos-benchmark `Evaluator` on bool masks as upstream feeds them (object id True), frames in order."""
    objects_in_gt, objects_in_masks, ious, fs = set(), set(), [], []
    for p, g in zip(pred, gt):
        objects_in_gt.update(np.unique(g)[np.unique(g) != 0].tolist())
        objects_in_masks.update(np.unique(p)[np.unique(p) != 0].tolist())
        for obj in objects_in_gt | objects_in_masks:
            ious.append(_port_get_iou(((p == obj) * (g == obj)).sum(), (p == obj).sum() + (g == obj).sum()))
            fs.append(_port_f_measure(g == obj, p == obj))
    assert objects_in_gt == {True}
    return np.mean(ious) * 100, np.mean(fs) * 100


def _moving_disk_video(num_frames, first_visible, shift):
    shape = (32, 48)
    empty = np.zeros(shape, bool)
    gt = np.stack([_disk(shape, 16, 10 + 2 * t, 6) if t >= first_visible else empty for t in range(num_frames)])
    pred = np.roll(gt, shift, axis=2)
    return pred, gt


def test_video_score_matches_port_of_upstream_evaluator():
    pred, gt = _moving_disk_video(8, first_visible=2, shift=1)
    pred[1] = _disk(pred.shape[1:], 5, 5, 2)  # the prediction appears one frame before the GT
    gt[6] = pred[6] = False  # after the first appearance, a frame with both empty scores J = F = 1
    s = scores.video_score(pred, gt)
    j_ref, f_ref = _port_evaluator(pred, gt)
    assert s.j == pytest.approx(j_ref, abs=1e-9) and s.f == pytest.approx(f_ref, abs=1e-9)
    assert s.jf == pytest.approx((j_ref + f_ref) / 2)


def test_frames_before_first_appearance_get_no_entry():
    pred, gt = _moving_disk_video(5, first_visible=3, shift=0)
    s = scores.video_score(pred, gt)
    assert s.j == 100.0 and s.f == 100.0  # frames 0-2 are skipped, not scored as 1 (which would also give 100)
    pred[3] = False
    s = scores.video_score(pred, gt)
    assert s.j == pytest.approx(50.0) and s.f == pytest.approx(50.0)  # frames 3 (0) and 4 (1): 2 entries, not 5


def test_always_empty_gt_is_an_error():
    pred, gt = _moving_disk_video(3, first_visible=5, shift=0)
    with pytest.raises(ValueError, match="empty in every frame"):
        scores.video_score(pred, gt)


def test_dataset_and_group_means_are_unweighted_over_videos():
    per_video = {
        "v0___01_franka___a": scores.Score(j=90.0, f=80.0),
        "v1___01_franka___b": scores.Score(j=70.0, f=60.0),
        "v2___02_ur5___c": scores.Score(j=40.0, f=50.0),
    }
    total = scores.mean_over_videos(per_video.values())
    assert (total.j, total.f, total.jf) == (pytest.approx(200 / 3), pytest.approx(190 / 3), pytest.approx(65.0))
    groups = scores.mean_per_group(per_video, lambda video: video.split("___")[1])
    assert list(groups) == ["01_franka", "02_ur5"]
    assert groups["01_franka"] == scores.Score(j=80.0, f=70.0) and groups["02_ur5"] == per_video["v2___02_ur5___c"]
    with pytest.raises(ValueError):
        scores.mean_over_videos([])


def test_results_csv_has_upstream_layout():
    csv = scores.results_csv({"vid_b": scores.Score(50.0, 70.0), "vid_a": scores.Score(90.0, 100.0)}, "002")
    assert csv.splitlines() == [
        "sequence    ,obj,  J&F,    J,    F",
        "Global score,   , 77.5, 70.0, 85.0",
        "vid_a       ,002, 95.0, 90.0, 100.0",
        "vid_b       ,002, 60.0, 50.0, 70.0",
    ]
