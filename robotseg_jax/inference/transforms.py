"""sam2's SAM2Transforms (sam2/utils/transforms.py): image preprocessing, prompt coordinates, mask postprocessing.

Images go through torchvision's `ToTensor` (uint8 / 255), `Resize((S, S))` on a float tensor (bilinear with
antialiasing, aspect not kept) and ImageNet `Normalize`; masks come back by bilinear upsampling of the low-res
logits (align_corners=False), after the optional removal of small holes and sprinkles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from robotseg_jax.inference.postprocess import small_components
from robotseg_jax.modeling.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    resize_bilinear_nchw,
)


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """An RGB image as an `[H, W, 3]` array: uint8 in [0, 255], or float in [0, 1] (taken as is, like ToTensor)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (HWC, RGB) or a PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] (RGB, channels last), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 in [0, 255] or float in [0, 1], got dtype {image.dtype}")
    return image


@functools.partial(jax.jit, static_argnames="image_size")
def preprocess_image(image: jax.Array, image_size: int) -> jax.Array:
    """`[H, W, 3]` RGB (uint8, or float in [0, 1]) -> the normalised `[image_size, image_size, 3]` model input.

    `jax.image.resize(antialias=True)` is `F.interpolate(bilinear, antialias=True, align_corners=False)`, which
    torchvision's Resize calls on float tensors. Compiled once per input size.
    """
    x = image.astype(jnp.float32)
    if image.dtype == jnp.uint8:
        x = x / 255.0
    x = jax.image.resize(x, (image_size, image_size, 3), method="linear", antialias=True)
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def transform_coords(
    coords: np.ndarray, orig_hw: tuple[int, int], image_size: int, normalize: bool = True
) -> np.ndarray:
    """(x, y) points in original-image pixels (or in [0, 1] when `normalize` is False) -> model-input pixels."""
    coords = np.array(coords, dtype=np.float32)
    if normalize:
        h, w = orig_hw
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
    return coords * image_size


def remove_small_regions(
    logits: np.ndarray, threshold: float, max_hole_area: float, max_sprinkle_area: float
) -> np.ndarray:
    """SAM2Transforms.postprocess_masks' clean-up of `[..., h, w]` low-res logits.

    Background components (8-connected, logits <= threshold) of at most `max_hole_area` pixels become foreground
    (threshold + 10); foreground components of at most `max_sprinkle_area` pixels become background
    (threshold - 10). Both are found on the input logits, as in sam2.
    """
    out = np.array(logits, dtype=np.float32)
    for index in np.ndindex(out.shape[:-2]):
        mask = np.asarray(logits[index])
        if max_hole_area > 0:
            out[index][small_components(mask <= threshold, max_hole_area)] = threshold + 10.0
        if max_sprinkle_area > 0:
            out[index][small_components(mask > threshold, max_sprinkle_area)] = threshold - 10.0
    return out


@functools.partial(jax.jit, static_argnames="orig_hw")
def upsample_masks(low_res_logits: jax.Array, orig_hw: tuple[int, int]) -> jax.Array:
    """`[..., h, w]` mask logits -> `[..., H, W]` at the original image size (bilinear, align_corners=False)."""
    return resize_bilinear_nchw(low_res_logits, orig_hw)
