"""Prompt selection of the VRS evaluation protocols (RobotSeg's test scripts) as functions of masks, and the
interactive loops of 3C and OI written against a small predictor interface, so that they run with any segmenter.

All masks are boolean [H,W] at video resolution; points are (x=col, y=row) in video pixels, as upstream passes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

# OI settings of the upstream run (`inference_interactive_vrs.py --max_frame 3 --iou 0.9 --num_click 3`).
OI_MAX_CORRECTED_FRAMES = 3
OI_IOU_THRESHOLD = 0.9
NUM_CLICKS = 3  # clicks per session, for 3C and for each OI correction


@dataclasses.dataclass(frozen=True)
class Clicks:
    """A click list as fed to `add_new_points_or_box`: points float32 [N,2] (x, y), labels int32 [N] (1 = positive)."""

    points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def append(self, point: np.ndarray, label: int) -> Clicks:
        return Clicks(
            np.concatenate([self.points, np.asarray(point, np.float32)[None]]),
            np.concatenate([self.labels, np.asarray([label], np.int32)]),
        )

    def prefix(self, n: int) -> Clicks:
        return Clicks(self.points[:n], self.labels[:n])


# "Segment with these prompts": re-add `clicks` on frame `frame_idx`, replacing that frame's earlier clicks (with the
# category as `robots`, and the frame's previous logits as the mask prompt), and return the mask (logits > 0).
SegmentFn = Callable[[int, Clicks], np.ndarray]


class InteractiveVideoPredictor(Protocol):
    """What the OI loop needs from a video predictor holding one object of one category."""

    def add_clicks(self, frame_idx: int, clicks: Clicks) -> np.ndarray:
        """A `SegmentFn`."""

    def propagate(self) -> Iterator[tuple[int, np.ndarray]]:
        """`propagate_in_video` forward from the earliest prompted frame, yielding (frame_idx, mask). The loop
        consumes it lazily, so corrections committed while iterating condition the frames after them."""

    def commit(self) -> None:
        """`propagate_in_video_preflight`: encode the outputs added since the last commit into memory."""


def first_visible_frame(gt_masks: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> int:
    """The start frame of every setting, AU included (upstream's VRS test scripts use the GT to find where the
    object first appears): the first key, in insertion order, whose GT mask has a pixel; 0 when there is none."""
    items = gt_masks.items() if isinstance(gt_masks, Mapping) else enumerate(gt_masks)
    return next((int(k) for k, mask in items if np.any(mask)), 0)


def centroid_click(gt: np.ndarray) -> np.ndarray:
    """1C: the GT pixel nearest to the GT centroid (mean row and column), Euclidean, the first in row-major order
    on ties. Computed with upstream's exact float64 expression, so that ties break identically."""
    rows, cols = np.nonzero(_nonempty(gt))
    distances = np.sqrt((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    i = np.argmin(distances)
    return np.array([cols[i], rows[i]], np.float32)


def center_click(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, int]:
    """The "center" rule for the next click: the most interior pixel of the false-negative or false-positive region.

    Distances are to the nearest pixel outside the region, with a 1-px zero border (so the image edge counts as
    outside), as upstream's precise `cv2.distanceTransform` on the padded map. The click is positive iff
    max D_FN > max D_FP (strict); the point is the first argmax in row-major order. When both regions are empty
    this gives a negative click at (0, 0), as upstream does. Returns ((x, y), label).
    """
    fn_distance = _squared_distance_to_outside(gt & ~pred)
    fp_distance = _squared_distance_to_outside(~gt & pred)
    # Squared integer distances order exactly as cv2's float32 distances (sqrt is monotonic and, below ~1400 px,
    # maps distinct integers to distinct float32 values), so ties and the strict comparison agree.
    fn_index, fp_index = int(np.argmax(fn_distance)), int(np.argmax(fp_distance))
    positive = fn_distance.flat[fn_index] > fp_distance.flat[fp_index]
    row, col = divmod(fn_index if positive else fp_index, gt.shape[1])
    return np.array([col, row], np.float32), int(positive)


def box_prompt(gt: np.ndarray) -> np.ndarray:
    """BB: the tight box of the GT as [x0, y0, x1, y1] float32 with exclusive right/bottom edges, which is
    `cv2.boundingRect` over all external contours, (x, y, w, h) -> [x, y, x+w, y+h]."""
    rows, cols = np.nonzero(_nonempty(gt))
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """The IoU the test scripts use to steer clicks (`cal_maskIoU`): |A∩B| / (|A∪B| + 1e-6)."""
    return float(np.count_nonzero(pred & gt) / (np.count_nonzero(pred | gt) + 1e-6))


def best_prefix_length(ious: Sequence[float]) -> int:
    """How many clicks to keep: up to the call with the best IoU, the first one on ties."""
    return int(np.argmax(ious)) + 1


@dataclasses.dataclass(frozen=True)
class ClickSession:
    clicks: Clicks  # every click made, in order
    ious: list[float]  # mask_iou after each click
    kept: int  # the best prefix length, re-added at the end
    mask: np.ndarray  # the mask of that final re-add (not the measured best: the re-add also sees the last logits)


def click_session(
    segment: SegmentFn,
    frame_idx: int,
    gt: np.ndarray,
    *,
    first_click: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    num_clicks: int = NUM_CLICKS,
) -> ClickSession:
    """`num_clicks` clicks on one frame, each followed by re-adding all clicks so far, then the best prefix re-added.

    3C (start frame): `first_click` is the 1C click and the rest follow the center rule on the latest mask.
    OI (a tracked frame): all clicks follow the center rule, the first one on the tracked mask `pred`.
    """
    if (first_click is None) == (pred is None):
        raise ValueError("give exactly one of first_click (3C) and pred (OI)")
    clicks, ious, mask = Clicks(), [], pred
    for _ in range(num_clicks):
        if mask is None:
            clicks = clicks.append(first_click, 1)
        else:
            clicks = clicks.append(*center_click(gt, mask))
        mask = segment(frame_idx, clicks)
        ious.append(mask_iou(mask, gt))
    kept = best_prefix_length(ious)
    return ClickSession(clicks, ious, kept, segment(frame_idx, clicks.prefix(kept)))


def three_click_session(segment: SegmentFn, frame_idx: int, gt: np.ndarray) -> ClickSession:
    """The 3C prompt on the start frame (also the start of OI)."""
    return click_session(segment, frame_idx, gt, first_click=centroid_click(gt), num_clicks=NUM_CLICKS)


@dataclasses.dataclass(frozen=True)
class OnlineInteractiveResult:
    masks: dict[int, np.ndarray]  # every propagated frame as saved and scored (before the guided filter)
    start_session: ClickSession
    corrected_frames: list[int]  # frames whose correction was kept, in order


def online_interactive(
    predictor: InteractiveVideoPredictor,
    gt_masks: Mapping[int, np.ndarray],
    start_frame: int,
    *,
    max_corrected_frames: int = OI_MAX_CORRECTED_FRAMES,
    iou_threshold: float = OI_IOU_THRESHOLD,
    num_clicks: int = NUM_CLICKS,
) -> OnlineInteractiveResult:
    """OI (online interactive): 3C on the start frame, then propagation with up to `max_corrected_frames` online
    corrections.

    A propagated frame with a non-empty GT and IoU < `iou_threshold`, met while fewer than `max_corrected_frames`
    corrections have been kept, gets a fresh `click_session` from its tracked mask. The correction is kept (and
    committed to memory) only if its IoU is ≥ the tracked one; otherwise the tracked mask is saved. Rejected
    attempts do not count towards the limit. Frames missing from `gt_masks` are never corrected.
    """
    start_session = three_click_session(predictor.add_clicks, start_frame, gt_masks[start_frame])
    masks: dict[int, np.ndarray] = {}
    corrected: list[int] = []
    for frame_idx, mask in predictor.propagate():
        masks[frame_idx] = mask
        gt = gt_masks.get(frame_idx)
        if gt is None or not gt.any() or len(corrected) >= max_corrected_frames:
            continue
        tracked_iou = mask_iou(mask, gt)
        if tracked_iou >= iou_threshold:
            continue
        session = click_session(predictor.add_clicks, frame_idx, gt, pred=mask, num_clicks=num_clicks)
        if mask_iou(session.mask, gt) >= tracked_iou:
            masks[frame_idx] = session.mask
            predictor.commit()
            corrected.append(frame_idx)
    return OnlineInteractiveResult(masks, start_session, corrected)


def _squared_distance_to_outside(region: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each region pixel to the nearest pixel outside it, the image edge counting as
    outside (upstream's 1-px zero padding); 0 off the region."""
    out = np.zeros(region.shape, np.int64)
    rows, cols = np.nonzero(region)
    if len(rows) == 0:
        return out
    # The region's box grown by one pixel is ringed by outside pixels, and clamping any farther outside pixel onto
    # that ring brings it closer, so the transform of the padded box alone is exact (and much cheaper).
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    distance = ndimage.distance_transform_edt(np.pad(region[top:bottom, left:right], 1))[1:-1, 1:-1]
    out[top:bottom, left:right] = np.rint(distance * distance)  # exact: the EDT is the sqrt of an integer
    return out


def _nonempty(gt: np.ndarray) -> np.ndarray:
    if not gt.any():
        raise ValueError("the GT mask is empty; this prompt needs a visible object")
    return gt
