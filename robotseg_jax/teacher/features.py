"""The DINOv3 features that pseudo-label propagation matches, computed as the original RobotSeg's
`generate_pseudo_masks.py` computes them.

Per frame: PIL bicubic resize so that the short side is 960 and both sides are rounded up to multiples of 16,
ToTensor + ImageNet normalisation, the last block's output after the final LayerNorm, patch tokens only
([h, w, C]), L2-normalised over channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from robotseg_jax.teacher.dinov3 import (
    DinoV3Config,
    DinoVisionTransformer,
    normalize_images,
)

SHORT_SIDE = 960  # the original's resize target

# (resized frames uint8 [B, H', W', 3], their frame ids) -> unit-norm patch features [B, H'/16, W'/16, C]. The
# frame ids are unused by the ViT; they let tests inject oracle features in place of the ViT.
FeatureFn = Callable[[np.ndarray, Sequence[int]], jax.Array]


def resized_size(height: int, width: int, short_side: int = SHORT_SIDE, multiple: int = 16) -> tuple[int, int]:
    """Each side scaled by short_side / min(height, width), then rounded up to a multiple of 16: side' =
    ceil(side * short_side / short / 16) * 16. Integer arithmetic, so an exact multiple is never pushed up by a
    float rounding error (the short side becomes exactly 960)."""
    short = min(height, width)
    return tuple(-(-(side * short_side) // (short * multiple)) * multiple for side in (height, width))


def resize_frame(frame: np.ndarray, short_side: int = SHORT_SIDE) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H', W', 3], PIL bicubic to `resized_size`."""
    height, width = resized_size(frame.shape[0], frame.shape[1], short_side)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize over the last axis: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def vit_feature_fn(params: dict, config: DinoV3Config) -> FeatureFn:
    """The teacher's features: DINOv3 on ImageNet-normalised frames, last-layer normed patch tokens, unit norm."""
    model = DinoVisionTransformer(config)

    @jax.jit
    def extract(params: dict, frames: jax.Array) -> jax.Array:
        return l2_normalize(model.apply({"params": params}, normalize_images(frames)).patch_tokens)

    return lambda frames, frame_ids: extract(params, frames)
