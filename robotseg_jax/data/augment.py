"""Clip augmentation on the host, in NumPy/PIL: SAM 2.1's MOSE fine-tuning transforms, which RobotSeg trains with.

The steps and their order follow sam2's `training/dataset/transforms.py` as configured for RobotSeg:
horizontal flip (consistent) -> RandomAffine (consistent; skipped when it empties the first frame's mask) -> square
resize -> ColorJitter (consistent) -> grayscale (consistent) -> ColorJitter (per frame) -> ImageNet normalisation.
torchvision runs these on PIL images, so PIL does the pixel work here as well. Every random draw comes from the
numpy Generator passed in, so a clip's augmentation is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from robotseg_jax import constants

# As float32 arrays here, not from modeling.common, so that grain workers never import JAX.
IMAGENET_MEAN = np.asarray(constants.IMAGENET_MEAN, np.float32)
IMAGENET_STD = np.asarray(constants.IMAGENET_STD, np.float32)

_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)  # Color = saturation


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """torchvision ColorJitter without hue: each factor ~ U[max(0, 1-x), 1+x], applied in a random order."""

    brightness: float
    contrast: float
    saturation: float

    def draw(self, rng: np.random.Generator) -> list[tuple[int, float]]:
        """(enhancer index, factor) pairs in the order they are applied."""
        order = rng.permutation(3)
        factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (self.brightness, self.contrast, self.saturation)]
        return [(int(i), float(factors[i])) for i in order]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 1024
    hflip_prob: float = 0.5
    affine_degrees: float = 25.0
    affine_shear: float = 20.0
    affine_fill: tuple[int, int, int] = (123, 116, 103)
    clip_jitter: ColorJitter = ColorJitter(0.1, 0.03, 0.03)
    grayscale_prob: float = 0.05
    frame_jitter: ColorJitter = ColorJitter(0.1, 0.05, 0.05)


def augment_clip(
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Augments a clip of uint8 [H,W,3] frames and their bool [H,W] masks (one object).

    Returns float32 [T,S,S,3] ImageNet-normalised images and bool [T,S,S] masks, S = config.image_size.
    A frame given twice as the same array objects (the bidirectional sampler's repeats) goes through the
    consistent steps once; the per-frame colour jitter still makes the copies differ, as in the original.
    """
    _check_clip(frames, masks)
    height, width = frames[0].shape[:2]
    flip = rng.random() < config.hflip_prob
    angle = rng.uniform(-config.affine_degrees, config.affine_degrees)
    shear = rng.uniform(-config.affine_shear, config.affine_shear)
    affine = _inverse_affine_matrix((width * 0.5, height * 0.5), angle, shear)
    first_mask = _warp_mask(_flip(masks[0], flip), affine)
    if not first_mask.any():
        affine = None  # sam2's RandomAffine leaves the whole clip untransformed in this case

    clip_jitter = config.clip_jitter.draw(rng)
    grayscale = rng.random() < config.grayscale_prob
    size = config.image_size

    def consistent_steps(frame: np.ndarray, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
        image, mask = Image.fromarray(_flip(frame, flip)), _flip(mask, flip)
        if affine is not None:
            image = image.transform(
                image.size, Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR, fillcolor=config.affine_fill
            )
            mask = _warp_mask(mask, affine)
        image, mask = _resize(image, mask, size)
        image = _jitter(image, clip_jitter)
        if grayscale:
            image = image.convert("L").convert("RGB")
        return image, mask

    done: dict[tuple[int, int], tuple[Image.Image, np.ndarray]] = {}
    images, out_masks = [], []
    for frame, mask in zip(frames, masks):
        key = (id(frame), id(mask))
        if key not in done:
            done[key] = consistent_steps(frame, mask)
        image, mask = done[key]
        images.append(normalize(np.asarray(_jitter(image, config.frame_jitter.draw(rng)))))
        out_masks.append(mask)
    return np.stack(images), np.stack(out_masks)


def resize_clip(
    frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic part only (square resize + normalisation), for evaluation-style inputs."""
    _check_clip(frames, masks)
    resized = [_resize(Image.fromarray(f), m, image_size) for f, m in zip(frames, masks)]
    return np.stack([normalize(np.asarray(im)) for im, _ in resized]), np.stack([m for _, m in resized])


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [...,3] -> float32, ToTensor (/255) then ImageNet mean/std."""
    return (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _check_clip(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
    if len(frames) == 0 or len(frames) != len(masks):
        raise ValueError(f"need one mask per frame and at least one frame, got {len(frames)} frames, {len(masks)} masks")
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"frame {i} must be uint8 [H,W,3], got {frame.dtype} {frame.shape}")
        if frame.shape != frames[0].shape:
            raise ValueError(f"frame {i} has shape {frame.shape}, frame 0 has {frames[0].shape}")
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask {i} has shape {mask.shape}, its frame has {frame.shape[:2]}")


def _flip(array: np.ndarray, flip: bool) -> np.ndarray:
    return np.ascontiguousarray(array[:, ::-1]) if flip else array


def _inverse_affine_matrix(center: tuple[float, float], angle: float, shear_x: float) -> tuple[float, ...]:
    """torchvision's `_get_inverse_affine_matrix` (no translation, scale 1, no y-shear): maps output pixel
    coordinates to input coordinates for a rotation by `angle` and an x-shear about `center`, the PIL convention."""
    rot, sx = math.radians(angle), math.radians(shear_x)
    a, b = math.cos(rot), -math.cos(rot) * math.tan(sx) - math.sin(rot)
    c, d = math.sin(rot), -math.sin(rot) * math.tan(sx) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]  # the inverse of [[a, b], [c, d]]; det = 1
    cx, cy = center
    m[2] = m[0] * -cx + m[1] * -cy + cx
    m[5] = m[3] * -cx + m[4] * -cy + cy
    return tuple(m)


def _warp_mask(mask: np.ndarray, affine: tuple[float, ...]) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    warped = image.transform(image.size, Image.Transform.AFFINE, affine, Image.Resampling.NEAREST, fillcolor=0)
    return np.asarray(warped) > 0


def _resize(image: Image.Image, mask: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Square resize. torchvision resizes the PIL image bilinearly and the uint8 mask tensor bilinearly with
    rounding, which for a 0/1 mask is a 0.5 threshold."""
    if image.size == (size, size):
        return image, mask
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    mask = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)) > 0.5
    return image, mask


def _jitter(image: Image.Image, ops: list[tuple[int, float]]) -> Image.Image:
    for index, factor in ops:
        image = _ENHANCERS[index](image).enhance(factor)
    return image
