"""Post-processing of the predictor's mask logits: hole filling on the low-res masks, video-resolution output.

Hole filling runs on the host (the low-res masks come back to the host anyway to be stored) with scipy's
connected-component labelling; it reproduces sam2's `fill_holes_in_mask_scores`, whose CUDA kernel labels
8-connected components of the background (`logit <= 0`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from robotseg_jax.modeling.common import resize_bilinear_nchw
from robotseg_jax.modeling.sam2 import apply_non_overlapping_constraints

# The logit sam2 writes into a filled hole: just above the threshold, so the pixel turns foreground.
HOLE_FILL_LOGIT = 0.1
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def fill_holes_in_mask_scores(mask_logits: np.ndarray, max_area: int) -> np.ndarray:
    """Sets background components (8-connected, `logit <= 0`) of at most `max_area` pixels to 0.1, per mask.

    `mask_logits` is `[..., H, W]`. A mask with no foreground (an absent object is NO_OBJ_SCORE everywhere) is one
    background component covering the whole mask, larger than any hole, so it is returned unchanged.
    """
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    flat = np.asarray(mask_logits).reshape(-1, *mask_logits.shape[-2:])
    filled = flat.copy()
    for mask, out in zip(flat, filled):
        out[small_components(mask <= 0, max_area)] = HOLE_FILL_LOGIT
    return filled.reshape(mask_logits.shape)


def small_components(binary: np.ndarray, max_area: float) -> np.ndarray:
    """Pixels of `binary` whose 8-connected component has at most `max_area` pixels (sam2's kernels label
    8-connected components, both for the video predictor's holes and the image predictor's holes/sprinkles)."""
    labels, _ = scipy.ndimage.label(binary, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel())
    return (labels > 0) & (areas[labels] <= max_area)


@functools.partial(jax.jit, static_argnames=("video_size", "non_overlap"))
def to_video_resolution(mask_logits: jax.Array, video_size: tuple[int, int], non_overlap: bool) -> jax.Array:
    """sam2's `_get_orig_video_res_output`: `[O, 1, h, w]` logits resized bilinearly (align_corners=False) to the
    video size, then, if asked, only the highest-scoring object kept per pixel."""
    logits = mask_logits.astype(jnp.float32)
    if logits.shape[-2:] != tuple(video_size):
        logits = resize_bilinear_nchw(logits, video_size)
    if non_overlap:
        logits = apply_non_overlapping_constraints(logits)
    return logits
