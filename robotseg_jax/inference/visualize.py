"""Mask overlays for videos, CLIs and training summaries: each object tinted in a fixed colour, outlined."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Object id -> colour (matplotlib's tab10), so an object keeps its colour across frames, runs and summaries.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    ],
    dtype=np.uint8,
)
# Object 1 gets the first colour, as obj ids start at 1 in sam2's examples.
_FIRST_OBJ_ID = 1


def object_colour(obj_id: int) -> np.ndarray:
    """The RGB colour of an object id."""
    return PALETTE[(int(obj_id) - _FIRST_OBJ_ID) % len(PALETTE)]


def overlay(frame: np.ndarray, masks: Mapping[int, np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """`frame` (uint8 `[H, W, 3]`) with each object's mask (bool `[H, W]`) tinted in its colour (blend `alpha`)
    and its boundary drawn in the solid colour; later objects are drawn over earlier ones."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    out = frame.astype(np.float32)
    for obj_id, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask of object {obj_id} is {mask.shape}, the frame is {frame.shape[:2]}")
        colour = object_colour(obj_id).astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[_boundary(mask)] = colour
    return np.round(out).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def write_gif(frames: Sequence[np.ndarray], path: str, frame_ms: int = 100) -> None:
    """Writes uint8 `[H, W, 3]` frames as a looping GIF."""
    from PIL import Image  # only the writers need PIL

    images = [Image.fromarray(np.asarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
