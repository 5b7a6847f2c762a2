"""Edge cues of RobotSeg: SEMA's Canny edge map and the Laplacian target of LET's structure loss.

Both are fixed functions without parameters or gradients of interest, jittable and batched. Layout: `edge_map`
takes the model input `[B, H, W, C]` channels-last and returns `[B, H, W, 1]`; the filters underneath work on the
last two axes `[..., H, W]` of single-channel images, so any leading axes batch them.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

# sqrt's regulariser in kornia.filters.canny (its `eps` default).
CANNY_EPS = 1e-6

# Neighbour offsets (row, col) of the 8 gradient directions d = round(angle / 45deg) mod 8, as kornia orders them.
_DIRECTION_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))

NmsTies = Literal["strict", "opencv"]


def _gaussian_kernel_1d(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """kornia's `get_gaussian_kernel1d`: exp(-x^2 / 2 sigma^2) at integer offsets, normalised, in float32."""
    x = np.arange(size, dtype=np.float32) - np.float32(size // 2)
    weights = np.exp(-(x * x) / np.float32(2.0 * sigma * sigma))
    return (weights / weights.sum(dtype=np.float32)).astype(np.float32)


def to_gray(image: jax.Array) -> jax.Array:
    """RobotSeg's `_safe_to_gray`: `[B, H, W, C]` -> `[B, H, W]` in [0, 1].

    A float image whose max exceeds 1.5 is divided by 255; the max is taken over the whole batch tensor, as the
    original does. With ImageNet-normalised input (what the original passes) it nearly always fires, leaving gray
    values <= ~0.01; only very dark frames keep the normalised values. Integer images are always divided by 255.
    Then gray = 0.299 R + 0.587 G + 0.114 B (1 channel: as is; 2 channels: their mean; more than 3: the first 3).
    """
    if jnp.issubdtype(image.dtype, jnp.integer):
        image = image.astype(jnp.float32) / 255.0
    else:
        image = image.astype(jnp.float32)
        image = jnp.where(jnp.max(image) > 1.5, image / 255.0, image)
    channels = image.shape[-1]
    if channels == 1:
        gray = image[..., 0]
    elif channels == 2:
        gray = jnp.mean(image, axis=-1)
    else:  # 3 channels, or the first 3 of more
        gray = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    # Choice: the clamp applies to every channel count (the original's clamp is documented after the RGB rule only).
    return jnp.clip(gray, 0.0, 1.0)


def _pad_last_two(x: jax.Array, width: int, mode: str) -> jax.Array:
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(width, width), (width, width)], mode=mode)


