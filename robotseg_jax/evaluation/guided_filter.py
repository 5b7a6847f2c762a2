"""The guided-filter post-processing of RobotSeg's VRS test scripts (`test/utils.guided_refine_mask`), in NumPy.

Only a band around the mask boundary is re-decided: a guided filter of the mask, with the frame's grey image as the
guide, is blended between radius 3 (thin parts) and radius 7 (thick parts, judged by the local maximum of the
mask's distance transform), thresholded at 0.5, and pasted into the band. The result is dropped if it changes the
area by more than 3%. It is applied to every saved frame except the first one yielded (the start frame); RoboEngine
gets none.
"""

from __future__ import annotations

import numpy as np

SMALL_RADIUS = 3
LARGE_RADIUS = 7
EPS = 1e-3
BAND_WIDTH = 3  # the band is dilate(7x7) minus erode(7x7)
THICK_THRESHOLD = 6.0  # local thickness at which the blend is all large radius; it starts at 2
MAX_AREA_CHANGE = 0.03

# cv2.distanceTransform(DIST_L2, mask 5): a chamfer distance with steps 1 (axial), 1.4 (diagonal) and 2.1969
# (knight's move). The opencv-contrib-python-headless 4.11 wheel returns float32 sums of these steps (e.g. exactly
# 1.4f), not the 16-bit fixed-point values of OpenCV's portable C code (1.3999939), so we sum in float32 too.
_KNIGHT_MOVES = ((1, 2), (1, -2), (-1, 2), (-1, -2), (2, 1), (2, -1), (-2, 1), (-2, -1))
_CHAMFER_STEPS = (
    [(dy, dx, np.float32(1.0)) for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    + [(dy, dx, np.float32(1.4)) for dy in (1, -1) for dx in (1, -1)]
    + [(dy, dx, np.float32(2.1969)) for dy, dx in _KNIGHT_MOVES]
)


def postprocess_saved_masks(masks: np.ndarray, frames_rgb: np.ndarray) -> np.ndarray:
    """`refine_mask` on every frame of bool [N,H,W] (in the order propagation yielded them) but the first."""
    return np.stack([masks[0]] + [refine_mask(m, f) for m, f in zip(masks[1:], frames_rgb[1:])])


def refine_mask(mask: np.ndarray, frame_rgb: np.ndarray) -> np.ndarray:
    """`guided_refine_mask` for a bool mask [H,W] and its uint8 RGB frame [H,W,3]; returns a bool mask."""
    area = np.count_nonzero(mask)
    if area == 0:
        return mask
    guide = rgb_to_gray(frame_rgb).astype(np.float32) / 255.0
    src = mask.astype(np.float32)
    refined_small = guided_filter(guide, src, SMALL_RADIUS, EPS)
    refined_large = guided_filter(guide, src, LARGE_RADIUS, EPS)

    band_size = 2 * BAND_WIDTH + 1
    band = _max_filter(mask, band_size) & _max_filter(~mask, band_size)  # dilate − erode > 0, for a 0/255 mask

    # Local thickness: the largest distance-to-background within a 15×15 window. Only min(·, THICK_THRESHOLD)
    # matters for the blend weight, so the distance transform may stop there.
    thickness = _max_filter(chamfer_distance(mask, cap=THICK_THRESHOLD), max(3, 2 * LARGE_RADIUS + 1))
    alpha = np.clip((thickness - 2.0) / max(THICK_THRESHOLD - 2.0, 1e-6), 0.0, 1.0)  # float32, as upstream
    refined = (1.0 - alpha) * refined_small + alpha * refined_large > 0.5

    out = mask.copy()
    out[band] = refined[band]
    if abs(np.count_nonzero(out) - area) / float(area) > MAX_AREA_CHANGE:
        return mask
    return out


def rgb_to_gray(frame_rgb: np.ndarray) -> np.ndarray:
    """cv2.cvtColor(BGR2GRAY) on uint8: 0.299 R + 0.587 G + 0.114 B with OpenCV 4's 15-bit fixed-point weights,
    rounded (equal to cv2 4.11 on all 2^24 colours)."""
    rgb = frame_rgb.astype(np.int32)
    weighted = rgb[..., 0] * 9798 + rgb[..., 1] * 19235 + rgb[..., 2] * 3735
    return ((weighted + (1 << 14)) >> 15).astype(np.uint8)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s grey-guide guided filter as cv2.ximgproc.guidedFilter computes it (float32, normalised box
    means over (2r+1)² with BORDER_REFLECT, a = cov(I,p) · 1/(var(I) + eps), b = mean(p) − a·mean(I))."""
    eps = np.float32(eps)
    mean_guide, mean_src = box_mean(guide, radius), box_mean(src, radius)
    inverse_variance = np.float32(1) / (box_mean(guide * guide, radius) - mean_guide * mean_guide + eps)
    a = (box_mean(guide * src, radius) - mean_src * mean_guide) * inverse_variance
    b = mean_src - a * mean_guide
    return box_mean(a, radius) * guide + box_mean(b, radius)


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """cv2.boxFilter(normalize=True, BORDER_REFLECT) with a (2r+1)² window: sums in float64, result in float32."""
    size = 2 * radius + 1
    padded = np.pad(image.astype(np.float64), radius, mode="symmetric")  # numpy "symmetric" = cv2 BORDER_REFLECT
    sums = _window_sums(_window_sums(padded, size, axis=0), size, axis=1)
    return (sums * (1.0 / (size * size))).astype(np.float32)


def chamfer_distance(mask: np.ndarray, cap: float) -> np.ndarray:
    """min(cv2.distanceTransform(mask, DIST_L2, 5), cap) as float32.

    The chamfer distance is the cheapest path of steps from a background pixel, staying inside the image, which
    OpenCV finds with two raster passes. Relaxing all 16 steps over the whole image ⌈cap⌉ times finds every path
    of up to ⌈cap⌉ steps, hence every distance ≤ cap (a step costs at least 1), while larger ones stay above cap.
    (Float32 sums along different equally cheap paths could differ in the last bit from OpenCV's choice; the
    tests find none.)
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros(mask.shape, np.float32)
    # Background pixels one row/column outside the mask's box bound every path from further away, so the box
    # grown by one pixel (clipped to the image, whose outside is never background) is enough.
    top, left = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
    bottom, right = min(rows.max() + 2, mask.shape[0]), min(cols.max() + 2, mask.shape[1])
    crop = mask[top:bottom, left:right]
    cap = np.float32(cap)
    distance = np.where(crop, cap + 1, 0).astype(np.float32)
    height, width = crop.shape
    for _ in range(int(np.ceil(cap))):
        for dy, dx, step in _CHAMFER_STEPS:
            target = distance[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
            source = distance[max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
            np.minimum(target, source + step, out=target)
    out = np.zeros(mask.shape, np.float32)
    out[top:bottom, left:right] = np.minimum(distance, cap)
    return out


def _max_filter(image: np.ndarray, size: int) -> np.ndarray:
    """Maximum over a size×size window clipped to the image (cv2.dilate with a ones kernel, default border)."""
    out = image.copy()
    for axis in (0, 1):
        source = out.copy()
        moved = np.moveaxis(out, axis, 0)
        src = np.moveaxis(source, axis, 0)
        for k in range(1, size // 2 + 1):
            np.maximum(moved[k:], src[:-k], out=moved[k:])
            np.maximum(moved[:-k], src[k:], out=moved[:-k])
    return out


def _window_sums(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sums of `size` consecutive entries along `axis` (the output is shorter by size - 1)."""
    cumulative = np.moveaxis(np.cumsum(values, axis=axis), axis, 0)
    sums = cumulative[size - 1 :].copy()
    sums[1:] -= cumulative[:-size]
    return np.moveaxis(sums, 0, axis)