def _shifted(x: jax.Array, dy: int, dx: int, height: int, width: int, pad: int) -> jax.Array:
    """`x` padded by `pad` on each side, read at offset (dy, dx) from every original pixel."""
    return x[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def gaussian_blur_5x5(gray: jax.Array) -> jax.Array:
    """kornia `gaussian_blur2d(x, (5, 5), (1, 1))`: separable, along x then along y, `reflect` border."""
    kernel = _gaussian_kernel_1d()
    radius = kernel.shape[0] // 2
    height, width = gray.shape[-2:]
    padded = jnp.pad(gray, [(0, 0)] * (gray.ndim - 1) + [(radius, radius)], mode="reflect")
    blurred_x = sum(kernel[t] * padded[..., t : t + width] for t in range(kernel.shape[0]))
    padded = jnp.pad(blurred_x, [(0, 0)] * (gray.ndim - 2) + [(radius, radius), (0, 0)], mode="reflect")
    return sum(kernel[t] * padded[..., t : t + height, :] for t in range(kernel.shape[0]))


def sobel_gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """kornia `spatial_gradient(x, normalized=False)`: unnormalised 3x3 Sobel cross-correlation, `replicate`
    border. Returns (gx, gy), each shaped like `x`.

    The taps are summed one by one in row-major order, the order of torch's CPU conv2d, so that the same blurred
    input gives bit-identical gradients: NMS compares magnitudes that tie in exact arithmetic (ramps, symmetric
    steps), where the rounding decides which pixel survives. (The blur itself is not bit-reproducible across
    backends: XLA may fuse its multiply-adds, and kornia's CPU path does so on large images.)
    """
    height, width = x.shape[-2:]
    padded = _pad_last_two(x, 1, "edge")
    at = lambda dy, dx: _shifted(padded, dy, dx, height, width, 1)
    gx = -at(-1, -1) + at(-1, 1) - 2.0 * at(0, -1) + 2.0 * at(0, 1) - at(1, -1) + at(1, 1)
    gy = -at(-1, -1) - 2.0 * at(-1, 0) - at(-1, 1) + at(1, -1) + 2.0 * at(1, 0) + at(1, 1)
    return gx, gy


def _gradient_direction(gx: jax.Array, gy: jax.Array, nms_ties: NmsTies) -> jax.Array:
    """The gradient angle rounded (half to even) to a multiple of 45 degrees, as an index 0..7."""
    angle = jnp.arctan2(gy, gx)
    if nms_ties == "strict":  # kornia <= 0.8.2: degrees first, then /45
        steps = jnp.round((180.0 * angle / np.float32(np.pi)) / 45.0)
    else:  # kornia 0.9.0: one multiplication by 4/pi
        steps = jnp.round(angle * np.float32(4.0 / np.pi))
    return jnp.mod(steps, 8.0).astype(jnp.int32)


def canny_magnitude(gray: jax.Array, eps: float = CANNY_EPS, nms_ties: NmsTies = "strict") -> jax.Array:
    """The first return value of `kornia.filters.canny(gray)` with its defaults, which is what RobotSeg keeps
    (not the thresholded edges, so thresholds and hysteresis play no part): the gradient magnitude of the blurred
    image after non-maximum suppression. `gray` is `[..., H, W]`.

    `nms_ties` picks the suppression rule. The original calls kornia's Canny without pinning kornia, whose rule
    changed between 0.8.2 and 0.9.0, so the original behaves like "strict" under kornia <= 0.8.2 and like "opencv"
    under kornia 0.9:
    - "strict" (default; kornia <= 0.8.2, convolution-based NMS): keep a pixel only if it is strictly larger than
      both neighbours along the rounded gradient direction; neighbours outside the image count as 0.
    - "opencv" (kornia 0.9.0, pinned in requirements-dev.txt): along a horizontal (vertical) gradient a tie with
      the right (lower) neighbour is accepted; outside neighbours have the magnitude sqrt(eps) of a flat pixel,
      and a pixel must exceed it.
    The two rules differ only where magnitudes tie.
    """
    gx, gy = sobel_gradients(gaussian_blur_5x5(gray))
    height, width = gray.shape[-2:]
    direction = _gradient_direction(gx, gy, nms_ties)
    opposite = jnp.mod(direction + 4, 8)

    if nms_ties == "strict":
        magnitude = jnp.sqrt(gx * gx + gy * gy + eps)
        padded = _pad_last_two(magnitude, 1, "constant")
    else:
        gx_pad, gy_pad = _pad_last_two(gx, 1, "constant"), _pad_last_two(gy, 1, "constant")
        padded = jnp.sqrt(gx_pad * gx_pad + gy_pad * gy_pad + eps)
        magnitude = padded[..., 1:-1, 1:-1]
    neighbours = jnp.stack([_shifted(padded, dy, dx, height, width, 1) for dy, dx in _DIRECTION_OFFSETS], axis=-1)
    along = jnp.take_along_axis(neighbours, direction[..., None], axis=-1)[..., 0]
    against = jnp.take_along_axis(neighbours, opposite[..., None], axis=-1)[..., 0]

    if nms_ties == "strict":
        is_max = (magnitude - along > 0) & (magnitude - against > 0)
    else:
        beats = lambda nbr, d: (magnitude > nbr) | (((d == 0) | (d == 2)) & (magnitude == nbr))
        flat = jnp.sqrt(jnp.float32(eps))  # the magnitude just outside the image
        is_max = beats(along, direction) & beats(against, opposite) & (magnitude > flat)
    return magnitude * is_max


def edge_map(raw_image: jax.Array, nms_ties: NmsTies = "strict") -> jax.Array:
    """SEMA's EdgeMap: `[B, H, W, C]` model input -> `[B, H, W, 1]` float32 in [0, 1], no gradient.

    `raw_image` is what the original passes: the resized, ImageNet-normalised frame.
    """
    gray = jax.lax.stop_gradient(to_gray(raw_image))
    return jnp.clip(canny_magnitude(gray, nms_ties=nms_ties), 0.0, 1.0)[..., None]


def laplacian_structure_target(mask: jax.Array) -> jax.Array:
    """The target of LET's structure loss for masks `[..., H, W]`: |Laplacian 3x3| (sum of the 8 neighbours
    minus 8 x centre, divided by 16 as kornia's normalised kernel, `reflect` border), then divided by its
    per-image max over H, W plus 1e-6."""
    height, width = mask.shape[-2:]
    mask = mask.astype(jnp.float32)
    padded = _pad_last_two(mask, 1, "reflect")
    neighbour_sum = sum(
        _shifted(padded, dy, dx, height, width, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )
    response = jnp.abs((neighbour_sum - 8.0 * mask) / 16.0)
    return response / (jnp.max(response, axis=(-2, -1), keepdims=True) + 1e-6)
